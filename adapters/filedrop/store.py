"""File-drop bookkeeping: which outbox files became which messages (``filedrop_item``).

The file drop (:mod:`adapters.filedrop`) claims a dropped file by renaming it to
``<outbox>/.work/<token>__<name>``, then records the token here in the same
transaction that queues its message (or records its refusal).  After a crash the
row, or its absence, says whether a file left in ``.work/`` was queued already,
so a file is sent exactly once.  The row then follows the message's status:
:func:`settle_items` turns DELIVERED into ``sent`` and DELIVERY_FAILED/EXPIRED
into ``failed`` with a readable reason, which the file drop acts on by moving
the file.

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.

The tables are this package's: ``migrations/`` next to this module creates them
(0009_filedrop), declared as :data:`MIGRATIONS` for :mod:`gateway.store.migrate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib.resources import files
from importlib.resources.abc import Traversable

from gateway.store.database import Cursor, Row
from gateway.store.messages import OutboundStatus, task_for_message
from gateway.store.timeutil import from_db, to_db

__all__ = [
    "MIGRATIONS",
    "FileDropItem",
    "ItemState",
    "claim_item",
    "list_items",
    "refuse_item",
    "set_item_message",
    "settle_items",
]

#: This package's migrations directory, declared in pyproject.toml for gateway.store.migrate.
MIGRATIONS: Traversable = files("adapters.filedrop").joinpath("migrations")

#: Tokens per ``IN (...)`` list: well below every driver's parameter limit.
_BATCH = 500


class ItemState(StrEnum):
    """Where a dropped file is."""

    QUEUED = "queued"  # its message is on its way; the file waits in .work/
    SENT = "sent"  # delivered: the file belongs in sent/
    FAILED = "failed"  # refused or not delivered: the file belongs in failed/


@dataclass(frozen=True)
class FileDropItem:
    """One claimed file."""

    exchange: str
    token: str
    file_name: str
    size: int
    sha256: str | None
    message_id: str | None
    state: ItemState
    error: str | None
    created_at: datetime
    updated_at: datetime


_FIELDS = (
    "exchange",
    "token",
    "file_name",
    "size",
    "sha256",
    "message_id",
    "state",
    "error",
    "created_at",
    "updated_at",
)
_COLUMNS = ", ".join(_FIELDS)
_COLUMNS_I = ", ".join(f"i.{f}" for f in _FIELDS)


def _item(row: Row) -> FileDropItem:
    return FileDropItem(
        exchange=row[0],
        token=row[1],
        file_name=row[2],
        size=int(row[3]),
        sha256=row[4],
        message_id=row[5],
        state=ItemState(row[6]),
        error=row[7],
        created_at=from_db(row[8]),
        updated_at=from_db(row[9]),
    )


def _insert(
    cur: Cursor,
    *,
    exchange: str,
    token: str,
    file_name: str,
    size: int,
    sha256: str | None,
    state: ItemState,
    error: str | None,
    now: datetime,
) -> bool:
    cur.execute(
        "INSERT INTO filedrop_item (exchange, token, file_name, size, sha256, message_id, "
        "state, error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?) "
        "ON CONFLICT (token) DO NOTHING",
        (exchange, token, file_name, size, sha256, state.value, error, to_db(now), to_db(now)),
    )
    return cur.rowcount == 1


def claim_item(
    cur: Cursor,
    *,
    exchange: str,
    token: str,
    file_name: str,
    size: int,
    sha256: str,
    now: datetime,
) -> bool:
    """Record ``token`` as queued; False when it is recorded already (do not send it).

    Call it before queuing the message, in the same transaction, then
    :func:`set_item_message`.  Two nodes recording one token: on PostgreSQL the
    second waits for the first to commit and then gets False; SQLite runs them
    one after the other.
    """
    return _insert(
        cur,
        exchange=exchange,
        token=token,
        file_name=file_name,
        size=size,
        sha256=sha256,
        state=ItemState.QUEUED,
        error=None,
        now=now,
    )


def set_item_message(cur: Cursor, token: str, message_id: str, *, now: datetime) -> None:
    """The message a claimed file became."""
    cur.execute(
        "UPDATE filedrop_item SET message_id = ?, updated_at = ? WHERE token = ?",
        (message_id, to_db(now), token),
    )


def refuse_item(
    cur: Cursor,
    *,
    exchange: str,
    token: str,
    file_name: str,
    size: int,
    sha256: str | None,
    error: str,
    now: datetime,
) -> bool:
    """Record ``token`` as failed without a message; False when it is recorded already."""
    return _insert(
        cur,
        exchange=exchange,
        token=token,
        file_name=file_name,
        size=size,
        sha256=sha256,
        state=ItemState.FAILED,
        error=error,
        now=now,
    )


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _BATCH):
        yield values[start : start + _BATCH]


def settle_items(
    cur: Cursor, exchange: str, tokens: Iterable[str], *, now: datetime
) -> dict[str, FileDropItem]:
    """The recorded items among ``tokens``, queued ones settled by their message's status.

    A queued item whose message is DELIVERED becomes ``sent``; DELIVERY_FAILED or
    EXPIRED makes it ``failed``, with the reason (the status change's reason, the
    attempts made and the last delivery error).  Tokens not recorded are absent
    from the answer: their files were claimed but never queued.
    """
    found: dict[str, FileDropItem] = {}
    wanted = sorted(set(tokens))
    for chunk in _chunks(wanted):
        marks = ", ".join("?" for _ in chunk)
        rows = cur.execute(
            f"SELECT {_COLUMNS_I}, m.id, m.status "
            "FROM filedrop_item i LEFT JOIN ebms_message m "
            "ON m.message_id = i.message_id AND m.direction = 'out' "
            f"WHERE i.exchange = ? AND i.token IN ({marks})",
            (exchange, *chunk),
        ).fetchall()
        for row in rows:
            # Each row in its own savepoint: one that cannot be read or settled
            # fails alone, with the reason, and the others are settled.
            try:
                with cur.savepoint():
                    item = _item(row)
                    if item.state is ItemState.QUEUED and item.message_id is not None:
                        item = _settle(cur, item, row[10], row[11], now)
            except Exception as exc:
                item = _fail_inconsistent(cur, row, exc, now)
            found[item.token] = item
    return found


def _fail_inconsistent(cur: Cursor, row: Row, exc: Exception, now: datetime) -> FileDropItem:
    """Mark an item whose row cannot be read or settled failed, with the reason."""
    token = str(row[1])
    error = (
        f"the file's record in the store is inconsistent ({type(exc).__name__}: {exc}), "
        "so its delivery cannot be followed"
    )
    cur.execute(
        "UPDATE filedrop_item SET state = ?, error = ?, updated_at = ? WHERE token = ?",
        (ItemState.FAILED.value, error, to_db(now), token),
    )
    try:
        size = int(row[3])
    except (TypeError, ValueError):
        size = 0
    return FileDropItem(
        exchange=str(row[0]),
        token=token,
        file_name=str(row[2]),
        size=size,
        sha256=row[4] if isinstance(row[4], str) else None,
        message_id=row[5] if isinstance(row[5], str) else None,
        state=ItemState.FAILED,
        error=error,
        created_at=now,
        updated_at=now,
    )


def _settle(
    cur: Cursor, item: FileDropItem, message_pk: int | None, status: str | None, now: datetime
) -> FileDropItem:
    if message_pk is None:
        state, error = ItemState.FAILED, f"message {item.message_id} is no longer in the store"
    elif status == OutboundStatus.DELIVERED.value:
        state, error = ItemState.SENT, None
    elif status in (OutboundStatus.DELIVERY_FAILED.value, OutboundStatus.EXPIRED.value):
        state, error = ItemState.FAILED, _failure(cur, int(message_pk), status)
    else:
        return item
    cur.execute(
        "UPDATE filedrop_item SET state = ?, error = ?, updated_at = ? "
        "WHERE token = ? AND state = ?",
        (state.value, error, to_db(now), item.token, ItemState.QUEUED.value),
    )
    return FileDropItem(
        exchange=item.exchange,
        token=item.token,
        file_name=item.file_name,
        size=item.size,
        sha256=item.sha256,
        message_id=item.message_id,
        state=state,
        error=error,
        created_at=item.created_at,
        updated_at=now,
    )


def _failure(cur: Cursor, message_pk: int, status: str) -> str:
    """Why a message was not delivered: the status change's reason, attempts, last error."""
    row = cur.execute(
        "SELECT reason FROM status_history WHERE message_pk = ? AND status = ? "
        "ORDER BY at DESC LIMIT 1",
        (message_pk, status),
    ).fetchone()
    reason = row[0] if row is not None else None
    attempts_rows = cur.execute(
        "SELECT a.outcome, a.error FROM delivery_attempt a JOIN delivery_task t "
        "ON t.id = a.task_id WHERE t.message_pk = ? ORDER BY a.attempt",
        (message_pk,),
    ).fetchall()
    # The claim that ends the final wait is logged as an 'expired' attempt: not sent.
    attempts = sum(1 for outcome, _ in attempts_rows if outcome != "expired")
    errors = [error for _, error in attempts_rows if error]
    last_error = errors[-1] if errors else None
    if not attempts_rows:
        task = task_for_message(cur, message_pk)
        if task is not None:
            attempts, last_error = task[1], task[2]
    if status == OutboundStatus.EXPIRED.value:
        text = (
            "the message expired (its TimeToLive passed or its retries were used up) "
            f"after {attempts} attempt(s)"
        )
    else:
        text = f"delivery failed after {attempts} attempt(s)"
    if reason:
        text += f": {reason}"
    if last_error and last_error != reason:
        text += f"; last error: {last_error}"
    elif not reason:
        text += "; no reason was recorded"
    return text


def list_items(cur: Cursor, exchange: str, state: ItemState | None = None) -> list[FileDropItem]:
    """The items of ``exchange`` (in one state if given), oldest first."""
    sql = f"SELECT {_COLUMNS} FROM filedrop_item WHERE exchange = ?"
    params: list[object] = [exchange]
    if state is not None:
        sql += " AND state = ?"
        params.append(state.value)
    rows = cur.execute(sql + " ORDER BY id", params).fetchall()
    return [_item(r) for r in rows]
