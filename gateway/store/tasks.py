"""Delivery tasks: one stored message's way to the partner, attempt by attempt.

A task is queued with its message in one transaction (ebMS 2.0 §6.4.1: persist
before sending) and leased by the node that attempts it
(:mod:`gateway.store.leases`).  Its states and the moves between them are the
table :data:`gateway.msh.states.TASK`; every update here is guarded by the
states that table lets its event leave, so a move that races another (an
acknowledgment overtaking the attempt's own update) changes nothing.

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.msh.states import (
    TASK,
    TASK_EVENT_OF_OUTCOME,
    TaskEvent,
    TaskOutcome,
    TransitionRefused,
)
from gateway.store import leases
from gateway.store.attempts import end_task, record_attempt, reschedule_task
from gateway.store.database import Cursor
from gateway.store.guards import in_states, literal
from gateway.store.leases import DELIVERY_TASKS
from gateway.store.records import Task
from gateway.store.timeutil import from_db, to_db

__all__ = [
    "RELEASE_EVENTS",
    "Task",
    "claim_due_tasks",
    "finish_attempt",
    "insert_task",
    "last_task_error",
    "release_node_leases",
    "release_task",
    "resend_task",
    "task_for_message",
    "unclaim_task",
]

RELEASE_EVENTS: dict[TaskOutcome, TaskEvent] = {
    TaskOutcome.DONE: TaskEvent.ACKNOWLEDGED,
    TaskOutcome.FAILED: TaskEvent.ERROR_RECEIVED,
    TaskOutcome.EXPIRED: TaskEvent.LAPSED,
}
"""How :func:`release_task` ends a task from outside the worker, by outcome."""


def _opt(value: datetime | None) -> str | None:
    return None if value is None else to_db(value)


def _opt_from(value: str | None) -> datetime | None:
    return None if value is None else from_db(value)


def _guard(event: TaskEvent) -> str:
    return in_states("state", TASK.sources(event))


def insert_task(
    cur: Cursor,
    message_pk: int,
    url: str,
    *,
    now: datetime,
    max_attempts: int = 1,
    retry_interval: timedelta | None = None,
    expires_at: datetime | None = None,
    first_attempt_at: datetime | None = None,
) -> int:
    """Queue a message for delivery to ``url``; returns the task id."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    (initial,) = TASK.initial
    cur.execute(
        "INSERT INTO delivery_task (message_pk, url, state, next_attempt_at, attempts, "
        "max_attempts, retry_interval, expires_at, updated_at) "
        f"VALUES (?, ?, {literal(initial)}, ?, 0, ?, ?, ?, ?)",
        (
            message_pk,
            url,
            to_db(first_attempt_at or now),
            max_attempts,
            retry_interval.total_seconds() if retry_interval is not None else None,
            _opt(expires_at),
            to_db(now),
        ),
    )
    row = cur.execute("SELECT id FROM delivery_task WHERE message_pk = ?", (message_pk,)).fetchone()
    assert row is not None
    return int(row[0])


def claim_due_tasks(
    cur: Cursor, *, node: str, now: datetime, lease: timedelta, limit: int = 16
) -> list[Task]:
    """Claim up to ``limit`` due tasks for ``node``; each claim counts as an attempt.

    A task is due when it is pending and its next attempt time has come, or
    when another node's lease on it has run out (that node died mid-attempt).
    """
    rows = leases.claim(
        cur,
        DELIVERY_TASKS,
        node=node,
        now=now,
        lease=lease,
        limit=limit,
        returning="id, message_pk, url, attempts, max_attempts, retry_interval, expires_at",
    )
    lease_until = now + lease
    return [
        Task(
            id=int(r[0]),
            message_pk=int(r[1]),
            url=r[2],
            attempts=int(r[3]),
            max_attempts=int(r[4]),
            retry_interval=timedelta(seconds=r[5]) if r[5] is not None else None,
            expires_at=_opt_from(r[6]),
            lease_until=lease_until,
        )
        for r in sorted(rows, key=lambda r: int(r[0]))
    ]


def finish_attempt(
    cur: Cursor,
    task: Task,
    outcome: TaskOutcome,
    *,
    node: str,
    started_at: datetime,
    now: datetime,
    http_status: int | None = None,
    error: str | None = None,
    next_attempt_at: datetime | None = None,
    url: str | None = None,
) -> TaskOutcome | None:
    """Log the attempt and move the task on; returns the outcome that took effect.

    ``url`` is the URL actually posted to, when a URL mapping replaced the task's
    CPA endpoint (:mod:`gateway.store.urlmap`); the attempt records it.

    RETRY becomes EXPIRED when the TimeToLive has passed already.  Otherwise
    the task waits one retry interval, also after the last attempt (an
    acknowledgment may be on its way): the worker expires it when it claims
    it again with no attempt left or after the TimeToLive, without sending
    (ebms-core's final wait).  Expiring as soon as the next attempt *would*
    fall after the TimeToLive would cut that wait short by however long the
    attempt took.

    The update is guarded by the lease: when this node's lease ran out and
    another node took the task over, or an acknowledgment ended it meanwhile,
    nothing changes and None is returned.
    """
    effective = outcome
    if outcome is TaskOutcome.RETRY:
        interval = task.retry_interval or timedelta(0)
        if next_attempt_at is None:
            try:
                next_attempt_at = now + interval
            except OverflowError:
                # A CPA stored before validation refused such a RetryInterval
                # (past the year 9999): the task waits as long as a date can say.
                next_attempt_at = datetime.max.replace(tzinfo=UTC)
        if task.expires_at is not None and now >= task.expires_at:
            effective = TaskOutcome.EXPIRED
    # An expiry without an error of its own keeps the last failure: "why did
    # this Ping expire" is answered by the attempt before it.
    keep = effective is TaskOutcome.EXPIRED and error is None
    record_attempt(
        cur,
        task_id=task.id,
        attempt=task.attempts,
        node=node,
        url=url if url is not None else task.url,
        started_at=started_at,
        finished_at=now,
        http_status=http_status,
        outcome=outcome.value,
        error=error,
    )
    if effective is TaskOutcome.RETRY and next_attempt_at is not None:
        moved = reschedule_task(
            cur, task_id=task.id, node=node, at=next_attempt_at, error=error, now=now
        )
    else:
        moved = end_task(
            cur, task_id=task.id, node=node, state=effective, error=error,
            keep_last_error=keep, now=now,
        )  # fmt: skip
    return effective if moved else None


def release_task(cur: Cursor, message_pk: int, state: TaskOutcome, *, now: datetime) -> bool:
    """End a message's task from outside the worker (an acknowledgment arrived).

    ``state`` is DONE (acknowledged), FAILED (a MessageError) or EXPIRED;
    RETRY, which is no end, raises :class:`~gateway.msh.states.TransitionRefused`.  Returns
    False when the task had already ended.  A task that is being sent right
    now is ended too: the in-flight attempt's own update then finds it no
    longer sending and leaves it alone.
    """
    event = RELEASE_EVENTS.get(state)
    if event is None:
        raise TransitionRefused(TASK.name, None, TASK_EVENT_OF_OUTCOME[state])
    cur.execute(
        f"UPDATE delivery_task SET state = {literal(TASK.target(event))}, locked_by = NULL, "
        f"lease_until = NULL, updated_at = ? WHERE message_pk = ? AND {_guard(event)}",
        (to_db(now), message_pk),
    )
    return cur.rowcount == 1


def resend_task(cur: Cursor, message_pk: int, *, now: datetime, attempts: int) -> None:
    """Send a message again now, in its own POST, with ``attempts`` more attempts.

    For a stored reply (an acknowledgment, say) whose message the partner
    resent: the resend says our reply was lost (ebMS 2.0 §6.5.3-§6.5.4).  An
    ended task is reopened; one waiting out a retry interval goes now.  The
    attempt count carries on from where it stood: each attempt is recorded in
    ``delivery_attempt`` under its number, so numbering from one again would
    collide with the first round's attempts.  The budget grows instead.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    reopened = TaskEvent.REOPENED
    cur.execute(
        f"UPDATE delivery_task SET state = {literal(TASK.target(reopened))}, "
        "next_attempt_at = ?, max_attempts = attempts + ?, updated_at = ? WHERE message_pk = ? "
        f"AND {_guard(reopened)}",
        (to_db(now), attempts, to_db(now), message_pk),
    )
    # A reply still waiting out a retry interval (the sender was down when we
    # first sent it) goes now: the sender resending shows it is back.
    cur.execute(
        "UPDATE delivery_task SET next_attempt_at = ?, updated_at = ? "
        f"WHERE message_pk = ? AND {_guard(TaskEvent.HURRIED)} AND next_attempt_at > ?",
        (to_db(now), to_db(now), message_pk, to_db(now)),
    )


def last_task_error(cur: Cursor, task_id: int) -> str | None:
    """The failure sentence of a task's last failed attempt, if any."""
    row = cur.execute("SELECT last_error FROM delivery_task WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else row[0]


def task_for_message(cur: Cursor, message_pk: int) -> tuple[str, int, str | None] | None:
    """(state, attempts, last_error) of a message's task, or None.

    The state is the stored literal, a :class:`~gateway.msh.states.TaskState` value.
    """
    row = cur.execute(
        "SELECT state, attempts, last_error FROM delivery_task WHERE message_pk = ?",
        (message_pk,),
    ).fetchone()
    return None if row is None else (row[0], int(row[1]), row[2])


def unclaim_task(cur: Cursor, task: Task, *, node: str, now: datetime) -> bool:
    """Hand back a task claimed but never attempted (the node is shutting down)."""
    released = leases.release(
        cur,
        DELIVERY_TASKS,
        TaskEvent.UNCLAIMED,
        node=node,
        now=now,
        ids=(task.id,),
        sets="attempts = attempts - 1",
    )
    return released == 1


def release_node_leases(cur: Cursor, *, node: str, now: datetime) -> int:
    """Make tasks this node left in flight due again; returns how many.

    Called when a node starts: whatever it was sending when it last went
    down was never recorded, so it is attempted again (the attempt counts, as
    it may have reached the partner; the partner eliminates the duplicate).
    Node ids must be unique among the nodes sharing a store.
    """
    return leases.release(
        cur,
        DELIVERY_TASKS,
        TaskEvent.RELEASED,
        node=node,
        now=now,
        sets="next_attempt_at = ?",
        params=(to_db(now),),
    )
