"""Duplicates and refusals: the answers to a message that is not taken in as new.

Pure.  A duplicate gets the stored answer again and is not delivered twice
(ebMS 2.0 §6.4.1); a message that fails a check gets a MessageError (ebMS 2.0
§4.2.3), stored with it, except an error about an Acknowledgment or a
MessageError, which is refused bare (docs/msh.md, "Error matrix").
"""

from __future__ import annotations

from datetime import datetime

from cpa.model import Cpa
from gateway.ebms.checks import clip
from gateway.ebms.envelope import Envelope, build_envelope
from gateway.ebms.model import EbmsError, ErrorCode, SignalAction
from gateway.ebms.signals import message_error
from gateway.msh.effects import (
    AddEvent,
    Decision,
    LogLine,
    New,
    NoContent,
    Refusal,
    ResendReply,
    SignalReply,
    StoreInbound,
)
from gateway.msh.facts import Duplicate
from gateway.msh.records import host, inbound_record
from gateway.msh.replying import SIGNAL_ATTEMPTS, answer, sender_route
from gateway.msh.screen import Request
from gateway.msh.states import EventType, InboundStatus
from gateway.store.records import Direction

__all__ = ["duplicate", "refuse"]


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
