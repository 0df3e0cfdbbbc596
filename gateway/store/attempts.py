"""The writes that end a delivery attempt, each one statement, with no decision in them.

What an attempt leads to (retry at what time, expire, fail) is decided before
these are called (:mod:`gateway.msh.attempt`); they only write it down.  The
task updates are guarded by the lease: the row changes only while ``node``
still holds the task in ``sending`` (:func:`gateway.store.leases.complete`, the
guard the task table gives), so an attempt whose lease ran out, or whose task an
acknowledgment ended meanwhile, changes nothing.

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime

from gateway.msh.states import TASK_EVENT_OF_OUTCOME, TaskOutcome
from gateway.store import leases
from gateway.store.database import Cursor
from gateway.store.leases import DELIVERY_TASKS
from gateway.store.timeutil import to_db

__all__ = ["end_task", "message_head", "record_attempt", "reschedule_task"]


def message_head(cur: Cursor, message_pk: int) -> tuple[str, str, str | None] | None:
    """(message id, CPA id, status) of a stored message, or None when the row is gone.

    Reads only these columns, so it answers for a row the full loader refuses.
    The status is None for an MSH signal (it has no status to keep).
    """
    row = cur.execute(
        "SELECT message_id, cpa_id, status FROM ebms_message WHERE id = ?", (message_pk,)
    ).fetchone()
    if row is None:
        return None
    message_id, cpa_id, status = row
    return str(message_id), str(cpa_id), status


def record_attempt(
    cur: Cursor,
    *,
    task_id: int,
    attempt: int,
    node: str,
    url: str,
    started_at: datetime,
    finished_at: datetime,
    http_status: int | None,
    outcome: str,
    error: str | None,
) -> None:
    """Add one attempt to a task's log (``delivery_attempt``)."""
    cur.execute(
        "INSERT INTO delivery_attempt (task_id, attempt, node, url, started_at, finished_at, "
        "http_status, outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            task_id,
            attempt,
            node,
            url,
            to_db(started_at),
            to_db(finished_at),
            http_status,
            outcome,
            error,
        ),
    )


def _release(
    cur: Cursor,
    *,
    task_id: int,
    node: str,
    outcome: TaskOutcome,
    next_attempt_at: datetime,
    error: str | None,
    keep_last_error: bool,
    now: datetime,
) -> bool:
    # The task queue's lease guard and the state the table gives the outcome's event.
    return leases.complete(
        cur,
        DELIVERY_TASKS,
        task_id,
        TASK_EVENT_OF_OUTCOME[outcome],
        node=node,
        now=now,
        sets="next_attempt_at = ?, last_error = "
        + ("COALESCE(?, last_error)" if keep_last_error else "?"),
        params=(to_db(next_attempt_at), error),
    )


def reschedule_task(
    cur: Cursor, *, task_id: int, node: str, at: datetime, error: str | None, now: datetime
) -> bool:
    """Hand a claimed task back as ``pending`` until ``at``; False when ``node`` lost it."""
    return _release(
        cur,
        task_id=task_id,
        node=node,
        outcome=TaskOutcome.RETRY,
        next_attempt_at=at,
        error=error,
        keep_last_error=False,
        now=now,
    )


def end_task(
    cur: Cursor,
    *,
    task_id: int,
    node: str,
    state: TaskOutcome,
    error: str | None,
    keep_last_error: bool,
    now: datetime,
) -> bool:
    """End a claimed task in ``state`` (done, failed, expired); False when ``node`` lost it.

    ``keep_last_error``: an ``error`` of None keeps the task's last failure
    instead of clearing it.
    """
    return _release(
        cur,
        task_id=task_id,
        node=node,
        outcome=state,
        next_attempt_at=now,
        error=error,
        keep_last_error=keep_last_error,
        now=now,
    )
