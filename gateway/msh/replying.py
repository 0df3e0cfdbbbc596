"""How a signal we answer with travels: in the HTTP response or in its own POST.

Pure: the reply is stored (:class:`~gateway.msh.effects.StoreReply`) and either
returned as the response (ebMS 2.0 §4.3 / CPPA 2.0 §8.4.19, syncReplyMode
``mshSignalsOnly``) or queued for our MSH channel to the sender
(:class:`~gateway.msh.effects.QueueReply`).  Also the two answers that are
signals of the MSH service itself: Pong (ebMS 2.0 §8) and StatusResponse
(ebMS 2.0 §7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from cpa.model import MSH_SERVICE, Cpa, Service
from cpa.resolve import ResolutionError, Route, resolve
from gateway.ebms.envelope import Envelope, build_envelope
from gateway.ebms.model import MessageStatus, SignalAction
from gateway.ebms.signals import pong, status_response
from gateway.msh.effects import (
    Decision,
    Effect,
    New,
    NoContent,
    QueueReply,
    SignalReply,
    StoreReply,
)
from gateway.msh.records import host, reply_record
from gateway.msh.states import InboundStatus
from gateway.store.records import Direction, StoredMessage

__all__ = [
    "REPLY_ACTIONS",
    "SIGNAL_ATTEMPTS",
    "SIGNAL_RETRY_INTERVAL",
    "answer",
    "ping",
    "sender_route",
    "signal_route",
    "status",
    "status_of",
]

#: Replies (acks, errors, pongs) that go back in their own POST are retried a few
#: times at short intervals; after that the partner's resend of the original
#: message is what recovers a lost acknowledgment (ebms-core sends them once).
SIGNAL_ATTEMPTS = 3
SIGNAL_RETRY_INTERVAL = timedelta(minutes=1)
#: Signals we answer with a stored reply when they arrive again (ebMS 2.0 §6.4.1).
REPLY_ACTIONS = (
    SignalAction.ACKNOWLEDGMENT.value,
    SignalAction.MESSAGE_ERROR.value,
    SignalAction.PONG.value,
    SignalAction.STATUS_RESPONSE.value,
)


def sender_route(cpa: Cpa, env: Envelope) -> Route | None:
    """The sender's channel for the message ``env``, or None when the CPA has none."""
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


def signal_route(cpa: Cpa, request: Envelope, action: str) -> Route | None:
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


def answer(
    cpa: Cpa,
    request: Envelope,
    route: Route | None,
    reply: Envelope,
    fields: Mapping[str, str],
    effects: Sequence[Effect] = (),
    *,
    body: bytes | None = None,
) -> Decision:
    """Store ``reply``; return it in the HTTP response or queue its own POST.

    The sender's channel (``route``) decides.  ``body`` is the reply's bytes
    when they are not just ``reply`` built (a signed acknowledgment); those
    bytes are stored and resent as they are.  Without a route to the sender
    (a refused message) there is no channel back: the response is the only
    place left.
    """
    if body is None:
        body = build_envelope(reply)
    kept = (*effects, StoreReply(reply_record(reply, body)))
    if route is None or route.sync_reply_mode != "none":
        return Decision(SignalReply(body), kept, fields)
    target = signal_route(cpa, request, reply.header.action)
    if target is None or target.endpoint is None:
        # No channel back: answer in the response, the only place left.
        return Decision(SignalReply(body), kept, {**fields, "note": "no reply channel"})
    queue = QueueReply(
        New(reply.header.message_id, Direction.OUT),
        target.endpoint,
        SIGNAL_ATTEMPTS,
        SIGNAL_RETRY_INTERVAL,
    )
    return Decision(NoContent(), (*kept, queue), fields, queued=True)


def ping(
    cpa: Cpa, env: Envelope, route: Route, now: datetime, effects: Sequence[Effect]
) -> Decision:
    """A Ping is answered with a Pong (ebMS 2.0 §8)."""
    reply = pong(env, now=now, host=host(route.receive.endpoint))
    return answer(cpa, env, route, reply, {"outcome": "ping", "reply": "Pong"}, effects)


def status(
    cpa: Cpa,
    env: Envelope,
    route: Route,
    asked: StoredMessage | None,
    now: datetime,
    effects: Sequence[Effect],
) -> Decision:
    """A StatusRequest is answered with the status of the message it asks about (ebMS 2.0 §7)."""
    found, when = status_of(env, asked)
    reply = status_response(env, found, when, now=now, host=host(route.receive.endpoint))
    log = {"outcome": "status-request", "reply": found.value}
    return answer(cpa, env, route, reply, log, effects)


def status_of(env: Envelope, asked: StoredMessage | None) -> tuple[MessageStatus, datetime | None]:
    """ebms-core's StatusResponse rules (docs/msh.md, Statuses and events).

    ``asked`` is the received message the request names.
    :func:`~gateway.ebms.checks.check_message` has refused a StatusRequest
    without its ``eb:StatusRequest``; should one get here, nothing is asked about.
    """
    if env.status_request is None:
        return MessageStatus.NOT_RECOGNIZED, None
    if asked is None or asked.service.startswith(MSH_SERVICE):
        return MessageStatus.NOT_RECOGNIZED, None
    if asked.cpa_id != env.header.cpa_id:
        return MessageStatus.UNAUTHORIZED, None
    if asked.status == InboundStatus.RECEIVED.value:
        return MessageStatus.RECEIVED, asked.status_at
    if asked.status == InboundStatus.PROCESSED.value:
        return MessageStatus.PROCESSED, asked.status_at
    return MessageStatus.NOT_RECOGNIZED, None
