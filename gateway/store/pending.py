"""Outbound messages still pending on a CPA, and failing them when it goes.

A pending message is one with a delivery task not yet ended (waiting or being
sent): business messages, acknowledgments, errors and pings alike.  Deleting
a CPA under them would leave tasks no worker can send (docs/operations.md,
"CPA lifecycle"), so the registry refuses unless told to fail them first,
which :func:`fail_pending` does inside the deleting transaction: each task
ends ``failed`` with the reason, each business message still CREATED becomes
DELIVERY_FAILED with a FAILED event for the back office.

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime

from gateway.msh.states import TASK, MessageEvent, TaskEvent
from gateway.store.database import Cursor
from gateway.store.guards import in_states, literal
from gateway.store.messages import Direction, move_status
from gateway.store.timeutil import to_db

__all__ = ["CPA_DELETED", "DELIVERY_FAILURE", "fail_pending", "pending_count"]

#: The reason stored with each message failed because its CPA was deleted.
CPA_DELETED = "CPA deleted by operator."
#: The event's error code: ebMS 2.0 §4.2.3.4.1 DeliveryFailure.
DELIVERY_FAILURE = "DeliveryFailure"

# Pending: the states a task whose CPA goes is cancelled from (TaskEvent.CANCELLED),
# those of a task with an attempt or the final wait still to come.
_CANCELLABLE = TASK.sources(TaskEvent.CANCELLED)

_PENDING = (
    "FROM delivery_task t JOIN ebms_message m ON m.id = t.message_pk "
    f"WHERE m.cpa_id = ? AND m.direction = 'out' AND {in_states('t.state', _CANCELLABLE)}"
)


def pending_count(cur: Cursor, cpa_id: str) -> int:
    """How many outbound messages of ``cpa_id`` still wait to be sent (or are being sent)."""
    row = cur.execute(f"SELECT COUNT(*) {_PENDING}", (cpa_id,)).fetchone()
    return int(row[0]) if row else 0


def fail_pending(cur: Cursor, cpa_id: str, *, now: datetime, reason: str = CPA_DELETED) -> int:
    """End every pending task of ``cpa_id`` as failed with ``reason``; returns how many.

    A task being sent right now ends too: its attempt's own update then finds
    it no longer ``sending`` and changes nothing (:func:`finish_attempt`'s guard).
    """
    rows = cur.execute(
        f"SELECT t.id, m.id, m.message_id, m.status {_PENDING} ORDER BY t.id", (cpa_id,)
    ).fetchall()
    cancelled = literal(TASK.target(TaskEvent.CANCELLED))
    for task_id, message_pk, message_id, status in rows:
        cur.execute(
            f"UPDATE delivery_task SET state = {cancelled}, locked_by = NULL, lease_until = NULL, "
            f"last_error = ?, updated_at = ? WHERE id = ? AND {in_states('state', _CANCELLABLE)}",
            (reason, to_db(now), task_id),
        )
        if status is not None:
            move_status(
                cur,
                int(message_pk),
                MessageEvent.FAILED,
                message_id=str(message_id),
                direction=Direction.OUT,
                now=now,
                reason=reason,
                error_code=DELIVERY_FAILURE,
                error_text=reason,
            )
    return len(rows)
