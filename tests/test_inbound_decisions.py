"""The inbound MSH decisions without a store: one row per case of docs/msh.md's error matrix.

Facts are built as values (a parsed CPA, stored messages as dataclasses), the
decision is :func:`gateway.msh.receive.decide` (or :func:`screen` before it),
and the HTTP status is the edge's table (:mod:`gateway.http.replies`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cpa.model import Cpa
from cpa.parse import parse_cpa
from gateway.ebms.envelope import Envelope, build_envelope, parse_envelope
from gateway.ebms.model import (
    AckRequested,
    EbmsError,
    ErrorCode,
    ManifestReference,
    MessageHeader,
    PartyId,
    Service,
    Severity,
    SyncReply,
)
from gateway.ebms.signals import acknowledgment, message_error, pong
from gateway.ebms.xmldsig import (
    RSA_SHA256,
    SHA256,
    SignaturePolicy,
    SigningKey,
    cid_uri,
    digest_stream,
    sign_envelope,
)
from gateway.http.replies import http_reply, status_of
from gateway.msh.correlate import screen_sync_reply, sync_reply
from gateway.msh.effects import (
    AddEvent,
    Decision,
    FaultReply,
    NoContent,
    QueueReply,
    Refusal,
    ResendReply,
    SettleReferenced,
    SignalReply,
    StoreInbound,
    StoreReply,
)
from gateway.msh.facts import CertificateMap, Duplicate, InboundFacts, ReplyFacts
from gateway.msh.keys import MessageSecurity
from gateway.msh.receive import Received, Receiver, Request, decide, screen
from gateway.msh.records import XML
from gateway.store.messages import AttachmentRecord, Direction, StoredMessage
from gateway.trust import TrustStore
from tests.conftest import GEMEENTE_OIN, NODE_OIN, load_cert
from tests.messages import ERROR_MATRIX, render

NOW = datetime.now(UTC)


# -- the world the decisions see ---------------------------------------------------------


@dataclass
class World:
    """CPAs by name and the certificates of the example PKI."""

    cpas: dict[str, Cpa]
    gemeente_tls: x509.Certificate
    node_tls: x509.Certificate
    pki: Path


@pytest.fixture(scope="module")
def world(cpa_xml, pki: Path) -> World:
    def cpa(**spec: Any) -> Cpa:
        return parse_cpa(cpa_xml(**spec))

    return World(
        cpas={
            "rm-sync": cpa(profile="osb-rm", sync_reply=True),
            "rm-async": cpa(profile="osb-rm"),
            "be": cpa(profile="osb-be"),
            "rm-s": cpa(profile="osb-rm-s", sync_reply=True),
            "rm-e": cpa(profile="osb-rm-e", sync_reply=True),
            "rm-s-ack": cpa(profile="osb-rm-s", sync_reply=True, ack_signed=True),
        },
        gemeente_tls=load_cert(pki / "gemeente-voorbeeld" / "tls-client.pem"),
        node_tls=load_cert(pki / "ggk-rinis-test" / "tls-client.pem"),
        pki=pki,
    )


def without(xml: bytes, element: str) -> bytes:
    """``xml`` without the header block ``element`` (one line in the templates)."""
    return re.sub(rb"\s*<eb:" + element.encode() + rb"\b[^>]*/>", b"", xml)


def swap(xml: bytes, element: str, value: str) -> bytes:
    """``xml`` with the text of ``<eb:element>`` replaced."""
    pattern = rb"(<eb:" + element.encode() + rb">)[^<]*(</eb:" + element.encode() + rb">)"
    return re.sub(pattern, rb"\g<1>" + value.encode() + rb"\g<2>", xml, count=1)


@dataclass
class Given:
    """One case's input: the request, the facts as the reader would give them, our settings."""

    xml: bytes
    cpa: str | None = "rm-sync"
    peer: str = "gemeente"
    soap_action: str = '"ebXML"'
    attachments: tuple[AttachmentRecord, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)
    receiver: Receiver = field(default_factory=Receiver)


def decide_for(world: World, given: Given) -> Decision:
    peer = world.gemeente_tls if given.peer == "gemeente" else world.node_tls
    request = Request(given.soap_action, XML, given.xml, given.attachments, peer)
    screened = screen(request)
    if isinstance(screened, Decision):
        return screened
    assert isinstance(screened, Received)
    cpa = world.cpas[given.cpa] if given.cpa else None
    facts = InboundFacts(cpa, **given.facts)
    return decide(screened, request, facts, given.receiver, datetime.now(UTC))


@dataclass(frozen=True)
class Answer:
    """What a case must give: status, reply, errorCode, location, outcome, effects."""

    status: int
    reply: str | None
    code: str | None = None
    location: str | None = None
    outcome: str | None = None
    effects: tuple[type, ...] | None = None


def answer_of(decision: Decision) -> Answer:
    status = status_of(decision.reply)
    code = location = None
    reply: str | None = None
    match decision.reply:
        case SignalReply(body):
            env, _ = parse_envelope(body)
            reply = env.header.action
            if env.error_list is not None:
                (error,) = env.error_list.errors
                code, location = error.code.value, error.location
        case FaultReply(body):
            found = re.search(rb"<faultcode>([^<]+)</faultcode>", body)
            assert found is not None
            reply = f"Fault {found.group(1).decode()}"
    return Answer(
        status,
        reply,
        code,
        location,
        decision.log.get("outcome"),
        tuple(type(e) for e in decision.effects),
    )


def check(decision: Decision, expected: Answer) -> None:
    got = answer_of(decision)
    for name in ("status", "reply", "code", "location", "outcome", "effects"):
        want = getattr(expected, name)
        if want is not None:
            assert getattr(got, name) == want, (name, got)


REFUSED_SYNC = (StoreInbound, AddEvent, StoreReply)
REFUSED_UNKNOWN_SENDER = (StoreInbound, AddEvent, StoreReply)
ERROR = "MessageError"


def _long(what: str) -> str:
    return "x" * 300 + what


def _must_understand(xml: bytes) -> bytes:
    block = b'<x:Unknown xmlns:x="urn:example" soap:mustUnderstand="1"/>'
    return xml.replace(b"</soap:Header>", block + b"</soap:Header>")


#: docs/msh.md, "Error matrix": (row, given, answer).  Rows 13-29 and 33-34 are
#: ebms-core's own negative messages (tests/messages.py), below.
MATRIX: list[tuple[str, Callable[[], Given], Answer]] = [
    (
        "1 SOAPAction",
        lambda: Given(render("EbMSMessage"), soap_action='"other"'),
        Answer(500, "Fault SOAP:Client", outcome="bad-soapaction", effects=()),
    ),
    (
        "2 not an envelope",
        lambda: Given(b"<not-soap/>"),
        Answer(500, None, outcome="bad-envelope", effects=()),
    ),
    (
        "3 echoed identifier",
        lambda: Given(swap(render("EbMSMessage"), "CPAId", _long("cpa"))),
        Answer(500, "Fault SOAP:Client", outcome="bad-identifier", effects=()),
    ),
    (
        "4 mustUnderstand",
        lambda: Given(_must_understand(render("EbMSMessage"))),
        Answer(500, "Fault SOAP:MustUnderstand", outcome="must-understand", effects=()),
    ),
    (
        "5 no CPA",
        lambda: Given(render("EbMSMessage"), cpa=None),
        Answer(500, "Fault SOAP:Client", outcome="no-cpa", effects=()),
    ),
    (
        "6 TLS certificate not the sender's",
        lambda: Given(render("EbMSMessage"), peer="node"),
        Answer(500, "Fault SOAP:Client", outcome="client-certificate", effects=()),
    ),
    (
        "8 other identifier",
        lambda: Given(swap(render("EbMSMessage"), "Action", _long("action"))),
        Answer(200, ERROR, "OtherXml", "//Header/MessageHeader/Action", "refused", (StoreReply,)),
    ),
    (
        "9 MessageId reused",
        lambda: Given(render("EbMSMessage"), facts={"duplicate": Duplicate(identical=False)}),
        Answer(
            200,
            ERROR,
            "Inconsistent",
            "//Header/MessageHeader/MessageData/MessageId",
            "messageid-reused",
            (),
        ),
    ),
    (
        "12 duplicate without reply",
        lambda: Given(render("EbMSMessage"), facts={"duplicate": Duplicate(identical=True)}),
        Answer(204, None, outcome="duplicate", effects=()),
    ),
    (
        "18 unknown MSH action",
        lambda: Given(swap(render("EbMSPing"), "Action", "Pang")),
        Answer(200, ERROR, "ValueNotRecognized", "//Header/MessageHeader/Action", "refused"),
    ),
    (
        "30 StatusRequest without its element",
        lambda: Given(
            re.sub(rb"<eb:StatusRequest\b.*</eb:StatusRequest>", b"", _status_xml(), flags=re.S)
        ),
        Answer(200, ERROR, "Inconsistent", "//Body/StatusRequest", "refused", REFUSED_SYNC),
    ),
    (
        "31 To party of another gateway",
        lambda: Given(
            render("EbMSMessage"),
            receiver=Receiver(own_parties=frozenset({"urn:osb:oin:00000009999999999000"})),
        ),
        Answer(
            200,
            ERROR,
            "ValueNotRecognized",
            "//Header/MessageHeader/To/PartyId",
            "refused",
            REFUSED_SYNC,
        ),
    ),
    (
        "32 RefToMessageId unknown",
        lambda: Given(
            _with_ref(render("EbMSMessage"), "gone@localhost"), facts={"ref_known": False}
        ),
        Answer(
            200,
            ERROR,
            "ValueNotRecognized",
            "//Header/MessageHeader/MessageData/RefToMessageId",
            "refused",
            REFUSED_SYNC,
        ),
    ),
    (
        "32 RefToMessageId known",
        lambda: Given(_with_ref(render("EbMSMessage"), "ours@localhost")),
        Answer(200, "Acknowledgment", outcome="received"),
    ),
    (
        "35 payload not encrypted (-e)",
        lambda: Given(
            render("EbMSMessageWithAttachments", cids=("a@b",)),
            cpa="rm-e",
            attachments=(AttachmentRecord("a@b", "text/xml", b"<plain/>"),),
        ),
        Answer(200, ERROR, "SecurityFailure", "cid:a@b", "refused", REFUSED_SYNC),
    ),
    (
        "36 signature not verifiable (-s)",
        lambda: Given(render("EbMSMessage"), cpa="rm-s"),
        Answer(200, ERROR, "SecurityFailure", "//Header/Signature", "refused", REFUSED_SYNC),
    ),
    (
        "38 reliable, sync",
        lambda: Given(render("EbMSMessage")),
        Answer(
            200,
            "Acknowledgment",
            outcome="received",
            effects=(StoreInbound, AddEvent, StoreReply),
        ),
    ),
    (
        "38 reliable, async",
        lambda: Given(without(render("EbMSMessage"), "SyncReply"), cpa="rm-async"),
        Answer(
            204,
            None,
            outcome="received",
            effects=(StoreInbound, AddEvent, StoreReply, QueueReply),
        ),
    ),
    (
        "40 best effort",
        lambda: Given(
            without(
                without(without(render("EbMSMessage"), "SyncReply"), "AckRequested"),
                "DuplicateElimination",
            ),
            cpa="be",
        ),
        Answer(204, None, outcome="received", effects=(StoreInbound, AddEvent)),
    ),
    (
        "41 Ping, sync",
        lambda: Given(render("EbMSPing")),
        Answer(200, "Pong", outcome="ping", effects=(StoreInbound, StoreReply)),
    ),
    (
        "41 Ping, async",
        lambda: Given(without(render("EbMSPing"), "SyncReply"), cpa="rm-async"),
        Answer(204, None, outcome="ping", effects=(StoreInbound, StoreReply, QueueReply)),
    ),
]


def _with_ref(xml: bytes, ref: str) -> bytes:
    # ebMS 2.0 §3.1.6: MessageId, Timestamp, RefToMessageId, TimeToLive.
    return xml.replace(
        b"</eb:Timestamp>",
        b"</eb:Timestamp>\n<eb:RefToMessageId>" + ref.encode() + b"</eb:RefToMessageId>",
    )


def _status_xml() -> bytes:
    return render("EbMSMessageStatus", ref_to_message_id="asked@localhost")


@pytest.mark.parametrize(("row", "given", "expected"), MATRIX, ids=[r[0] for r in MATRIX])
def test_error_matrix(world: World, row: str, given, expected: Answer) -> None:
    check(decide_for(world, given()), expected)


@pytest.mark.parametrize(("name", "values", "code", "location"), ERROR_MATRIX)
def test_ebms_core_negative_messages(world: World, name, values, code, location) -> None:
    """Rows 13-29, 33 and 34: each refused with ebms-core's error, stored FAILED, answered."""
    cids = values.get("cids", ())
    present = tuple(AttachmentRecord(cid, "text/plain", b"x") for cid in cids if cid != "missing@x")
    decision = decide_for(world, Given(render(name, **values), attachments=present))
    check(decision, Answer(200, ERROR, code, location, "refused"))
    if location == "//Header/MessageHeader/From/PartyId":
        # The sender is not in the CPA: no channel back, the error only in the response.
        assert tuple(type(e) for e in decision.effects) == REFUSED_UNKNOWN_SENDER
    else:
        assert tuple(type(e) for e in decision.effects) == REFUSED_SYNC
    stored = decision.effects[0]
    assert isinstance(stored, StoreInbound) and stored.record.status == "FAILED"


def test_refused_message_on_an_async_channel_gets_its_error_in_its_own_post(world) -> None:
    xml = without(render("EbMSMessageMessageOrder"), "SyncReply")
    decision = decide_for(world, Given(xml, cpa="rm-async"))
    check(
        decision,
        Answer(
            204, None, outcome="refused", effects=(StoreInbound, AddEvent, StoreReply, QueueReply)
        ),
    )
    assert decision.queued
    reply = decision.effects[2]
    assert isinstance(reply, StoreReply) and reply.record.action == ERROR


# -- certificates --------------------------------------------------------------------------


def _trust(world: World, mode: str) -> MessageSecurity:
    trust = TrustStore(
        anchors=[load_cert(world.pki / "ca" / "root.pem")],
        intermediates=[load_cert(world.pki / "ca" / "intermediate.pem")],
        crl_mode=mode,  # type: ignore[arg-type]
    )
    return MessageSecurity(trust=trust)


def test_row_7_tls_certificate_the_trust_store_refuses(world: World) -> None:
    """With ``crl_mode="require"`` and no CRL, the client certificate is refused."""
    receiver = Receiver(security=_trust(world, "require"))
    decision = decide_for(world, Given(render("EbMSMessage"), receiver=receiver))
    check(
        decision,
        Answer(500, "Fault SOAP:Client", outcome="client-certificate-rejected", effects=()),
    )
    assert decision.log["reason"]
    assert [n.message for n in decision.notes] == ["refused TLS client certificate of %s: %s"]


def test_tls_certificate_the_trust_store_accepts(world: World) -> None:
    receiver = Receiver(security=_trust(world, "off"))
    check(
        decide_for(world, Given(render("EbMSMessage"), receiver=receiver)),
        Answer(200, "Acknowledgment", outcome="received"),
    )


def test_mapped_tls_certificate_is_accepted_beside_the_cpas(world: World) -> None:
    """docs/operations.md, "Certificate rotation": the mapping's destination is accepted."""
    cpa = world.cpas["rm-sync"]
    party = cpa.party_by_ids((PartyId(GEMEENTE_OIN, "urn:osb:oin"),))
    assert party is not None
    (named,) = party.tls_client_certificates()
    node_der = world.node_tls.public_bytes(Encoding.DER)
    mapped = CertificateMap({named: node_der})
    given = Given(render("EbMSMessage"), peer="node", facts={"certificates": mapped})
    check(decide_for(world, given), Answer(200, "Acknowledgment", outcome="received"))
    check(decide_for(world, replace(given, peer="gemeente")), Answer(200, "Acknowledgment"))


def test_certificate_check_can_be_switched_off(world: World) -> None:
    receiver = Receiver(check_client_certificate=False)
    given = Given(render("EbMSMessage"), peer="node", receiver=receiver)
    check(decide_for(world, given), Answer(200, "Acknowledgment", outcome="received"))


# -- duplicates ----------------------------------------------------------------------------


def _stored(action: str, body: bytes = b"<stored/>", **overrides: Any) -> StoredMessage:
    values: dict[str, Any] = {
        "pk": 7,
        "message_id": "reply@node",
        "direction": Direction.OUT,
        "cpa_id": "test-cpa",
        "conversation_id": "c",
        "ref_to_message_id": None,
        "from_party": f"urn:osb:oin:{NODE_OIN}",
        "from_role": None,
        "to_party": f"urn:osb:oin:{GEMEENTE_OIN}",
        "to_role": None,
        "service": "urn:oasis:names:tc:ebxml-msg:service",
        "action": action,
        "sent_at": NOW,
        "time_to_live": None,
        "persist_until": None,
        "status": None,
        "status_at": None,
        "content_type": XML,
        "envelope": body,
        "fingerprint": "f",
        "created_at": NOW,
    }
    values.update(overrides)
    return StoredMessage(**values)


def test_row_10_duplicate_on_a_sync_channel_gets_the_stored_ack_again(world) -> None:
    ack = build_envelope(pong(parse_envelope(render("EbMSPing"))[0], now=NOW, host="h"))
    dup = Duplicate(identical=True, reply=_stored("Acknowledgment", ack))
    decision = decide_for(world, Given(render("EbMSMessage"), facts={"duplicate": dup}))
    assert decision.reply == SignalReply(ack)
    check(decision, Answer(200, "Pong", outcome="duplicate", effects=()))
    assert decision.log["reply"] == "Acknowledgment"


def test_row_11_duplicate_on_an_async_channel_resends_the_stored_ack(world) -> None:
    dup = Duplicate(identical=True, reply=_stored("Acknowledgment"))
    xml = without(render("EbMSMessage"), "SyncReply")
    decision = decide_for(world, Given(xml, cpa="rm-async", facts={"duplicate": dup}))
    assert decision.reply == NoContent() and decision.queued
    assert decision.effects == (ResendReply(7, 3),)
    assert decision.log["outcome"] == "duplicate"


# -- StatusRequest -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "status"),
    [
        (None, "NotRecognized"),
        ({"status": "RECEIVED", "status_at": NOW}, "Received"),
        ({"status": "PROCESSED", "status_at": NOW}, "Processed"),
        ({"status": "FAILED"}, "NotRecognized"),
        ({"status": "RECEIVED", "cpa_id": "other-cpa"}, "UnAuthorized"),
        ({"status": None, "service": "urn:oasis:names:tc:ebxml-msg:service"}, "NotRecognized"),
    ],
)
def test_row_42_status_request(world: World, asked, status: str) -> None:
    stored = (
        None
        if asked is None
        else _stored("WMO301", direction=Direction.IN, service="urn:osb:services:GGK:iWmo:3.2")
    )
    if stored is not None:
        stored = replace(stored, **asked)
    decision = decide_for(world, Given(_status_xml(), facts={"asked": stored}))
    check(decision, Answer(200, "StatusResponse", outcome="status-request"))
    assert decision.log["reply"] == status
    assert isinstance(decision.reply, SignalReply)
    env, _ = parse_envelope(decision.reply.body)
    assert env.status_response is not None
    assert env.status_response.message_status.value == status


# -- acknowledgments and errors for our messages ---------------------------------------------


def _ours_env() -> Envelope:
    return Envelope(
        header=MessageHeader(
            from_ids=(PartyId(NODE_OIN, "urn:osb:oin"),),
            to_ids=(PartyId(GEMEENTE_OIN, "urn:osb:oin"),),
            cpa_id="test-cpa",
            conversation_id="conv-1",
            service=Service("GGK:iWmo:3.2", "urn:osb:services"),
            action="WMO302",
            message_id="ours-1@localhost",
            timestamp=NOW,
            from_role="GGk",
            to_role="Gemeente",
            duplicate_elimination=True,
        )
    )


def _ours(status: str = "CREATED", **overrides: Any) -> StoredMessage:
    return _stored(
        "WMO302",
        build_envelope(_ours_env()),
        message_id="ours-1@localhost",
        service="urn:osb:services:GGK:iWmo:3.2",
        status=status,
        **overrides,
    )


def _ack_xml() -> bytes:
    return build_envelope(acknowledgment(_ours_env(), now=NOW, host="gemeente"))


def _error_xml(severity: Severity = Severity.ERROR) -> bytes:
    error = EbmsError(ErrorCode.SECURITY_FAILURE, "//Header/Signature", "Signature not found.")
    env = message_error(_ours_env(), [replace(error, severity=severity)], now=NOW, host="gemeente")
    return build_envelope(env)


@pytest.mark.parametrize(
    ("xml", "signal", "outcome", "effects"),
    [
        (_ack_xml, ReplyFacts(ours=_ours()), "delivered", (StoreInbound, SettleReferenced)),
        (_ack_xml, ReplyFacts(ours=_ours("DELIVERED")), "ack-duplicate", (StoreInbound,)),
        (_ack_xml, ReplyFacts(), "ack-unknown", (StoreInbound,)),
        (
            _ack_xml,
            ReplyFacts(ours=_ours(to_party="urn:osb:oin:00000009999999999000")),
            "ack-unknown",
            (StoreInbound,),
        ),
        (_ack_xml, ReplyFacts(ours=_ours(), ack_refusal="bad"), "ack-refused", (StoreInbound,)),
        (_error_xml, ReplyFacts(ours=_ours()), "delivery-failed", (StoreInbound, SettleReferenced)),
        (_error_xml, ReplyFacts(ours=_ours("DELIVERY_FAILED")), "error-duplicate", (StoreInbound,)),
        (_error_xml, ReplyFacts(ours=_ours(cpa_id="other")), "error-unknown", (StoreInbound,)),
        (
            lambda: _error_xml(Severity.WARNING),
            ReplyFacts(ours=_ours()),
            "warning",
            (StoreInbound,),
        ),
    ],
)
def test_rows_43_44_signals_about_our_messages(world, xml, signal, outcome, effects) -> None:
    xml_bytes = xml()
    decision = decide_for(world, Given(xml_bytes, cpa="rm-async", facts={"signal": signal}))
    check(decision, Answer(204, None, outcome=outcome, effects=effects))
    for effect in decision.effects:
        if isinstance(effect, SettleReferenced):
            assert effect.pk == 7 and effect.settled == outcome
            assert effect.already in ("ack-duplicate", "error-duplicate")


def test_row_37_no_error_about_an_acknowledgment(world: World) -> None:
    """An ack that fails a check (here: the CPA not in force yet) is refused bare, nothing kept."""
    old = build_envelope(
        acknowledgment(_ours_env(), now=datetime(2001, 1, 1, tzinfo=UTC), host="gemeente")
    )
    decision = decide_for(world, Given(old, cpa="rm-async"))
    assert decision.reply == Refusal()
    check(decision, Answer(500, None, outcome="refused", effects=()))
    assert decision.notes[0].message == "refused signal %s: %s"


def test_signed_ack_check_refuses_without_security(world: World) -> None:
    """Our message asked for a signed ack; without [security] the ack may not settle it."""
    sent = _ours_env()
    signed = replace(sent, ack_requested=AckRequested(signed=True))
    ours = _ours(envelope=build_envelope(signed))
    decision = decide_for(
        world, Given(_ack_xml(), cpa="rm-async", facts={"signal": ReplyFacts(ours)})
    )
    check(decision, Answer(204, None, outcome="ack-refused", effects=(StoreInbound,)))


# -- synchronous replies to our POSTs ------------------------------------------------------


def test_sync_reply_screening() -> None:
    assert screen_sync_reply(b"<nope/>").outcome == "bad-reply"  # type: ignore[union-attr]
    business = render("EbMSMessage")
    assert screen_sync_reply(business).outcome == "bad-reply"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("facts", "outcome", "effects"),
    [
        (ReplyFacts(duplicate=True), "reply-duplicate", ()),
        (ReplyFacts(ours=_ours()), "delivered", (StoreInbound, SettleReferenced)),
        (ReplyFacts(), "ack-unknown", (StoreInbound,)),
    ],
)
def test_sync_acknowledgment(facts: ReplyFacts, outcome: str, effects) -> None:
    body = _ack_xml()
    screened = screen_sync_reply(body)
    settled = sync_reply(screened, facts, body, XML)  # type: ignore[arg-type]
    assert settled.outcome == outcome
    assert tuple(type(e) for e in settled.effects) == effects


def test_sync_pong_is_kept() -> None:
    body = build_envelope(pong(parse_envelope(render("EbMSPing"))[0], now=NOW, host="h"))
    settled = sync_reply(screen_sync_reply(body), ReplyFacts(), body, XML)  # type: ignore[arg-type]
    assert settled.outcome == "pong" and tuple(type(e) for e in settled.effects) == (StoreInbound,)


# -- the HTTP edge's table -----------------------------------------------------------------


def test_http_statuses_of_replies() -> None:
    assert [
        status_of(r) for r in (SignalReply(b"x"), NoContent(), FaultReply(b"f"), Refusal())
    ] == [
        200,
        204,
        500,
        500,
    ]
    answered = http_reply(Decision(SignalReply(b"<x/>"), log={"outcome": "o"}))
    assert (answered.status, answered.body, answered.content_type) == (200, b"<x/>", XML)
    empty = http_reply(Decision(Refusal(), log={"outcome": "bad-envelope"}))
    assert (empty.status, empty.body, empty.content_type) == (500, b"", None)
    queued = http_reply(Decision(NoContent(), queued=True))
    assert (queued.status, queued.queued) == (204, True)


def test_decisions_take_the_clock_they_are_given(world: World) -> None:
    """TimeToLive is judged at ``now``: the same message, an hour later, has expired."""
    xml = render("EbMSMessage", time_to_live=timedelta(minutes=30))
    request = Request('"ebXML"', XML, xml, (), world.gemeente_tls)
    screened = screen(request)
    assert isinstance(screened, Received)
    facts = InboundFacts(world.cpas["rm-sync"])
    on_time = decide(screened, request, facts, Receiver(), NOW)
    late = decide(screened, request, facts, Receiver(), NOW + timedelta(hours=1))
    assert on_time.log["outcome"] == "received"
    check(late, Answer(200, ERROR, "TimeToLiveExpired", outcome="refused"))


def test_the_decision_layer_imports_no_twisted() -> None:
    """gateway/msh's decisions, the trust checks and the edge's status table stay pure."""
    code = (
        "import sys\n"
        "import gateway.msh.receive, gateway.msh.correlate, gateway.msh.apply\n"
        "import gateway.msh.read, gateway.msh.inbound, gateway.http.replies, gateway.trust\n"
        "import gateway.crl\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'treq')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


# -- signed messages (osb-rm-s) ----------------------------------------------------------


def _signed_business(world: World) -> tuple[bytes, AttachmentRecord]:
    """A WMO301 from the municipality, signed with its signing key, asking a signed ack."""
    base = world.pki / "gemeente-voorbeeld"
    key = SigningKey.from_pem(
        (base / "signing.key").read_bytes(), (base / "signing.pem").read_bytes()
    )
    header = replace(
        _ours_env().header,
        from_ids=(PartyId(GEMEENTE_OIN, "urn:osb:oin"),),
        to_ids=(PartyId(NODE_OIN, "urn:osb:oin"),),
        action="WMO301",
        message_id="signed-1@gemeente.example",
        timestamp=datetime.now(UTC),
        from_role="Gemeente",
        to_role="GGk",
    )
    part = AttachmentRecord("payload-1@gemeente.example", "application/xml", b"<wmo301/>")
    envelope = build_envelope(
        Envelope(
            header=header,
            ack_requested=AckRequested(signed=True),
            sync_reply=SyncReply(),
            manifest=(ManifestReference(cid_uri(part.content_id)),),
        )
    )
    digest = digest_stream(SHA256, b"<wmo301/>")
    policy = SignaturePolicy(RSA_SHA256, SHA256)
    return sign_envelope(envelope, [(part.content_id, digest)], key, policy), part


def _node_security(world: World, *, signing: bool) -> MessageSecurity:
    trust = _trust(world, "off").trust
    if not signing:
        return MessageSecurity(trust=trust)
    base = world.pki / "ggk-rinis-test"
    key = SigningKey.from_pem(
        (base / "signing.key").read_bytes(), (base / "signing.pem").read_bytes()
    )
    return MessageSecurity(signing_key=key, trust=trust)


def test_row_38_signed_message_gets_a_signed_acknowledgment(world: World) -> None:
    xml, part = _signed_business(world)
    receiver = Receiver(security=_node_security(world, signing=True))
    decision = decide_for(world, Given(xml, cpa="rm-s-ack", attachments=(part,), receiver=receiver))
    check(decision, Answer(200, "Acknowledgment", outcome="received", effects=REFUSED_SYNC))
    assert isinstance(decision.reply, SignalReply) and b"SignatureValue" in decision.reply.body


def test_row_39_acknowledgment_that_cannot_be_signed(world: World) -> None:
    """The message verifies and is kept; without our signing key the ack is not sent."""
    xml, part = _signed_business(world)
    receiver = Receiver(security=_node_security(world, signing=False))
    decision = decide_for(world, Given(xml, cpa="rm-s-ack", attachments=(part,), receiver=receiver))
    check(decision, Answer(204, None, outcome="received", effects=(StoreInbound, AddEvent)))
    assert decision.log["reply"] == "none"
    assert [n.message for n in decision.notes] == ["cannot sign the acknowledgment of %s: %s"]


def test_row_36_mapped_signing_certificate_and_a_tampered_message(world: World) -> None:
    """The CPA's signing certificate mapped to another one: the CPA's own still verifies.

    docs/operations.md, "Certificate rotation"; a header changed after signing does not.
    """
    xml, part = _signed_business(world)
    party = world.cpas["rm-s-ack"].party_by_ids((PartyId(GEMEENTE_OIN, "urn:osb:oin"),))
    assert party is not None
    other = (world.pki / "ggk-rinis-test" / "signing.pem").read_bytes()
    other_der = x509.load_pem_x509_certificate(other).public_bytes(Encoding.DER)
    mapped = CertificateMap({bytes(c.der): other_der for c in party.certificates.values() if c.der})
    receiver = Receiver(security=_node_security(world, signing=True))
    given = Given(
        xml, cpa="rm-s-ack", attachments=(part,), receiver=receiver, facts={"certificates": mapped}
    )
    decision = decide_for(world, given)
    # During a rollover the CPA's own certificate is still accepted beside the mapped one.
    check(decision, Answer(200, "Acknowledgment", outcome="received"))
    tampered = xml.replace(b"conv-1", b"conv-2")  # the ConversationId, after signing
    assert tampered != xml
    check(
        decide_for(world, replace(given, xml=tampered)),
        Answer(200, ERROR, "SecurityFailure", outcome="refused", effects=REFUSED_SYNC),
    )
