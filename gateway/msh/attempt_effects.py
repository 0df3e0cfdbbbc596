"""What a delivery attempt's decision asks the store to do: effects as values.

A decision (:mod:`gateway.msh.attempt`) is a tuple of these, in the order they
are applied; :mod:`gateway.msh.attempt_apply` applies them in one transaction.
Each effect names exactly what is written, so a decision can be read, compared
and tested without a database.

The task effects are guarded by the lease (``node``): when this node no longer
holds the task (its lease ran out and another node took it over, or an
acknowledgment ended it meanwhile), they change nothing, and the effects marked
``after_task`` are skipped with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

# The state enums only: nothing here reads or writes the store.
from gateway.msh.states import EventType, OutboundStatus, TaskOutcome

__all__ = [
    "AttemptEffect",
    "FinishTask",
    "RecordAttempt",
    "RescheduleTask",
    "SettleMessage",
]


@dataclass(frozen=True)
class RecordAttempt:
    """One row in the attempt log (``delivery_attempt``): what this attempt did.

    ``outcome`` is the attempt's own (a RETRY stays RETRY here even when the
    task expires with it), so the log shows what each attempt came to.
    """

    task_id: int
    attempt: int
    node: str
    url: str
    """The URL posted to (after URL mapping)."""
    started_at: datetime
    finished_at: datetime
    http_status: int | None
    outcome: TaskOutcome
    error: str | None


@dataclass(frozen=True)
class RescheduleTask:
    """The task waits (``pending``) until ``at``, then is due again."""

    task_id: int
    node: str
    at: datetime
    error: str | None
    """The attempt's failure sentence, kept as the task's last error (None clears it)."""
    now: datetime


@dataclass(frozen=True)
class FinishTask:
    """The task ends: ``state`` is DONE, FAILED or EXPIRED."""

    task_id: int
    node: str
    state: TaskOutcome
    error: str | None
    keep_last_error: bool
    """Keep the task's last failure when ``error`` is None (an expiry says why by it)."""
    now: datetime


@dataclass(frozen=True)
class SettleMessage:
    """A business message leaves CREATED for ``status``, with an event for the back office.

    Guarded: a message no longer CREATED (an acknowledgment or an error settled
    it first) stays as it is, and then no event is added either.
    """

    message_pk: int
    message_id: str
    status: OutboundStatus
    event: EventType
    now: datetime
    reason: str | None = None
    """Stored with the status change (``status_history.reason``)."""
    error_code: str | None = None
    error_text: str | None = None
    after_task: bool = True
    """Only when the task effect before it took effect (this node still held the task)."""


AttemptEffect = RecordAttempt | RescheduleTask | FinishTask | SettleMessage
"""Every effect an attempt's decision can have."""
