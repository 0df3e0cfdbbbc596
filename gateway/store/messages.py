"""Messages, payloads, delivery tasks and events in the store.

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.  That is how the gateway keeps its promise to
persist before acting: a received message, its acknowledgment and the task
that sends the acknowledgment are written in one transaction before anything
is answered, and an outbound message is stored with its delivery task before
the first attempt (ebMS 2.0 §6.5 and §6.4.1).

Delivery tasks are claimed with a lease.  On PostgreSQL the claim skips rows
other nodes hold (``FOR UPDATE SKIP LOCKED``), so several nodes share one
queue without blocking each other; on SQLite ``BEGIN IMMEDIATE`` serialises
claimers.  A node that dies with a lease loses it when the lease runs out and
another node takes the task over.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import IO, Protocol

from gateway.store.database import Cursor, Row
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
    "find_message",
    "find_reply",
    "fingerprint",
    "finish_attempt",
    "insert_message",
    "insert_task",
    "last_task_error",
    "load_attachments",
    "message_by_pk",
    "release_node_leases",
    "release_task",
    "set_status",
    "task_for_message",
    "unclaim_task",
]


class Direction(StrEnum):
    """Which way a message travelled."""

    IN = "in"
    OUT = "out"


class OutboundStatus(StrEnum):
    """Status of a message we send; the names and meanings are ebms-core's."""

    CREATED = "CREATED"
    DELIVERED = "DELIVERED"
    DELIVERY_FAILED = "DELIVERY_FAILED"
    EXPIRED = "EXPIRED"


class InboundStatus(StrEnum):
    """Status of a message we received; the names and meanings are ebms-core's."""

    RECEIVED = "RECEIVED"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"


class EventType(StrEnum):
    """Events the back office can read (ebms-core's message events)."""

    RECEIVED = "RECEIVED"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class TaskOutcome(StrEnum):
    """What one delivery attempt leads to."""

    DONE = "done"  # delivered (best effort: 2xx; reliable: acknowledged)
    RETRY = "retry"  # try again after the retry interval, if attempts and time remain
    FAILED = "failed"  # final failure: never try again
    EXPIRED = "expired"  # TimeToLive passed or attempts used up


CHUNK_BYTES = 1 << 20
"""Payloads above this size are stored as rows of this many bytes (``ebms_payload_chunk``).

A chunk is what one statement binds or returns, so storing or loading a
payload of any size holds about this much of it in memory at a time.
"""


class PayloadFile(Protocol):
    """A payload kept on disk rather than in memory, with its size and digest known.

    :class:`gateway.ebms.mime.ReceivedPart` (a spooled received part) is one.
    """

    size: int
    sha256: str

    def open(self) -> IO[bytes]:
        """The content positioned at the start (shared: read it, do not close it)."""
        ...

    def close(self) -> None:
        """Drop the content."""
        ...


class SpooledPayload:
    """A payload copied into a temporary file, hashed on the way in."""

    def __init__(self) -> None:
        # Small payloads stay in memory; the file only appears above one chunk.
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=CHUNK_BYTES)  # noqa: SIM115
        self._digest = hashlib.sha256()
        self.size = 0
        self.sha256 = self._digest.hexdigest()

    @classmethod
    def copy_of(cls, source: IO[bytes]) -> SpooledPayload:
        """A spooled copy of ``source``, read from where it stands in chunks."""
        payload = cls()
        while chunk := source.read(CHUNK_BYTES):
            payload.write(chunk)
        return payload

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""
        self._file.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)
        self.sha256 = self._digest.hexdigest()

    def open(self) -> IO[bytes]:
        """The content positioned at the start (shared: read it, do not close it)."""
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        """Drop the temporary file."""
        self._file.close()


@dataclass(frozen=True, eq=False)
class AttachmentRecord:
    """One payload part as stored.

    ``content`` is the bytes themselves, or a :class:`PayloadFile` for a large
    payload, which then is never read into memory whole: the store writes it
    and reads it back in :data:`CHUNK_BYTES` pieces.
    """

    content_id: str
    content_type: str
    content: bytes | PayloadFile
    filename: str | None = None

    def __eq__(self, other: object) -> bool:
        # Equal content, not the same object: a payload loaded back from the
        # store equals the one stored, whether in memory or spooled.
        if not isinstance(other, AttachmentRecord):
            return NotImplemented
        return (self.content_id, self.content_type, self.filename, self.size, self.sha256) == (
            other.content_id,
            other.content_type,
            other.filename,
            other.size,
            other.sha256,
        )

    def __hash__(self) -> int:
        return hash((self.content_id, self.content_type, self.filename, self.size))

    @property
    def size(self) -> int:
        """Length of the content in bytes."""
        return len(self.content) if isinstance(self.content, bytes) else self.content.size

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the content."""
        if isinstance(self.content, bytes):
            return hashlib.sha256(self.content).hexdigest()
        return self.content.sha256

    def open(self) -> IO[bytes]:
        """The content as a file positioned at the start (shared: do not close it)."""
        if isinstance(self.content, bytes):
            return io.BytesIO(self.content)
        return self.content.open()

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes, without reading the rest."""
        if isinstance(self.content, bytes):
            return self.content[:n]
        return self.content.open().read(n)

    def data(self) -> bytes:
        """The whole content in memory: only for parts known to be small (encrypted ones)."""
        if isinstance(self.content, bytes):
            return self.content
        return self.content.open().read()

    def close(self) -> None:
        """Drop a spooled content; bytes need nothing."""
        if not isinstance(self.content, bytes):
            self.content.close()


@dataclass(frozen=True)
class MessageRecord:
    """The row to store for one message (signals included)."""

    message_id: str
    direction: Direction
    cpa_id: str
    conversation_id: str
    from_party: str
    to_party: str
    service: str
    action: str
    sent_at: datetime
    content_type: str
    envelope: bytes
    ref_to_message_id: str | None = None
    from_role: str | None = None
    to_role: str | None = None
    time_to_live: datetime | None = None
    persist_until: datetime | None = None
    status: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A stored message without its payloads."""

    pk: int
    message_id: str
    direction: Direction
    cpa_id: str
    conversation_id: str
    ref_to_message_id: str | None
    from_party: str
    from_role: str | None
    to_party: str
    to_role: str | None
    service: str
    action: str
    sent_at: datetime
    time_to_live: datetime | None
    persist_until: datetime | None
    status: str | None
    status_at: datetime | None
    content_type: str
    envelope: bytes
    fingerprint: str
    created_at: datetime
    correlation_id: str | None = None
    """The back office's id for the request that made this message (logs only)."""


@dataclass(frozen=True)
class Task:
    """A claimed delivery task."""

    id: int
    message_pk: int
    url: str
    attempts: int  # including the one just claimed
    max_attempts: int

    @property
    def exhausted(self) -> bool:
        """No attempt left: the claim only ends the final wait for an acknowledgment."""
        return self.attempts > self.max_attempts

    retry_interval: timedelta | None
    expires_at: datetime | None
    lease_until: datetime


def _opt(value: datetime | None) -> str | None:
    return None if value is None else to_db(value)


def _opt_from(value: str | None) -> datetime | None:
    return None if value is None else from_db(value)


def fingerprint(envelope: bytes, attachments: Iterable[AttachmentRecord]) -> str:
    """SHA-256 over the envelope and every payload, in order.

    Tells a true duplicate (the sender's resend, same bytes) from a MessageId
    reused for different content (ebMS 2.0 §6.5 and §6.4.1).
    """
    digest = hashlib.sha256()
    digest.update(len(envelope).to_bytes(8, "big"))
    digest.update(envelope)
    for a in attachments:
        digest.update(a.size.to_bytes(8, "big"))
        if isinstance(a.content, bytes):
            digest.update(a.content)
            continue
        source = a.content.open()
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


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
            record.from_party,
            record.from_role,
            record.to_party,
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
        _insert_attachment(cur, pk, n, a)
    if record.status:
        cur.execute(
            "INSERT INTO status_history (message_pk, status, at, reason) VALUES (?, ?, ?, ?)",
            (pk, record.status, to_db(now), None),
        )
    return pk


def _insert_attachment(cur: Cursor, pk: int, order_nr: int, a: AttachmentRecord) -> None:
    """One payload: in its row when it fits one chunk, else in ``ebms_payload_chunk`` rows.

    A chunked payload leaves ``content`` empty; ``size`` then says how many
    bytes its chunks hold.
    """
    inline = isinstance(a.content, bytes) and len(a.content) <= CHUNK_BYTES
    cur.execute(
        "INSERT INTO ebms_attachment (message_pk, order_nr, content_id, content_type, filename, "
        "size, sha256, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            pk,
            order_nr,
            a.content_id,
            a.content_type,
            a.filename,
            a.size,
            a.sha256,
            a.content if inline else b"",
        ),
    )
    if inline:
        return
    source = a.open()
    seq = 0
    while chunk := source.read(CHUNK_BYTES):
        cur.execute(
            "INSERT INTO ebms_payload_chunk (message_pk, order_nr, seq, data) VALUES (?, ?, ?, ?)",
            (pk, order_nr, seq, chunk),
        )
        seq += 1


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


def load_attachments(cur: Cursor, message_pk: int) -> list[AttachmentRecord]:
    """The payloads of a message in their original order.

    A chunked payload comes back as a :class:`SpooledPayload`, copied one
    chunk at a time; close the records (:meth:`AttachmentRecord.close`) when done.
    """
    rows = cur.execute(
        "SELECT order_nr, content_id, content_type, filename, size, content FROM ebms_attachment "
        "WHERE message_pk = ? ORDER BY order_nr",
        (message_pk,),
    ).fetchall()
    out = []
    for order_nr, content_id, content_type, filename, size, content in rows:
        inline = bytes(content)
        body: bytes | PayloadFile = inline
        if len(inline) != int(size):
            body = _load_chunks(cur, message_pk, int(order_nr), int(size))
        out.append(AttachmentRecord(content_id, content_type, body, filename))
    return out


def _load_chunks(cur: Cursor, message_pk: int, order_nr: int, size: int) -> SpooledPayload:
    payload = SpooledPayload()
    # One chunk per statement: a driver that buffers whole result sets
    # (psycopg's client-side cursors) would otherwise hold the payload at once.
    for seq in range(-(-size // CHUNK_BYTES)):
        row = cur.execute(
            "SELECT data FROM ebms_payload_chunk WHERE message_pk = ? AND order_nr = ? AND seq = ?",
            (message_pk, order_nr, seq),
        ).fetchone()
        if row is None:
            payload.close()
            raise LookupError(f"payload {order_nr} of message {message_pk} lacks chunk {seq}")
        payload.write(bytes(row[0]))
    if payload.size != size:
        payload.close()
        raise LookupError(f"payload {order_nr} of message {message_pk} has the wrong size")
    return payload


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
    if message is None or not set_status(
        cur,
        message.pk,
        InboundStatus.FAILED.value,
        now=now,
        reason=reason,
        only_from=(InboundStatus.RECEIVED.value,),
    ):
        return None
    cur.execute(
        "UPDATE message_event SET processed_at = ? WHERE message_pk = ? "
        "AND event_type = ? AND processed_at IS NULL",
        (to_db(now), message.pk, EventType.RECEIVED.value),
    )
    add_event(
        cur, message.pk, message_id, EventType.FAILED, now=now,
        error_code=error_code, error_text=reason,
    )  # fmt: skip
    return message


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
    cur.execute(
        "INSERT INTO delivery_task (message_pk, url, state, next_attempt_at, attempts, "
        "max_attempts, retry_interval, expires_at, updated_at) "
        "VALUES (?, ?, 'pending', ?, 0, ?, ?, ?, ?)",
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
    lease_until = now + lease
    skip_locked = " FOR UPDATE SKIP LOCKED" if cur.dialect == "postgresql" else ""
    rows = cur.execute(
        "UPDATE delivery_task SET state = 'sending', locked_by = ?, lease_until = ?, "
        "attempts = attempts + 1, updated_at = ? WHERE id IN ("
        "SELECT id FROM delivery_task WHERE (state = 'pending' AND next_attempt_at <= ?) "
        "OR (state = 'sending' AND lease_until < ?) ORDER BY next_attempt_at LIMIT ?"
        f"{skip_locked}) RETURNING id, message_pk, url, attempts, max_attempts, "
        "retry_interval, expires_at",
        (node, to_db(lease_until), to_db(now), to_db(now), to_db(now), limit),
    ).fetchall()
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
    state = "pending" if effective is TaskOutcome.RETRY else effective.value
    # An expiry without an error of its own keeps the last failure: "why did
    # this Ping expire" is answered by the attempt before it.
    keep = effective is TaskOutcome.EXPIRED and error is None
    cur.execute(
        "INSERT INTO delivery_attempt (task_id, attempt, node, url, started_at, finished_at, "
        "http_status, outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            task.id,
            task.attempts,
            node,
            url if url is not None else task.url,
            to_db(started_at),
            to_db(now),
            http_status,
            outcome.value,
            error,
        ),
    )
    cur.execute(
        "UPDATE delivery_task SET state = ?, next_attempt_at = ?, locked_by = NULL, "
        "lease_until = NULL, last_error = "
        + ("COALESCE(?, last_error)" if keep else "?")
        + ", updated_at = ? WHERE id = ? AND locked_by = ? AND state = 'sending'",
        (
            state,
            to_db(next_attempt_at)
            if effective is TaskOutcome.RETRY and next_attempt_at
            else to_db(now),
            error,
            to_db(now),
            task.id,
            node,
        ),
    )
    return effective if cur.rowcount == 1 else None


def release_task(cur: Cursor, message_pk: int, state: TaskOutcome, *, now: datetime) -> bool:
    """End a message's task from outside the worker (an acknowledgment arrived).

    Returns False when the task had already ended.  A task that is being sent
    right now is ended too: the in-flight attempt's own update then finds it no
    longer 'sending' and leaves it alone.
    """
    cur.execute(
        "UPDATE delivery_task SET state = ?, locked_by = NULL, lease_until = NULL, "
        "updated_at = ? WHERE message_pk = ? AND state IN ('pending', 'sending')",
        (state.value, to_db(now), message_pk),
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
    cur.execute(
        "UPDATE delivery_task SET state = 'pending', next_attempt_at = ?, "
        "max_attempts = attempts + ?, updated_at = ? WHERE message_pk = ? "
        "AND state IN ('done', 'failed', 'expired')",
        (to_db(now), attempts, to_db(now), message_pk),
    )
    # A reply still waiting out a retry interval (the sender was down when we
    # first sent it) goes now: the sender resending shows it is back.
    cur.execute(
        "UPDATE delivery_task SET next_attempt_at = ?, updated_at = ? "
        "WHERE message_pk = ? AND state = 'pending' AND next_attempt_at > ?",
        (to_db(now), to_db(now), message_pk, to_db(now)),
    )


def last_task_error(cur: Cursor, task_id: int) -> str | None:
    """The failure sentence of a task's last failed attempt, if any."""
    row = cur.execute("SELECT last_error FROM delivery_task WHERE id = ?", (task_id,)).fetchone()
    return None if row is None else row[0]


def task_for_message(cur: Cursor, message_pk: int) -> tuple[str, int, str | None] | None:
    """(state, attempts, last_error) of a message's task, or None."""
    row = cur.execute(
        "SELECT state, attempts, last_error FROM delivery_task WHERE message_pk = ?",
        (message_pk,),
    ).fetchone()
    return None if row is None else (row[0], int(row[1]), row[2])


def unclaim_task(cur: Cursor, task: Task, *, node: str, now: datetime) -> bool:
    """Hand back a task claimed but never attempted (the node is shutting down)."""
    cur.execute(
        "UPDATE delivery_task SET state = 'pending', attempts = attempts - 1, locked_by = NULL, "
        "lease_until = NULL, updated_at = ? WHERE id = ? AND locked_by = ? AND state = 'sending'",
        (to_db(now), task.id, node),
    )
    return cur.rowcount == 1


def release_node_leases(cur: Cursor, *, node: str, now: datetime) -> int:
    """Make tasks this node left in flight due again; returns how many.

    Called when a node starts: whatever it was sending when it last went
    down was never recorded, so it is attempted again (the attempt counts, as
    it may have reached the partner; the partner eliminates the duplicate).
    Node ids must be unique among the nodes sharing a store.
    """
    cur.execute(
        "UPDATE delivery_task SET state = 'pending', next_attempt_at = ?, locked_by = NULL, "
        "lease_until = NULL, updated_at = ? WHERE locked_by = ? AND state = 'sending'",
        (to_db(now), to_db(now), node),
    )
    return max(cur.rowcount, 0)


def correlation_of(cur: Cursor, message_id: str) -> str | None:
    """The correlation id of our outbound message ``message_id``, if it has one."""
    row = cur.execute(
        "SELECT correlation_id FROM ebms_message WHERE message_id = ? AND direction = 'out'",
        (message_id,),
    ).fetchone()
    return row[0] if row else None
