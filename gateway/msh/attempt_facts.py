"""The facts a delivery attempt is decided on: the claimed task, its message, the outcome.

Small frozen values, read from the store at the claim
(:mod:`gateway.msh.attempt_prepare`) or made from the answer to the POST by the
delivery worker, and handed to the pure decisions in :mod:`gateway.msh.attempt`.

The reliability parameters are the CPA's (ebMS 2.0 §6.4; CPPA 2.0
``ReliableMessaging``), fixed in the task when the message was queued:
1 + Retries attempts, RetryInterval apart, and the message's TimeToLive as the
deadline (Timestamp + RetryInterval × (Retries + 1), as ebms-core sets it).
Whether the message asks for an acknowledgment (``eb:AckRequested``, present
only on the Koppelvlakstandaard ebMS2 osb-rm profiles) is read from the stored
envelope once, at the claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# The state enums only: nothing here reads or writes the store.
from gateway.msh.states import TaskOutcome

__all__ = [
    "Answered",
    "AttemptResult",
    "Claimed",
    "MessageFacts",
    "MessageHead",
    "NotSent",
    "TaskFacts",
    "Unreached",
]


@dataclass(frozen=True)
class TaskFacts:
    """A claimed delivery task, with the reliability parameters it was queued with."""

    id: int
    message_pk: int
    url: str
    """The CPA endpoint the task was queued for."""
    attempt: int
    """This attempt's number: the claim counted it."""
    max_attempts: int
    """1 + Retries for a reliable message; 1 for best effort and MSH signals."""
    retry_interval: timedelta | None
    expires_at: datetime | None
    """The message's TimeToLive; None: no deadline."""

    @property
    def exhausted(self) -> bool:
        """No attempt left: the claim only ends the final wait for an acknowledgment."""
        return self.attempt > self.max_attempts


@dataclass(frozen=True)
class MessageFacts:
    """The claimed task's message as the claim read it: ids for the log, its status."""

    pk: int
    message_id: str
    status: str | None
    """The status at the claim; None for an MSH signal."""
    ack_requested: bool
    """The stored envelope carries ``eb:AckRequested``; read for business messages only."""
    cpa_id: str
    from_party: str
    to_party: str
    service: str
    action: str
    correlation_id: str | None = None
    ref_to_message_id: str | None = None

    @property
    def business(self) -> bool:
        """A business message, not an MSH signal: it has a status to keep."""
        return self.status is not None

    @property
    def reliable(self) -> bool:
        """A business message that asks for an acknowledgment: 2xx alone does not deliver it."""
        return self.business and self.ack_requested


@dataclass(frozen=True)
class Claimed:
    """One claimed task ready to go: what the attempt's decision is made about."""

    task: TaskFacts
    message: MessageFacts
    url: str
    """Where the attempt goes: the task's CPA endpoint after URL mapping."""
    size: int
    """Length of the body posted, for the log."""


@dataclass(frozen=True)
class MessageHead:
    """What a refused task's message still tells: its id, CPA and status (None: a signal)."""

    message_id: str
    cpa_id: str
    status: str | None


@dataclass(frozen=True)
class NotSent:
    """Nothing was posted: the claim found the task over (EXPIRED) or settled (DONE)."""

    outcome: TaskOutcome


@dataclass(frozen=True)
class Answered:
    """The partner answered the POST with ``status``."""

    status: int
    failure: str | None = None
    """One sentence for an answer that is not a 2xx ("HTTP 503 from partner"); None for 2xx."""


@dataclass(frozen=True)
class Unreached:
    """The POST got no answer: connection refused, TLS failure, timeout."""

    failure: str
    """One plain sentence, never a repr (gateway.http.failures)."""


AttemptResult = NotSent | Answered | Unreached
"""How an attempt ended, before the store has a say."""
