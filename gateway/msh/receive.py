"""The inbound decision: one received request and its facts in, a :class:`Decision` out.

Pure (no store, no network, no Twisted): :mod:`gateway.msh.inbound` screens
the request (:func:`gateway.msh.screen.screen`), reads the facts
(:mod:`gateway.msh.read`), calls :func:`decide` and applies the result
(:mod:`gateway.msh.apply`) in one transaction.  The steps follow docs/msh.md
("Receiving") and ebMS 2.0 §6.4 in ebms-core's order; the answer to every
refusal is a row of docs/msh.md's "Error matrix":

1. the CPA (SOAP Fault: without it there is no channel for an ebMS error,
   ebMS 2.0 §4.2.4.2);
2. the TLS client certificate against the CPA and the trust store (Digikoppeling
   Koppelvlakstandaard ebMS2, two-way TLS; docs/security.md; SOAP Fault);
3. duplicates (ebMS 2.0 §6.4.1; :mod:`gateway.msh.refusals`);
4. the checks of ebMS 2.0 §6.4 (:func:`gateway.ebms.checks.check_message`), the
   To party, RefToMessageId, the Manifest, decryption and the signature; a
   failure is a MessageError (:func:`gateway.msh.refusals.refuse`);
5. keep the message and answer it: an Acknowledgment (ebMS 2.0 §6.3.2), a Pong
   (§8), a StatusResponse (§7), or settle our message (ebMS 2.0 §6.5.3, §4.2.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cpa.model import Cpa
from cpa.resolve import Route
from gateway.ebms.checks import CheckFailed, check_manifest, check_message
from gateway.ebms.envelope import Envelope, build_envelope
from gateway.ebms.model import EbmsError, ErrorCode, SignalAction
from gateway.ebms.signals import acknowledgment
from gateway.ebms.xmldsig import SignatureError, signature_references
from gateway.msh.ack_check import AckTrust, check_signed_ack
from gateway.msh.correlate import settle_signal
from gateway.msh.effects import AddEvent, Decision, LogLine, New, NoContent, StoreInbound
from gateway.msh.facts import CertificateMap, InboundFacts
from gateway.msh.keys import MessageSecurity, SecurityUnavailable
from gateway.msh.records import host, inbound_record
from gateway.msh.refusals import duplicate, refuse
from gateway.msh.replying import answer, ping, signal_route, status
from gateway.msh.screen import Received, Request, fault, screen
from gateway.msh.security import open_inbound, sign_acknowledgment
from gateway.msh.states import EventType, InboundStatus
from gateway.store.records import AttachmentRecord, Direction, StoredMessage
from gateway.trust import CertificateRejected

__all__ = ["Received", "Receiver", "Request", "decide", "persist_until", "screen"]


@dataclass(frozen=True)
class Receiver:
    """How this gateway receives: its settings, never its store."""

    check_client_certificate: bool = True
    own_parties: frozenset[str] = frozenset()
    """Party ids (``PartyId.key()``) this gateway answers for; empty: every party of a CPA."""
    security: MessageSecurity | None = None


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
        return fault(f"CPA {env.header.cpa_id} not found!", {**fields, "outcome": "no-cpa"})
    if receiver.check_client_certificate and not certificate_matches(
        cpa, env, request.peer_certificate, facts.certificates
    ):
        return fault("Invalid SSL Client Certificate!", {**fields, "outcome": "client-certificate"})
    rejected = certificate_rejected(receiver.security, request.peer_certificate, now)
    if rejected is not None:
        line = LogLine.warning(
            "refused TLS client certificate of %s: %s", env.header.message_id, rejected
        )
        return fault(
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
