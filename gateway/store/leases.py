"""A queue of rows that nodes lease: delivery tasks and webhook deliveries.

Both queues keep the same columns for it: ``state``, ``next_attempt_at``,
``attempts``, ``locked_by`` (the node holding the row), ``lease_until`` and
``updated_at``, and both follow a lease table of :mod:`gateway.msh.states`
(:data:`~gateway.msh.states.TASK`, :data:`~gateway.msh.states.WEBHOOK`).  The
operations:

* :func:`claim` leases up to ``limit`` due rows to one node and counts an
  attempt.  Due: waiting with its next attempt time come, or leased under a
  lease that ran out (its node died mid-attempt; the attempt stays counted,
  it may have reached the other side).  On PostgreSQL the claim skips rows
  other nodes hold (``FOR UPDATE SKIP LOCKED``), so several nodes share one
  queue without blocking each other; on SQLite ``BEGIN IMMEDIATE`` (the
  store's transactions) serialises claimers.
* :func:`extend` moves the lease of rows a node still holds further out.
* :func:`complete` ends a node's lease with the attempt's event (done, retry,
  failed, expired), guarded by the lease: a node whose lease ran out and whose
  row another node took over changes nothing.
* :func:`release` hands a node's leases back, due at once (the node stops,
  or starts again after it went down).

The states in every guard come from the table; each statement also checks
``locked_by``, so only the holder moves a leased row.  Every function takes a
:class:`~gateway.store.database.Cursor` and runs inside the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.msh.states import TASK, WEBHOOK, StateMachine, TaskEvent
from gateway.store.database import Cursor, Row
from gateway.store.guards import in_states, literal
from gateway.store.timeutil import to_db

__all__ = [
    "DELIVERY_TASKS",
    "WEBHOOK_DELIVERIES",
    "LeasedQueue",
    "claim",
    "complete",
    "extend",
    "held",
    "release",
]


@dataclass(frozen=True)
class LeasedQueue:
    """One table of leased rows and the state machine its ``state`` column follows."""

    table: str
    machine: StateMachine[Any, TaskEvent]
    order: str
    """``ORDER BY`` of a claim: which due rows go first."""

    @property
    def leased(self) -> str:
        """``state = '<leased>'``: the state a claim puts a row in."""
        return in_states("state", (self.machine.target(TaskEvent.CLAIMED),))

    def due(self) -> str:
        """The claim's condition, with two ``?`` for now: waiting and due, or lease run out."""
        sources = self.machine.sources(TaskEvent.CLAIMED)
        leased = self.machine.target(TaskEvent.CLAIMED)
        waiting = sources - {leased}
        parts = [f"({in_states('state', waiting)} AND next_attempt_at <= ?)"]
        parts.append(f"(state = {literal(leased)} AND lease_until < ?)")
        return " OR ".join(parts)


DELIVERY_TASKS = LeasedQueue("delivery_task", TASK, "next_attempt_at")
"""``delivery_task``: one message's attempts to reach the partner."""

WEBHOOK_DELIVERIES = LeasedQueue("webhook_delivery", WEBHOOK, "next_attempt_at, id")
"""``webhook_delivery``: one event's attempts to reach the back office."""


def claim(
    cur: Cursor,
    queue: LeasedQueue,
    *,
    node: str,
    now: datetime,
    lease: timedelta,
    limit: int,
    where: str = "",
    params: Sequence[object] = (),
    returning: str = "id",
) -> list[Row]:
    """Lease up to ``limit`` due rows to ``node``, each claim counting as an attempt.

    ``where`` narrows the rows (an SQL condition with its ``params``), and
    ``returning`` names the columns returned for each claimed row (in no
    particular order).
    """
    skip_locked = " FOR UPDATE SKIP LOCKED" if cur.dialect == "postgresql" else ""
    due = queue.due()
    condition = f"{where} AND ({due})" if where else due
    leased = queue.machine.target(TaskEvent.CLAIMED)
    return cur.execute(
        f"UPDATE {queue.table} SET state = {literal(leased)}, locked_by = ?, lease_until = ?, "
        f"attempts = attempts + 1, updated_at = ? WHERE id IN (SELECT id FROM {queue.table} "
        f"WHERE {condition} ORDER BY {queue.order} LIMIT ?{skip_locked}) RETURNING {returning}",
        (node, to_db(now + lease), to_db(now), *params, to_db(now), to_db(now), limit),
    ).fetchall()


def extend(
    cur: Cursor,
    queue: LeasedQueue,
    ids: Sequence[int],
    *,
    node: str,
    now: datetime,
    lease: timedelta,
) -> int:
    """Hold ``node``'s leased rows ``ids`` until ``now + lease``; returns how many it still held.

    For an attempt that outlasts its lease (a large message on a slow link):
    renewed in time, no other node takes the row over meanwhile.
    """
    if not ids:
        return 0
    marks = ", ".join("?" for _ in ids)
    cur.execute(
        f"UPDATE {queue.table} SET lease_until = ?, updated_at = ? "
        f"WHERE id IN ({marks}) AND locked_by = ? AND {queue.leased}",
        (to_db(now + lease), to_db(now), *ids, node),
    )
    return max(cur.rowcount, 0)


def complete(
    cur: Cursor,
    queue: LeasedQueue,
    row_id: int,
    event: TaskEvent,
    *,
    node: str,
    now: datetime,
    sets: str = "",
    params: Sequence[object] = (),
) -> bool:
    """End ``node``'s lease on ``row_id`` with ``event``; False when the row is not its own.

    ``sets`` are further assignments (``next_attempt_at = ?, last_error = ?``)
    with their ``params``.  The row must be leased by ``node`` and in a state
    ``event`` may leave.
    """
    after = queue.machine.target(event)
    extra = f"{sets}, " if sets else ""
    cur.execute(
        f"UPDATE {queue.table} SET state = {literal(after)}, {extra}locked_by = NULL, "
        "lease_until = NULL, updated_at = ? WHERE id = ? AND locked_by = ? AND "
        + in_states("state", queue.machine.sources(event)),
        (*params, to_db(now), row_id, node),
    )
    return cur.rowcount == 1


def release(
    cur: Cursor,
    queue: LeasedQueue,
    event: TaskEvent,
    *,
    node: str,
    now: datetime,
    ids: Sequence[int] | None = None,
    sets: str = "",
    params: Sequence[object] = (),
) -> int:
    """Hand ``node``'s leases back (``ids`` of them, or all); returns how many.

    ``event`` is :attr:`~TaskEvent.UNCLAIMED` (never attempted: the caller
    takes the attempt back in ``sets``) or :attr:`~TaskEvent.RELEASED` (cut
    off; the attempt stays counted).  ``sets`` usually makes the rows due
    now (``next_attempt_at = ?``).
    """
    if ids is not None and not ids:
        return 0
    after = queue.machine.target(event)
    extra = f"{sets}, " if sets else ""
    chosen = f"id IN ({', '.join('?' for _ in ids)}) AND " if ids is not None else ""
    cur.execute(
        f"UPDATE {queue.table} SET state = {literal(after)}, {extra}locked_by = NULL, "
        f"lease_until = NULL, updated_at = ? WHERE {chosen}locked_by = ? AND "
        + in_states("state", queue.machine.sources(event)),
        (*params, to_db(now), *(ids or ()), node),
    )
    return max(cur.rowcount, 0)


def held(cur: Cursor, queue: LeasedQueue, row_id: int, *, node: str, columns: str) -> Row | None:
    """``columns`` of ``row_id`` while ``node`` holds its lease, else None."""
    return cur.execute(
        f"SELECT {columns} FROM {queue.table} WHERE id = ? AND locked_by = ? AND {queue.leased}",
        (row_id, node),
    ).fetchone()
