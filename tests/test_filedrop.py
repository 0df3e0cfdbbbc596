"""The file drop (``[[filedrop]]``): outbox folders sent over ebMS, inbox folders written.

Three layers:

* the outbox and the inbox on a real store (SQLite and PostgreSQL) without a
  network: claiming, refusing, settling, crash consistency, sidecars;
* two in-process gateways over mutual TLS: a file sent and written out on the
  other side, and delivery failing with the receiver down;
* the acceptance test: 1,000 files dropped while ``dkgw serve`` is killed
  (SIGKILL) and stopped (SIGTERM), each delivered exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

import adapters.filedrop.inbox as inbox_module
import adapters.filedrop.outbox as outbox_module
from adapters.filedrop.files import move_no_clobber, numbered, safe_name
from adapters.filedrop.inbox import Inbox
from adapters.filedrop.outbox import Outbox
from adapters.filedrop.store import ItemState, claim_item, list_items
from cpa.generate import make_cpa
from gateway.config import FileDropConfig, load_config
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database, IntegrityConflict
from gateway.store.messages import (
    CHUNK_BYTES,
    AttachmentRecord,
    Direction,
    EventType,
    InboundStatus,
    MessageRecord,
    OutboundStatus,
    SpooledPayload,
    add_event,
    find_message,
    insert_message,
    set_status,
)
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import utcnow
from tests.conftest import DIALECTS, StoreFactory
from tests.gateways import (
    GEMEENTE,
    NODE,
    SERVICE,
    Pair,
    Side,
    free_port,
    gateway_config,
    store_url,
    wait_until,
)

CPA_ID = "filedrop-cpa"


def exchange_config(tmp_path: Path, **overrides: Any) -> FileDropConfig:
    """The municipality's WMO301 exchange, with an outbox and an inbox under tmp_path."""
    config = FileDropConfig(
        name="wmo",
        cpa_id=CPA_ID,
        service=SERVICE.key(),
        action="WMO301",
        from_party=GEMEENTE.key(),
        from_role="Gemeente",
        to_party=NODE.key(),
        to_role="GGk",
        outbox=tmp_path / "outbox",
        inbox=tmp_path / "inbox",
        poll_interval=0.1,
    )
    return replace(config, **overrides)


@pytest.fixture
def db(open_store: StoreFactory, make_spec: Any) -> Database:
    """A migrated store holding an unsigned osb-rm CPA."""
    store = open_store()
    apply_migrations(store)
    CpaRegistry(store).insert(make_cpa(make_spec(profile="osb-rm", cpa_id=CPA_ID)))
    return store


def make_outbox(db: Database, config: FileDropConfig) -> Outbox:
    outbox = Outbox(
        db,
        CpaRegistry(db),
        config,
        security=None,
        stopping=threading.Event(),
        queued=lambda: None,
    )
    outbox.prepare()
    return outbox


def drop(folder: Path, name: str, content: bytes) -> None:
    """Drop a file the way the contract asks: write under a .tmp name, then rename."""
    tmp = folder / f"{name}.tmp"
    tmp.write_bytes(content)
    os.rename(tmp, folder / name)


def files(folder: Path) -> list[str]:
    """Regular files in ``folder``, sorted (none while it is not there yet)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def outbound(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction() as cur:
        return cur.execute(
            "SELECT m.message_id, m.action, a.filename, a.sha256, a.content_type "
            "FROM ebms_message m JOIN ebms_attachment a ON a.message_pk = m.id "
            "WHERE m.direction = 'out' ORDER BY m.id"
        ).fetchall()


def settle(
    db: Database, message_id: str, status: OutboundStatus, *, error: str | None = None
) -> None:
    """Do what the delivery worker does when a message is delivered or given up."""
    with db.transaction() as cur:
        message = find_message(cur, message_id, Direction.OUT)
        assert message is not None
        if error is not None:
            cur.execute(
                "UPDATE delivery_task SET state = 'failed', attempts = 3, last_error = ? "
                "WHERE message_pk = ?",
                (error, message.pk),
            )
        set_status(cur, message.pk, status.value, now=utcnow(), reason=error)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- outbox --------------------------------------------------------------------------------


def test_a_dropped_file_is_queued_once_and_moved_to_sent_when_delivered(
    db: Database, tmp_path: Path
) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "bericht.xml", b"<wmo301/>")

    outbox.run_pass()
    outbox.run_pass()  # nothing new: not queued again

    [(message_id, action, filename, digest, content_type)] = outbound(db)
    assert (action, filename, digest) == ("WMO301", "bericht.xml", sha(b"<wmo301/>"))
    assert content_type == "application/xml"
    assert files(config.outbox) == []
    assert len(files(outbox.work)) == 1  # waiting for the delivery
    with db.transaction() as cur:
        [item] = list_items(cur, "wmo")
    assert (item.state, item.message_id, item.size) == (ItemState.QUEUED, message_id, 9)

    settle(db, message_id, OutboundStatus.DELIVERED)
    outbox.run_pass()
    assert files(outbox.sent) == ["bericht.xml"]
    assert (outbox.sent / "bericht.xml").read_bytes() == b"<wmo301/>"
    assert files(outbox.work) == [] and files(outbox.failed) == []
    with db.transaction() as cur:
        assert [i.state for i in list_items(cur, "wmo")] == [ItemState.SENT]
    for folder in (outbox.work, outbox.sent, outbox.failed):
        assert folder.stat().st_mode & 0o777 == 0o750


def test_tmp_part_and_hidden_files_are_ignored_until_renamed(db: Database, tmp_path: Path) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    for name in ("a.xml.tmp", "b.xml.part", ".c.xml"):
        (config.outbox / name).write_bytes(b"<half")
    outbox.run_pass()
    assert outbound(db) == []
    assert files(config.outbox) == [".c.xml", "a.xml.tmp", "b.xml.part"]

    os.rename(config.outbox / "a.xml.tmp", config.outbox / "a.xml")
    outbox.run_pass()
    assert [r[2] for r in outbound(db)] == ["a.xml"]
    assert files(config.outbox) == [".c.xml", "b.xml.part"]


def test_a_name_clash_in_sent_keeps_the_name_with_a_suffix(db: Database, tmp_path: Path) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    for day in range(3):
        drop(config.outbox, "dagelijks.tar.gz", f"day {day}".encode())
        outbox.run_pass()
        settle(db, outbound(db)[-1][0], OutboundStatus.DELIVERED)
        outbox.run_pass()
    assert files(outbox.sent) == ["dagelijks-1.tar.gz", "dagelijks-2.tar.gz", "dagelijks.tar.gz"]
    assert (outbox.sent / "dagelijks.tar.gz").read_bytes() == b"day 0"
    assert (outbox.sent / "dagelijks-2.tar.gz").read_bytes() == b"day 2"


def test_numbered_names() -> None:
    assert numbered("a.xml", 0) == "a.xml"
    assert numbered("a.xml", 2) == "a-2.xml"
    assert numbered("a", 1) == "a-1"
    assert numbered("a.tar.gz", 1) == "a-1.tar.gz"


def read_error(outbox: Outbox, name: str) -> str:
    return (outbox.failed / f"{name}.error").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("overrides", "content", "expected"),
    [
        ({}, b"", "the file is empty"),
        ({"max_file_bytes": 10}, b"x" * 11, "more than max_file_bytes (10)"),
        ({"action": "WMO999"}, b"<x/>", "not allowed by CPA filedrop-cpa"),
        ({"cpa_id": "no-such-cpa"}, b"<x/>", "no CPA 'no-such-cpa'"),
        ({"service": "urn:osb:services:Other:1"}, b"<x/>", "has no service"),
    ],
    ids=["empty", "too-large", "action-not-allowed", "unknown-cpa", "unknown-service"],
)
def test_a_refused_file_goes_to_failed_with_the_reason(
    db: Database, tmp_path: Path, overrides: dict[str, Any], content: bytes, expected: str
) -> None:
    config = exchange_config(tmp_path, **overrides)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "x.xml", content)
    outbox.run_pass()
    assert outbound(db) == []
    assert files(outbox.failed) == ["x.xml", "x.xml.error"]
    assert (outbox.failed / "x.xml").read_bytes() == content
    error = read_error(outbox, "x.xml")
    assert expected in error.splitlines()[0], error
    assert "file: x.xml" in error
    assert files(outbox.work) == [] and files(config.outbox) == []
    with db.transaction() as cur:
        [item] = list_items(cur, "wmo")
    assert item.state is ItemState.FAILED and expected in (item.error or "")


def test_a_cpa_not_in_force_refuses(db: Database, tmp_path: Path, make_spec: Any) -> None:
    start = utcnow().replace(microsecond=0) + timedelta(days=1)
    spec = make_spec(profile="osb-rm", cpa_id="future-cpa", start=start)
    CpaRegistry(db).insert(make_cpa(spec))
    config = exchange_config(tmp_path, cpa_id="future-cpa")
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "x.xml", b"<x/>")
    outbox.run_pass()
    assert "CPA future-cpa is not in force now" in read_error(outbox, "x.xml")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (OutboundStatus.DELIVERY_FAILED, "delivery failed after 3 attempt(s): connection refused"),
        (OutboundStatus.EXPIRED, "the message expired"),
    ],
)
def test_an_undelivered_message_moves_its_file_to_failed(
    db: Database, tmp_path: Path, status: OutboundStatus, expected: str
) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "x.xml", b"<x/>")
    drop(config.outbox, "y.xml", b"<y/>")
    outbox.run_pass()
    [(mid_x, *_), _] = sorted(outbound(db), key=lambda r: r[2])
    settle(db, mid_x, status, error="connection refused")
    outbox.run_pass()
    assert files(outbox.failed) == ["x.xml", "x.xml.error"]
    error = read_error(outbox, "x.xml")
    assert expected in error and "connection refused" in error
    assert f"message id: {mid_x}" in error
    assert len(files(outbox.work)) == 1  # y is still on its way


def test_a_failed_name_clash_keeps_each_error(db: Database, tmp_path: Path) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "x.xml", b"")
    outbox.run_pass()
    drop(config.outbox, "x.xml", b"<x/>")
    outbox.run_pass()
    settle(db, outbound(db)[0][0], OutboundStatus.DELIVERY_FAILED, error="HTTP 500")
    outbox.run_pass()
    assert files(outbox.failed) == ["x-1.xml", "x-1.xml.error", "x.xml", "x.xml.error"]
    assert "empty" in read_error(outbox, "x.xml")
    assert "HTTP 500" in read_error(outbox, "x-1.xml")


# -- crash consistency -------------------------------------------------------------------------


def test_a_claimed_file_whose_token_is_recorded_is_not_sent_again(
    db: Database, tmp_path: Path
) -> None:
    """A crash after the commit, before anything else: the token says it was queued."""
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    token = uuid.uuid4().hex
    (outbox.work / f"{token}__x.xml").write_bytes(b"<x/>")
    with db.transaction() as cur:
        assert claim_item(
            cur,
            exchange="wmo",
            token=token,
            file_name="x.xml",
            size=4,
            sha256=sha(b"<x/>"),
            now=utcnow(),
        )
    outbox.run_pass()
    outbox.run_pass()
    assert outbound(db) == []
    assert files(outbox.work) == [f"{token}__x.xml"]


def test_a_claimed_file_whose_token_is_unknown_is_sent_once(db: Database, tmp_path: Path) -> None:
    """A crash between the claim (rename) and the commit: the next pass queues it."""
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    token = uuid.uuid4().hex
    (outbox.work / f"{token}__x.xml").write_bytes(b"<x/>")
    outbox.run_pass()
    outbox.run_pass()
    [row] = outbound(db)
    assert row[2] == "x.xml"
    with db.transaction() as cur:
        [item] = list_items(cur, "wmo")
    assert item.token == token and item.message_id == row[0]


def test_a_second_node_does_not_queue_a_token_taken_by_the_first(
    db: Database, tmp_path: Path
) -> None:
    config = exchange_config(tmp_path)
    first, second = make_outbox(db, config), make_outbox(db, config)
    token = uuid.uuid4().hex
    (first.work / f"{token}__x.xml").write_bytes(b"<x/>")
    first.reconcile()
    second.reconcile()
    assert len(outbound(db)) == 1


def test_a_move_cut_short_is_finished_without_a_copy(db: Database, tmp_path: Path) -> None:
    """A crash between the hard link into sent/ and the unlink from .work/."""
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "x.xml", b"<x/>")
    outbox.run_pass()
    settle(db, outbound(db)[0][0], OutboundStatus.DELIVERED)
    [work] = files(outbox.work)
    os.link(outbox.work / work, outbox.sent / "x.xml")  # the crash came here
    outbox.run_pass()
    assert files(outbox.sent) == ["x.xml"] and files(outbox.work) == []


def test_a_settled_item_whose_file_was_not_moved_is_moved_on_the_next_pass(
    db: Database, tmp_path: Path
) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "x.xml", b"<x/>")
    outbox.run_pass()
    settle(db, outbound(db)[0][0], OutboundStatus.DELIVERED)
    outbox.stopping.set()  # the state is settled, then the pass stops before the move
    outbox.reconcile()
    outbox.stopping.clear()
    with db.transaction() as cur:
        assert [i.state for i in list_items(cur, "wmo")] == [ItemState.SENT]
    assert files(outbox.sent) == []
    outbox.run_pass()
    assert files(outbox.sent) == ["x.xml"]


def test_move_no_clobber_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "a.txt").write_text("old")
    (tmp_path / "a.txt").write_text("new")
    moved = move_no_clobber(tmp_path / "a.txt", tmp_path / "dest", "a.txt")
    assert moved.name == "a-1.txt"
    assert (tmp_path / "dest" / "a.txt").read_text() == "old"
    assert moved.read_text() == "new"


def test_safe_names_are_distinct_and_plain() -> None:
    assert safe_name("abc-1.2_x") == "abc-1.2_x"
    a, b = safe_name("id@host"), safe_name("id_host")
    assert a != b and a.startswith("id_host-")
    assert not safe_name(".hidden").startswith(".")
    assert "/" not in safe_name("../../etc/passwd")
    assert len(safe_name("x" * 1000)) < 140


# -- inbox ---------------------------------------------------------------------------------


def receive(
    db: Database,
    parts: list[AttachmentRecord],
    *,
    action: str = "WMO301",
    service: str | None = None,
    message_id: str | None = None,
) -> str:
    """Store a received message as the inbound MSH does (RECEIVED, with its event)."""
    message_id = message_id or f"{uuid.uuid4()}@node.example"
    now = utcnow()
    with db.transaction() as cur:
        pk = insert_message(
            cur,
            MessageRecord(
                message_id=message_id,
                direction=Direction.IN,
                cpa_id=CPA_ID,
                conversation_id="conv-1",
                from_party=GEMEENTE.key(),
                from_role="Gemeente",
                to_party=NODE.key(),
                to_role="GGk",
                service=service or SERVICE.key(),
                action=action,
                sent_at=now,
                content_type="multipart/related",
                envelope=b"<envelope/>",
                status=InboundStatus.RECEIVED.value,
                ref_to_message_id="earlier@gemeente.example",
            ),
            parts,
            now=now,
        )
        add_event(cur, pk, message_id, EventType.RECEIVED, now=now)
    return message_id


def inbound_state(db: Database, message_id: str) -> tuple[str, list[Any]]:
    with db.transaction() as cur:
        message = find_message(cur, message_id, Direction.IN)
        assert message is not None and message.status is not None
        events = cur.execute(
            "SELECT processed_at FROM message_event WHERE message_id = ?", (message_id,)
        ).fetchall()
    return message.status, [e[0] for e in events]


def make_inbox(db: Database, config: FileDropConfig) -> Inbox:
    inbox = Inbox(db, config, stopping=threading.Event())
    inbox.prepare()
    return inbox


def test_the_inbox_writes_payloads_then_the_sidecar_and_marks_processed(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exchange_config(tmp_path)
    inbox = make_inbox(db, config)
    assert config.inbox is not None
    parts = [
        AttachmentRecord("p1@x", "application/xml", b"<wmo301/>", "bericht.xml"),
        AttachmentRecord("p2@x", "application/pdf", b"%PDF-1.4", None),
        AttachmentRecord("p3@x", "application/octet-stream", b"\x00\x01", "../../evil name"),
    ]
    message_id = receive(db, parts)
    order: list[str] = []
    real = inbox_module.atomic_write

    def recording(folder: Path, name: str, source: Any) -> tuple[int, str]:
        order.append(name)
        return real(folder, name, source)

    monkeypatch.setattr(inbox_module, "atomic_write", recording)
    assert inbox.run_pass() == 1

    base = safe_name(message_id)
    assert order == [f"{base}-1.xml", f"{base}-2.pdf", f"{base}-3.bin", f"{base}.json"]
    assert files(config.inbox) == sorted(order)
    sidecar = json.loads((config.inbox / f"{base}.json").read_text(encoding="utf-8"))
    assert sidecar["messageId"] == message_id
    assert sidecar["cpaId"] == CPA_ID
    assert sidecar["fromParty"] == {"partyId": GEMEENTE.key(), "role": "Gemeente"}
    assert sidecar["toParty"] == {"partyId": NODE.key(), "role": "GGk"}
    assert (sidecar["service"], sidecar["action"]) == (SERVICE.key(), "WMO301")
    assert sidecar["conversationId"] == "conv-1"
    assert sidecar["refToMessageId"] == "earlier@gemeente.example"
    assert sidecar["timestamp"].endswith("Z")
    assert [p["file"] for p in sidecar["payloads"]] == order[:3]
    assert sidecar["payloads"][0] == {
        "file": f"{base}-1.xml",
        "name": "bericht.xml",
        "contentId": "p1@x",
        "contentType": "application/xml",
        "size": 9,
        "sha256": sha(b"<wmo301/>"),
    }
    for part, entry in zip(parts, sidecar["payloads"], strict=True):
        assert (config.inbox / entry["file"]).read_bytes() == part.content
    status, events = inbound_state(db, message_id)
    assert status == InboundStatus.PROCESSED.value
    assert all(e is not None for e in events)
    assert inbox.run_pass() == 0  # processed: not written again


def test_the_inbox_rewrites_the_same_names_after_a_crash(db: Database, tmp_path: Path) -> None:
    """A crash after the sidecar and before PROCESSED: the next pass writes the same files."""
    config = exchange_config(tmp_path)
    inbox = make_inbox(db, config)
    assert config.inbox is not None
    message_id = receive(db, [AttachmentRecord("p1@x", "text/xml", b"<a/>", None)])
    inbox.run_pass()
    before = {n: (config.inbox / n).read_bytes() for n in files(config.inbox)}
    with db.transaction() as cur:  # as if PROCESSED had never been committed
        message = find_message(cur, message_id, Direction.IN)
        assert message is not None
        set_status(cur, message.pk, InboundStatus.RECEIVED.value, now=utcnow())
    assert inbox.run_pass() == 1
    after = {n: (config.inbox / n).read_bytes() for n in files(config.inbox)}
    assert after == before and len(after) == 2
    assert not [p for p in config.inbox.iterdir() if p.name.startswith(".tmp-")]


def test_the_inbox_takes_only_its_service_and_actions(db: Database, tmp_path: Path) -> None:
    config = exchange_config(tmp_path, inbox_actions=("WMO302",))
    inbox = make_inbox(db, config)
    part = AttachmentRecord("p@x", "text/xml", b"<a/>", None)
    wanted = receive(db, [part], action="WMO302")
    other_action = receive(db, [part], action="WMO301")
    other_service = receive(db, [part], action="WMO302", service="urn:osb:services:X:1")
    assert inbox.run_pass() == 1
    assert inbound_state(db, wanted)[0] == InboundStatus.PROCESSED.value
    for message_id in (other_action, other_service):
        assert inbound_state(db, message_id)[0] == InboundStatus.RECEIVED.value


def test_a_large_payload_is_streamed_to_the_inbox(db: Database, tmp_path: Path) -> None:
    config = exchange_config(tmp_path)
    inbox = make_inbox(db, config)
    assert config.inbox is not None
    size = 12 * CHUNK_BYTES
    content = SpooledPayload()
    digest = hashlib.sha256()
    for n in range(12):
        chunk = bytes([n]) * CHUNK_BYTES
        content.write(chunk)
        digest.update(chunk)
    message_id = receive(db, [AttachmentRecord("big@x", "application/octet-stream", content)])
    content.close()

    tracemalloc.start()
    try:
        assert inbox.run_pass() == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Whole in memory, the payload alone would be 12 MiB; in pieces, a few chunks at
    # most (the store's spooled copy keeps its first chunk in memory before rolling over).
    assert peak < 4 * CHUNK_BYTES, peak
    written = config.inbox / f"{safe_name(message_id)}-1.bin"
    assert written.stat().st_size == size
    with written.open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
    sidecar = json.loads((config.inbox / f"{safe_name(message_id)}.json").read_text())
    assert sidecar["payloads"][0]["sha256"] == digest.hexdigest()


def test_a_large_file_is_queued_from_a_spooled_copy(db: Database, tmp_path: Path) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    digest = hashlib.sha256()
    with (config.outbox / ".groot.bin.part").open("wb") as f:
        for n in range(16):
            chunk = bytes([n]) * CHUNK_BYTES
            f.write(chunk)
            digest.update(chunk)
    (config.outbox / ".groot.bin.part").rename(config.outbox / "groot.bin")

    tracemalloc.start()
    try:
        outbox.run_pass()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Whole in memory the file alone would be 16 MiB; copied and stored in pieces,
    # a few chunks at most.
    assert peak < 5 * CHUNK_BYTES, peak
    [(_, _, filename, stored_digest, _)] = outbound(db)
    assert (filename, stored_digest) == ("groot.bin", digest.hexdigest())


# -- two gateways over mutual TLS ----------------------------------------------------------


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def start_pair(
    pki: Path, make_spec: Any, tmp_path: Path, dialect: str, *, start_b: bool = True, **cpa: Any
) -> Pair:
    """A with the outbox of exchange "wmo", B with its inbox; the CPA imported on both."""
    out = exchange_config(tmp_path / "a", inbox=None)
    into = replace(exchange_config(tmp_path / "b", outbox=None), poll_interval=0.1)
    a = Side(
        "a",
        gateway_config(
            pki,
            "gemeente-voorbeeld",
            tmp_path / "a",
            store_url(dialect, tmp_path, "a"),
            filedrops=(out,),
        ),
    )
    b = Side(
        "b",
        gateway_config(
            pki,
            "ggk-rinis-test",
            tmp_path / "b",
            store_url(dialect, tmp_path, "b"),
            filedrops=(into,),
        ),
    )
    a.start()
    b.start()
    pair = Pair(a, b, CPA_ID, make_spec, {"profile": "osb-rm", **cpa})
    pair.import_cpa()
    if not start_b:
        await b.stop()
    return pair


@pytest_twisted.ensureDeferred
async def test_a_dropped_file_arrives_in_the_partners_inbox(
    pki: Path, make_spec: Any, tmp_path: Path, dialect: str
) -> None:
    pair = await start_pair(
        pki, make_spec, tmp_path, dialect, retries=3, retry_interval=timedelta(seconds=1)
    )
    try:
        outbox, inbox = tmp_path / "a" / "outbox", tmp_path / "b" / "inbox"
        content = os.urandom(3000)
        await wait_until(lambda: (outbox / ".work").is_dir())  # made by the first pass
        drop(outbox, "aanvraag.bin", content)
        sidecars = await wait_until(lambda: list(inbox.glob("*.json")), timeout=20)
        sidecar = json.loads(sidecars[0].read_text(encoding="utf-8"))
        [payload] = sidecar["payloads"]
        assert payload["name"] == "aanvraag.bin"
        assert (inbox / payload["file"]).read_bytes() == content
        assert sidecar["fromParty"]["partyId"] == GEMEENTE.key()
        await wait_until(lambda: files(outbox / "sent") == ["aanvraag.bin"], timeout=20)
        assert pair.a.status(sidecar["messageId"], "out") == "DELIVERED"
        await wait_until(lambda: pair.b.status(sidecar["messageId"], "in") == "PROCESSED")
    finally:
        await pair.stop()


@pytest_twisted.ensureDeferred
async def test_a_file_whose_delivery_fails_goes_to_failed_with_the_last_error(
    pki: Path, make_spec: Any, tmp_path: Path, dialect: str
) -> None:
    pair = await start_pair(
        pki,
        make_spec,
        tmp_path,
        dialect,
        start_b=False,
        retries=1,
        retry_interval=timedelta(seconds=1),
    )
    try:
        outbox = tmp_path / "a" / "outbox"
        await wait_until(lambda: (outbox / ".work").is_dir())
        drop(outbox, "x.xml", b"<x/>")
        await wait_until(lambda: "x.xml.error" in files(outbox / "failed"), timeout=20)
        error = (outbox / "failed" / "x.xml.error").read_text(encoding="utf-8")
        first = error.splitlines()[0]
        assert first.startswith("error: the message expired"), error
        assert "after 2 attempt(s)" in first
        assert "refused" in first.lower() or "connect" in first.lower(), error
        assert files(outbox / "failed") == ["x.xml", "x.xml.error"]
        assert files(outbox / ".work") == [] and files(outbox / "sent") == []
    finally:
        await pair.stop()


# -- acceptance: 1,000 files, two restarts of dkgw serve, one of them a SIGKILL ----------------

# The acceptance size is 1,000 files (``make test-full`` sets it); the default suite drops
# 300 with the same ten batches, kill and restart, to stay within its time budget.
FILES = int(os.environ.get("DKGW_TEST_FILEDROP_FILES", "300"))
BATCHES = 10
assert FILES % BATCHES == 0 and FILES >= 100, "DKGW_TEST_FILEDROP_FILES: a multiple of 10, >= 100"
DAILY = "dagelijks.xml"  # dropped again and again under the same name


def toml(value: object) -> str:
    """A TOML value (a basic string's escapes are JSON's)."""
    return json.dumps(str(value)) if isinstance(value, str | Path) else str(value)


def serve_config(
    base: Path,
    pki: Path,
    slug: str,
    *,
    port: int,
    store: str,
    filedrop: dict[str, object],
) -> Path:
    party, ca = pki / slug, pki / "ca"
    lines = [
        "[gateway]",
        f"data_dir = {toml(base / 'data')}",
        f"store = {toml(store)}",
        f"node_id = {toml(slug)}",
        "[http]",
        f'listen = "127.0.0.1:{port}"',
        'path = "/ebms"',
        "[tls]",
        f"certificate = {toml(party / 'tls-server.pem')}",
        f"key = {toml(party / 'tls-server.key')}",
        f"client_certificate = {toml(party / 'tls-client.pem')}",
        f"client_key = {toml(party / 'tls-client.key')}",
        f"chain = {toml(ca / 'intermediate.pem')}",
        f"trust_anchors = {toml(ca / 'root.pem')}",
        "[delivery]",
        "poll_interval = 0.2",
        "concurrency = 16",
        "connect_timeout = 5.0",
        "read_timeout = 10.0",
        "[monitoring]",
        "pings = false",
        "[[filedrop]]",
        *(f"{key} = {toml(value)}" for key, value in filedrop.items()),
    ]
    path = base / "gateway.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    load_config(path)  # a typo here should fail here, not as a silent gateway exit
    return path


@dataclass
class Served:
    """``dkgw serve`` as a child process, (re)started and stopped by the test."""

    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = time.monotonic() + 30
        while self.log.read_text(errors="replace").count("event=started") < self.starts:
            assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "dkgw serve did not start"
            time.sleep(0.05)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.exits.append(self.process.wait(timeout=30))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exits.append(self.process.wait())
        self.process = None

    def alive(self) -> None:
        assert self.process is not None and self.process.poll() is None, self.log.read_text(
            errors="replace"
        )[-3000:]


def regular(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()]


def count_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    db = Database.from_url(url)
    try:
        with db.transaction() as cur:
            return cur.execute(sql).fetchall()
    finally:
        db.close()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    """Every process started is stopped afterwards, whatever the test did."""
    processes: list[Served] = []
    yield processes
    for process in processes:
        process.stop(signal.SIGKILL)


def test_1000_files_are_delivered_exactly_once_across_a_kill_and_a_restart(
    pki: Path, make_spec: Any, tmp_path: Path, dialect: str, served: list[Served]
) -> None:
    began = time.monotonic()
    port_a, port_b = free_port(), free_port()
    # Synchronous acknowledgments: with asynchronous ones, an ack that found A down
    # is only sent again on its own retry schedule (a minute), even when A resends
    # the message meanwhile, which would make this test wait for that minute.
    spec = make_spec(
        profile="osb-rm",
        sync_reply=True,
        cpa_id=CPA_ID,
        retries=30,
        retry_interval=timedelta(seconds=2),
        persist_duration=timedelta(hours=1),
    )
    spec = replace(
        spec,
        a=replace(spec.a, endpoint=f"https://127.0.0.1:{port_a}/ebms"),
        b=replace(spec.b, endpoint=f"https://localhost:{port_b}/ebms"),
    )
    cpa = make_cpa(spec)
    stores = {side: store_url(dialect, tmp_path, side) for side in ("a", "b")}
    for url in stores.values():
        db = Database.from_url(url)
        try:
            apply_migrations(db)
            CpaRegistry(db).insert(cpa)
        finally:
            db.close()

    outbox, inbox = tmp_path / "a" / "outbox", tmp_path / "b" / "inbox"
    exchange: dict[str, object] = {"name": "wmo", "cpa_id": CPA_ID, "service": SERVICE.key()}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Served(
        serve_config(
            tmp_path / "a",
            pki,
            "gemeente-voorbeeld",
            port=port_a,
            store=stores["a"],
            filedrop={
                **exchange,
                "action": "WMO301",
                "from_party": GEMEENTE.key(),
                "from_role": "Gemeente",
                "to_party": NODE.key(),
                "to_role": "GGk",
                "outbox": outbox,
                "poll_interval": 0.2,
            },
        ),
        tmp_path / "a" / "gateway.log",
    )
    b = Served(
        serve_config(
            tmp_path / "b",
            pki,
            "ggk-rinis-test",
            port=port_b,
            store=stores["b"],
            filedrop={**exchange, "inbox": inbox, "poll_interval": 0.2},
        ),
        tmp_path / "b" / "gateway.log",
    )
    served.extend((a, b))
    b.start()
    a.start()

    dropped: list[tuple[str, str]] = []
    in_flight_at_kill = 0

    def drop_batch(batch: int, *, daily: bool) -> None:
        for n in range(FILES // BATCHES):
            name = f"wmo301-{batch:02d}-{n:03d}.xml"
            if daily and n == 0:
                # The previous one must have been claimed before its name is reused.
                deadline = time.monotonic() + 20
                while (outbox / DAILY).exists():
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                name = DAILY
            content = os.urandom(1000 + (batch * 100 + n) * 37 % 5000)
            drop(outbox, name, content)
            dropped.append((name, sha(content)))

    while not (outbox / ".work").is_dir():
        time.sleep(0.02)
    for batch in range(BATCHES):
        a_down = batch in (4, 7)
        drop_batch(batch, daily=not a_down)
        if batch == 3:
            time.sleep(0.3)  # in the middle of claiming, queuing and sending
            in_flight_at_kill = len(regular(outbox)) + len(regular(outbox / ".work"))
            a.stop(signal.SIGKILL)
        elif batch == 6:
            time.sleep(0.3)
            a.stop(signal.SIGTERM)
        elif a_down:
            a.start()
        time.sleep(0.2)
    assert len(dropped) == FILES
    assert in_flight_at_kill > 0, "the kill came after everything was settled"
    assert a.exits[0] == -signal.SIGKILL

    deadline = time.monotonic() + 120
    while len(regular(outbox / "sent")) < FILES or len(list(inbox.glob("*.json"))) < FILES:
        a.alive()
        b.alive()
        assert not regular(outbox / "failed"), [p.name for p in regular(outbox / "failed")]
        assert time.monotonic() < deadline, (
            f"{len(regular(outbox / 'sent'))} sent, {len(list(inbox.glob('*.json')))} written"
        )
        time.sleep(0.25)
    time.sleep(1.0)  # anything more would show up now
    elapsed = time.monotonic() - began
    a.stop()
    b.stop()
    assert a.exits[1:] == [0, 0] and b.exits == [0]

    # The receiving side: FILES complete messages, the dropped contents exactly.
    sidecars = sorted(inbox.glob("*.json"))
    assert len(sidecars) == FILES
    received: list[tuple[str, str]] = []
    payload_files = set()
    for path in sidecars:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
        [payload] = sidecar["payloads"]
        written = (inbox / payload["file"]).read_bytes()
        assert sha(written) == payload["sha256"]
        received.append((payload["name"], payload["sha256"]))
        payload_files.add(payload["file"])
    assert Counter(received) == Counter(dropped)
    assert Counter(name for name, _ in dropped)[DAILY] == BATCHES - 2
    assert sorted(p.name for p in inbox.iterdir()) == sorted(
        [p.name for p in sidecars] + list(payload_files)
    )
    assert count_rows(
        stores["b"],
        "SELECT COUNT(*), COUNT(DISTINCT message_id), MIN(status), MAX(status) FROM ebms_message "
        f"WHERE direction = 'in' AND action = 'WMO301' AND service = '{SERVICE.key()}'",
    ) == [(FILES, FILES, "PROCESSED", "PROCESSED")]

    # The sending side: every file in sent/, nothing failed or left behind.
    sent = regular(outbox / "sent")
    assert Counter(sha(p.read_bytes()) for p in sent) == Counter(h for _, h in dropped)
    assert sum(1 for p in sent if p.name.startswith("dagelijks")) == BATCHES - 2
    assert regular(outbox / "failed") == []
    assert regular(outbox) == [] and regular(outbox / ".work") == []
    assert count_rows(
        stores["a"],
        "SELECT COUNT(*), COUNT(DISTINCT message_id), MIN(state), MAX(state) FROM filedrop_item",
    ) == [(FILES, FILES, "sent", "sent")]
    assert count_rows(
        stores["a"],
        "SELECT COUNT(*), MIN(status), MAX(status) FROM ebms_message "
        "WHERE direction = 'out' AND action = 'WMO301'",
    ) == [(FILES, "DELIVERED", "DELIVERED")]
    print(f"\n{FILES} files across a SIGKILL and a SIGTERM restart ({dialect}): {elapsed:.1f} s")


# -- failure isolation: one broken item fails (or waits) alone, the others flow -----------


def item_states(db: Database) -> dict[str, tuple[ItemState, str | None]]:
    with db.transaction() as cur:
        rows = cur.execute("SELECT file_name, state, error FROM filedrop_item").fetchall()
    return {r[0]: (ItemState(r[1]), r[2]) for r in rows}


def test_an_inconsistent_outbox_record_fails_alone_and_the_other_files_go_on(
    db: Database, tmp_path: Path
) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "broken.xml", b"<a/>")
    drop(config.outbox, "good.xml", b"<b/>")
    outbox.run_pass()
    by_name = {r[2]: r[0] for r in outbound(db)}
    with db.transaction() as cur:  # a row the store cannot read back
        cur.execute(
            "UPDATE filedrop_item SET created_at = 'not a time' WHERE file_name = 'broken.xml'"
        )
    settle(db, by_name["good.xml"], OutboundStatus.DELIVERED)

    outbox.run_pass()
    assert files(outbox.sent) == ["good.xml"]
    assert files(outbox.failed) == ["broken.xml", "broken.xml.error"]
    assert "record in the store is inconsistent" in read_error(outbox, "broken.xml")
    state, error = item_states(db)["broken.xml"]
    assert state is ItemState.FAILED and "inconsistent" in (error or "")

    drop(config.outbox, "later.xml", b"<c/>")
    outbox.run_pass()
    assert "later.xml" in {r[2] for r in outbound(db)}
    assert item_states(db)["later.xml"][0] is ItemState.QUEUED


def test_a_file_whose_queuing_breaks_a_store_constraint_fails_alone(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    real = outbox_module.queue_message

    def queue(*args: Any, **kwargs: Any) -> Any:
        if kwargs["payloads"][0].filename == "bad.xml":
            raise IntegrityConflict("duplicate key value violates unique constraint")
        return real(*args, **kwargs)

    monkeypatch.setattr(outbox_module, "queue_message", queue)
    drop(config.outbox, "bad.xml", b"<a/>")
    drop(config.outbox, "good.xml", b"<b/>")
    outbox.run_pass()
    assert [r[2] for r in outbound(db)] == ["good.xml"]
    assert files(outbox.failed) == ["bad.xml", "bad.xml.error"]
    assert "IntegrityConflict" in read_error(outbox, "bad.xml").splitlines()[0]
    assert item_states(db)["bad.xml"][0] is ItemState.FAILED

    drop(config.outbox, "later.xml", b"<c/>")
    outbox.run_pass()
    assert [r[2] for r in outbound(db)] == ["good.xml", "later.xml"]


def test_a_file_that_cannot_be_moved_waits_alone_and_the_other_files_go_on(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exchange_config(tmp_path)
    outbox = make_outbox(db, config)
    assert config.outbox is not None
    drop(config.outbox, "a-stuck.xml", b"<a/>")
    drop(config.outbox, "b-good.xml", b"<b/>")
    outbox.run_pass()
    for message_id, *_ in outbound(db):
        settle(db, message_id, OutboundStatus.DELIVERED)
    real = outbox_module.move_no_clobber

    def move(src: Path, folder: Path, name: str, **kwargs: Any) -> Path:
        if name == "a-stuck.xml":
            raise PermissionError(13, "Permission denied", str(folder))
        return real(src, folder, name, **kwargs)

    monkeypatch.setattr(outbox_module, "move_no_clobber", move)
    outbox.run_pass()
    assert files(outbox.sent) == ["b-good.xml"]
    assert len(files(outbox.work)) == 1  # the stuck one waits for the next pass

    drop(config.outbox, "c-later.xml", b"<c/>")
    outbox.run_pass()
    assert "c-later.xml" in {r[2] for r in outbound(db)}

    monkeypatch.setattr(outbox_module, "move_no_clobber", real)
    outbox.run_pass()
    assert files(outbox.sent) == ["a-stuck.xml", "b-good.xml"]


def failed_events(db: Database, message_id: str) -> list[str | None]:
    with db.transaction() as cur:
        rows = cur.execute(
            "SELECT error_text FROM message_event WHERE message_id = ? AND event_type = 'FAILED'",
            (message_id,),
        ).fetchall()
    return [r[0] for r in rows]


def test_an_inbound_message_with_a_missing_payload_chunk_fails_alone(
    db: Database, tmp_path: Path
) -> None:
    config = exchange_config(tmp_path)
    inbox = make_inbox(db, config)
    assert config.inbox is not None
    big = SpooledPayload()
    big.write(b"x" * (2 * CHUNK_BYTES))
    broken = receive(
        db,
        [
            AttachmentRecord("p1@x", "text/xml", b"<first/>", None),
            AttachmentRecord("p2@x", "application/octet-stream", big),
        ],
    )
    big.close()
    good = receive(db, [AttachmentRecord("p@x", "text/xml", b"<good/>", None)])
    with db.transaction() as cur:  # a row inconsistent: a chunk of the payload is gone
        message = find_message(cur, broken, Direction.IN)
        assert message is not None
        cur.execute(
            "DELETE FROM ebms_payload_chunk WHERE message_pk = ? AND seq = 1", (message.pk,)
        )

    assert inbox.run_pass() == 1
    assert inbound_state(db, good)[0] == InboundStatus.PROCESSED.value
    assert inbound_state(db, broken)[0] == InboundStatus.FAILED.value
    [reason] = failed_events(db, broken)
    assert reason is not None and "lacks chunk 1" in reason
    assert not [n for n in files(config.inbox) if n.startswith(safe_name(broken))]

    later = receive(db, [AttachmentRecord("p@x", "text/xml", b"<later/>", None)])
    assert inbox.run_pass() == 1
    assert inbound_state(db, later)[0] == InboundStatus.PROCESSED.value


def test_an_inbound_message_that_cannot_be_written_now_waits_alone(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = exchange_config(tmp_path)
    inbox = make_inbox(db, config)
    assert config.inbox is not None
    part = AttachmentRecord("p@x", "text/xml", b"<a/>", None)
    stuck = receive(db, [part])
    good = receive(db, [part])
    real = inbox_module.atomic_write

    def write(folder: Path, name: str, source: Any) -> tuple[int, str]:
        if name.startswith(safe_name(stuck)):
            raise OSError(28, "No space left on device", name)
        return real(folder, name, source)

    monkeypatch.setattr(inbox_module, "atomic_write", write)
    monkeypatch.setattr(inbox_module, "BATCH", 1)  # the stuck one fills a whole batch
    assert inbox.run_pass() == 1
    assert inbound_state(db, good)[0] == InboundStatus.PROCESSED.value
    assert inbound_state(db, stuck)[0] == InboundStatus.RECEIVED.value  # tried again later

    later = receive(db, [part])
    assert inbox.run_pass() == 1
    assert inbound_state(db, later)[0] == InboundStatus.PROCESSED.value

    monkeypatch.setattr(inbox_module, "atomic_write", real)
    assert inbox.run_pass() == 1
    assert inbound_state(db, stuck)[0] == InboundStatus.PROCESSED.value
