"""The operator's view of ebMS messages: list with filters, one message in full, retry now.

``dkgw message list/show/retry`` and the REST ``/ebms/messages`` routes are
thin layers over these functions.  Every function takes a cursor and runs in
the caller's transaction; nothing reads or returns payload content.

Retrying is a decision (:func:`retry_refusal`, pure) and its application
(:func:`retry_message`): the same stored message, same MessageId and bytes,
becomes due at once.  Resending the identical message is what ebMS 2.0
§6.5.3 allows; the partner's duplicate elimination keeps it from being
processed twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.msh.states import (
    OUTBOUND,
    TASK,
    TASK_BUSY,
    MessageEvent,
    OutboundStatus,
    TaskEvent,
    TaskState,
)
from gateway.store import parties
from gateway.store.database import Cursor, Row
from gateway.store.guards import in_states, literal
from gateway.store.messages import Direction, move_status
from gateway.store.timeutil import from_db, to_db

__all__ = [
    "MAX_LIMIT",
    "MAX_OFFSET",
    "MessageDetail",
    "MessageQuery",
    "MessageSummary",
    "RetryRefused",
    "Signal",
    "StatusChange",
    "detail_json",
    "list_messages",
    "message_detail",
    "retry_message",
    "retry_refusal",
    "summary_json",
    "supersede",
]

#: How a message retired by a resend is marked (status reason, event text, task error).
SUPERSEDED = "superseded by resend"

#: The most rows one page holds.
MAX_LIMIT = 1000
#: The largest offset a page may start at.
MAX_OFFSET = 999_999_999


@dataclass(frozen=True)
class MessageQuery:
    """Filters for :func:`list_messages`; None means any.  Business messages only."""

    status: str | None = None
    direction: Direction | None = None
    cpa_id: str | None = None
    party: str | None = None
    """A PartyId (``type:value`` or the bare value) as sender or receiver."""
    service: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    correlation_id: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class MessageSummary:
    """One row of the list: where the message is and what happened to it last."""

    message_id: str
    direction: Direction
    status: str | None
    status_at: datetime | None
    cpa_id: str
    from_party: str
    to_party: str
    service: str
    action: str
    created_at: datetime
    correlation_id: str | None
    task_state: str | None
    attempts: int
    max_attempts: int
    next_attempt_at: datetime | None
    """When the next attempt is due; None when no attempt is coming."""
    expires_at: datetime | None
    last_error: str | None

    @property
    def attempts_left(self) -> int:
        """Attempts still to come while the task is pending (0 once it ended)."""
        if self.task_state not in TASK_BUSY:
            return 0
        return max(self.max_attempts - self.attempts, 0)


@dataclass(frozen=True)
class Signal:
    """A message that refers to ours: an acknowledgment, error, status response or reply."""

    message_id: str
    direction: Direction
    action: str
    created_at: datetime


@dataclass(frozen=True)
class StatusChange:
    """One line of the status history."""

    status: str
    at: datetime
    reason: str | None


@dataclass(frozen=True)
class MessageDetail:
    """A message in full for the operator (no payload content)."""

    summary: MessageSummary
    conversation_id: str
    ref_to_message_id: str | None
    signals: tuple[Signal, ...]
    history: tuple[StatusChange, ...]


_SUMMARY = (
    "SELECT m.message_id, m.direction, m.status, m.status_at, m.cpa_id, m.from_party, "
    "m.to_party, m.service, m.action, m.created_at, m.correlation_id, t.state, "
    "COALESCE(t.attempts, 0), COALESCE(t.max_attempts, 0), t.next_attempt_at, t.expires_at, "
    "t.last_error, m.id, m.conversation_id, m.ref_to_message_id "
    "FROM ebms_message m LEFT JOIN delivery_task t ON t.message_pk = m.id"
)


def _opt(value: str | None) -> datetime | None:
    return None if value is None else from_db(value)


def _summary(row: Row) -> MessageSummary:
    state = row[11]
    return MessageSummary(
        message_id=row[0],
        direction=Direction(row[1]),
        status=row[2],
        status_at=_opt(row[3]),
        cpa_id=row[4],
        from_party=row[5],
        to_party=row[6],
        service=row[7],
        action=row[8],
        created_at=from_db(row[9]),
        correlation_id=row[10],
        task_state=state,
        attempts=int(row[12]),
        max_attempts=int(row[13]),
        next_attempt_at=_opt(row[14]) if state == TaskState.PENDING else None,
        expires_at=_opt(row[15]),
        last_error=row[16],
    )


def list_messages(cur: Cursor, query: MessageQuery) -> list[MessageSummary]:
    """Business messages matching ``query``, newest first, one page."""
    if not 1 <= query.limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    if not 0 <= query.offset <= MAX_OFFSET:
        raise ValueError(f"offset must be between 0 and {MAX_OFFSET}")
    where = ["m.status IS NOT NULL"]
    params: list[object] = []
    for column, value in (
        ("m.status", query.status),
        ("m.direction", query.direction.value if query.direction else None),
        ("m.cpa_id", query.cpa_id),
        ("m.service", query.service),
        ("m.action", query.action),
        ("m.correlation_id", query.correlation_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.party is not None:
        # Stored as type:value[,type:value]: match a whole id (with or without its type).
        end, middle = parties.like_patterns(query.party)
        where.append(
            "(m.from_party LIKE ? OR m.from_party LIKE ? OR m.to_party LIKE ? OR m.to_party LIKE ?)"
        )
        params.extend((end, middle, end, middle))
    if query.since is not None:
        where.append("m.created_at >= ?")
        params.append(to_db(query.since))
    if query.until is not None:
        where.append("m.created_at < ?")
        params.append(to_db(query.until))
    sql = f"{_SUMMARY} WHERE {' AND '.join(where)} ORDER BY m.id DESC LIMIT ? OFFSET ?"
    rows = cur.execute(sql, (*params, query.limit, query.offset)).fetchall()
    return [_summary(r) for r in rows]


def message_detail(
    cur: Cursor, message_id: str, direction: Direction | None = None
) -> list[MessageDetail]:
    """The message(s) with this MessageId (one per direction), with signals and history."""
    sql = f"{_SUMMARY} WHERE m.message_id = ?"
    params: list[object] = [message_id]
    if direction is not None:
        sql += " AND m.direction = ?"
        params.append(direction.value)
    out = []
    for row in cur.execute(sql + " ORDER BY m.direction DESC", params).fetchall():
        pk = int(row[17])
        signals = tuple(
            Signal(r[0], Direction(r[1]), r[2], from_db(r[3]))
            for r in cur.execute(
                "SELECT message_id, direction, action, created_at FROM ebms_message "
                "WHERE ref_to_message_id = ? ORDER BY id",
                (message_id,),
            ).fetchall()
        )
        history = tuple(
            StatusChange(r[0], from_db(r[1]), r[2])
            for r in cur.execute(
                "SELECT status, at, reason FROM status_history WHERE message_pk = ? ORDER BY at",
                (pk,),
            ).fetchall()
        )
        out.append(MessageDetail(_summary(row), row[18], row[19], signals, history))
    return out


class RetryRefused(Exception):
    """The message cannot be retried; ``str()`` says why.  ``unknown``: no such message."""

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


def retry_refusal(
    message_id: str,
    status: str | None,
    task_state: str | None,
    expires_at: datetime | None,
    now: datetime,
    last_error: str | None = None,
) -> str | None:
    """Why our message cannot be attempted again now, or None when it can.

    A message is retried while its TimeToLive lasts (ebMS 2.0 §6.4.4: after
    it the partner must not deliver it): pending ones get their next attempt
    now, failed or expired ones one more attempt.  Delivered is final.
    """
    if status is None or task_state is None:
        return f"message {message_id} is a signal or has no delivery task; nothing to retry"
    if status == OutboundStatus.DELIVERED:
        return f"message {message_id} is delivered already"
    if task_state == TaskState.SENDING:
        return f"message {message_id} is being sent right now"
    if not TASK.allows(task_state, TaskEvent.RETRIED):
        return f"message {message_id} has a {task_state} delivery task; nothing to retry"
    if last_error is not None and last_error.startswith(SUPERSEDED):
        return f"message {message_id} was {last_error}; retry that one"
    if expires_at is not None and now >= expires_at:
        return (
            f"message {message_id} is {status} and its TimeToLive passed at "
            f"{to_db(expires_at)}; send it anew"
        )
    return None


def retry_message(cur: Cursor, message_id: str, *, now: datetime) -> MessageSummary:
    """Make our message ``message_id`` due now, same MessageId and bytes; its new summary.

    A failed or expired message gets one more attempt and is CREATED again
    (the history says it was retried).  Raises :class:`RetryRefused`.
    """
    row = cur.execute(
        "SELECT m.id, m.status, t.state, t.expires_at, t.attempts, t.max_attempts, t.last_error "
        "FROM ebms_message m LEFT JOIN delivery_task t ON t.message_pk = m.id "
        "WHERE m.message_id = ? AND m.direction = 'out'",
        (message_id,),
    ).fetchone()
    if row is None:
        raise RetryRefused(f"no outgoing message {message_id!r}", unknown=True)
    pk, status, state, expires, attempts, max_attempts, last_error = row
    refusal = retry_refusal(message_id, status, state, _opt(expires), now, last_error)
    if refusal is not None:
        raise RetryRefused(refusal)
    # At least one attempt left, so the claim sends rather than only ending the wait.
    retried = TaskEvent.RETRIED
    cur.execute(
        f"UPDATE delivery_task SET state = {literal(TASK.target(retried))}, next_attempt_at = ?, "
        "max_attempts = ?, updated_at = ? WHERE message_pk = ? AND state = ? AND "
        + in_states("state", TASK.sources(retried)),
        (to_db(now), max(int(max_attempts), int(attempts) + 1), to_db(now), pk, state),
    )
    if cur.rowcount != 1:
        raise RetryRefused(f"message {message_id} changed meanwhile; try again")
    # A pending message is CREATED still: only its task moves.
    if OUTBOUND.allows(status, MessageEvent.RETRIED):
        move_status(
            cur,
            pk,
            MessageEvent.RETRIED,
            message_id=message_id,
            direction=Direction.OUT,
            now=now,
            reason=f"retried by the operator after {status}",
        )
    (detail,) = message_detail(cur, message_id, Direction.OUT)
    return detail.summary


def supersede(cur: Cursor, message_pk: int, message_id: str, new_id: str, *, now: datetime) -> bool:
    """Retire our pending message ``message_id`` because ``new_id`` resends it.

    Run in the transaction that queues ``new_id``, so the partner never gets
    both: the task ends before its next attempt, the message becomes
    DELIVERY_FAILED with the reason "superseded by resend <new id>", and the
    back office gets a FAILED event saying so.  Returns False when there was
    nothing to retire (delivered, failed or expired already).  Raises
    :class:`RetryRefused` while an attempt is in flight: the original may be
    on the wire right now, and the caller must not queue its double.
    """
    row = cur.execute(
        "SELECT m.status, t.state FROM ebms_message m "
        "LEFT JOIN delivery_task t ON t.message_pk = m.id WHERE m.id = ?",
        (message_pk,),
    ).fetchone()
    superseded = TaskEvent.SUPERSEDED
    if (
        row is None
        or not OUTBOUND.allows(row[0], MessageEvent.FAILED)
        or not TASK.allows(row[1], superseded)
    ):
        if row is not None and row[1] == TaskState.SENDING:
            raise RetryRefused(f"message {message_id} is being sent right now; resend it later")
        return False
    reason = f"{SUPERSEDED} {new_id}"
    # Guarded by the state: a worker that claimed the task meanwhile wins, and
    # the resend is refused rather than sent beside it.
    cur.execute(
        f"UPDATE delivery_task SET state = {literal(TASK.target(superseded))}, locked_by = NULL, "
        "lease_until = NULL, last_error = ?, updated_at = ? WHERE message_pk = ? AND "
        + in_states("state", TASK.sources(superseded)),
        (reason, to_db(now), message_pk),
    )
    if cur.rowcount != 1:
        raise RetryRefused(f"message {message_id} is being sent right now; resend it later")
    move_status(
        cur,
        message_pk,
        MessageEvent.FAILED,
        message_id=message_id,
        direction=Direction.OUT,
        now=now,
        reason=reason,
        error_text=reason,
    )
    return True


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def summary_json(s: MessageSummary) -> dict[str, Any]:
    """A summary as JSON (the REST list returns the same fields)."""
    return {
        "messageId": s.message_id,
        "direction": s.direction.value,
        "status": s.status,
        "statusTime": _iso(s.status_at),
        "cpaId": s.cpa_id,
        "fromPartyId": s.from_party,
        "toPartyId": s.to_party,
        "service": s.service,
        "action": s.action,
        "created": _iso(s.created_at),
        "correlationId": s.correlation_id,
        "attempts": s.attempts,
        "attemptsLeft": s.attempts_left,
        "nextAttempt": _iso(s.next_attempt_at),
        "expires": _iso(s.expires_at),
        "lastError": s.last_error,
    }


def detail_json(d: MessageDetail) -> dict[str, Any]:
    """A message in full as JSON."""
    return {
        **summary_json(d.summary),
        "conversationId": d.conversation_id,
        "refToMessageId": d.ref_to_message_id,
        "signals": [
            {
                "messageId": s.message_id,
                "direction": s.direction.value,
                "action": s.action,
                "created": _iso(s.created_at),
            }
            for s in d.signals
        ],
        "history": [
            {"status": h.status, "time": _iso(h.at), "reason": h.reason} for h in d.history
        ],
    }
