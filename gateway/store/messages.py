"""Messages and their back-office events in the store.

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.  That is how the gateway keeps its promise to
persist before acting: a received message, its acknowledgment and the task
that sends the acknowledgment are written in one transaction before anything
is answered, and an outbound message is stored with its delivery task before
the first attempt (ebMS 2.0 §6.5 and §6.4.1).

A business message's status moves only as the tables of
:mod:`gateway.msh.states` allow (:func:`move_status`); signals are stored
without one.  The payloads are :mod:`gateway.store.payloads`, the delivery
tasks :mod:`gateway.store.tasks`; their names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.msh.states import (
    EVENT_ON_ENTRY,
    INBOUND,
    OUTBOUND,
    EventType,
    InboundStatus,
    MessageEvent,
    OutboundStatus,
    TaskOutcome,
)
from gateway.store import parties
from gateway.store.database import Cursor, Row
from gateway.store.parties import Parties
from gateway.store.payloads import (
    CHUNK_BYTES,
    AttachmentRecord,
    PayloadFile,
    SpooledPayload,
    fingerprint,
    insert_attachment,
    load_attachments,
)
from gateway.store.records import Direction, MessageRecord, StoredMessage
from gateway.store.tasks import (
    Task,
    claim_due_tasks,
    finish_attempt,
    insert_task,
    last_task_error,
    release_node_leases,
    release_task,
    resend_task,
    task_for_message,
    unclaim_task,
)
from gateway.store.timeutil import from_db, to_db

__all__ = [
    "CHUNK_BYTES",
    "AttachmentRecord",
    "Direction",
    "EventType",
    "InboundStatus",
    "MessageRecord",
    "OutboundStatus",
    "PayloadFile",
    "SpooledPayload",
    "StoredMessage",
    "Task",
    "TaskOutcome",
    "add_event",
    "claim_due_tasks",
    "correlation_of",
    "fail_received",
    "find_message",
    "find_reply",
    "fingerprint",
    "finish_attempt",
    "insert_message",
    "insert_task",
    "last_task_error",
    "load_attachments",
    "message_by_pk",
    "move_status",
    "release_node_leases",
    "release_task",
    "resend_task",
    "set_status",
    "task_for_message",
    "unclaim_task",
]


def _opt(value: datetime | None) -> str | None:
    return None if value is None else to_db(value)


def _opt_from(value: str | None) -> datetime | None:
    return None if value is None else from_db(value)


def _party_text(value: str | Parties) -> str:
    return value if isinstance(value, str) else parties.encode(value)


_MESSAGE_COLUMNS = (
    "id, message_id, direction, cpa_id, conversation_id, ref_to_message_id, from_party, "
    "from_role, to_party, to_role, service, action, sent_at, time_to_live, persist_until, "
    "status, status_at, content_type, envelope, fingerprint, created_at, correlation_id"
)


def _message(row: Row) -> StoredMessage:
    return StoredMessage(
        pk=int(row[0]),
        message_id=row[1],
        direction=Direction(row[2]),
        cpa_id=row[3],
        conversation_id=row[4],
        ref_to_message_id=row[5],
        from_party=row[6],
        from_role=row[7],
        to_party=row[8],
        to_role=row[9],
        service=row[10],
        action=row[11],
        sent_at=from_db(row[12]),
        time_to_live=_opt_from(row[13]),
        persist_until=_opt_from(row[14]),
        status=row[15],
        status_at=_opt_from(row[16]),
        content_type=row[17],
        envelope=bytes(row[18]),
        fingerprint=row[19],
        created_at=from_db(row[20]),
        correlation_id=row[21],
    )


def insert_message(
    cur: Cursor, record: MessageRecord, attachments: Sequence[AttachmentRecord], *, now: datetime
) -> int:
    """Store a message and its payloads; returns its primary key.

    Raises :class:`~gateway.store.database.IntegrityConflict` when a message
    with this MessageId and direction is already stored.
    """
    cur.execute(
        "INSERT INTO ebms_message (message_id, direction, cpa_id, conversation_id, "
        "ref_to_message_id, from_party, from_role, to_party, to_role, service, action, sent_at, "
        "time_to_live, persist_until, status, status_at, content_type, envelope, fingerprint, "
        "created_at, correlation_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.message_id,
            record.direction.value,
            record.cpa_id,
            record.conversation_id,
            record.ref_to_message_id,
            _party_text(record.from_party),
            record.from_role,
            _party_text(record.to_party),
            record.to_role,
            record.service,
            record.action,
            to_db(record.sent_at),
            _opt(record.time_to_live),
            _opt(record.persist_until),
            record.status,
            to_db(now) if record.status else None,
            record.content_type,
            record.envelope,
            fingerprint(record.envelope, attachments),
            to_db(now),
            record.correlation_id,
        ),
    )
    row = cur.execute(
        "SELECT id FROM ebms_message WHERE message_id = ? AND direction = ?",
        (record.message_id, record.direction.value),
    ).fetchone()
    assert row is not None
    pk = int(row[0])
    for n, a in enumerate(attachments):
        insert_attachment(cur, pk, n, a)
    if record.status:
        cur.execute(
            "INSERT INTO status_history (message_pk, status, at, reason) VALUES (?, ?, ?, ?)",
            (pk, record.status, to_db(now), None),
        )
    return pk


def find_message(cur: Cursor, message_id: str, direction: Direction) -> StoredMessage | None:
    """The stored message with this MessageId and direction, or None."""
    row = cur.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM ebms_message WHERE message_id = ? AND direction = ?",
        (message_id, direction.value),
    ).fetchone()
    return None if row is None else _message(row)


def message_by_pk(cur: Cursor, pk: int) -> StoredMessage:
    """The stored message with primary key ``pk``."""
    row = cur.execute(f"SELECT {_MESSAGE_COLUMNS} FROM ebms_message WHERE id = ?", (pk,)).fetchone()
    if row is None:
        raise LookupError(f"no message with pk {pk}")
    return _message(row)


def find_reply(cur: Cursor, ref_to_message_id: str, actions: Sequence[str]) -> StoredMessage | None:
    """The signal we sent in answer to ``ref_to_message_id`` (its ack or error), if any.

    A duplicate gets the stored answer again, byte for byte (ebMS 2.0 §6.4.1).
    """
    marks = ", ".join("?" for _ in actions)
    row = cur.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM ebms_message WHERE ref_to_message_id = ? "
        f"AND direction = 'out' AND action IN ({marks}) ORDER BY id LIMIT 1",
        (ref_to_message_id, *actions),
    ).fetchone()
    return None if row is None else _message(row)


def set_status(
    cur: Cursor,
    message_pk: int,
    status: str,
    *,
    now: datetime,
    reason: str | None = None,
    only_from: Sequence[str] = (),
) -> bool:
    """Move a message to ``status``; returns False when it was not in ``only_from``.

    ``only_from`` guards transitions that may race (an acknowledgment and an
    expiry for the same message): the first one wins, the other is a no-op.
    """
    sql = "UPDATE ebms_message SET status = ?, status_at = ? WHERE id = ?"
    params: list[object] = [status, to_db(now), message_pk]
    if only_from:
        sql += f" AND status IN ({', '.join('?' for _ in only_from)})"
        params.extend(only_from)
    cur.execute(sql, params)
    if cur.rowcount != 1:
        return False
    cur.execute(
        "INSERT INTO status_history (message_pk, status, at, reason) VALUES (?, ?, ?, ?)",
        (message_pk, status, to_db(now), reason),
    )
    return True


def move_status(
    cur: Cursor,
    message_pk: int,
    event: MessageEvent,
    *,
    message_id: str,
    direction: Direction,
    now: datetime,
    reason: str | None = None,
    error_code: str | None = None,
    error_text: str | None = None,
) -> bool:
    """Move a business message on by ``event``; False when its status does not allow it.

    The status it moves to and the statuses it may leave come from the table
    of its direction (:data:`~gateway.msh.states.OUTBOUND`,
    :data:`~gateway.msh.states.INBOUND`): the update is guarded by them, so
    of two moves that race (an acknowledgment and an expiry) the first one
    wins and the other is a no-op.  A move into a status the back office
    hears of (:data:`~gateway.msh.states.EVENT_ON_ENTRY`) adds that event, with
    ``error_code`` and ``error_text``.

    Raises :class:`~gateway.msh.states.TransitionRefused` for an event the
    direction's table does not know at all (PROCESSED for an outbound message).
    """
    machine = OUTBOUND if direction is Direction.OUT else INBOUND
    after = machine.target(event)
    sources = sorted(s.value for s in machine.sources(event))
    if not set_status(cur, message_pk, after.value, now=now, reason=reason, only_from=sources):
        return False
    announced = EVENT_ON_ENTRY.get(after)
    if announced is not None:
        add_event(
            cur, message_pk, message_id, announced, now=now,
            error_code=error_code, error_text=error_text,
        )  # fmt: skip
    return True


def add_event(
    cur: Cursor,
    message_pk: int,
    message_id: str,
    event: EventType,
    *,
    now: datetime,
    error_code: str | None = None,
    error_text: str | None = None,
) -> None:
    """Record an event for the back office; a FAILED one may say why (code and text)."""
    cur.execute(
        "INSERT INTO message_event (message_pk, message_id, event_type, created_at, "
        "error_code, error_text) VALUES (?, ?, ?, ?, ?, ?)",
        (message_pk, message_id, event.value, to_db(now), error_code, error_text),
    )


def fail_received(
    cur: Cursor,
    message_id: str,
    reason: str,
    *,
    now: datetime,
    error_code: str | None = None,
) -> StoredMessage | None:
    """End a received message that cannot be handed on: FAILED with ``reason``.

    Its RECEIVED event is answered by a FAILED one (with the code and reason),
    so the back office sees a failure, not a message to fetch.  Returns the
    message, or None when it is unknown or no longer RECEIVED (someone else
    settled it first).
    """
    message = find_message(cur, message_id, Direction.IN)
    if message is None or not move_status(
        cur,
        message.pk,
        MessageEvent.FAILED,
        message_id=message_id,
        direction=Direction.IN,
        now=now,
        reason=reason,
        error_code=error_code,
        error_text=reason,
    ):
        return None
    cur.execute(
        "UPDATE message_event SET processed_at = ? WHERE message_pk = ? "
        "AND event_type = ? AND processed_at IS NULL",
        (to_db(now), message.pk, EventType.RECEIVED.value),
    )
    return message


def correlation_of(cur: Cursor, message_id: str) -> str | None:
    """The correlation id of our outbound message ``message_id``, if it has one."""
    row = cur.execute(
        "SELECT correlation_id FROM ebms_message WHERE message_id = ? AND direction = 'out'",
        (message_id,),
    ).fetchone()
    return row[0] if row else None
