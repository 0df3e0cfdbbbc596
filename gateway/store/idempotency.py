"""Idempotency keys: a retried API request answered like the first, not done twice.

A back office that sends a message and gets no answer (a timeout, a gateway
restart) cannot know whether the message was stored.  Retrying without a key
would store and send it twice; the partner's back office would get the document
twice.  With a key, the first request stores its message and a row here in the
same transaction, and every retry with the same key and the same request gets
the first answer (docs/api.md, "Retrying safely"; the header is
draft-ietf-httpapi-idempotency-key-header).

A key belongs to one API user: two users' keys never meet.  The row names the
message it answered with and is deleted with it (``ON DELETE CASCADE``), so a
key lives exactly as long as its message's retention (docs/operations.md,
"Retention and purge").

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.store.database import Cursor
from gateway.store.timeutil import to_db

__all__ = ["MAX_KEY", "Remembered", "claim", "complete", "find"]

#: The longest key accepted (the draft sets none; a UUID is 36 characters).
MAX_KEY = 255


@dataclass(frozen=True)
class Remembered:
    """What a key was first used for."""

    operation: str
    request_sha256: str
    message_id: str | None
    answer: str | None
    """The answer the first request got (its body); None while the first is in flight."""


def find(cur: Cursor, user: str, key: str) -> Remembered | None:
    """The first use of ``key`` by ``user``, or None."""
    row = cur.execute(
        "SELECT operation, request_sha256, message_id, answer FROM api_idempotency "
        "WHERE api_user = ? AND idem_key = ?",
        (user, key),
    ).fetchone()
    if row is None:
        return None
    return Remembered(
        str(row[0]),
        str(row[1]),
        None if row[2] is None else str(row[2]),
        None if row[3] is None else str(row[3]),
    )


def claim(
    cur: Cursor, user: str, key: str, operation: str, request_sha256: str, now: datetime
) -> None:
    """Record the first use of ``key``, before the work it guards is done.

    Raises :class:`~gateway.store.database.IntegrityConflict` when another
    transaction claimed it first (PostgreSQL waits for that one to end; the
    caller then reads its answer with :func:`find`).
    """
    cur.execute(
        "INSERT INTO api_idempotency "
        "(api_user, idem_key, operation, request_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
        (user, key, operation, request_sha256, to_db(now)),
    )


def complete(
    cur: Cursor, user: str, key: str, message_pk: int, message_id: str, answer: str
) -> None:
    """Record the answer to the claimed ``key``: the message it stored, the answer given."""
    cur.execute(
        "UPDATE api_idempotency SET message_pk = ?, message_id = ?, answer = ? "
        "WHERE api_user = ? AND idem_key = ?",
        (message_pk, message_id, answer, user, key),
    )
