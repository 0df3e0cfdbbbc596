"""What the MSH does with one inbound ebMS message: read, decide, apply.

This is the receiving half of the message service handler without the
network: the HTTP edge hands over the SOAPAction, the SOAP part, the payload
parts and the verified TLS client certificate; :meth:`InboundProcessor.receive`
screens the request (:func:`gateway.msh.receive.screen`), reads the facts
(:mod:`gateway.msh.read`), decides (:func:`gateway.msh.receive.decide`) and
applies the decision's effects (:mod:`gateway.msh.apply`) in one transaction.
It is blocking (it talks to the store) and runs in a thread.

Persist before acting: the received message, its acknowledgment or error,
the event for the back office and the task that posts an asynchronous reply
are written in one transaction before the reply goes out (ebMS 2.0 §6.5 and
§6.4.1).  A crash before the commit loses nothing the partner was told about;
the partner's resend arrives as a new message.  A crash after it is answered
from the store when the partner resends: a duplicate gets the stored reply
again, and the back office sees the message once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import datetime

from cpa.model import PartyId
from gateway.ebms.envelope import Envelope
from gateway.http.replies import HttpReply, http_reply
from gateway.msh.apply import apply
from gateway.msh.correlate import (
    Settlement,
    SyncReply,
    screen_sync_reply,
    settle_acknowledgment,
    settle_error,
    sync_reply,
)
from gateway.msh.effects import Decision, LogLine
from gateway.msh.keys import MessageSecurity
from gateway.msh.read import AckCheck, AckVerifier, read_inbound, read_reply
from gateway.msh.receive import Received, Receiver, decide, screen
from gateway.msh.receive import Request as InboundRequest
from gateway.msh.replying import REPLY_ACTIONS, SIGNAL_ATTEMPTS, SIGNAL_RETRY_INTERVAL
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor, Database, IntegrityConflict
from gateway.store.timeutil import utcnow

log = logging.getLogger("dkgw.inbound")


def _write(notes: Sequence[LogLine]) -> None:
    for line in notes:
        log.log(line.level, line.message, *line.args)


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
        self.receiver = Receiver(
            check_client_certificate=check_client_certificate,
            own_parties=frozenset(p.key() for p in own_parties),
            security=security,
        )

    @property
    def check_client_certificate(self) -> bool:
        """Whether the TLS client certificate must be the sender's in the CPA."""
        return self.receiver.check_client_certificate

    @property
    def own_parties(self) -> frozenset[str]:
        """Party ids (``PartyId.key()``) this gateway answers for; empty: every party of a CPA."""
        return self.receiver.own_parties

    def receive(self, request: InboundRequest) -> Decision:
        """Process one request and return what was decided (applied); never raises for bad input."""
        screened = screen(request)
        if isinstance(screened, Decision):
            _write(screened.notes)
            return screened
        now = self.clock()
        try:
            return self._in_transaction(screened, request, now)
        except IntegrityConflict:
            # The same message arrived twice at once (on two nodes, say) and the
            # other copy committed first: this one is now a duplicate.
            return self._in_transaction(screened, request, now)

    def handle(self, request: InboundRequest) -> HttpReply:
        """:meth:`receive`, answered as the HTTP edge answers it."""
        return http_reply(self.receive(request))

    def _in_transaction(
        self, screened: Received, request: InboundRequest, now: datetime
    ) -> Decision:
        with self.db.transaction() as cur:
            facts = read_inbound(
                cur,
                self.registry,
                screened.env,
                request.envelope,
                request.attachments,
                security=self.security,
                screened=screened.bad_identifier is None,
            )
            decision = decide(screened, request, facts, self.receiver, now)
            _write(decision.notes)
            outcome = apply(cur, decision.effects, now=now)
        if outcome is not None and outcome != decision.outcome:
            decision = replace(decision, log={**decision.log, "outcome": outcome})
        return decision


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
    screened = screen_sync_reply(body)
    if not isinstance(screened, SyncReply):
        _write(screened.notes)
        return screened.outcome
    facts = read_reply(
        cur, screened.env, body=body, verify=verify_ack, stored_before=True, correlation=False
    )
    settled = sync_reply(screened, facts, body, content_type)
    _write(settled.notes)
    try:
        applied = apply(cur, settled.effects, now=now)
    except IntegrityConflict:
        return "reply-duplicate"
    return applied or settled.outcome


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
    facts = read_reply(cur, env, body=body, verify=verify, correlation=False)
    return _settle(cur, settle_acknowledgment(env, facts), now)


def correlate_error(cur: Cursor, env: Envelope, *, now: datetime) -> str:
    """A MessageError about one of our messages: with severity Error it failed."""
    return _settle(cur, settle_error(env, read_reply(cur, env, correlation=False)), now)


def _settle(cur: Cursor, settled: Settlement, now: datetime) -> str:
    _write(settled.notes)
    return apply(cur, settled.effects, now=now) or settled.outcome


__all__ = [
    "REPLY_ACTIONS",
    "SIGNAL_ATTEMPTS",
    "SIGNAL_RETRY_INTERVAL",
    "AckCheck",
    "HttpReply",
    "InboundProcessor",
    "InboundRequest",
    "accept_sync_reply",
    "correlate_acknowledgment",
    "correlate_error",
]
