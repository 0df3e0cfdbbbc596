"""What the MSH decided, as a value: the reply to give and the effects to apply.

A decision function (:mod:`gateway.msh.receive`, :mod:`gateway.msh.correlate`)
reads facts and returns a :class:`Decision`; :func:`gateway.msh.apply.apply`
writes its effects in one transaction; the HTTP edge
(:mod:`gateway.http.replies`) turns its reply into a status and a body.  Nothing
here touches the store or the network.

Persist before acting (ebMS 2.0 §6.5, §6.4.1): every effect of one decision is
applied in the transaction that the reply waits for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeAlias

from gateway.msh.states import EventType, OutboundStatus, TaskOutcome
from gateway.store.records import AttachmentRecord, Direction, MessageRecord

__all__ = [
    "AddEvent",
    "Decision",
    "Effect",
    "FaultReply",
    "Known",
    "LogLine",
    "MessageRef",
    "New",
    "NoContent",
    "QueueReply",
    "Refusal",
    "Reply",
    "ResendReply",
    "SettleReferenced",
    "SignalReply",
    "StoreInbound",
    "StoreReply",
]

# -- what to answer -------------------------------------------------------------------


@dataclass(frozen=True)
class SignalReply:
    """An ebMS message (acknowledgment, MessageError, Pong, StatusResponse) as the answer.

    ebMS 2.0 §4.3 (syncReplyMode): the signal travels in the HTTP response.
    """

    body: bytes


@dataclass(frozen=True)
class FaultReply:
    """A SOAP Fault: the message cannot be answered with an ebMS error (ebMS 2.0 §4.2.4.2)."""

    body: bytes


@dataclass(frozen=True)
class NoContent:
    """Taken in; nothing to say in the response (an answer, if any, goes in its own POST)."""


@dataclass(frozen=True)
class Refusal:
    """Refused without a body: not an ebMS message, or an error about an error (no loops)."""


Reply: TypeAlias = SignalReply | FaultReply | NoContent | Refusal

# -- which message an effect is about --------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A message already in the store, by primary key."""

    pk: int


@dataclass(frozen=True)
class New:
    """A message that an earlier effect of the same decision stores."""

    message_id: str
    direction: Direction


MessageRef: TypeAlias = Known | New

# -- the effects ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreInbound:
    """Keep a received message and its (plaintext) payloads."""

    record: MessageRecord
    payloads: tuple[AttachmentRecord, ...] = ()


@dataclass(frozen=True)
class StoreReply:
    """Keep a signal we answer with, so a duplicate gets the same bytes (ebMS 2.0 §6.4.1)."""

    record: MessageRecord


@dataclass(frozen=True)
class AddEvent:
    """An event for the back office about ``message``."""

    message: MessageRef
    message_id: str
    event: EventType


@dataclass(frozen=True)
class QueueReply:
    """Post a stored reply in its own request, with a few short-spaced attempts."""

    reply: MessageRef
    endpoint: str
    max_attempts: int
    retry_interval: timedelta


@dataclass(frozen=True)
class ResendReply:
    """Send a stored reply again: the partner's resend says it was lost (ebMS 2.0 §6.5.3)."""

    pk: int
    attempts: int


@dataclass(frozen=True)
class SettleReferenced:
    """An acknowledgment or error settles one of our messages, if it is still CREATED.

    The guard is the store's (an ack and an expiry may race): when the message
    moved on meanwhile, nothing is written and the outcome is ``already``.
    Otherwise its status, the ``event`` and the end of its delivery task
    (``task``) are written and the outcome is ``settled``.
    """

    pk: int
    message_id: str
    status: OutboundStatus
    reason: str
    event: EventType
    task: TaskOutcome
    settled: str
    already: str


Effect: TypeAlias = (
    StoreInbound | StoreReply | AddEvent | QueueReply | ResendReply | SettleReferenced
)


@dataclass(frozen=True)
class LogLine:
    """One line for the operator's log, written when the decision is taken."""

    level: int
    message: str
    args: tuple[object, ...] = ()

    @classmethod
    def warning(cls, message: str, *args: object) -> LogLine:
        """A WARNING line."""
        return cls(logging.WARNING, message, args)

    @classmethod
    def error(cls, message: str, *args: object) -> LogLine:
        """An ERROR line."""
        return cls(logging.ERROR, message, args)


@dataclass(frozen=True)
class Decision:
    """The reply, the effects that must be committed first, and what to log.

    ``log`` holds the fields of the one ``event=inbound`` line (ids and outcome,
    never content); ``queued`` says a reply waits in the store for its own POST,
    so the delivery worker should look now.
    """

    reply: Reply
    effects: tuple[Effect, ...] = ()
    log: Mapping[str, str] = field(default_factory=dict)
    queued: bool = False
    notes: tuple[LogLine, ...] = ()

    @property
    def outcome(self) -> str:
        """The outcome word of the log fields ("" when there is none)."""
        return self.log.get("outcome", "")
