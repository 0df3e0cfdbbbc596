"""Outbound messages: built from the CPA, stored with a task, accepted by the receiving MSH."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cpa.model import Service
from gateway.ebms.envelope import parse_envelope
from gateway.msh.inbound import InboundProcessor, InboundRequest
from gateway.msh.outbound import Payload, SendError, parse_party, send_message, send_ping
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.messages import Direction, find_message, load_attachments
from gateway.store.migrate import apply_migrations
from tests.conftest import GEMEENTE_OIN, NODE_OIN, load_cert

SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")
GEMEENTE = parse_party(f"urn:osb:oin:{GEMEENTE_OIN}")
NODE = parse_party(NODE_OIN)


def setup(store: Database, xml: bytes) -> CpaRegistry:
    apply_migrations(store)
    registry = CpaRegistry(store)
    registry.insert(xml, overwrite=True)
    return registry


def wire(db: Database, message_id: str) -> tuple[bytes, tuple]:
    with db.transaction() as cur:
        stored = find_message(cur, message_id, Direction.OUT)
        assert stored is not None
        return stored.envelope, tuple(load_attachments(cur, stored.pk))


def test_reliable_message_round_trip(store: Database, cpa_xml, pki: Path) -> None:
    registry = setup(store, cpa_xml(profile="osb-rm"))
    queued = send_message(
        store,
        registry,
        cpa_id="test-cpa",
        from_party=GEMEENTE,
        from_role="Gemeente",
        to_party=NODE,
        to_role="GGk",
        service=SERVICE,
        action="WMO301",
        payloads=[
            Payload(b"<WMO301/>", "application/xml", "wmo301.xml"),
            Payload(bytes(range(256)), "application/octet-stream"),
        ],
    )
    assert queued.url == "https://localhost:18444/ebms" and queued.profile == "osb-rm"
    envelope, attachments = wire(store, queued.message_id)
    env, _ = parse_envelope(envelope)
    h = env.header
    assert h.duplicate_elimination and env.ack_requested is not None and env.sync_reply is None
    assert env.ack_requested.signed is False
    assert h.time_to_live - h.timestamp == timedelta(hours=3) * 9
    assert [r.href for r in env.manifest] == [f"cid:{a.content_id}" for a in attachments]
    with store.transaction() as cur:
        (task,) = cur.execute(
            "SELECT max_attempts, retry_interval, state, expires_at FROM delivery_task"
        ).fetchall()
    assert task[:3] == (9, 3 * 3600.0, "pending")

    # The node's MSH accepts exactly what the municipality's MSH built.
    node_db = store  # one store is enough: inbound rows have their own direction
    processor = InboundProcessor(node_db, registry)
    reply = processor.handle(
        InboundRequest(
            soap_action='"ebXML"',
            content_type="multipart/related",
            envelope=envelope,
            attachments=attachments,
            peer_certificate=load_cert(pki / "gemeente-voorbeeld" / "tls-client.pem"),
        )
    )
    assert (reply.status, reply.log["outcome"]) == (204, "received")


def test_sync_channel_sets_sync_reply(store: Database, cpa_xml) -> None:
    registry = setup(store, cpa_xml(profile="osb-rm", sync_reply=True))
    queued = send_message(
        store,
        registry,
        cpa_id="test-cpa",
        from_party=NODE,
        from_role="GGk",
        to_party=GEMEENTE,
        to_role="Gemeente",
        service=SERVICE,
        action="WMO302",
    )
    env, _ = parse_envelope(wire(store, queued.message_id)[0])
    assert env.sync_reply is not None and env.manifest is None


def test_best_effort_message_has_no_reliability_headers(store: Database, cpa_xml) -> None:
    registry = setup(store, cpa_xml(profile="osb-be"))
    queued = send_message(
        store,
        registry,
        cpa_id="test-cpa",
        from_party=GEMEENTE,
        from_role="Gemeente",
        to_party=NODE,
        to_role="GGk",
        service=SERVICE,
        action="WMO301",
        conversation_id="conv-9",
    )
    env, _ = parse_envelope(wire(store, queued.message_id)[0])
    assert env.ack_requested is None and not env.header.duplicate_elimination
    assert env.header.time_to_live is None and env.header.conversation_id == "conv-9"
    with store.transaction() as cur:
        assert cur.execute("SELECT max_attempts FROM delivery_task").fetchall() == [(1,)]


@pytest.mark.parametrize(
    ("keys", "text"),
    [
        ({"action": "WMO302"}, "//Header/MessageHeader/Action"),
        ({"from_role": "GGk"}, "//Header/MessageHeader/Action"),
        ({"to_party": parse_party("00000001999999999000")}, "To/PartyId"),
    ],
)
def test_sends_the_cpa_does_not_allow_are_refused(store: Database, cpa_xml, keys, text) -> None:
    registry = setup(store, cpa_xml(profile="osb-rm"))
    args = dict(
        cpa_id="test-cpa",
        from_party=GEMEENTE,
        from_role="Gemeente",
        to_party=NODE,
        to_role="GGk",
        service=SERVICE,
        action="WMO301",
    )
    args.update(keys)
    with pytest.raises(SendError, match=text.replace("/", ".")):
        send_message(store, registry, **args)
    with store.transaction() as cur:
        assert cur.execute("SELECT count(*) FROM ebms_message").fetchall() == [(0,)]


def test_cpa_out_of_force_refuses(store: Database, cpa_xml) -> None:
    registry = setup(store, cpa_xml(profile="osb-rm"))
    with pytest.raises(SendError, match="not in force"):
        send_message(
            store,
            registry,
            cpa_id="test-cpa",
            from_party=GEMEENTE,
            from_role="Gemeente",
            to_party=NODE,
            to_role="GGk",
            service=SERVICE,
            action="WMO301",
            clock=lambda: datetime(2001, 1, 1, tzinfo=UTC),
        )


def test_signed_profile_without_a_signing_key_is_refused(store: Database, cpa_xml) -> None:
    registry = setup(store, cpa_xml(profile="osb-rm-s"))
    with pytest.raises(SendError, match="osb-rm-s needs a \\[security\\] configuration"):
        send_message(
            store,
            registry,
            cpa_id="test-cpa",
            from_party=GEMEENTE,
            from_role="Gemeente",
            to_party=NODE,
            to_role="GGk",
            service=SERVICE,
            action="WMO301",
        )


def test_ping_is_queued_once_without_retries(store: Database, cpa_xml) -> None:
    registry = setup(store, cpa_xml(profile="osb-rm"))
    queued = send_ping(store, registry, cpa_id="test-cpa", from_party=GEMEENTE, to_party=NODE)
    env, _ = parse_envelope(wire(store, queued.message_id)[0])
    assert env.header.action == "Ping" and env.header.from_role is None
    with store.transaction() as cur:
        assert cur.execute("SELECT max_attempts, url FROM delivery_task").fetchall() == [
            (1, "https://localhost:18444/ebms")
        ]


def test_parse_party() -> None:
    assert parse_party("urn:osb:oin:00000001001234567000").type == "urn:osb:oin"
    assert parse_party("00000001001234567000").key() == "urn:osb:oin:00000001001234567000"
