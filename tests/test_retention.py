"""Retention (gateway/store/retention.py) on a fake clock, on both store dialects."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from adapters.stuf.store import purge as stuf_purge
from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.ebms.envelope import parse_envelope
from gateway.msh.inbound import InboundProcessor, InboundRequest
from gateway.store.backoffice import process_message
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.messages import (
    CHUNK_BYTES,
    AttachmentRecord,
    Direction,
    EventType,
    MessageRecord,
    TaskOutcome,
    add_event,
    claim_due_tasks,
    find_message,
    finish_attempt,
    insert_message,
    insert_task,
    release_task,
    set_status,
)
from gateway.store.migrate import apply_migrations
from gateway.store.retention import RetentionSettings, purge, reclaim_space, store_bytes
from gateway.store.timeutil import to_db, utcnow
from tests.conftest import load_cert
from tests.gateways import Side, gateway_config, store_url, wait_until
from tests.messages import render

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SETTINGS = RetentionSettings(messages_days=30, webhook_days=7, filedrop_days=30, batch_size=3)


@pytest.fixture
def db(store: Database) -> Database:
    apply_migrations(store)
    return store


def _message(
    db: Database,
    message_id: str,
    direction: Direction,
    status: str | None,
    *,
    at: datetime = T0,
    persist_until: datetime | None = None,
    ref: str | None = None,
    payload: bytes = b"",
    task: str | None = None,
) -> int:
    """A message (or a signal, status None) that reached ``status`` at ``at``."""
    rec = MessageRecord(
        message_id=message_id,
        direction=direction,
        cpa_id="cpa",
        conversation_id="c1",
        from_party="urn:osb:oin:1",
        to_party="urn:osb:oin:2",
        service="urn:osb:services:GGK:iWmo:3.2",
        action="WMO301" if status else "Acknowledgment",
        sent_at=at,
        content_type="text/xml",
        envelope=b"<Envelope>" + message_id.encode() + b"</Envelope>",
        ref_to_message_id=ref,
        persist_until=persist_until,
        status=status,
    )
    parts = (AttachmentRecord("p@gw", "application/xml", payload),) if payload else ()
    with db.transaction() as cur:
        pk = insert_message(cur, rec, parts, now=at)
        if task is not None:
            insert_task(cur, pk, "https://partner/ebms", now=at)
            if task != "pending":
                release_task(cur, pk, TaskOutcome(task), now=at)
        if status:
            add_event(cur, pk, message_id, EventType.RECEIVED, now=at)
    return pk


def _ids(db: Database) -> set[str]:
    with db.transaction() as cur:
        return {r[0] for r in cur.execute("SELECT message_id FROM ebms_message").fetchall()}


def _count(db: Database, table: str) -> int:
    with db.transaction() as cur:
        row = cur.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_exactly_the_finished_rows_outside_every_window_go(db: Database) -> None:
    old, young = T0, T0 + 20 * DAY
    now = T0 + 40 * DAY  # old ones are 40 days final, young ones 20
    big = bytes(range(256)) * (CHUNK_BYTES // 256 + 10)  # chunked: over 1 MiB
    delivered = _message(db, "out-delivered", Direction.OUT, "DELIVERED", at=old, task="pending")
    with db.transaction() as cur:
        (task,) = claim_due_tasks(cur, node="n", now=old, lease=DAY)
        assert task.message_pk == delivered
        finish_attempt(cur, task, TaskOutcome.DONE, node="n", started_at=old, now=old)
    _message(db, "out-failed", Direction.OUT, "DELIVERY_FAILED", at=old, task="failed")
    _message(db, "out-expired-young", Direction.OUT, "EXPIRED", at=young, task="expired")
    _message(db, "out-created", Direction.OUT, "CREATED", at=old, task="pending")
    _message(db, "in-received", Direction.IN, "RECEIVED", at=old)  # back office has not
    _message(db, "in-processed", Direction.IN, "PROCESSED", at=old, payload=big,
             persist_until=old + DAY)  # fmt: skip
    _message(db, "ack-of-processed", Direction.OUT, None, at=old, ref="in-processed")
    _message(db, "in-window", Direction.IN, "PROCESSED", at=old, persist_until=now + DAY)
    _message(db, "ack-of-window", Direction.OUT, None, at=old, ref="in-window")
    _message(db, "in-failed", Direction.IN, "FAILED", at=old, payload=b"<x/>")
    _message(db, "pong-orphan", Direction.IN, None, at=old, ref="ping-long-gone")
    _message(db, "ack-sending", Direction.OUT, None, at=old, task="pending")
    with db.transaction() as cur:
        # A webhook has looked at no event of "out-unpushed" yet.
        cur.execute(
            "INSERT INTO webhook_cursor (name, last_event_id, created_at, updated_at) "
            "SELECT 'hook', MAX(id), ?, ? FROM message_event",
            (to_db(old), to_db(now - DAY)),
        )
    _message(db, "out-unpushed", Direction.OUT, "DELIVERED", at=old, task="done")
    with db.transaction() as cur:
        for n, (state, at) in enumerate([("done", old), ("failed", old), ("pending", old),
                                         ("done", now - DAY)]):  # fmt: skip
            cur.execute(
                "INSERT INTO webhook_delivery (webhook, event_id, message_id, event_type, state, "
                "next_attempt_at, created_at, updated_at) VALUES ('hook', ?, 'm', 'RECEIVED', ?, "
                "?, ?, ?)",
                (n, state, to_db(at), to_db(at), to_db(at)),
            )
        for n, state in enumerate(["sent", "failed", "queued"]):
            cur.execute(
                "INSERT INTO filedrop_item (exchange, token, file_name, size, state, created_at, "
                "updated_at) VALUES ('x', ?, 'f.xml', 1, ?, ?, ?)",
                (f"t{n}", state, to_db(old), to_db(old)),
            )
    everything = _ids(db)
    with db.transaction() as cur:
        before = store_bytes(cur)

    dry = purge(db, now, SETTINGS, dry_run=True)
    assert _ids(db) == everything
    gone = {"out-delivered", "out-failed", "in-processed", "ack-of-processed", "in-failed",
            "pong-orphan"}  # fmt: skip
    assert dry.rows["messages"] == 4 and dry.rows["signals"] == 2
    report = purge(db, now, SETTINGS)
    assert report.rows == dry.rows and report.bytes == dry.bytes
    assert _ids(db) == everything - gone
    assert report.rows["payloads"] == 2 and report.rows["payload_chunks"] == 2
    assert report.bytes["payload_chunks"] == len(big) and report.bytes["payloads"] == 4
    assert report.rows["attempts"] == 1 and report.rows["events"] == 4
    assert report.rows["webhook_deliveries"] == 2 and report.rows["filedrop_items"] == 2
    assert _count(db, "ebms_payload_chunk") == 0 and _count(db, "ebms_attachment") == 0
    assert _count(db, "webhook_delivery") == 2 and _count(db, "filedrop_item") == 1
    # Nothing left to do: a second purge finds nothing.
    assert purge(db, now, SETTINGS).total_rows == 0
    # A cursor that has not moved for a whole period (its webhook was removed) holds
    # nothing back any more.
    with db.transaction() as cur:
        cur.execute("UPDATE webhook_cursor SET updated_at = ?", (to_db(old),))
    assert purge(db, now, SETTINGS).rows["messages"] == 1
    assert "out-unpushed" not in _ids(db)
    vacuumed = reclaim_space(db)
    with db.transaction() as cur:
        after = store_bytes(cur)
    print(f"\nretention {db.dialect}: {report.rows} {report.bytes}; store {before} -> {after}")
    if db.dialect == "sqlite":
        assert vacuumed and after < before


@pytest.fixture
def node(db: Database, cpa_xml, pki: Path):
    """An inbound processor on a fake clock: returns it and a setter for the time."""
    registry = CpaRegistry(db)
    registry.insert(cpa_xml(profile="osb-rm", sync_reply=True), overwrite=True)
    clock = {"now": utcnow()}
    processor = InboundProcessor(db, registry, clock=lambda: clock["now"])
    return processor, clock


def test_the_duplicate_window_holds_until_persist_duration_ends(
    db: Database, node, pki: Path
) -> None:
    processor, clock = node
    start = clock["now"]  # the CPA is valid from today
    cert = load_cert(pki / "gemeente-voorbeeld" / "tls-client.pem")
    xml = render("EbMSMessage", timestamp=start)
    message_id = parse_envelope(xml)[0].header.message_id

    def receive() -> str:
        req = InboundRequest('"ebXML"', "text/xml; charset=UTF-8", xml, (), cert)
        return str(processor.handle(req).log["outcome"])

    assert receive() == "received"
    with db.transaction() as cur:
        process_message(cur, message_id, now=start)
        stored = find_message(cur, message_id, Direction.IN)
    assert stored is not None and stored.persist_until is not None
    short = RetentionSettings(messages_days=0.01)  # would go after a quarter hour
    clock["now"] = start + timedelta(hours=1)
    assert stored.persist_until > clock["now"]
    assert purge(db, clock["now"], short).total_rows == 0
    assert receive() == "duplicate"  # the stored id still eliminates the resend
    after_window = stored.persist_until + timedelta(seconds=1)
    report = purge(db, after_window, short)
    assert (report.rows["messages"], report.rows["signals"]) == (1, 1)  # with its ack
    assert _ids(db) == set()


def test_pending_and_unprocessed_messages_are_never_purged(db: Database) -> None:
    _message(db, "waiting", Direction.OUT, "CREATED", task="pending")
    _message(db, "unread", Direction.IN, "RECEIVED")
    far = T0 + 3650 * DAY
    assert purge(db, far, SETTINGS).total_rows == 0
    with db.transaction() as cur:
        pk = find_message(cur, "waiting", Direction.OUT)
        assert pk is not None
        release_task(cur, pk.pk, TaskOutcome.DONE, now=far)
        set_status(cur, pk.pk, "DELIVERED", now=far)
    assert purge(db, far + 31 * DAY, SETTINGS).rows["messages"] == 1
    assert _ids(db) == {"unread"}


def test_the_relays_purge_takes_the_ebms_copies_of_its_log_rows(db: Database) -> None:
    now = T0 + 10 * DAY  # the general retention (30 days) would keep every message
    _message(db, "copy-read", Direction.OUT, "DELIVERED", at=T0, task="done")
    _message(db, "ack-of-copy", Direction.IN, None, at=T0, ref="copy-read")
    _message(db, "copy-kept", Direction.OUT, "DELIVERED", at=T0, task="done")
    _message(db, "copy-pending", Direction.OUT, "CREATED", at=T0, task="pending")
    with db.transaction() as cur:
        for n, (copy, read_at) in enumerate(
            [("copy-read", T0), ("copy-kept", now - timedelta(hours=1)), ("copy-pending", T0)]
        ):
            cur.execute(
                "INSERT INTO stuf_message (direction, referentienummer, sender_org, "
                "ebms_message_id, status, created_at, updated_at, read_at) "
                "VALUES ('out', ?, 'org', ?, 'read', ?, ?, ?)",
                (f"ref{n}", copy, to_db(T0), to_db(read_at), to_db(read_at)),
            )
    with db.transaction() as cur:
        assert stuf_purge(cur, now, dry_run=True).ebms == 1
    assert _ids(db) == {"copy-read", "ack-of-copy", "copy-kept", "copy-pending"}
    with db.transaction() as cur:
        counts = stuf_purge(cur, now)
    assert (counts.read, counts.ebms) == (2, 1)
    # The pending copy stays for the general retention, once it is delivered.
    assert _ids(db) == {"copy-kept", "copy-pending"}


# -- dkgw serve and dkgw purge -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_serve_purges_on_its_interval_and_reports_the_store_size(
    pki: Path, tmp_path: Path
) -> None:
    url = store_url("sqlite", tmp_path, "a")
    seeded = Database.from_url(url)
    apply_migrations(seeded)
    old = utcnow() - 40 * DAY
    _message(seeded, "finished-long-ago", Direction.OUT, "DELIVERED", at=old, task="done")
    _message(seeded, "still-waiting", Direction.OUT, "CREATED", at=old, task="pending")
    seeded.close()
    config = gateway_config(pki, "gemeente-voorbeeld", tmp_path / "a", url, admin_port=0)
    side = Side("a", replace(config, retention=RetentionSettings(interval=0.2)))
    side.start()
    try:
        assert side.gateway is not None and side.gateway.purger is not None
        purger = side.gateway.purger
        await wait_until(lambda: purger.runs >= 2)
        ids = {r[0] for r in side.rows("SELECT message_id FROM ebms_message")}
        assert ids == {"still-waiting"}
        admin = f"http://127.0.0.1:{side.gateway.admin_listening_port}"
        text = (await (await treq.get(f"{admin}/metrics".encode())).content()).decode()
        metrics = {f.name: f.samples for f in text_string_to_metric_families(text)}
        assert metrics["dkgw_store_bytes"][0].value > 0
        assert metrics["dkgw_store_messages"][0].value == 1
        status = json.loads(await (await treq.get(f"{admin}/status".encode())).content())
        assert status["store"]["messages"] == 1 and status["store"]["bytes"] > 0
    finally:
        await side.stop()
        side.close()


def test_purge_command_dry_run_deletes_nothing_and_prints_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "var"
    db = Database.from_url(f"sqlite:///{data_dir / 'gateway.sqlite3'}")
    apply_migrations(db)
    old = utcnow() - 40 * DAY
    _message(db, "gone", Direction.IN, "PROCESSED", at=old, payload=b"<zorg/>")
    _message(db, "kept", Direction.IN, "RECEIVED", at=old)
    argv = ["--data-dir", str(data_dir), "purge"]
    assert main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "would purge messages: 1 rows, " in out and "would purge payloads: 1 rows, 7 bytes" in out
    )
    assert "store: " in out
    assert _ids(db) == {"gone", "kept"}
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "purged messages: 1 rows, " in out and "purged events: 1 rows" in out
    print(out)
    assert _ids(db) == {"kept"}
    db.close()


def test_retention_section_is_parsed_and_checked(write) -> None:
    config = load_config(write("[retention]\nmessages_days = 90\ninterval = 60\n"))
    assert config.retention == RetentionSettings(messages_days=90.0, interval=60.0)
    assert load_config(write("")).retention == RetentionSettings()
    for bad in ("messages_days = 0", "batch_size = 0", "keep = 1"):
        with pytest.raises(ConfigError, match=r"messages_days|batch_size|keep"):
            load_config(write(f"[retention]\n{bad}\n"))
