"""The receiving MSH on a real store: replies, persistence, duplicates, correlation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.ebms.envelope import Envelope, build_envelope, parse_envelope
from gateway.ebms.model import ErrorCode, MessageHeader, PartyId, Service
from gateway.ebms.signals import acknowledgment, message_error
from gateway.msh.inbound import InboundProcessor, InboundRequest
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    MessageRecord,
    find_message,
    insert_message,
    insert_task,
    task_for_message,
)
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import from_db, to_db, utcnow
from tests.conftest import GEMEENTE_OIN, NODE_OIN, load_cert
from tests.messages import render

XML = "text/xml; charset=UTF-8"


@pytest.fixture
def node(store: Database, cpa_xml, pki: Path):
    """The node's inbound processor with one CPA; returns a factory taking CPA overrides."""
    apply_migrations(store)
    registry = CpaRegistry(store)

    def make(**overrides) -> InboundProcessor:
        registry.insert(cpa_xml(**overrides), overwrite=True)
        return InboundProcessor(store, registry)

    return make


@pytest.fixture
def gemeente_cert(pki: Path):
    return load_cert(pki / "gemeente-voorbeeld" / "tls-client.pem")


def request(
    xml: bytes, cert, *, soap_action: str | None = '"ebXML"', attachments=()
) -> InboundRequest:
    return InboundRequest(
        soap_action=soap_action,
        content_type=XML,
        envelope=xml,
        attachments=tuple(attachments),
        peer_certificate=cert,
    )


def rows(db: Database, sql: str, *params):
    with db.transaction() as cur:
        return cur.execute(sql, params).fetchall()


def test_reliable_async_message_is_stored_and_acked_in_its_own_post(
    node, store, gemeente_cert
) -> None:
    processor = node(profile="osb-rm")
    xml = render("EbMSMessageMissingSyncReply")
    env, _ = parse_envelope(xml)
    reply = processor.handle(request(xml, gemeente_cert))
    assert reply.status == 204 and reply.body == b""
    assert reply.log["outcome"] == "received" and reply.log["reply"] == "Acknowledgment"
    with store.transaction() as cur:
        stored = find_message(cur, env.header.message_id, Direction.IN)
        assert stored is not None and stored.status == "RECEIVED"
        ((ack_pk, ack_env),) = cur.execute(
            "SELECT id, envelope FROM ebms_message WHERE direction = 'out'"
        ).fetchall()
        state, attempts, _ = task_for_message(cur, ack_pk)
        ((url,),) = cur.execute("SELECT url FROM delivery_task").fetchall()
    ack, _ = parse_envelope(bytes(ack_env))
    assert ack.acknowledgment.ref_to_message_id == env.header.message_id
    assert ack.header.from_ids == (PartyId(NODE_OIN, "urn:osb:oin"),)
    assert (state, attempts, url) == ("pending", 0, "https://localhost:18443/ebms")
    assert rows(store, "SELECT event_type FROM message_event") == [("RECEIVED",)]


def test_sync_ack_comes_back_in_the_response_and_duplicates_get_it_again(
    node, store, gemeente_cert
) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = render("EbMSMessage")
    first = processor.handle(request(xml, gemeente_cert))
    assert (first.status, first.content_type) == (200, XML)
    ack, _ = parse_envelope(first.body)
    assert ack.header.action == "Acknowledgment" and ack.acknowledgment is not None
    again = processor.handle(request(xml, gemeente_cert))
    assert again.status == 200 and again.body == first.body
    assert again.log["outcome"] == "duplicate"
    assert rows(store, "SELECT count(*) FROM ebms_message WHERE direction = 'in'") == [(1,)]
    assert rows(store, "SELECT count(*) FROM message_event") == [(1,)]


def test_async_duplicate_reopens_the_stored_ack(node, store, gemeente_cert) -> None:
    processor = node(profile="osb-rm")
    xml = render("EbMSMessageMissingSyncReply")
    processor.handle(request(xml, gemeente_cert))
    store_ack_done = "UPDATE delivery_task SET state = 'done'"
    with store.transaction() as cur:
        cur.execute(store_ack_done)
    again = processor.handle(request(xml, gemeente_cert))
    assert (again.status, again.log["outcome"]) == (204, "duplicate")
    assert rows(store, "SELECT state, attempts FROM delivery_task") == [("pending", 0)]
    assert rows(store, "SELECT count(*) FROM ebms_message WHERE direction = 'in'") == [(1,)]


def test_async_duplicate_brings_a_waiting_ack_forward(node, store, gemeente_cert) -> None:
    # The ack's first POST failed (the sender was down) and waits for its retry;
    # the sender's resend shows it is back, so the ack goes now, attempts kept.
    processor = node(profile="osb-rm")
    xml = render("EbMSMessageMissingSyncReply")
    processor.handle(request(xml, gemeente_cert))
    with store.transaction() as cur:
        cur.execute(
            "UPDATE delivery_task SET attempts = 1, next_attempt_at = ?",
            (to_db(utcnow() + timedelta(minutes=1)),),
        )
    again = processor.handle(request(xml, gemeente_cert))
    assert again.queued and again.log["outcome"] == "duplicate"
    ((state, attempts, due),) = rows(
        store, "SELECT state, attempts, next_attempt_at FROM delivery_task"
    )
    assert (state, attempts) == ("pending", 1)
    assert from_db(due) <= utcnow()


def test_reused_message_id_with_other_content_is_an_error(node, gemeente_cert) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = render("EbMSMessage")
    processor.handle(request(xml, gemeente_cert))
    other = processor.handle(
        request(xml.replace(b"WMO301</eb:Action>", b"WMO301</eb:Action><!-- x -->"), gemeente_cert)
    )
    error, _ = parse_envelope(other.body)
    assert error.error_list.errors[0].code is ErrorCode.INCONSISTENT
    assert "MessageId" in error.error_list.errors[0].location


@pytest.mark.parametrize("action", ["ebXML", '"ebXML"'])
def test_soap_action_quotes_are_optional(node, gemeente_cert, action: str) -> None:
    processor = node(profile="osb-be")
    xml = render("EbMSMessageMissingAckRequested").replace(b"<eb:DuplicateElimination/>", b"")
    xml = xml.replace(
        b'<eb:SyncReply eb:version="2.0" '
        b'soap:actor="http://schemas.xmlsoap.org/soap/actor/next" '
        b'soap:mustUnderstand="1"/>',
        b"",
    )
    assert processor.handle(request(xml, gemeente_cert, soap_action=action)).status == 204


@pytest.mark.parametrize("action", [None, "", "urn:other", "'ebXML'"])
def test_wrong_soap_action_is_a_client_fault(node, gemeente_cert, action) -> None:
    reply = node(profile="osb-rm").handle(
        request(render("EbMSMessage"), gemeente_cert, soap_action=action)
    )
    assert reply.status == 500 and b"<faultcode>SOAP:Client</faultcode>" in reply.body
    assert b"SOAPAction" in reply.body


def test_unknown_cpa_is_a_client_fault(node, gemeente_cert) -> None:
    reply = node(profile="osb-rm").handle(
        request(render("EbMSMessage", cpa_id="nope"), gemeente_cert)
    )
    assert reply.status == 500 and b"CPA nope not found!" in reply.body


def test_client_certificate_must_be_the_senders(node, store, pki: Path) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    for cert in (
        load_cert(pki / "ggk-rinis-test" / "tls-client.pem"),
        load_cert(pki / "negative" / "foreign-client.pem"),
        None,
    ):
        reply = processor.handle(request(render("EbMSMessage"), cert))
        assert reply.status == 500 and b"Invalid SSL Client Certificate!" in reply.body
    assert rows(store, "SELECT count(*) FROM ebms_message") == [(0,)]


def test_a_mapped_tls_client_certificate_is_accepted_beside_the_cpas(
    node, store, pki: Path, gemeente_cert
) -> None:
    """A partner rolling its TLS certificate over: the old and the new are both accepted."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from gateway.store.certmap import set_mapping

    processor = node(profile="osb-rm", sync_reply=True)
    new = load_cert(pki / "ggk-rinis-test" / "tls-client.pem")  # not the sender's in the CPA
    refused = processor.handle(request(render("EbMSMessage"), new))
    assert refused.status == 500 and b"Invalid SSL Client Certificate!" in refused.body
    with store.transaction() as cur:
        set_mapping(cur, gemeente_cert.public_bytes(Encoding.DER), new.public_bytes(Encoding.DER))
    for cert in (new, gemeente_cert):
        reply = processor.handle(request(render("EbMSMessage"), cert))
        assert reply.status == 200, reply.body
    assert rows(store, "SELECT count(*) FROM ebms_message WHERE direction = 'in'") == [(2,)]


@pytest.mark.parametrize("name", ["EbMSMessageMissingFromPartyId", "EbMSPingXXE"])
def test_unparsable_input_is_a_bare_500(node, gemeente_cert, name: str) -> None:
    reply = node(profile="osb-rm").handle(request(render(name), gemeente_cert))
    assert (reply.status, reply.body) == (500, b"")


def test_validation_failure_is_answered_and_stored_failed(node, store, gemeente_cert) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    reply = processor.handle(request(render("EbMSMessageMessageOrder"), gemeente_cert))
    assert reply.status == 200
    error, _ = parse_envelope(reply.body)
    assert error.header.action == "MessageError"
    assert error.error_list.errors[0].code is ErrorCode.NOT_SUPPORTED
    assert rows(store, "SELECT status FROM ebms_message WHERE direction = 'in'") == [("FAILED",)]
    assert rows(store, "SELECT event_type FROM message_event") == [("FAILED",)]


def test_ping_gets_pong_sync_and_async(node, store, gemeente_cert) -> None:
    sync = node(profile="osb-rm", sync_reply=True).handle(
        request(render("EbMSPing"), gemeente_cert)
    )
    assert sync.status == 200, sync
    pong, _ = parse_envelope(sync.body)
    assert (sync.status, pong.header.action) == (200, "Pong")
    ping = render("EbMSPing").replace(
        b'<eb:SyncReply eb:version="2.0" soap:actor="http://schemas.xmlsoap.org/soap/actor/next"'
        b' soap:mustUnderstand="1"/>',
        b"",
    )
    asynchronous = node(profile="osb-rm").handle(request(ping, gemeente_cert))
    assert asynchronous.status == 204
    assert rows(store, "SELECT count(*) FROM delivery_task") == [(1,)]


def test_status_request_reports_the_stored_status(node, gemeente_cert) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    received = render("EbMSMessage")
    env, _ = parse_envelope(received)
    processor.handle(request(received, gemeente_cert))
    known = processor.handle(
        request(render("EbMSMessageStatus", ref_to_message_id=env.header.message_id), gemeente_cert)
    )
    response, _ = parse_envelope(known.body)
    assert response.status_response.message_status.value == "Received"
    assert response.status_response.timestamp is not None
    unknown = processor.handle(request(render("EbMSMessageStatus"), gemeente_cert))
    response, _ = parse_envelope(unknown.body)
    assert response.status_response.message_status.value == "NotRecognized"


def _our_message(store: Database) -> Envelope:
    """A message the node sent to the municipality, stored CREATED with a task."""
    header = MessageHeader(
        from_ids=(PartyId(NODE_OIN, "urn:osb:oin"),),
        to_ids=(PartyId(GEMEENTE_OIN, "urn:osb:oin"),),
        cpa_id="test-cpa",
        conversation_id="conv-1",
        service=Service("GGK:iWmo:3.2", "urn:osb:services"),
        action="WMO302",
        message_id="ours-1@localhost",
        timestamp=datetime.now(UTC),
        from_role="GGk",
        to_role="Gemeente",
        duplicate_elimination=True,
    )
    env = Envelope(header=header)
    with store.transaction() as cur:
        pk = insert_message(
            cur,
            MessageRecord(
                message_id=header.message_id,
                direction=Direction.OUT,
                cpa_id="test-cpa",
                conversation_id="conv-1",
                from_party=f"urn:osb:oin:{NODE_OIN}",
                to_party=f"urn:osb:oin:{GEMEENTE_OIN}",
                service="urn:osb:services:GGK:iWmo:3.2",
                action="WMO302",
                sent_at=header.timestamp,
                content_type=XML,
                envelope=build_envelope(env),
                status="CREATED",
            ),
            (),
            now=header.timestamp,
        )
        insert_task(
            cur,
            pk,
            "https://localhost:18443/ebms",
            now=header.timestamp,
            max_attempts=9,
            retry_interval=timedelta(hours=3),
        )
    return env


def _signal_request(xml: bytes, cert) -> InboundRequest:
    # Signals from the municipality travel without SyncReply on an async CPA.
    return request(xml, cert)


def test_acknowledgment_marks_our_message_delivered(node, store, gemeente_cert) -> None:
    processor = node(profile="osb-rm")
    ours = _our_message(store)
    ack = acknowledgment(ours, now=datetime.now(UTC), host="gemeente")
    reply = processor.handle(_signal_request(build_envelope(ack), gemeente_cert))
    assert (reply.status, reply.log["outcome"]) == (204, "delivered")
    assert rows(
        store, "SELECT status FROM ebms_message WHERE message_id = ?", "ours-1@localhost"
    ) == [("DELIVERED",)]
    assert rows(store, "SELECT state FROM delivery_task") == [("done",)]
    assert rows(store, "SELECT event_type FROM message_event") == [("DELIVERED",)]
    second = acknowledgment(ours, now=datetime.now(UTC), host="gemeente")
    assert (
        processor.handle(_signal_request(build_envelope(second), gemeente_cert)).log["outcome"]
        == "ack-duplicate"
    )


def test_message_error_marks_our_message_failed(node, store, gemeente_cert) -> None:
    from gateway.ebms.model import EbmsError

    processor = node(profile="osb-rm")
    ours = _our_message(store)
    error = message_error(
        ours,
        [EbmsError(ErrorCode.SECURITY_FAILURE, "//Header/Signature", "Signature not found.")],
        now=datetime.now(UTC),
        host="gemeente",
    )
    reply = processor.handle(_signal_request(build_envelope(error), gemeente_cert))
    assert (reply.status, reply.log["outcome"]) == (204, "delivery-failed")
    assert rows(
        store, "SELECT status FROM ebms_message WHERE message_id = ?", "ours-1@localhost"
    ) == [("DELIVERY_FAILED",)]
    assert rows(store, "SELECT state FROM delivery_task") == [("failed",)]
    ((reason,),) = rows(
        store, "SELECT reason FROM status_history WHERE status = ?", "DELIVERY_FAILED"
    )
    assert "SecurityFailure" in reason


def test_only_referenced_payloads_are_kept_in_manifest_order(node, store, gemeente_cert) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = render("EbMSMessageWithAttachments", cids=("b@x", "a@x"))
    parts = [
        AttachmentRecord("a@x", "application/xml", b"<a/>"),
        AttachmentRecord("stray@x", "text/plain", b"not referenced"),
        AttachmentRecord("b@x", "application/pdf", b"%PDF-1.4"),
    ]
    reply = processor.handle(request(xml, gemeente_cert, attachments=parts))
    assert reply.status == 200
    assert rows(store, "SELECT content_id, content FROM ebms_attachment ORDER BY order_nr") == [
        ("b@x", b"%PDF-1.4"),
        ("a@x", b"<a/>"),
    ]
