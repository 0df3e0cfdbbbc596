"""What the MSH does with one inbound ebMS message, from bytes to HTTP reply.

This is the receiving half of the message service handler without the
network: the HTTP edge hands over the SOAPAction, the SOAP part, the payload
parts and the verified TLS client certificate; :meth:`InboundProcessor.handle`
validates (docs/msh.md, Receiving), stores, and returns the HTTP reply.  It is
blocking (it talks to the store) and runs in a thread.

Persist before acting: the received message, its acknowledgment or error,
the event for the back office and the task that posts an asynchronous reply
are written in one transaction before the reply goes out (ebMS 2.0 §6.5,
ebMS 2.0 §6.5 and §6.4.1).  A crash before the commit loses nothing the partner
was told about; the partner's resend arrives as a new message.  A crash after
it is answered from the store when the partner resends: a duplicate gets the
stored reply again, and the back office sees the message once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cpa.model import MSH_SERVICE, Cpa, PartyId, Service
from cpa.resolve import ResolutionError, Route, resolve
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
from gateway.ebms.model import (
    EbmsError,
    ErrorCode,
    MessageStatus,
    Severity,
    SignalAction,
)
from gateway.ebms.signals import acknowledgment, message_error, pong, status_response
from gateway.ebms.xmldsig import SignatureError, signature_references
from gateway.msh.security import (
    AckVerifier,
    MessageSecurity,
    SecurityUnavailable,
    decrypted_fingerprint,
    open_inbound,
    sign_acknowledgment,
)
from gateway.store.certmap import resolve_certificate
from gateway.store.cpas import CpaNotFound, CpaRegistry
from gateway.store.database import Cursor, Database, IntegrityConflict
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    EventType,
    InboundStatus,
    MessageRecord,
    OutboundStatus,
    StoredMessage,
    TaskOutcome,
    add_event,
    correlation_of,
    find_message,
    find_reply,
    fingerprint,
    insert_message,
    insert_task,
    release_task,
    resend_task,
    set_status,
)
from gateway.store.timeutil import utcnow
from gateway.trust import CertificateRejected

log = logging.getLogger("dkgw.inbound")

XML = "text/xml; charset=UTF-8"
#: Replies (acks, errors, pongs) that go back in their own POST are retried a few
#: times at short intervals; after that the partner's resend of the original
#: message is what recovers a lost acknowledgment (ebms-core sends them once).
SIGNAL_ATTEMPTS = 3
SIGNAL_RETRY_INTERVAL = timedelta(minutes=1)
#: Signals we answer with a stored reply when they arrive again.
REPLY_ACTIONS = (
    SignalAction.ACKNOWLEDGMENT.value,
    SignalAction.MESSAGE_ERROR.value,
    SignalAction.PONG.value,
    SignalAction.STATUS_RESPONSE.value,
)


@dataclass(frozen=True)
class InboundRequest:
    """One received HTTP request, as the edge saw it."""

    soap_action: str | None
    content_type: str
    envelope: bytes
    attachments: tuple[AttachmentRecord, ...] = ()
    peer_certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class HttpReply:
    """What to answer, plus what to log about it (ids and outcome, never content)."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    log: dict[str, str] = field(default_factory=dict)
    queued: bool = False  # a reply waits in the store for its own POST: wake the worker


def _parties(ids: Sequence[PartyId]) -> str:
    return ",".join(p.key() for p in ids)


def _host(url: str | None) -> str:
    return (urlsplit(url).hostname if url else None) or "localhost"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _persist_until(timestamp: datetime, route: Route) -> datetime:
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


class InboundProcessor:
    """Receive ebMS messages into the store and decide the reply."""

    def __init__(
        self,
        db: Database,
        registry: CpaRegistry,
        *,
        clock: Callable[[], datetime] = utcnow,
        check_client_certificate: bool = True,
        own_parties: Collection[PartyId] = (),
        security: MessageSecurity | None = None,
    ) -> None:
        self.db = db
        #: Our keys and trust store for the "-s" and "-e" profiles (None: unsigned only).
        self.security = security
        self.verify_ack = AckVerifier(registry, security)
        self.registry = registry
        self.clock = clock
        self.check_client_certificate = check_client_certificate
        #: Party ids this gateway answers for; empty: every party of an imported CPA.
        self.own_parties = frozenset(p.key() for p in own_parties)

    # -- entry point -------------------------------------------------------------

    def handle(self, request: InboundRequest) -> HttpReply:
        """Process one request; never raises for bad input."""
        action = (request.soap_action or "").strip()
        if action.startswith('"') and action.endswith('"') and len(action) >= 2:
            action = action[1:-1]
        if action != "ebXML":
            # ebMS 2.0 §2.1.3: lenient on the quotes only.
            return self._fault(
                f"Unable to process message! SOAPAction={clip(request.soap_action or '')}",
                {"outcome": "bad-soapaction"},
            )
        try:
            env, _tree = parse_envelope(request.envelope)
        except EnvelopeError as exc:
            log.warning("refused: not an ebMS envelope (%s), %d bytes", exc, len(request.envelope))
            return HttpReply(500, log={"outcome": "bad-envelope", "reason": str(exc)})
        header = env.header
        # Every value is the peer's: bounded and escaped before it reaches a log line.
        fields = {
            "message_id": clip(header.message_id),
            "cpa_id": clip(header.cpa_id),
            "from": clip(_parties(header.from_ids), 1024),
            "to": clip(_parties(header.to_ids), 1024),
            "service": clip(header.service.key()),
            "action": clip(header.action),
        }
        if header.ref_to_message_id:
            fields["ref_to"] = clip(header.ref_to_message_id)
        bad_identifier = identifier_problem(env)
        if bad_identifier is not None:
            log.warning(
                "refused %s: %s at %s",
                fields["message_id"],
                bad_identifier.description,
                bad_identifier.location,
            )
            if bad_identifier.location in ECHOED_LOCATIONS:
                # A MessageError would have to repeat the value (ebMS 2.0 §4.2.4.2):
                # as with an unknown CPA, a SOAP Fault is the only answer left.
                return self._fault(
                    f"Invalid value at {bad_identifier.location}: {bad_identifier.description}",
                    {**fields, "outcome": "bad-identifier", "error": bad_identifier.location},
                )
        if env.unknown_must_understand:
            return self._fault(
                f"Header not understood: {env.unknown_must_understand[0]}",
                {**fields, "outcome": "must-understand"},
                code=MUST_UNDERSTAND,
            )
        now = self.clock()
        try:
            reply = self._in_transaction(env, request, fields, now, bad_identifier)
        except IntegrityConflict:
            # The same message arrived twice at once (on two nodes, say) and the
            # other copy committed first: this one is now a duplicate.
            reply = self._in_transaction(env, request, fields, now, bad_identifier)
        return replace(reply, log={**fields, **reply.log})

    def _in_transaction(
        self,
        env: Envelope,
        request: InboundRequest,
        fields: dict[str, str],
        now: datetime,
        bad_identifier: EbmsError | None = None,
    ) -> HttpReply:
        header = env.header
        with self.db.transaction() as cur:
            try:
                cpa = self.registry.get_cpa(header.cpa_id, cur)
            except CpaNotFound:
                return self._fault(
                    f"CPA {header.cpa_id} not found!", {**fields, "outcome": "no-cpa"}
                )
            if self.check_client_certificate and not self._certificate_matches(
                cur, cpa, env, request
            ):
                return self._fault(
                    "Invalid SSL Client Certificate!", {**fields, "outcome": "client-certificate"}
                )
            rejected = self._certificate_rejected(request, now)
            if rejected is not None:
                log.warning("refused TLS client certificate of %s: %s", header.message_id, rejected)
                return self._fault(
                    "Invalid SSL Client Certificate!",
                    {**fields, "outcome": "client-certificate-rejected", "reason": rejected},
                )
            if bad_identifier is not None:
                # Answered, but not kept: the store would hold the oversized value.
                return self._refuse(cur, cpa, env, request, bad_identifier, now, keep=False)
            return self._process(cur, cpa, env, request, now)

    def _certificate_rejected(self, request: InboundRequest, now: datetime) -> str | None:
        """Why the TLS client certificate is not trusted now, or None.

        OpenSSL already checked its chain and validity during the handshake, but
        has no CRLs: revocation (required by Digikoppeling, docs/security.md) and
        the key usage for client authentication are checked here with the same
        trust store that checks signing certificates.
        """
        trust = self.security.trust if self.security is not None else None
        if trust is None or request.peer_certificate is None:
            return None
        try:
            trust.check_certificate(request.peer_certificate, purpose="tls-client", at=now)
        except CertificateRejected as exc:
            return exc.reason
        return None

    def _fault(self, message: str, fields: dict[str, str], code: str = CLIENT) -> HttpReply:
        return HttpReply(500, soap_fault(code, message), XML, fields)

    def _certificate_matches(
        self, cur: Cursor, cpa: Cpa, env: Envelope, request: InboundRequest
    ) -> bool:
        """The TLS client certificate must be one the sender's CPA entry names, or its mapping.

        docs/security.md: compare with the certificate of the From party's
        TransportClientSecurity.  A sender that is not in the CPA at all is
        left to the header checks, which answer it with an ebMS error.  A
        certificate mapping (:mod:`gateway.store.certmap`) adds its destination
        without removing the CPA's certificate: while a partner rolls its TLS
        certificate over, both are accepted (docs/operations.md, "Certificate
        rotation").
        """
        party = cpa.party_by_ids(env.header.from_ids)
        if party is None:
            return True
        if request.peer_certificate is None:
            return False
        named = party.tls_client_certificates()
        accepted = {*named, *(resolve_certificate(cur, der, cpa.cpa_id) for der in named)}
        return _der(request.peer_certificate) in accepted

    # -- the transaction ---------------------------------------------------------

    def _process(
        self, cur: Cursor, cpa: Cpa, env: Envelope, request: InboundRequest, now: datetime
    ) -> HttpReply:
        header = env.header
        print_ = fingerprint(request.envelope, request.attachments)
        known = find_message(cur, header.message_id, Direction.IN)
        if known is not None:
            identical = known.fingerprint == print_ or (
                # An encrypted message is stored decrypted: compare the plaintext.
                known.fingerprint
                == decrypted_fingerprint(request.envelope, request.attachments, self.security)
            )
            return self._duplicate(cur, cpa, env, identical, now)
        try:
            checked = check_message(env, cpa, now=now)
            if self.own_parties and not self.own_parties & {p.key() for p in header.to_ids}:
                # A CPA we hold, but a To party another gateway serves: misrouted.
                raise CheckFailed(
                    EbmsError(
                        ErrorCode.VALUE_NOT_RECOGNIZED,
                        "//Header/MessageHeader/To/PartyId",
                        "Not a party of this gateway.",
                    )
                )
            if (
                not header.is_signal
                and header.ref_to_message_id
                and find_message(cur, header.ref_to_message_id, Direction.OUT) is None
                and find_message(cur, header.ref_to_message_id, Direction.IN) is None
            ):
                # Step 9 of §6.4: a business message may refer only to a message
                # this gateway sent or received (ebms-core does the same).
                raise CheckFailed(
                    EbmsError(
                        ErrorCode.VALUE_NOT_RECOGNIZED,
                        "//Header/MessageHeader/MessageData/RefToMessageId",
                        "Value not found.",
                    )
                )
            referenced = check_manifest(env, {a.content_id for a in request.attachments})
            route = checked.route
            keep = {cid: n for n, cid in enumerate(referenced)}
            payloads = tuple(
                sorted(
                    (a for a in request.attachments if a.content_id in keep),
                    key=lambda a: keep[a.content_id],
                )
            )
            signed = env.ack_requested is not None and env.ack_requested.signed
            references: tuple[bytes, ...] = ()
            if not header.is_signal:
                # ebMS 2.0 §4.1; docs/security.md: decrypt, then verify, before anything is kept.
                payloads = open_inbound(cur, route, env, request.envelope, payloads, self.security)
                if signed and route.ack_requested:
                    # ebMS 2.0 §6.3.2.5: a signed ack copies the references of the
                    # message's signature; taken now, so a Reference that cannot be
                    # copied is refused before the message is kept.
                    try:
                        references = signature_references(request.envelope)
                    except SignatureError as exc:
                        raise CheckFailed(exc.to_error()) from None
        except CheckFailed as exc:
            if exc.error.code is ErrorCode.SECURITY_FAILURE:
                log.warning(
                    "security failure of %s: %s at %s",
                    header.message_id,
                    exc.error.description,
                    exc.error.location,
                )
            return self._refuse(cur, cpa, env, request, exc.error, now)
        if header.is_signal:
            return self._signal(cur, cpa, env, request, route, now)
        persist_until = _persist_until(header.timestamp, route)
        pk = self._store(
            cur, env, request, payloads, InboundStatus.RECEIVED.value, now, persist_until
        )
        add_event(cur, pk, header.message_id, EventType.RECEIVED, now=now)
        if not route.ack_requested:
            return HttpReply(204, log={"outcome": "received"})
        fields = {"outcome": "received", "reply": "Acknowledgment"}
        ack = acknowledgment(
            env, now=now, host=_host(route.receive.endpoint), references=references
        )
        body = None
        if signed:
            ack_route = self._signal_route(cpa, env, ack.header.action)
            try:
                body = sign_acknowledgment(build_envelope(ack), ack_route, route, self.security)
            except SecurityUnavailable as exc:
                # The message is kept; the partner resends and gets a signed ack once
                # the key is configured.  An unsigned ack would only be refused.
                log.error("cannot sign the acknowledgment of %s: %s", header.message_id, exc)
                return HttpReply(204, log={**fields, "reply": "none", "error": str(exc)})
        return self._reply(cur, cpa, env, route, ack, now, fields, body=body)

    def _store(
        self,
        cur: Cursor,
        env: Envelope,
        request: InboundRequest,
        payloads: Sequence[AttachmentRecord],
        status: str | None,
        now: datetime,
        persist_until: datetime | None = None,
    ) -> int:
        h = env.header
        return insert_message(
            cur,
            MessageRecord(
                message_id=h.message_id,
                direction=Direction.IN,
                cpa_id=h.cpa_id,
                conversation_id=h.conversation_id,
                ref_to_message_id=h.ref_to_message_id,
                from_party=_parties(h.from_ids),
                from_role=h.from_role,
                to_party=_parties(h.to_ids),
                to_role=h.to_role,
                service=h.service.key(),
                action=h.action,
                sent_at=h.timestamp,
                time_to_live=h.time_to_live,
                persist_until=persist_until,
                status=status,
                content_type=request.content_type,
                envelope=request.envelope,
            ),
            payloads,
            now=now,
        )

    def _reply(
        self,
        cur: Cursor,
        cpa: Cpa,
        request: Envelope,
        route: Route,
        reply: Envelope,
        now: datetime,
        fields: dict[str, str],
        *,
        body: bytes | None = None,
    ) -> HttpReply:
        """Store ``reply``; return it in the HTTP response or queue its own POST.

        ebMS 2.0 §4.3 / CPPA 2.0 §8.4.19 syncReplyMode: the sender's channel decides; with
        ``mshSignalsOnly`` the signal is the HTTP 200 body, plain text/xml.
        ``body`` is the reply's bytes when they are not just ``reply`` built
        (a signed acknowledgment); those bytes are stored and resent as they are.
        """
        if body is None:
            body = build_envelope(reply)
        h = reply.header
        pk = insert_message(
            cur,
            MessageRecord(
                message_id=h.message_id,
                direction=Direction.OUT,
                cpa_id=h.cpa_id,
                conversation_id=h.conversation_id,
                ref_to_message_id=h.ref_to_message_id,
                from_party=_parties(h.from_ids),
                to_party=_parties(h.to_ids),
                service=h.service.key(),
                action=h.action,
                sent_at=h.timestamp,
                content_type=XML,
                envelope=body,
            ),
            (),
            now=now,
        )
        if route.sync_reply_mode != "none":
            return HttpReply(200, body, XML, fields)
        target = self._signal_route(cpa, request, h.action)
        if target is None or target.endpoint is None:
            # No channel back: answer in the response, the only place left.
            return HttpReply(200, body, XML, {**fields, "note": "no reply channel"})
        insert_task(
            cur,
            pk,
            target.endpoint,
            now=now,
            max_attempts=SIGNAL_ATTEMPTS,
            retry_interval=SIGNAL_RETRY_INTERVAL,
        )
        return HttpReply(204, log=fields, queued=True)

    @staticmethod
    def _signal_route(cpa: Cpa, request: Envelope, action: str) -> Route | None:
        """Our MSH channel to the sender of ``request`` for a reply ``action``."""
        try:
            return resolve(
                cpa,
                from_ids=request.header.to_ids,
                from_role=None,
                to_ids=request.header.from_ids,
                to_role=None,
                service=Service(MSH_SERVICE),
                action=action,
            )
        except ResolutionError:
            return None

    # -- duplicates and refusals -------------------------------------------------------

    def _duplicate(
        self, cur: Cursor, cpa: Cpa, env: Envelope, identical: bool, now: datetime
    ) -> HttpReply:
        """ebMS 2.0 §6.4.1: never deliver twice; repeat the stored answer."""
        if not identical:
            error = EbmsError(
                ErrorCode.INCONSISTENT,
                "//Header/MessageHeader/MessageData/MessageId",
                "MessageId already used for another message.",
            )
            reply = message_error(env, [error], now=now, host="localhost")
            return HttpReply(200, build_envelope(reply), XML, {"outcome": "messageid-reused"})
        stored = find_reply(cur, env.header.message_id, REPLY_ACTIONS)
        if stored is None:
            return HttpReply(204, log={"outcome": "duplicate"})
        route = self._sender_route(cpa, env)
        if route is not None and route.sync_reply_mode == "none":
            # Send the stored reply again in its own POST.
            resend_task(cur, stored.pk, now=now, attempts=SIGNAL_ATTEMPTS)
            return HttpReply(204, log={"outcome": "duplicate", "reply": stored.action}, queued=True)
        return HttpReply(
            200, stored.envelope, XML, {"outcome": "duplicate", "reply": stored.action}
        )

    def _sender_route(self, cpa: Cpa, env: Envelope) -> Route | None:
        h = env.header
        try:
            return resolve(
                cpa,
                from_ids=h.from_ids,
                from_role=h.from_role,
                to_ids=h.to_ids,
                to_role=h.to_role,
                service=h.service,
                action=h.action,
            )
        except ResolutionError:
            return None

    def _refuse(
        self,
        cur: Cursor,
        cpa: Cpa,
        env: Envelope,
        request: InboundRequest,
        error: EbmsError,
        now: datetime,
        *,
        keep: bool = True,
    ) -> HttpReply:
        """Answer a message that failed validation with a MessageError.

        The message is stored FAILED (with an event for the back office) unless
        ``keep`` is false: one with an identifier the store should not hold.
        """
        fields = {"outcome": "refused", "error": f"{error.code.value} {error.location}"}
        if env.header.is_signal and env.header.action in (
            SignalAction.ACKNOWLEDGMENT.value,
            SignalAction.MESSAGE_ERROR.value,
        ):
            # Never an error about an error or an ack: that is how loops start.
            log.warning("refused signal %s: %s", clip(env.header.message_id), fields["error"])
            return HttpReply(500, log=fields)
        if keep:
            pk = self._store(cur, env, request, (), InboundStatus.FAILED.value, now)
            add_event(cur, pk, env.header.message_id, EventType.FAILED, now=now)
        route = self._sender_route(cpa, env)
        reply = message_error(
            env, [error], now=now, host=_host(route.receive.endpoint if route else None)
        )
        if route is None:
            # The sender is not resolvable, so neither is a channel back to it.
            h = reply.header
            insert_message(
                cur,
                MessageRecord(
                    message_id=h.message_id,
                    direction=Direction.OUT,
                    cpa_id=h.cpa_id,
                    conversation_id=h.conversation_id,
                    ref_to_message_id=h.ref_to_message_id,
                    from_party=_parties(h.from_ids),
                    to_party=_parties(h.to_ids),
                    service=h.service.key(),
                    action=h.action,
                    sent_at=h.timestamp,
                    content_type=XML,
                    envelope=build_envelope(reply),
                ),
                (),
                now=now,
            )
            return HttpReply(200, build_envelope(reply), XML, fields)
        return self._reply(cur, cpa, env, route, reply, now, fields)

    # -- signals -------------------------------------------------------------------

    def _signal(
        self,
        cur: Cursor,
        cpa: Cpa,
        env: Envelope,
        request: InboundRequest,
        route: Route,
        now: datetime,
    ) -> HttpReply:
        action = env.header.action
        if action == SignalAction.PING.value:
            self._store(cur, env, request, (), None, now)
            return self._reply(
                cur,
                cpa,
                env,
                route,
                pong(env, now=now, host=_host(route.receive.endpoint)),
                now,
                {"outcome": "ping", "reply": "Pong"},
            )
        if action == SignalAction.STATUS_REQUEST.value:
            self._store(cur, env, request, (), None, now)
            status, when = self._status_of(cur, env)
            reply = status_response(env, status, when, now=now, host=_host(route.receive.endpoint))
            return self._reply(
                cur,
                cpa,
                env,
                route,
                reply,
                now,
                {"outcome": "status-request", "reply": status.value},
            )
        self._store(cur, env, request, (), None, now)
        if action == SignalAction.ACKNOWLEDGMENT.value:
            outcome = correlate_acknowledgment(
                cur, env, now=now, body=request.envelope, verify=self.verify_ack
            )
        elif action == SignalAction.MESSAGE_ERROR.value:
            outcome = correlate_error(cur, env, now=now)
        else:  # Pong, StatusResponse: stored; whoever waits for them reads the store
            outcome = action.lower()
        reply_log = {"outcome": outcome}
        ref = env.header.ref_to_message_id
        if ref and (corr := correlation_of(cur, ref)):
            reply_log["correlation_id"] = corr
        return HttpReply(204, log=reply_log)

    @staticmethod
    def _status_of(cur: Cursor, env: Envelope) -> tuple[MessageStatus, datetime | None]:
        """ebms-core's StatusResponse rules (docs/msh.md, Statuses and events).

        :func:`~gateway.ebms.checks.check_message` has refused a StatusRequest
        without its ``eb:StatusRequest``; should one get here, nothing is asked about.
        """
        if env.status_request is None:
            return MessageStatus.NOT_RECOGNIZED, None
        asked = find_message(cur, env.status_request.ref_to_message_id, Direction.IN)
        if asked is None or asked.service.startswith(MSH_SERVICE):
            return MessageStatus.NOT_RECOGNIZED, None
        if asked.cpa_id != env.header.cpa_id:
            return MessageStatus.UNAUTHORIZED, None
        if asked.status == InboundStatus.RECEIVED.value:
            return MessageStatus.RECEIVED, asked.status_at
        if asked.status == InboundStatus.PROCESSED.value:
            return MessageStatus.PROCESSED, asked.status_at
        return MessageStatus.NOT_RECOGNIZED, None


#: Checks an acknowledgment before it settles our message: None, or why it may not.
AckCheck = Callable[[Cursor, StoredMessage, Envelope, bytes], "str | None"]


def accept_sync_reply(
    cur: Cursor,
    body: bytes,
    content_type: str,
    *,
    now: datetime,
    verify_ack: AckCheck | None = None,
) -> str:
    """Take in a signal that came back in the HTTP response to one of our POSTs.

    The TLS server certificate was pinned to the CPA when we connected, so the
    checks an inbound request needs first are done; ``verify_ack`` checks a
    signed acknowledgment.  Returns an outcome word for the log: "delivered",
    "delivery-failed", "pong", ...
    """
    try:
        env, _ = parse_envelope(body)
    except EnvelopeError as exc:
        log.warning("unreadable synchronous reply (%s), %d bytes", exc, len(body))
        return "bad-reply"
    header = env.header
    if not header.is_signal:
        return "bad-reply"
    bad_identifier = identifier_problem(env)
    if bad_identifier is not None:
        log.warning(
            "synchronous reply %s refused: %s at %s",
            clip(header.message_id),
            bad_identifier.description,
            bad_identifier.location,
        )
        return "bad-reply"
    if find_message(cur, header.message_id, Direction.IN) is not None:
        # The partner repeated a stored reply (we resent a message it had
        # answered): it was correlated the first time.  Checked rather than
        # caught, because a failed INSERT ends the whole transaction.
        return "reply-duplicate"
    try:
        insert_message(
            cur,
            MessageRecord(
                message_id=header.message_id,
                direction=Direction.IN,
                cpa_id=header.cpa_id,
                conversation_id=header.conversation_id,
                ref_to_message_id=header.ref_to_message_id,
                from_party=_parties(header.from_ids),
                to_party=_parties(header.to_ids),
                service=header.service.key(),
                action=header.action,
                sent_at=header.timestamp,
                content_type=content_type,
                envelope=body,
            ),
            (),
            now=now,
        )
    except IntegrityConflict:
        return "reply-duplicate"
    if header.action == SignalAction.ACKNOWLEDGMENT.value:
        return correlate_acknowledgment(cur, env, now=now, body=body, verify=verify_ack)
    if header.action == SignalAction.MESSAGE_ERROR.value:
        return correlate_error(cur, env, now=now)
    return header.action.lower()


def correlate_acknowledgment(
    cur: Cursor,
    env: Envelope,
    *,
    now: datetime,
    body: bytes = b"",
    verify: AckCheck | None = None,
) -> str:
    """An Acknowledgment for one of our messages: it is DELIVERED.

    ebMS 2.0 §6.5 and §6.4.1: the ack must refer to a message we sent under
    the same CPA to the party that acknowledges.  A second ack is ignored.
    ``verify`` (given the ack's bytes ``body``) may refuse it, e.g. a signed
    ack whose signature does not verify: then the message stays unsettled and
    is resent or expires (docs/security.md).
    """
    ref = env.header.ref_to_message_id or (
        env.acknowledgment.ref_to_message_id if env.acknowledgment else None
    )
    ours = find_message(cur, ref, Direction.OUT) if ref else None
    if (
        ours is None
        or ours.cpa_id != env.header.cpa_id
        or ours.to_party != _parties(env.header.from_ids)
    ):
        log.warning("acknowledgment %s refers to no message of ours", env.header.message_id)
        return "ack-unknown"
    if verify is not None and ours.status == OutboundStatus.CREATED.value:
        refused = verify(cur, ours, env, body)
        if refused is not None:
            log.warning(
                "acknowledgment %s of %s not accepted: %s",
                env.header.message_id,
                ours.message_id,
                refused,
            )
            return "ack-refused"
    if set_status(
        cur,
        ours.pk,
        OutboundStatus.DELIVERED.value,
        now=now,
        reason=f"acknowledged by {env.header.message_id}",
        only_from=(OutboundStatus.CREATED.value,),
    ):
        add_event(cur, ours.pk, ours.message_id, EventType.DELIVERED, now=now)
        release_task(cur, ours.pk, TaskOutcome.DONE, now=now)
        return "delivered"
    return "ack-duplicate"


def correlate_error(cur: Cursor, env: Envelope, *, now: datetime) -> str:
    """A MessageError about one of our messages: with severity Error it failed."""
    ref = env.header.ref_to_message_id
    ours = find_message(cur, ref, Direction.OUT) if ref else None
    if ours is None or ours.cpa_id != env.header.cpa_id:
        log.warning("message error %s refers to no message of ours", env.header.message_id)
        return "error-unknown"
    errors = env.error_list.errors if env.error_list else ()
    if env.error_list is None or env.error_list.highest_severity != Severity.ERROR:
        log.warning(
            "warning about %s: %s",
            ours.message_id,
            "; ".join(f"{e.code.value} {e.location}" for e in errors),
        )
        return "warning"
    reason = "; ".join(f"{e.code.value} at {e.location}: {e.description}" for e in errors)
    if set_status(
        cur,
        ours.pk,
        OutboundStatus.DELIVERY_FAILED.value,
        now=now,
        reason=reason,
        only_from=(OutboundStatus.CREATED.value,),
    ):
        add_event(cur, ours.pk, ours.message_id, EventType.FAILED, now=now)
        release_task(cur, ours.pk, TaskOutcome.FAILED, now=now)
        return "delivery-failed"
    return "error-duplicate"


__all__ = [
    "HttpReply",
    "InboundProcessor",
    "InboundRequest",
    "accept_sync_reply",
    "correlate_acknowledgment",
    "correlate_error",
]
