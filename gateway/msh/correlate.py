"""Answers to our own messages: acknowledgments, MessageErrors and synchronous replies.

Pure: the facts (:class:`~gateway.msh.facts.ReplyFacts`) come from
:mod:`gateway.msh.read`, the effects go to :mod:`gateway.msh.apply`.

* An Acknowledgment settles our message DELIVERED (ebMS 2.0 §6.3.2, §6.5.3):
  it must refer to a message we sent under the same CPA to the party that
  acknowledges; a second one changes nothing.  A signed ack whose signature
  does not verify leaves the message unsettled (ebMS 2.0 §6.3.2.5;
  docs/security.md): it is resent or expires.
* A MessageError of severity Error settles it DELIVERY_FAILED (ebMS 2.0
  §4.2.3); a Warning is only logged.
* A signal in the HTTP response to our POST (ebMS 2.0 §4.3, syncReplyMode) is
  stored once and then correlated the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from gateway.ebms.checks import clip, identifier_problem
from gateway.ebms.envelope import Envelope, EnvelopeError, parse_envelope
from gateway.ebms.model import Severity, SignalAction
from gateway.msh.effects import Effect, LogLine, SettleReferenced, StoreInbound
from gateway.msh.facts import ReplyFacts
from gateway.msh.records import parties, sync_reply_record
from gateway.msh.states import EventType, OutboundStatus, TaskOutcome
from gateway.store.records import StoredMessage

__all__ = [
    "AckRefusal",
    "Settlement",
    "SyncReply",
    "acknowledges",
    "referenced_id",
    "screen_sync_reply",
    "settle_acknowledgment",
    "settle_error",
    "sync_reply",
]


#: Why a signed acknowledgment may not settle our message (None: it may).
AckRefusal: TypeAlias = Callable[[StoredMessage], "str | None"]


@dataclass(frozen=True)
class Settlement:
    """An outcome word for the log, the effects that go with it and the lines to log."""

    outcome: str
    effects: tuple[Effect, ...] = ()
    notes: tuple[LogLine, ...] = ()


def referenced_id(env: Envelope) -> str | None:
    """The MessageId an Acknowledgment or MessageError is about (its RefToMessageId).

    An Acknowledgment may carry it in ``eb:Acknowledgment`` only (ebMS 2.0
    §6.3.2.4); a MessageError in the header (ebMS 2.0 §4.2.4.1).
    """
    ref = env.header.ref_to_message_id
    if env.header.action == SignalAction.ACKNOWLEDGMENT.value and not ref and env.acknowledgment:
        return env.acknowledgment.ref_to_message_id
    return ref


def acknowledges(ours: StoredMessage | None, env: Envelope) -> bool:
    """``ours`` is a message we sent under the ack's CPA to the party that acknowledges."""
    return (
        ours is not None
        and ours.cpa_id == env.header.cpa_id
        and ours.to_party == parties(env.header.from_ids)
    )


def settle_acknowledgment(
    env: Envelope, facts: ReplyFacts, check: AckRefusal | None = None
) -> Settlement:
    """An Acknowledgment for one of our messages: it is DELIVERED.

    ``check`` says why a signed ack may not settle our message (when the
    facts do not say it already); it is asked only about a message the ack
    would settle.
    """
    ours = facts.ours
    if ours is None or not acknowledges(ours, env):
        line = LogLine.warning(
            "acknowledgment %s refers to no message of ours", env.header.message_id
        )
        return Settlement("ack-unknown", notes=(line,))
    refusal = facts.ack_refusal
    if refusal is None and check is not None and ours.status == OutboundStatus.CREATED.value:
        refusal = check(ours)
    if refusal is not None:
        line = LogLine.warning(
            "acknowledgment %s of %s not accepted: %s",
            env.header.message_id,
            ours.message_id,
            refusal,
        )
        return Settlement("ack-refused", notes=(line,))
    if ours.status != OutboundStatus.CREATED.value:
        return Settlement("ack-duplicate")
    settle = SettleReferenced(
        ours.pk,
        ours.message_id,
        OutboundStatus.DELIVERED,
        reason=f"acknowledged by {env.header.message_id}",
        event=EventType.DELIVERED,
        task=TaskOutcome.DONE,
        settled="delivered",
        already="ack-duplicate",
    )
    return Settlement("delivered", (settle,))


def settle_error(env: Envelope, facts: ReplyFacts) -> Settlement:
    """A MessageError about one of our messages: with severity Error it failed."""
    ours = facts.ours
    if ours is None or ours.cpa_id != env.header.cpa_id:
        line = LogLine.warning(
            "message error %s refers to no message of ours", env.header.message_id
        )
        return Settlement("error-unknown", notes=(line,))
    errors = env.error_list.errors if env.error_list else ()
    if env.error_list is None or env.error_list.highest_severity != Severity.ERROR:
        line = LogLine.warning(
            "warning about %s: %s",
            ours.message_id,
            "; ".join(f"{e.code.value} {e.location}" for e in errors),
        )
        return Settlement("warning", notes=(line,))
    if ours.status != OutboundStatus.CREATED.value:
        return Settlement("error-duplicate")
    settle = SettleReferenced(
        ours.pk,
        ours.message_id,
        OutboundStatus.DELIVERY_FAILED,
        reason="; ".join(f"{e.code.value} at {e.location}: {e.description}" for e in errors),
        event=EventType.FAILED,
        task=TaskOutcome.FAILED,
        settled="delivery-failed",
        already="error-duplicate",
    )
    return Settlement("delivery-failed", (settle,))


def settle_signal(env: Envelope, facts: ReplyFacts, check: AckRefusal | None = None) -> Settlement:
    """Acknowledgments and errors settle our message; Pong and StatusResponse are only kept.

    Whoever waits for a Pong or a StatusResponse reads it from the store.
    """
    if env.header.action == SignalAction.ACKNOWLEDGMENT.value:
        return settle_acknowledgment(env, facts, check)
    if env.header.action == SignalAction.MESSAGE_ERROR.value:
        return settle_error(env, facts)
    return Settlement(env.header.action.lower())


# -- synchronous replies ------------------------------------------------------------------


@dataclass(frozen=True)
class SyncReply:
    """A synchronous reply that passed the checks that need no store."""

    env: Envelope


def screen_sync_reply(body: bytes) -> SyncReply | Settlement:
    """The reply's envelope, or the "bad-reply" outcome (with its log line).

    The TLS server certificate was pinned to the CPA when we connected, so the
    checks an inbound request needs first are done; what is left is that it
    parses, is a signal (ebMS 2.0 §4.3: only signals come back on the
    response) and carries identifiers we can keep (docs/msh.md).
    """
    try:
        env, _ = parse_envelope(body)
    except EnvelopeError as exc:
        line = LogLine.warning("unreadable synchronous reply (%s), %d bytes", exc, len(body))
        return Settlement("bad-reply", notes=(line,))
    header = env.header
    if not header.is_signal:
        return Settlement("bad-reply")
    bad = identifier_problem(env)
    if bad is not None:
        line = LogLine.warning(
            "synchronous reply %s refused: %s at %s",
            clip(header.message_id),
            bad.description,
            bad.location,
        )
        return Settlement("bad-reply", notes=(line,))
    return SyncReply(env)


def sync_reply(reply: SyncReply, facts: ReplyFacts, body: bytes, content_type: str) -> Settlement:
    """Keep a synchronous reply, then settle what it answers.

    A reply stored before is the partner repeating a stored reply (we resent a
    message it had answered): it was correlated the first time.
    """
    if facts.duplicate:
        return Settlement("reply-duplicate")
    store = StoreInbound(sync_reply_record(reply.env, content_type, body))
    settled = settle_signal(reply.env, facts)
    return Settlement(settled.outcome, (store, *settled.effects), settled.notes)
