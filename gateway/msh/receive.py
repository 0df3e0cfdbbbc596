"""The inbound decision: one received request and its facts in, a :class:`Decision` out.

Pure (no store, no network, no Twisted): :mod:`gateway.msh.inbound` reads the
facts (:mod:`gateway.msh.read`), calls :func:`decide` and applies the result
(:mod:`gateway.msh.apply`) in one transaction.  The steps follow docs/msh.md
("Receiving") and ebMS 2.0 §6.4 in ebms-core's order; the answer to every
refusal is the row of the error matrix (docs/msh.md, "Error matrix"):

1. :func:`screen`, before the store: SOAPAction (ebMS 2.0 §2.1.3), the
   envelope (schema, ebMS 2.0 §2.1; bare refusal), identifiers a MessageError
   would have to repeat (ebMS 2.0 §4.2.4.2; SOAP Fault), unknown
   ``mustUnderstand`` headers (SOAP 1.1 §4.2.3; SOAP Fault).
2. :func:`decide`: the CPA (SOAP Fault: no channel for an ebMS error), the TLS
   client certificate against the CPA and the trust store (Digikoppeling
   Koppelvlakstandaard ebMS2, two-way TLS; SOAP Fault), then duplicates (ebMS
   2.0 §6.4.1) and the §6.4 checks, whose failures are MessageErrors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cpa.model import Cpa
from cpa.resolve import Route
from gateway.ebms.checks import (
    ECHOED_LOCATIONS,
    CheckFailed,
    check_manifest,
    check_message,
    clip,
    identifier_problem,
)
from gateway.ebms.envelope import Envelope, EnvelopeError, build_envelope, parse_envelope
from gateway.ebms.faults import CLIENT, MUST_UNDERSTAND, soap_fault
from gateway.ebms.model import EbmsError, ErrorCode, SignalAction
from gateway.ebms.signals import acknowledgment, message_error
from gateway.ebms.xmldsig import SignatureError, signature_references
from gateway.msh.ack_check import AckTrust, check_signed_ack
from gateway.msh.correlate import settle_signal
from gateway.msh.effects import (
    AddEvent,
    Decision,
    FaultReply,
    LogLine,
    New,
    NoContent,
    Refusal,
    ResendReply,
    SignalReply,
    StoreInbound,
)
from gateway.msh.facts import CertificateMap, Duplicate, InboundFacts
from gateway.msh.keys import MessageSecurity, SecurityUnavailable
from gateway.msh.records import host, inbound_record, parties
from gateway.msh.replying import SIGNAL_ATTEMPTS, answer, ping, sender_route, signal_route, status
from gateway.msh.security import open_inbound, sign_acknowledgment
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    EventType,
    InboundStatus,
    StoredMessage,
)
from gateway.trust import CertificateRejected

__all__ = ["Received", "Receiver", "Request", "decide", "persist_until", "screen"]


@dataclass(frozen=True)
class Request:
    """One received HTTP request, as the edge saw it."""

    soap_action: str | None
    content_type: str
    envelope: bytes
    attachments: tuple[AttachmentRecord, ...] = ()
    peer_certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class Receiver:
    """How this gateway receives: its settings, never its store."""

    check_client_certificate: bool = True
    own_parties: frozenset[str] = frozenset()
    """Party ids (``PartyId.key()``) this gateway answers for; empty: every party of a CPA."""
    security: MessageSecurity | None = None


@dataclass(frozen=True)
class Received:
    """An envelope that passed :func:`screen`, with its log fields."""

    env: Envelope
    fields: Mapping[str, str] = field(default_factory=dict)
    bad_identifier: EbmsError | None = None
    notes: tuple[LogLine, ...] = ()
    """Lines already due (an identifier refused), logged before the decision's own."""


def _fault(
    message: str, log: Mapping[str, str], code: str = CLIENT, notes: tuple[LogLine, ...] = ()
) -> Decision:
    return Decision(FaultReply(soap_fault(code, message)), log=log, notes=notes)


def persist_until(timestamp: datetime, route: Route) -> datetime:
    """How long a received message id is kept for duplicate elimination (ebMS 2.0 §6.4.1).

    The sender's Timestamp plus its PersistDuration, or plus its whole
    retry schedule when that is longer.  A Timestamp near the end of what a
    datetime holds (``9999-12-31T23:59:59Z`` is valid under a CPA that ends
    then) is kept until the end of that range rather than overflowing.
    """
    try:
        window = max(
            route.persist_duration or timedelta(0),
            (route.retry_interval or timedelta(0)) * (route.retries + 1),
        )
        return timestamp + window
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


# -- step 1: before the store ------------------------------------------------------------


def screen(request: Request) -> Received | Decision:
    """The envelope to decide on, or the refusal that needs no store."""
    action = (request.soap_action or "").strip()
    if action.startswith('"') and action.endswith('"') and len(action) >= 2:
        action = action[1:-1]
    if action != "ebXML":
        # ebMS 2.0 §2.1.3: lenient on the quotes only.
        return _fault(
            f"Unable to process message! SOAPAction={clip(request.soap_action or '')}",
            {"outcome": "bad-soapaction"},
        )
    try:
        env, _tree = parse_envelope(request.envelope)
    except EnvelopeError as exc:
        line = LogLine.warning(
            "refused: not an ebMS envelope (%s), %d bytes", exc, len(request.envelope)
        )
        return Decision(
            Refusal(), log={"outcome": "bad-envelope", "reason": str(exc)}, notes=(line,)
        )
    header = env.header
    # Every value is the peer's: bounded and escaped before it reaches a log line.
    fields = {
        "message_id": clip(header.message_id),
        "cpa_id": clip(header.cpa_id),
        "from": clip(parties(header.from_ids), 1024),
        "to": clip(parties(header.to_ids), 1024),
        "service": clip(header.service.key()),
        "action": clip(header.action),
    }
    if header.ref_to_message_id:
        fields["ref_to"] = clip(header.ref_to_message_id)
    bad = identifier_problem(env)
    notes: tuple[LogLine, ...] = ()
    if bad is not None:
        notes = (
            LogLine.warning(
                "refused %s: %s at %s", fields["message_id"], bad.description, bad.location
            ),
        )
        if bad.location in ECHOED_LOCATIONS:
            # A MessageError would have to repeat the value (ebMS 2.0 §4.2.4.2):
            # as with an unknown CPA, a SOAP Fault is the only answer left.
            return _fault(
                f"Invalid value at {bad.location}: {bad.description}",
                {**fields, "outcome": "bad-identifier", "error": bad.location},
                notes=notes,
            )
    if env.unknown_must_understand:
        return _fault(
            f"Header not understood: {env.unknown_must_understand[0]}",
            {**fields, "outcome": "must-understand"},
            code=MUST_UNDERSTAND,
            notes=notes,
        )
    return Received(env, fields, bad, notes)


# -- step 2: with the facts ----------------------------------------------------------------


def decide(
    received: Received, request: Request, facts: InboundFacts, receiver: Receiver, now: datetime
) -> Decision:
    """What to answer ``request`` and what to store first; never raises for bad input."""
    decision = _decide(received, request, facts, receiver, now)
    return Decision(
        decision.reply,
        decision.effects,
        {**received.fields, **decision.log},
        decision.queued,
        (*received.notes, *decision.notes),
    )


def _decide(
    received: Received, request: Request, facts: InboundFacts, receiver: Receiver, now: datetime
) -> Decision:
    env, fields = received.env, received.fields
    cpa = facts.cpa
    if cpa is None:
        return _fault(f"CPA {env.header.cpa_id} not found!", {**fields, "outcome": "no-cpa"})
    if receiver.check_client_certificate and not certificate_matches(
        cpa, env, request.peer_certificate, facts.certificates
    ):
        return _fault(
            "Invalid SSL Client Certificate!", {**fields, "outcome": "client-certificate"}
        )
    rejected = certificate_rejected(receiver.security, request.peer_certificate, now)
    if rejected is not None:
        line = LogLine.warning(
            "refused TLS client certificate of %s: %s", env.header.message_id, rejected
        )
        return _fault(
            "Invalid SSL Client Certificate!",
            {**fields, "outcome": "client-certificate-rejected", "reason": rejected},
            notes=(line,),
        )
    if received.bad_identifier is not None:
        # Answered, but not kept: the store would hold the oversized value.
        return refuse(cpa, env, request, received.bad_identifier, now, keep=False)
    if facts.duplicate is not None:
        return duplicate(cpa, env, facts.duplicate, now)
    return _check(cpa, env, request, facts, receiver, now)


def certificate_matches(
    cpa: Cpa, env: Envelope, peer: x509.Certificate | None, certificates: CertificateMap
) -> bool:
    """The TLS client certificate must be one the sender's CPA entry names, or its mapping.

    docs/security.md: compare with the certificate of the From party's
    TransportClientSecurity.  A sender that is not in the CPA at all is left to
    the header checks, which answer it with an ebMS error.  A mapping adds its
    destination without removing the CPA's certificate: while a partner rolls
    its TLS certificate over, both are accepted (docs/operations.md,
    "Certificate rotation").
    """
    party = cpa.party_by_ids(env.header.from_ids)
    if party is None:
        return True
    if peer is None:
        return False
    named = party.tls_client_certificates()
    accepted = {*named, *(certificates.resolve(der) for der in named)}
    return peer.public_bytes(Encoding.DER) in accepted


def certificate_rejected(
    security: MessageSecurity | None, peer: x509.Certificate | None, now: datetime
) -> str | None:
    """Why the TLS client certificate is not trusted now, or None.

    OpenSSL already checked its chain and validity during the handshake, but
    has no CRLs: revocation (required by Digikoppeling, docs/security.md) and
    the key usage for client authentication are checked here with the same
    trust store that checks signing certificates.
    """
    trust = security.trust if security is not None else None
    if trust is None or peer is None:
        return None
    try:
        trust.check_certificate(peer, purpose="tls-client", at=now)
    except CertificateRejected as exc:
        return exc.reason
    return None


def _check(
    cpa: Cpa,
    env: Envelope,
    request: Request,
    facts: InboundFacts,
    receiver: Receiver,
    now: datetime,
) -> Decision:
    """The §6.4 checks, then keep the message and answer it."""
    header = env.header
    try:
        route = check_message(env, cpa, now=now).route
        if receiver.own_parties and not receiver.own_parties & {p.key() for p in header.to_ids}:
            # A CPA we hold, but a To party another gateway serves: misrouted.
            raise CheckFailed(
                EbmsError(
                    ErrorCode.VALUE_NOT_RECOGNIZED,
                    "//Header/MessageHeader/To/PartyId",
                    "Not a party of this gateway.",
                )
            )
        if not header.is_signal and header.ref_to_message_id and not facts.ref_known:
            # Step 9 of §6.4: a business message may refer only to a message
            # this gateway sent or received (ebms-core does the same).
            raise CheckFailed(
                EbmsError(
                    ErrorCode.VALUE_NOT_RECOGNIZED,
                    "//Header/MessageHeader/MessageData/RefToMessageId",
                    "Value not found.",
                )
            )
        payloads = _manifest_payloads(env, request.attachments)
        signed = env.ack_requested is not None and env.ack_requested.signed
        references: tuple[bytes, ...] = ()
        if not header.is_signal:
            # ebMS 2.0 §4.1; docs/security.md: decrypt, then verify, before anything is kept.
            payloads = open_inbound(
                route, env, request.envelope, payloads, receiver.security, facts.certificates
            )
            if signed and route.ack_requested:
                # ebMS 2.0 §6.3.2.5: a signed ack copies the references of the
                # message's signature; taken now, so a Reference that cannot be
                # copied is refused before the message is kept.
                try:
                    references = signature_references(request.envelope)
                except SignatureError as exc:
                    raise CheckFailed(exc.to_error()) from None
    except CheckFailed as exc:
        notes: tuple[LogLine, ...] = ()
        if exc.error.code is ErrorCode.SECURITY_FAILURE:
            notes = (
                LogLine.warning(
                    "security failure of %s: %s at %s",
                    header.message_id,
                    exc.error.description,
                    exc.error.location,
                ),
            )
        refused = refuse(cpa, env, request, exc.error, now)
        return replace(refused, notes=(*notes, *refused.notes))
    if header.is_signal:
        return _signal(cpa, env, request, route, facts, receiver.security, now)
    return _business(cpa, env, request, route, payloads, references, receiver, now)


def _manifest_payloads(
    env: Envelope, attachments: Sequence[AttachmentRecord]
) -> tuple[AttachmentRecord, ...]:
    """Step 13: the parts the Manifest names, in its order (CheckFailed otherwise)."""
    referenced = check_manifest(env, {a.content_id for a in attachments})
    keep = {cid: n for n, cid in enumerate(referenced)}
    return tuple(
        sorted((a for a in attachments if a.content_id in keep), key=lambda a: keep[a.content_id])
    )


def _business(
    cpa: Cpa,
    env: Envelope,
    request: Request,
    route: Route,
    payloads: tuple[AttachmentRecord, ...],
    references: tuple[bytes, ...],
    receiver: Receiver,
    now: datetime,
) -> Decision:
    """Keep a business message with its RECEIVED event; acknowledge it if the channel asks."""
    header = env.header
    record = inbound_record(
        env,
        request.content_type,
        request.envelope,
        InboundStatus.RECEIVED.value,
        persist_until(header.timestamp, route),
    )
    kept = (
        StoreInbound(record, payloads),
        AddEvent(New(header.message_id, Direction.IN), header.message_id, EventType.RECEIVED),
    )
    if not route.ack_requested:
        return Decision(NoContent(), kept, {"outcome": "received"})
    fields = {"outcome": "received", "reply": "Acknowledgment"}
    ack = acknowledgment(env, now=now, host=host(route.receive.endpoint), references=references)
    body = None
    if env.ack_requested is not None and env.ack_requested.signed:
        ack_route = signal_route(cpa, env, ack.header.action)
        try:
            body = sign_acknowledgment(build_envelope(ack), ack_route, route, receiver.security)
        except SecurityUnavailable as exc:
            # The message is kept; the partner resends and gets a signed ack once
            # the key is configured.  An unsigned ack would only be refused.
            line = LogLine.error("cannot sign the acknowledgment of %s: %s", header.message_id, exc)
            log = {**fields, "reply": "none", "error": str(exc)}
            return Decision(NoContent(), kept, log, notes=(line,))
    return answer(cpa, env, route, ack, fields, kept, body=body)


def _signal(
    cpa: Cpa,
    env: Envelope,
    request: Request,
    route: Route,
    facts: InboundFacts,
    security: MessageSecurity | None,
    now: datetime,
) -> Decision:
    """Ping and StatusRequest are answered; acks and errors settle our messages (ebMS 2.0 §6-§8)."""
    action = env.header.action
    kept = (StoreInbound(inbound_record(env, request.content_type, request.envelope, None)),)
    if action == SignalAction.PING.value:
        return ping(cpa, env, route, now, kept)
    if action == SignalAction.STATUS_REQUEST.value:
        return status(cpa, env, route, facts.asked, now, kept)

    def check(ours: StoredMessage) -> str | None:
        trust = AckTrust(cpa, facts.certificates)
        return check_signed_ack(security, trust, ours, env, request.envelope)

    settled = settle_signal(env, facts.signal, check)
    log = {"outcome": settled.outcome}
    if env.header.ref_to_message_id and facts.signal.correlation_id:
        log["correlation_id"] = facts.signal.correlation_id
    return Decision(NoContent(), (*kept, *settled.effects), log, notes=settled.notes)


# -- duplicates and refusals ---------------------------------------------------------------


def duplicate(cpa: Cpa, env: Envelope, known: Duplicate, now: datetime) -> Decision:
    """ebMS 2.0 §6.4.1: never deliver twice; repeat the stored answer."""
    if not known.identical:
        error = EbmsError(
            ErrorCode.INCONSISTENT,
            "//Header/MessageHeader/MessageData/MessageId",
            "MessageId already used for another message.",
        )
        reply = message_error(env, [error], now=now, host="localhost")
        return Decision(SignalReply(build_envelope(reply)), log={"outcome": "messageid-reused"})
    stored = known.reply
    if stored is None:
        return Decision(NoContent(), log={"outcome": "duplicate"})
    log = {"outcome": "duplicate", "reply": stored.action}
    route = sender_route(cpa, env)
    if route is not None and route.sync_reply_mode == "none":
        # Send the stored reply again in its own POST.
        return Decision(NoContent(), (ResendReply(stored.pk, SIGNAL_ATTEMPTS),), log, queued=True)
    return Decision(SignalReply(stored.envelope), log=log)


def refuse(
    cpa: Cpa,
    env: Envelope,
    request: Request,
    error: EbmsError,
    now: datetime,
    *,
    keep: bool = True,
) -> Decision:
    """Answer a message that failed validation with a MessageError (ebMS 2.0 §4.2.3).

    The message is stored FAILED (with an event for the back office) unless
    ``keep`` is false: one with an identifier the store should not hold.
    """
    fields = {"outcome": "refused", "error": f"{error.code.value} {error.location}"}
    if env.header.is_signal and env.header.action in (
        SignalAction.ACKNOWLEDGMENT.value,
        SignalAction.MESSAGE_ERROR.value,
    ):
        # Never an error about an error or an ack: that is how loops start (ebMS 2.0 §4.2.4.2).
        line = LogLine.warning(
            "refused signal %s: %s", clip(env.header.message_id), fields["error"]
        )
        return Decision(Refusal(), log=fields, notes=(line,))
    kept: tuple[StoreInbound | AddEvent, ...] = ()
    if keep:
        mid = env.header.message_id
        record = inbound_record(
            env, request.content_type, request.envelope, InboundStatus.FAILED.value
        )
        kept = (StoreInbound(record), AddEvent(New(mid, Direction.IN), mid, EventType.FAILED))
    route = sender_route(cpa, env)
    reply = message_error(
        env, [error], now=now, host=host(route.receive.endpoint if route else None)
    )
    # Without a route to the sender there is no channel back either: the
    # MessageError can only go in the response (replying.answer does that).
    return answer(cpa, env, route, reply, fields, kept)
