"""The relay (adapters.stuf.relay.Relay) against a real store, without a network.

A :class:`Relay` over a migrated store (SQLite, and PostgreSQL when
``DKGW_TEST_PG_DSN`` is set) with the StUF CPA imported.  Received ebMS messages
are inserted the way the MSH stores them (``gateway.msh.inbound``: the message
RECEIVED with its payloads, and a RECEIVED event), then handed to the relay;
what it queues is read back from the store.  Time is a fake clock, so retention
needs no waiting.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.stuf import receiving as receiving_module
from adapters.stuf import upkeep as upkeep_module
from adapters.stuf.bare import read_bare, wrap_bare
from adapters.stuf.envelope import Envelope, Systeem, unwrap, wrap
from adapters.stuf.fo01 import fo01_for, parse_fo01
from adapters.stuf.relay import NODE_SYSTEEM, Refused, Relay
from adapters.stuf.service import RelayService
from cpa.generate import ActionSpec, make_cpa
from cpa.model import PartyId
from gateway.config import StufConfig, StufMunicipality
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database, StoreError
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    EventType,
    MessageRecord,
    add_event,
    find_message,
    insert_message,
    load_attachments,
    set_status,
)
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import utcnow
from tests.conftest import SpecFactory
from tests.gateways import GEMEENTE, NODE
from tests.test_stuf_relay import ACTIONS as RELAY_ACTIONS
from tests.test_stuf_relay import CPA_ID, FIXTURES, SERVICE

#: The relay test's actions, and the types these tests exchange besides.
ACTIONS = (
    *RELAY_ACTIONS,
    ActionSpec("JW305", "b"),
    ActionSpec("JW306", "a"),
    ActionSpec("WMO315", "b"),
    ActionSpec("WMO317", "b"),
)
SERVICES = (("ijw", SERVICE), ("iwmo", SERVICE))
AGB = "42420001"
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def sample(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def envelope_of(path: str, *, cross_ref: str | None = None, data: bytes | None = None) -> bytes:
    """The sample wrapped as its sender would wrap it (a retour answering ``cross_ref``)."""
    return wrap(
        wrap_bare(
            read_bare(data if data is not None else sample(path), max_bytes=1 << 25),
            applicatie="Backoffice",
            applicatie_versie="0001",
            applicatie_subversie="0000",
            cross_ref=lambda b: cross_ref,
        )
    )


class Clock:
    """A settable clock, starting now (the CPA is valid from an hour ago)."""

    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)
        self.start = self.now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Env:
    db: Database
    relay: Relay
    clock: Clock
    tmp: Path

    # -- the MSH's side -----------------------------------------------------------------

    def receive(self, data: bytes, *, action: str, message_id: str | None = None,
                cpa_id: str = CPA_ID) -> str:  # fmt: skip
        """Store ``data`` as the one payload of a received ebMS message, as the MSH does."""
        mid = message_id or f"{uuid.uuid4()}@peer.example"
        ours, theirs = (GEMEENTE, NODE) if self.relay.gemeente else (NODE, GEMEENTE)
        now = self.clock()
        with self.db.transaction() as cur:
            pk = insert_message(
                cur,
                MessageRecord(
                    message_id=mid,
                    direction=Direction.IN,
                    cpa_id=cpa_id,
                    conversation_id=str(uuid.uuid4()),
                    from_party=theirs.key(),
                    from_role="GGk" if self.relay.gemeente else "Gemeente",
                    to_party=ours.key(),
                    to_role="Gemeente" if self.relay.gemeente else "GGk",
                    service=SERVICE,
                    action=action,
                    sent_at=now,
                    persist_until=now + DAY,
                    status="RECEIVED",
                    content_type='multipart/related; type="text/xml"; boundary="b"',
                    envelope=b"<SOAP:Envelope/>",
                ),
                [AttachmentRecord(f"<{uuid.uuid4()}@peer>", "application/xml", data, "m.xml")],
                now=now,
            )
            add_event(cur, pk, mid, EventType.RECEIVED, now=now)
        return mid

    # -- reading the store -----------------------------------------------------------------

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.db.transaction() as cur:
            return [tuple(r) for r in cur.execute(sql, params).fetchall()]

    def log(self, *columns: str) -> list[tuple[Any, ...]]:
        return self.rows(f"SELECT {', '.join(columns)} FROM stuf_message ORDER BY id")

    def status(self, message_id: str, direction: str = "in") -> str | None:
        found = self.rows(
            "SELECT status FROM ebms_message WHERE message_id = ? AND direction = ?",
            message_id,
            direction,
        )
        return found[0][0] if found else None

    def events(self, message_id: str) -> list[tuple[str, bool]]:
        return [
            (str(r[0]), r[1] is not None)
            for r in self.rows(
                "SELECT event_type, processed_at FROM message_event WHERE message_id = ? "
                "ORDER BY id",
                message_id,
            )
        ]

    def outbound(self, action: str | None = None) -> list[tuple[Any, ...]]:
        """(message_id, cpa_id, from_party, from_role, to_party, to_role, service, action)."""
        sql = (
            "SELECT message_id, cpa_id, from_party, from_role, to_party, to_role, service, "
            "action FROM ebms_message WHERE direction = 'out'"
        )
        if action is None:
            return self.rows(sql + " ORDER BY id")
        return self.rows(sql + " AND action = ? ORDER BY id", action)

    def payload(self, message_id: str, direction: str = "out") -> bytes:
        with self.db.transaction() as cur:
            message = find_message(cur, message_id, Direction(direction))
            assert message is not None
            parts = load_attachments(cur, message.pk)
        try:
            assert len(parts) == 1
            return parts[0].data()
        finally:
            for p in parts:
                p.close()

    def set_ebms_status(self, message_id: str, status: str) -> None:
        with self.db.transaction() as cur:
            message = find_message(cur, message_id, Direction.OUT)
            assert message is not None
            assert set_status(cur, message.pk, status, now=self.clock())


@pytest.fixture
def db(store: Database, make_spec: SpecFactory) -> Database:
    apply_migrations(store)
    CpaRegistry(store).insert(make_cpa(make_spec(profile="osb-rm", actions=ACTIONS, cpa_id=CPA_ID)))
    return store


def _gemeente_config(tmp: Path, **kw: Any) -> StufConfig:
    values: dict[str, Any] = {
        "role": "gemeente",
        "cpa_id": CPA_ID,
        "gemeentecodes": ("0384", "0363"),
        "services": SERVICES,
        "inbox": tmp / "inbox",
        "outbox": tmp / "outbox",
    }
    values.update(kw)
    return StufConfig(**values)


def _node_config(tmp: Path, **kw: Any) -> StufConfig:
    values: dict[str, Any] = {
        "role": "node",
        "gemeenten": (StufMunicipality(CPA_ID, ("0384", "0363")),),
        "services": SERVICES,
        "provider_outbox": tmp / "providers-out",
        "provider_inbox": tmp / "providers-in",
    }
    values.update(kw)
    return StufConfig(**values)


def _env(db: Database, tmp: Path, config: StufConfig) -> Env:
    clock = Clock()
    own: tuple[PartyId, ...] = (GEMEENTE,) if config.role == "gemeente" else (NODE,)
    relay = Relay(db, CpaRegistry(db), config, own_parties=own, node_id="t", clock=clock)
    return Env(db, relay, clock, tmp)


@pytest.fixture
def gemeente(db: Database, tmp_path: Path) -> Env:
    return _env(db, tmp_path, _gemeente_config(tmp_path))


@pytest.fixture
def node(db: Database, tmp_path: Path) -> Env:
    return _env(db, tmp_path, _node_config(tmp_path))


def folder_files(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _quiet_exceptions(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # process_received logs and swallows exceptions: a test must not pass because of it.
    yield
    errors = [r for r in caplog.records if "stuf-error" in r.getMessage()]
    assert not errors, errors[0].getMessage()


# -- 1. idempotency ---------------------------------------------------------------------


class Crash(Exception):
    """Raised after the relay's work, before the commit."""


def test_a_received_message_is_relayed_once_even_after_a_crash(gemeente: Env) -> None:
    env_bytes = envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4()))
    ref = unwrap(env_bytes).referentienummer
    stem = f"{AGB}-{ref}"  # the sender and its referentienummer
    mid = gemeente.receive(env_bytes, action="JW302")
    inbox = gemeente.tmp / "inbox"

    # The files are written, then the node dies before the transaction commits.
    with pytest.raises(Crash), gemeente.db.transaction() as cur:
        gemeente.relay._process_one(cur, mid)
        raise Crash
    after_crash = folder_files(inbox)
    assert set(after_crash) == {f"{stem}.xml", f"{stem}.json"}
    assert gemeente.log("id") == []
    assert gemeente.status(mid) == "RECEIVED"

    # The next pass relays it again: the same files, one log row.
    assert gemeente.relay.process_received() == 1
    assert gemeente.relay.process_received() == 0
    with gemeente.db.transaction() as cur:
        gemeente.relay._process_one(cur, mid)  # processed already: nothing happens
    assert folder_files(inbox) == after_crash
    assert after_crash[f"{stem}.xml"] == sample("ijw/3.2/JW302.xml")
    assert gemeente.log("direction", "functie", "berichtcode", "referentienummer", "status",
                        "ebms_message_id", "file_name") == [
        ("in", "JW302", "Du01", ref, "delivered", mid, f"{stem}.xml")
    ]  # fmt: skip
    assert gemeente.status(mid) == "PROCESSED"
    assert gemeente.events(mid) == [("RECEIVED", True)]
    assert gemeente.outbound() == []  # no Fo01


def test_processing_twice_in_one_pass_list_is_harmless(node: Env) -> None:
    env_bytes = envelope_of("iwmo/3.2/WMO301.xml")
    mid = node.receive(env_bytes, action="WMO301")
    with node.db.transaction() as cur:
        node.relay._process_one(cur, mid)
    with node.db.transaction() as cur:
        node.relay._process_one(cur, mid)
    assert node.relay.process_received() == 0
    assert node.log("status") == [("delivered",)]
    assert len(folder_files(node.tmp / "providers-out")) == 1
    assert node.outbound() == []


# -- 2. duplicate referentienummer inbound ----------------------------------------------


@pytest.mark.parametrize(("role", "sample_path", "action", "fo01_code"), [
    ("node", "iwmo/3.2/WMO301.xml", "WMO301", "IB216"),
    ("gemeente", "ijw/3.2/JW302.xml", "JW302", "StUF055"),
])  # fmt: skip
def test_a_duplicate_referentienummer_is_refused_with_an_fo01(
    db: Database, tmp_path: Path, role: str, sample_path: str, action: str, fo01_code: str
) -> None:
    config = _gemeente_config(tmp_path) if role == "gemeente" else _node_config(tmp_path)
    side = _env(db, tmp_path, config)
    env_bytes = envelope_of(sample_path, cross_ref=str(uuid.uuid4()))
    ref = unwrap(env_bytes).referentienummer
    first = side.receive(env_bytes, action=action)
    second = side.receive(env_bytes, action=action)
    assert side.relay.process_received() == 2
    assert side.status(first) == side.status(second) == "PROCESSED"
    rows = side.log("referentienummer", "status", "reason_code", "ebms_message_id")
    assert rows == [(ref, "delivered", None, first), (ref, "rejected", "IB216", second)]

    (fo01_row,) = side.outbound("Fo01")
    mid, cpa_id, from_party, from_role, to_party, to_role, service, _ = fo01_row
    assert cpa_id == CPA_ID and service == SERVICE
    me, peer = (GEMEENTE, NODE) if role == "gemeente" else (NODE, GEMEENTE)
    assert (from_party, to_party) == (me.key(), peer.key())
    assert (from_role, to_role) == (("Gemeente", "GGk") if role == "gemeente" else
                                    ("GGk", "Gemeente"))  # fmt: skip
    fo01 = parse_fo01(side.payload(mid))
    assert fo01.code == fo01_code
    assert fo01.stuurgegevens.cross_refnummer == ref
    assert (
        fo01.stuurgegevens.ontvanger.organisatie
        == unwrap(env_bytes).stuurgegevens.zender.organisatie
    )
    # The first message's files are untouched by the refused second one.
    folder = tmp_path / ("inbox" if role == "gemeente" else "providers-out")
    assert len([n for n in folder_files(folder) if n.endswith(".xml")]) == 1


def test_a_duplicate_that_slips_past_the_early_check_is_still_refused(
    node: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two nodes process two ebMS messages with the same envelope at the same moment: both
    # pass the friendly early check (reference_used), only the unique index sees it.
    env_bytes = envelope_of("iwmo/3.2/WMO301.xml")
    # Same sender and referentienummer, another envelope (another zender applicatie).
    changed = env_bytes.replace(b"<StUF:applicatie>Backoffice<", b"<StUF:applicatie>Other1<")
    assert changed != env_bytes
    first = node.receive(env_bytes, action="WMO301")
    second = node.receive(changed, action="WMO301")
    monkeypatch.setattr(receiving_module, "reference_used", lambda cur, org, ref: False)
    assert node.relay.process_received() == 2
    assert node.status(first) == "PROCESSED"
    assert node.status(second) == "PROCESSED"
    assert [r[:2] for r in node.log("status", "reason_code")] == [
        ("delivered", None),
        ("rejected", "IB216"),
    ]
    assert len(node.outbound("Fo01")) == 1
    files = folder_files(node.tmp / "providers-out")
    assert list(files.values()) == [env_bytes]  # the original, not the duplicate


# -- 3. Fo01 at the gemeente ------------------------------------------------------------


def test_an_fo01_fails_the_message_it_refuses(gemeente: Env) -> None:
    sent = gemeente.relay.send(sample("iwmo/3.2/WMO301.xml"))
    envelope = unwrap(gemeente.payload(sent.message_id))
    fo01 = fo01_for(envelope, "IB002", "not authorised for 0384", zender=NODE_SYSTEEM)
    mid = gemeente.receive(fo01, action="Fo01")
    assert gemeente.relay.process_received() == 1

    rows = gemeente.log("direction", "berichtcode", "status", "reason_code", "reason",
                        "ebms_message_id")  # fmt: skip
    assert rows[0][:4] == ("out", "Di01", "failed", "IB002")
    assert "not authorised for 0384" in rows[0][4]
    assert rows[0][5] == sent.message_id
    assert rows[1][:4] == ("in", "Fo01", "received", "IB002")
    assert rows[1][5] == mid
    assert ("FAILED", False) in gemeente.events(sent.message_id)
    assert gemeente.status(mid) == "PROCESSED"
    assert gemeente.events(mid) == [("RECEIVED", True)]


def test_an_fo01_about_an_unknown_reference_is_only_logged(gemeente: Env) -> None:
    sent = gemeente.relay.send(sample("iwmo/3.2/WMO301.xml"))
    stranger = Envelope.new(
        b"<x/>",
        functie="WMO301",
        zender=unwrap(gemeente.payload(sent.message_id)).stuurgegevens.zender,
        ontvanger=NODE_SYSTEEM,
        functie_versie="0003",
        functie_subversie="0002",
    )
    mid = gemeente.receive(fo01_for(stranger, "IB210", "unknown", zender=NODE_SYSTEEM),
                           action="Fo01")  # fmt: skip
    assert gemeente.relay.process_received() == 1
    rows = gemeente.log("direction", "berichtcode", "status", "cross_ref")
    assert rows == [
        ("out", "Di01", "sent", None),
        ("in", "Fo01", "received", stranger.referentienummer),
    ]
    assert [e for e, _ in gemeente.events(sent.message_id)] == []
    assert gemeente.status(mid) == "PROCESSED"
    assert gemeente.outbound("Fo01") == []


# -- 4. node: the provider's folder, read detection, ebMS outcomes ----------------------


def test_the_node_delivers_to_the_provider_and_sees_it_read(node: Env) -> None:
    env_bytes = envelope_of("iwmo/3.2/WMO301.xml")
    ref = unwrap(env_bytes).referentienummer
    mid = node.receive(env_bytes, action="WMO301")
    assert node.relay.process_received() == 1
    path = node.tmp / "providers-out" / AGB / f"0384-{ref}.xml"
    assert path.read_bytes() == env_bytes
    assert folder_files(node.tmp / "providers-out") == {f"{AGB}/0384-{ref}.xml": env_bytes}
    assert node.log("direction", "status", "gemeente", "counterpart", "file_name") == [
        ("in", "delivered", "0384", AGB, f"{AGB}/0384-{ref}.xml")
    ]
    assert node.status(mid) == "PROCESSED"

    assert node.relay.detect_read() == 0  # still there
    path.unlink()
    node.clock.advance(HOUR)
    assert node.relay.detect_read() == 1
    assert node.relay.detect_read() == 0
    (row,) = node.rows("SELECT status, read_at FROM stuf_message")
    assert row[0] == "read" and row[1] is not None


def test_sync_statuses_carries_ebms_outcomes_into_the_log(node: Env) -> None:
    delivered = node.relay.send(sample("iwmo/3.2/WMO315.xml"))
    failed = node.relay.send(sample("iwmo/3.2/WMO317.xml"))
    pending = node.relay.send(sample("ijw/3.2/JW305.xml"))
    for sent in (delivered, failed, pending):
        (row,) = [r for r in node.outbound() if r[0] == sent.message_id]
        assert row[1:] == (CPA_ID, NODE.key(), "GGk", GEMEENTE.key(), "Gemeente", SERVICE,
                           sent.functie)  # fmt: skip
    assert node.relay.sync_statuses() == 0
    node.set_ebms_status(delivered.message_id, "DELIVERED")
    node.set_ebms_status(failed.message_id, "DELIVERY_FAILED")
    assert node.relay.sync_statuses() == 2
    assert node.relay.sync_statuses() == 0
    assert node.log("functie", "status", "reason_code") == [
        ("WMO315", "delivered", None),
        ("WMO317", "failed", "DELIVERY_FAILED"),
        ("JW305", "sent", None),
    ]
    node.set_ebms_status(pending.message_id, "EXPIRED")
    assert node.relay.sync_statuses() == 1
    assert node.log("status", "reason_code")[2] == ("failed", "EXPIRED")


# -- 5. retention -----------------------------------------------------------------------


def test_purge_applies_read_retention_and_max_age(db: Database, tmp_path: Path) -> None:
    node = _env(db, tmp_path, _node_config(tmp_path, read_retention_hours=24, max_age_days=7))
    refs = []
    for _ in range(3):
        env_bytes = envelope_of("iwmo/3.2/WMO301.xml")
        refs.append(unwrap(env_bytes).referentienummer)
        node.receive(env_bytes, action="WMO301")
    assert node.relay.process_received() == 3
    sent = node.relay.send(sample("iwmo/3.2/WMO315.xml"))  # an outbound row: sent
    assert sent.log_id

    # The provider takes the first message an hour later, the second a day later.
    outbox = node.tmp / "providers-out" / AGB
    node.clock.advance(HOUR)
    (outbox / f"0384-{refs[0]}.xml").unlink()
    assert node.relay.detect_read() == 1
    node.clock.advance(DAY)
    (outbox / f"0384-{refs[1]}.xml").unlink()
    assert node.relay.detect_read() == 1

    # 24 h after the first was read: only that one goes.
    node.clock.now = node.clock.start + HOUR + 24 * HOUR
    counts = node.relay.purge()
    assert (counts.read, counts.expired) == (1, 0)
    assert sorted(r[0] for r in node.log("referentienummer")) == sorted(
        [refs[1], refs[2], sent.referentienummer]
    )
    # A second before the second one's retention ends, nothing more goes.
    node.clock.now = node.clock.start + HOUR + DAY + 24 * HOUR - timedelta(seconds=1)
    assert node.relay.purge().messages == 0
    node.clock.advance(timedelta(seconds=1))
    assert node.relay.purge().read == 1
    # Delivered-not-read and sent items stay until max_age, then everything goes.
    assert node.log("status") == [("delivered",), ("sent",)]
    node.clock.now = node.clock.start + 7 * DAY - timedelta(seconds=1)
    assert node.relay.purge().messages == 0
    node.clock.now = node.clock.start + 7 * DAY
    assert node.relay.purge().expired == 2
    assert node.log("id") == []


# -- 6. sending at the gemeente ---------------------------------------------------------


def test_the_gemeente_sends_a_bare_wmo301(db: Database, tmp_path: Path) -> None:
    gemeente = _env(db, tmp_path, _gemeente_config(tmp_path, actions=(("WMO301", "WMO301"),)))
    config = gemeente.relay.config
    data = sample("iwmo/3.2/WMO301.xml")
    sent = gemeente.relay.send(data, file_name="wmo301.xml")
    assert (sent.functie, sent.berichtcode) == ("WMO301", "Di01")
    assert gemeente.log("direction", "status", "functie", "berichtcode", "gemeente", "counterpart",
                        "referentienummer", "ebms_message_id", "cpa_id", "file_name") == [
        ("out", "sent", "WMO301", "Di01", "0384", AGB, sent.referentienummer, sent.message_id,
         CPA_ID, "wmo301.xml"),
    ]  # fmt: skip
    (row,) = gemeente.outbound()
    assert row == (
        sent.message_id, CPA_ID, GEMEENTE.key(), "Gemeente", NODE.key(), "GGk",
        config.service_for("iwmo"), config.action_for("WMO301"),
    )  # fmt: skip
    envelope = unwrap(gemeente.payload(sent.message_id))
    assert envelope.payload == data
    assert envelope.referentienummer == sent.referentienummer
    assert (envelope.stuurgegevens.zender.organisatie, envelope.stuurgegevens.ontvanger) == (
        "0384", Systeem(AGB, "GGk"))  # fmt: skip
    # A delivery task is waiting for it.
    assert gemeente.rows(
        "SELECT COUNT(*) FROM delivery_task t JOIN ebms_message m ON m.id = t.message_pk "
        "WHERE m.message_id = ?",
        sent.message_id,
    ) == [(1,)]


def test_a_retour_answers_the_received_heen_with_its_referentienummer(gemeente: Env) -> None:
    jw305 = envelope_of("ijw/3.2/JW305.xml")
    heen = unwrap(jw305)
    gemeente.receive(jw305, action="JW305")
    assert gemeente.relay.process_received() == 1
    jw306 = sample("ijw/3.2/JW306.xml")
    sent = gemeente.relay.send(jw306)
    assert (sent.functie, sent.berichtcode) == ("JW306", "Du01")
    retour = unwrap(gemeente.payload(sent.message_id))
    assert retour.stuurgegevens.cross_refnummer == heen.referentienummer
    assert retour.stuurgegevens.zender.organisatie == "0363"
    assert retour.stuurgegevens.ontvanger.organisatie == "65656055"
    assert retour.payload == jw306
    assert gemeente.log("direction", "functie", "berichtcode", "cross_ref", "status") == [
        ("in", "JW305", "Di01", None, "delivered"),
        ("out", "JW306", "Du01", heen.referentienummer, "sent"),
    ]


def test_a_retour_without_its_heen_is_refused_and_logged(gemeente: Env) -> None:
    with pytest.raises(Refused) as refused:
        gemeente.relay.send(sample("ijw/3.2/JW306.xml"))
    assert refused.value.code == "RIN001"
    assert gemeente.log("direction", "status", "reason_code") == [("out", "rejected", "RIN001")]
    assert gemeente.outbound() == []


def test_a_second_fo01_for_the_same_message_adds_no_second_failed_event(gemeente: Env) -> None:
    sent = gemeente.relay.send(sample("iwmo/3.2/WMO301.xml"))
    envelope = unwrap(gemeente.payload(sent.message_id))
    for code in ("IB002", "IB210"):
        gemeente.receive(fo01_for(envelope, code, "refused", zender=NODE_SYSTEEM), action="Fo01")
    assert gemeente.relay.process_received() == 2
    assert gemeente.log("status", "reason_code")[0] == ("failed", "IB002")
    assert [e for e, _ in gemeente.events(sent.message_id)] == ["FAILED"]


def test_two_senders_with_the_same_referentienummer_both_reach_the_inbox(gemeente: Env) -> None:
    first = envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4()))
    ref = unwrap(first).referentienummer
    second_env = unwrap(envelope_of("ijw/3.2/JW305.xml"))  # another aanbieder (65656055)
    second = wrap(
        replace(second_env, stuurgegevens=replace(second_env.stuurgegevens, referentienummer=ref))
    )
    gemeente.receive(first, action="JW302")
    gemeente.receive(second, action="JW305")
    assert gemeente.relay.process_received() == 2
    assert [r[0] for r in gemeente.log("status")] == ["delivered", "delivered"]
    payloads = {v for k, v in folder_files(gemeente.tmp / "inbox").items() if k.endswith(".xml")}
    assert payloads == {sample("ijw/3.2/JW302.xml"), sample("ijw/3.2/JW305.xml")}


def test_the_node_checks_each_municipality_against_its_own_releases(
    db: Database, tmp_path: Path
) -> None:
    # This municipality is still on release 2.3 (the GGk's per-exchange setting).
    node = _env(
        db,
        tmp_path,
        _node_config(
            tmp_path,
            gemeenten=(StufMunicipality(CPA_ID, ("0384",), ("2.3",)),),
            releases=("3.2",),
        ),
    )
    old = envelope_of("iwmo/2.3/WMO301.xml")
    new = envelope_of("iwmo/3.2/WMO301.xml")
    node.receive(old, action="WMO301")
    node.receive(new, action="WMO301")
    assert node.relay.process_received() == 2
    assert node.log("functie", "status", "reason_code") == [
        ("WMO301", "delivered", None),
        ("WMO301", "rejected", "GW004"),
    ]


def test_a_payload_without_its_xsd_passes_unless_the_schema_is_required(
    db: Database, tmp_path: Path
) -> None:
    # No iWmo 3.2 WMO302 XSD ships: the JW302 sample in iWmo dress stands for one.
    from gateway.commands.demo import _wmo302

    wmo302 = envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4()), data=_wmo302())
    lenient = _env(db, tmp_path, _node_config(tmp_path))
    strict = _env(db, tmp_path, _node_config(tmp_path, require_payload_schema=True))
    with pytest.raises(Refused) as refused:
        strict.relay.send(wmo302)
    assert refused.value.code == "GW005"
    assert lenient.relay.send(wmo302).functie == "WMO302"


# -- 6. failure isolation: one bad item fails alone, the pass goes on --------------------

OTHER_CPA = "other-cpa"


def _failed_alone(side: Env, mid: str, reason: str) -> None:
    """``mid`` ended FAILED with ``reason``: its event, its log row."""
    assert side.status(mid) == "FAILED"
    assert side.events(mid) == [("RECEIVED", True), ("FAILED", False)]
    (row,) = side.rows(
        "SELECT status, reason_code, reason FROM stuf_message WHERE ebms_message_id = ?", mid
    )
    assert row[:2] == ("rejected", "GW009")
    assert reason in row[2]
    (text,) = side.rows(
        "SELECT error_text FROM message_event WHERE message_id = ? AND event_type = 'FAILED'",
        mid,
    )
    assert reason in text[0]


def test_a_message_whose_file_cannot_be_written_fails_alone(
    gemeente: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = gemeente.receive(envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4())),
                           action="JW302")  # fmt: skip
    good = gemeente.receive(envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4())),
                            action="JW302")  # fmt: skip
    deliver = gemeente.relay.receiving._deliver_to_inbox

    def deliver_or_fail(folder: Path, name: str, env: Envelope, message: Any) -> None:
        if message.message_id == bad:
            raise PermissionError(13, "Permission denied", str(folder / name))
        deliver(folder, name, env, message)

    monkeypatch.setattr(gemeente.relay.receiving, "_deliver_to_inbox", deliver_or_fail)
    assert gemeente.relay.process_received() == 2
    _failed_alone(gemeente, bad, "A file could not be read or written (Permission denied).")
    assert gemeente.status(good) == "PROCESSED"
    # Nothing of the failed message stayed behind: no delivered row, no file name.
    assert [r for r in gemeente.log("ebms_message_id", "status") if r[0] == bad] == [
        (bad, "rejected")
    ]
    # It takes no place in later passes: the next message is relayed, one at a time.
    later = gemeente.receive(envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4())),
                             action="JW302")  # fmt: skip
    assert gemeente.relay.process_received(limit=1) == 1
    assert gemeente.status(later) == "PROCESSED"
    assert len([n for n in folder_files(gemeente.tmp / "inbox") if n.endswith(".xml")]) == 2


def test_a_message_whose_stored_payload_is_inconsistent_fails_alone(gemeente: Env) -> None:
    bad = gemeente.receive(envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4())),
                           action="JW302")  # fmt: skip
    good = gemeente.receive(envelope_of("ijw/3.2/JW302.xml", cross_ref=str(uuid.uuid4())),
                            action="JW302")  # fmt: skip
    # Its size says chunks follow, and there are none.
    with gemeente.db.transaction() as cur:
        cur.execute(
            "UPDATE ebms_attachment SET size = size + 1 WHERE message_pk = "
            "(SELECT id FROM ebms_message WHERE message_id = ? AND direction = 'in')",
            (bad,),
        )
    assert gemeente.relay.process_received(limit=1) == 1
    assert gemeente.relay.process_received(limit=1) == 1
    _failed_alone(gemeente, bad, "The stored message is inconsistent (LookupError).")
    assert gemeente.status(good) == "PROCESSED"


def test_a_message_over_a_deleted_cpa_fails_alone_and_the_other_cpa_goes_on(
    db: Database, tmp_path: Path, make_spec: SpecFactory
) -> None:
    CpaRegistry(db).insert(make_cpa(make_spec(profile="osb-rm", actions=ACTIONS, cpa_id=OTHER_CPA)))
    node = _env(db, tmp_path, _node_config(tmp_path, gemeenten=(
        StufMunicipality(CPA_ID, ("0384", "0363")),
        StufMunicipality(OTHER_CPA, ("0599",)),
    )))  # fmt: skip
    # Not authorised for 0384: its Fo01 must go back over the CPA that is deleted meanwhile.
    bad = node.receive(envelope_of("iwmo/3.2/WMO301.xml"), action="WMO301", cpa_id=OTHER_CPA)
    good = node.receive(envelope_of("iwmo/3.2/WMO301.xml"), action="WMO301")
    node.relay.registry.delete(OTHER_CPA, force=True)
    assert node.relay.process_received() == 2
    _failed_alone(node, bad, f"IB101: CPA {OTHER_CPA} is not imported")
    assert node.status(good) == "PROCESSED"
    assert len(folder_files(node.tmp / "providers-out")) == 1
    assert node.outbound("Fo01") == []
    # The other CPA's traffic keeps flowing: a refusal over it is answered, later.
    later = node.receive(envelope_of("iwmo/3.2/WMO301.xml").replace(b"0384", b"0599"),
                         action="WMO301")  # fmt: skip
    assert node.relay.process_received(limit=1) == 1
    assert node.status(later) == "PROCESSED"
    (fo01,) = node.outbound("Fo01")
    assert fo01[1] == CPA_ID


def test_an_outcome_that_cannot_be_applied_fails_its_row_alone(
    node: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = node.relay.send(sample("iwmo/3.2/WMO315.xml"))
    good = node.relay.send(sample("iwmo/3.2/WMO317.xml"))
    mark = upkeep_module.mark_by_ebms_id

    def mark_or_fail(cur: Any, ebms_id: str, *args: Any, **kw: Any) -> int:
        if ebms_id == bad.message_id:
            raise LookupError("inconsistent")
        return mark(cur, ebms_id, *args, **kw)

    monkeypatch.setattr(upkeep_module, "mark_by_ebms_id", mark_or_fail)
    node.set_ebms_status(bad.message_id, "DELIVERED")
    node.set_ebms_status(good.message_id, "DELIVERY_FAILED")
    assert node.relay.sync_statuses() == 2
    assert node.log("functie", "status", "reason_code") == [
        ("WMO315", "failed", "GW009"),
        ("WMO317", "failed", "DELIVERY_FAILED"),
    ]
    (reason,) = node.rows("SELECT reason FROM stuf_message WHERE functie = 'WMO315'")
    assert reason[0] == (
        "The ebMS outcome DELIVERED could not be applied: "
        "The stored message is inconsistent (LookupError)."
    )
    later = node.relay.send(sample("ijw/3.2/JW305.xml"))
    node.set_ebms_status(later.message_id, "DELIVERED")
    assert node.relay.sync_statuses() == 1
    assert node.log("status")[2] == ("delivered",)


def test_a_delivered_item_whose_file_cannot_be_looked_at_fails_alone(node: Env) -> None:
    outbox = node.tmp / "providers-out"

    def relay_one_and_take_it_away() -> None:
        node.receive(envelope_of("iwmo/3.2/WMO301.xml"), action="WMO301")
        assert node.relay.process_received() == 1
        for p in outbox.rglob("*.xml"):
            p.unlink()

    relay_one_and_take_it_away()
    # An inconsistent row: a file name the file system cannot even look up (too long).
    with node.db.transaction() as cur:
        ((bad_id,),) = cur.execute("SELECT id FROM stuf_message").fetchall()
        cur.execute("UPDATE stuf_message SET file_name = ? WHERE id = ?",
                    (f"{AGB}/{'x' * 300}.xml", bad_id))  # fmt: skip
    relay_one_and_take_it_away()
    assert node.relay.detect_read() == 1
    rows = node.log("id", "status", "reason_code", "reason")
    assert rows[0] == (
        bad_id,
        "failed",
        "GW009",
        "Whether its file was taken away cannot be checked: "
        "A file could not be read or written (File name too long).",
    )
    assert rows[1][1] == "read"
    # It is not looked at again; a later item is still seen read.
    relay_one_and_take_it_away()
    assert node.relay.detect_read() == 1
    assert node.log("status") == [("failed",), ("read",), ("read",)]


def test_a_failed_step_does_not_stop_the_rest_of_the_pass(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = _env(db, tmp_path, _node_config(tmp_path, provider_inbox=None))
    service = RelayService(object(), db, None, node.relay, node_id="t")
    sent = node.relay.send(sample("iwmo/3.2/WMO315.xml"))
    node.set_ebms_status(sent.message_id, "DELIVERED")

    def broken(limit: int = 50) -> int:
        raise StoreError("the select failed")

    monkeypatch.setattr(node.relay, "process_received", broken)
    with pytest.raises(StoreError):
        service._one_pass()
    assert node.log("status") == [("delivered",)]
