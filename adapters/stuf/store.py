"""The StUF message log, batches and their processing reports, and retention.

Every StUF-GGk message the gateway receives or sends, or refuses, gets one row in
``stuf_message`` with the envelope fields an operator searches by (period, message type
``functie``, ``gemeente``, status, direction).  Messages that arrive together (an
uploaded zip, one API call, a file-drop run) belong to a ``stuf_batch``, whose counts are
the processing report ("verwerkingsverslag").

Duplicates.  A ``referentienummer`` used once by a sender (``zender/organisatie``) may
not be used by that sender again, whether we received the first one or sent it (the
chain's IB216 / CC08 rule).  :func:`record_message` inserts with ``ON CONFLICT DO
NOTHING`` on a unique index over ``(sender_org, referentienummer)``, so two nodes that
race with the same reference cannot both succeed: the loser gets ``None`` and must not
send.  Rows with status ``rejected`` are outside that index: a refused file never went
anywhere, so its reference may be used again once the file is fixed, and a refusal *for*
being a duplicate is logged like any other.  The log has one row per StUF message, not
per hop: a component that forwards a received envelope unchanged updates that row rather
than inserting a second one (it would be taken for a duplicate).

Status.  ``accepted`` (checked, not sent yet), ``sent`` (handed to ebMS, with its
MessageId), ``delivered`` (acknowledged, or handed to the recipient), ``failed``,
``received`` (inbound), ``read`` (the recipient fetched it), and ``rejected`` (refused
before sending; final).  :func:`update_status` only makes the moves listed in
:data:`TRANSITIONS`, each as one guarded ``UPDATE``.

Retention (:func:`purge`): items delivered and read are deleted ``read_after`` (default
168 hours) after they were read; every item is deleted ``max_age`` (default 90 days)
after it was logged, whatever its status; then finished batches without items left, and
the ebMS messages that carried the deleted items (with their signals), unless they are
still pending or inside their duplicate-elimination window
(:func:`gateway.store.retention.purge_copies`; the general retention takes those later).

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside the
caller's transaction.

The tables are this package's: ``migrations/`` next to this module creates them
(0010_stuf), declared as :data:`MIGRATIONS` for :mod:`gateway.store.migrate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from importlib.resources import files
from importlib.resources.abc import Traversable

from gateway.store.database import Cursor, Row
from gateway.store.retention import purge_copies
from gateway.store.timeutil import from_db, to_db, utcnow

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_READ_AFTER",
    "MIGRATIONS",
    "TRANSITIONS",
    "Batch",
    "BatchReport",
    "BatchSource",
    "LogEntry",
    "LogItem",
    "PurgeCounts",
    "StufDirection",
    "StufStatus",
    "batch_report",
    "delete_batch",
    "finish_batch",
    "get_batch",
    "mark_by_ebms_id",
    "open_batch",
    "purge",
    "query_log",
    "record_message",
    "reference_used",
    "split_parties",
    "update_status",
]

#: This package's migrations directory, declared in pyproject.toml for gateway.store.migrate.
MIGRATIONS: Traversable = files("adapters.stuf").joinpath("migrations")

DEFAULT_READ_AFTER = timedelta(hours=168)
"""How long a delivered item is kept after it was read."""

DEFAULT_MAX_AGE = timedelta(days=90)
"""How long any item is kept after it was logged."""


class StufDirection(StrEnum):
    """Which way a StUF message travelled, seen from this gateway."""

    IN = "in"
    OUT = "out"


class StufStatus(StrEnum):
    """Where a logged StUF message is."""

    ACCEPTED = "accepted"  # passed the checks, not handed to ebMS yet
    REJECTED = "rejected"  # refused before sending (final); reason_code/reason say why
    SENT = "sent"  # handed to ebMS (ebms_message_id set)
    DELIVERED = "delivered"  # acknowledged by the partner / handed to the recipient
    FAILED = "failed"  # not delivered (final); reason_code/reason say why
    RECEIVED = "received"  # inbound, stored
    READ = "read"  # the recipient fetched it: retention runs from read_at


class BatchSource(StrEnum):
    """How the messages of a batch came in."""

    UPLOAD = "upload"  # dkgw upload FILE.zip (the portal's "aanleveren")
    API = "api"
    FILEDROP = "filedrop"
    EBMS = "ebms"


TRANSITIONS: dict[StufStatus, frozenset[StufStatus]] = {
    StufStatus.SENT: frozenset({StufStatus.ACCEPTED}),
    StufStatus.DELIVERED: frozenset({StufStatus.SENT, StufStatus.RECEIVED}),
    # An Fo01 usually comes after ebMS delivered the message to the node.
    StufStatus.FAILED: frozenset(
        {StufStatus.ACCEPTED, StufStatus.SENT, StufStatus.DELIVERED, StufStatus.RECEIVED}
    ),
    StufStatus.READ: frozenset({StufStatus.DELIVERED, StufStatus.RECEIVED}),
}
"""Status -> the statuses a message may have before it moves there."""

_GEMEENTE = re.compile(r"[0-9]{4}")


def split_parties(
    sender_org: str | None, receiver_org: str | None
) -> tuple[str | None, str | None]:
    """``(gemeente, counterpart)`` from the envelope's zender and ontvanger organisatie.

    The gemeente is the side with a 4-digit CBS code; the counterpart is the other side
    (an 8-digit AGB code or a fixed word such as ``CAK`` or ``IB``).  When neither or both
    sides look like a gemeente, the gemeente is ``None`` and the counterpart is the
    receiver.
    """
    sender_is = sender_org is not None and _GEMEENTE.fullmatch(sender_org) is not None
    receiver_is = receiver_org is not None and _GEMEENTE.fullmatch(receiver_org) is not None
    if sender_is and not receiver_is:
        return sender_org, receiver_org
    if receiver_is and not sender_is:
        return receiver_org, sender_org
    return None, receiver_org


@dataclass(frozen=True)
class LogEntry:
    """A message to log (the columns the writer fills in)."""

    direction: StufDirection
    status: StufStatus
    referentienummer: str | None = None
    cross_ref: str | None = None
    berichtcode: str | None = None
    functie: str | None = None
    gemeente: str | None = None
    counterpart: str | None = None
    bericht_id: str | None = None  # payload BerichtIdentificatie/Identificatie
    sender_org: str | None = None
    receiver_org: str | None = None
    ebms_message_id: str | None = None
    cpa_id: str | None = None
    file_name: str | None = None
    reason_code: str | None = None
    reason: str | None = None
    size: int | None = None
    batch_id: int | None = None


@dataclass(frozen=True, kw_only=True)
class LogItem(LogEntry):
    """A logged message as read back."""

    id: int
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    read_at: datetime | None


@dataclass(frozen=True)
class Batch:
    """One batch and its counts."""

    id: int
    source: BatchSource
    name: str | None
    node: str | None
    created_at: datetime
    finished_at: datetime | None
    accepted: int
    rejected: int


@dataclass(frozen=True)
class BatchReport:
    """A batch with the log items still kept for it, in the order they were logged."""

    batch: Batch
    items: list[LogItem]


@dataclass(frozen=True)
class PurgeCounts:
    """What :func:`purge` deleted (or, in a dry run, would delete)."""

    read: int
    """Items delivered and read longer than ``read_after`` ago."""
    expired: int
    """Items logged longer than ``max_age`` ago (whatever their status)."""
    batches: int
    """Batches left without items."""
    ebms: int = 0
    """The ebMS messages that carried the deleted items (gateway/store/retention.py)."""

    @property
    def messages(self) -> int:
        """All items."""
        return self.read + self.expired


_ENTRY_FIELDS = tuple(f.name for f in fields(LogEntry))
_TIME_FIELDS = ("created_at", "updated_at", "delivered_at", "read_at")
_ITEM_COLUMNS = ", ".join(("id", *_ENTRY_FIELDS, *_TIME_FIELDS))
_BATCH_COLUMNS = "id, source, name, node, created_at, finished_at, accepted, rejected"


def _item(row: Row) -> LogItem:
    values = dict(zip(("id", *_ENTRY_FIELDS, *_TIME_FIELDS), row, strict=True))
    values["direction"] = StufDirection(values["direction"])
    values["status"] = StufStatus(values["status"])
    for name in _TIME_FIELDS:
        if values[name] is not None:
            values[name] = from_db(values[name])
    return LogItem(**values)


def _batch(row: Row) -> Batch:
    return Batch(
        id=int(row[0]),
        source=BatchSource(row[1]),
        name=row[2],
        node=row[3],
        created_at=from_db(row[4]),
        finished_at=None if row[5] is None else from_db(row[5]),
        accepted=int(row[6]),
        rejected=int(row[7]),
    )


def _stamp(now: datetime | None) -> str:
    return to_db(now if now is not None else utcnow())


# -- batches ---------------------------------------------------------------------------


def open_batch(
    cur: Cursor,
    source: BatchSource,
    *,
    name: str | None = None,
    node: str | None = None,
    now: datetime | None = None,
) -> int:
    """Start a batch; returns its id."""
    row = cur.execute(
        "INSERT INTO stuf_batch (source, name, node, created_at) VALUES (?, ?, ?, ?) RETURNING id",
        (BatchSource(source).value, name, node, _stamp(now)),
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING always yields the row
    return int(row[0])


def finish_batch(
    cur: Cursor,
    batch_id: int,
    *,
    accepted: int | None = None,
    rejected: int | None = None,
    now: datetime | None = None,
) -> Batch | None:
    """Close a batch with its counts; ``None`` if there is no such batch.

    Counts not given are counted from the batch's items: ``rejected`` the items refused,
    ``accepted`` all others.  The counts stay on the batch after its items are purged.
    """
    if accepted is None or rejected is None:
        row = cur.execute(
            "SELECT COALESCE(SUM(CASE WHEN status = 'rejected' THEN 0 ELSE 1 END), 0), "
            "COALESCE(SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END), 0) "
            "FROM stuf_message WHERE batch_id = ?",
            (batch_id,),
        ).fetchone()
        assert row is not None  # an aggregate always yields a row
        accepted = int(row[0]) if accepted is None else accepted
        rejected = int(row[1]) if rejected is None else rejected
    row = cur.execute(
        "UPDATE stuf_batch SET finished_at = ?, accepted = ?, rejected = ? WHERE id = ? "
        f"RETURNING {_BATCH_COLUMNS}",
        (_stamp(now), accepted, rejected, batch_id),
    ).fetchone()
    return None if row is None else _batch(row)


def get_batch(cur: Cursor, batch_id: int) -> Batch | None:
    """One batch, or ``None``."""
    row = cur.execute(
        f"SELECT {_BATCH_COLUMNS} FROM stuf_batch WHERE id = ?", (batch_id,)
    ).fetchone()
    return None if row is None else _batch(row)


def delete_batch(cur: Cursor, batch_id: int) -> bool:
    """Delete a batch that has no items (e.g. one that could not start); True if deleted."""
    cur.execute(
        "DELETE FROM stuf_batch WHERE id = ? "
        "AND NOT EXISTS (SELECT 1 FROM stuf_message WHERE batch_id = ?)",
        (batch_id, batch_id),
    )
    return cur.rowcount > 0


def batch_report(cur: Cursor, batch_id: int) -> BatchReport | None:
    """The batch and its items in the order they were logged; ``None`` if no such batch."""
    batch = get_batch(cur, batch_id)
    if batch is None:
        return None
    rows = cur.execute(
        f"SELECT {_ITEM_COLUMNS} FROM stuf_message WHERE batch_id = ? ORDER BY id", (batch_id,)
    ).fetchall()
    return BatchReport(batch, [_item(row) for row in rows])


# -- messages --------------------------------------------------------------------------


def record_message(cur: Cursor, entry: LogEntry, *, now: datetime | None = None) -> int | None:
    """Log a message; returns its id, or ``None`` when it is a duplicate.

    A duplicate is a ``referentienummer`` its ``sender_org`` already used in a message
    that was not rejected, in either direction.  Nothing is written then, and the caller
    must not send the message (log it as ``rejected`` instead, if it wants it in the log).
    Race-free: the unique index decides, not a lookup before the insert.

    Raises ValueError for a ``gemeente`` that is not a 4-digit code.  ``delivered_at`` and
    ``read_at`` are set when the entry's status already is ``delivered`` or ``read``.
    """
    if entry.gemeente is not None and not _GEMEENTE.fullmatch(entry.gemeente):
        raise ValueError(f"gemeente must be a 4-digit CBS code, not {entry.gemeente!r}")
    status = StufStatus(entry.status)
    stamp = _stamp(now)
    values = [getattr(entry, name) for name in _ENTRY_FIELDS]
    values[_ENTRY_FIELDS.index("direction")] = StufDirection(entry.direction).value
    values[_ENTRY_FIELDS.index("status")] = status.value
    delivered = stamp if status in (StufStatus.DELIVERED, StufStatus.READ) else None
    read = stamp if status is StufStatus.READ else None
    placeholders = ", ".join("?" * (len(_ENTRY_FIELDS) + len(_TIME_FIELDS)))
    row = cur.execute(
        f"INSERT INTO stuf_message ({', '.join((*_ENTRY_FIELDS, *_TIME_FIELDS))}) "
        f"VALUES ({placeholders}) "
        "ON CONFLICT (sender_org, referentienummer) WHERE status <> 'rejected' DO NOTHING "
        "RETURNING id",
        (*values, stamp, stamp, delivered, read),
    ).fetchone()
    return None if row is None else int(row[0])


def reference_used(cur: Cursor, sender_org: str, referentienummer: str) -> bool:
    """Whether ``sender_org`` used ``referentienummer`` in a message that was not rejected.

    For an early, friendly check (adapters.stuf.rules' ``seen``); the decision that
    counts is :func:`record_message`'s, which cannot lose a race.
    """
    row = cur.execute(
        "SELECT 1 FROM stuf_message WHERE sender_org = ? AND referentienummer = ? "
        "AND status <> 'rejected'",
        (sender_org, referentienummer),
    ).fetchone()
    return row is not None


def update_status(
    cur: Cursor,
    log_id: int,
    status: StufStatus,
    *,
    ebms_message_id: str | None = None,
    cpa_id: str | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move a logged message to ``status``; False if it is not in a status that allows it.

    ``sent`` needs the ``ebms_message_id`` that carries the message (and takes its
    ``cpa_id``); ``failed`` keeps ``reason_code``/``reason``; ``delivered`` sets
    ``delivered_at``; ``read`` sets ``read_at`` (and ``delivered_at`` if still empty).
    A repeated move (delivered twice) changes nothing and returns False.
    """
    return (
        _move(
            cur,
            "id = ?",
            (log_id,),
            status,
            ebms_message_id=ebms_message_id,
            cpa_id=cpa_id,
            reason_code=reason_code,
            reason=reason,
            now=now,
        )
        > 0
    )


def mark_by_ebms_id(
    cur: Cursor,
    ebms_message_id: str,
    status: StufStatus,
    *,
    reason_code: str | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> int:
    """Apply an ebMS event to the messages that MessageId carried; returns how many moved.

    For the DELIVERED / FAILED (and EXPIRED: ``failed`` with a reason) events of
    :mod:`gateway.store.messages` on outbound messages.  Only ``delivered``, ``failed`` and
    ``read`` make sense here.
    """
    if status not in (StufStatus.DELIVERED, StufStatus.FAILED, StufStatus.READ):
        raise ValueError(f"an ebMS event cannot move a message to {status!r}")
    return _move(
        cur,
        "ebms_message_id = ?",
        (ebms_message_id,),
        status,
        reason_code=reason_code,
        reason=reason,
        now=now,
    )


def _move(
    cur: Cursor,
    where: str,
    params: tuple[object, ...],
    status: StufStatus,
    *,
    ebms_message_id: str | None = None,
    cpa_id: str | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
    now: datetime | None = None,
) -> int:
    status = StufStatus(status)
    previous = TRANSITIONS.get(status)
    if previous is None:
        raise ValueError(f"no message moves to {status.value!r} after it was logged")
    if (status is StufStatus.SENT) != (ebms_message_id is not None):
        raise ValueError("the ebMS MessageId is given with status 'sent', and only then")
    stamp = _stamp(now)
    sets = ["status = ?", "updated_at = ?"]
    values: list[object] = [status.value, stamp]
    if status is StufStatus.SENT:
        sets += ["ebms_message_id = ?", "cpa_id = COALESCE(?, cpa_id)"]
        values += [ebms_message_id, cpa_id]
    elif status is StufStatus.DELIVERED:
        sets.append("delivered_at = ?")
        values.append(stamp)
    elif status is StufStatus.READ:
        sets += ["read_at = ?", "delivered_at = COALESCE(delivered_at, ?)"]
        values += [stamp, stamp]
    if reason_code is not None or reason is not None:
        sets += ["reason_code = ?", "reason = ?"]
        values += [reason_code, reason]
    allowed = sorted(s.value for s in previous)
    cur.execute(
        f"UPDATE stuf_message SET {', '.join(sets)} WHERE {where} "
        f"AND status IN ({', '.join('?' * len(allowed))})",
        (*values, *params, *allowed),
    )
    return cur.rowcount


# -- the log ---------------------------------------------------------------------------


def query_log(
    cur: Cursor,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    functie: str | None = None,
    gemeente: str | None = None,
    status: StufStatus | None = None,
    direction: StufDirection | None = None,
    referentienummer: str | None = None,
    batch_id: int | None = None,
    limit: int = 1000,
) -> list[LogItem]:
    """Logged messages matching every filter given, newest first, at most ``limit``.

    ``since`` is inclusive and ``until`` exclusive, both on the time the message was
    logged.  ``referentienummer`` also matches the ``cross_ref`` of answers and errors, so
    one search shows a heenbericht with its retour and Fo01 messages.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    where: list[str] = []
    params: list[object] = []
    if since is not None:
        where.append("created_at >= ?")
        params.append(to_db(since))
    if until is not None:
        where.append("created_at < ?")
        params.append(to_db(until))
    for column, value in (
        ("functie", functie),
        ("gemeente", gemeente),
        ("status", None if status is None else StufStatus(status).value),
        ("direction", None if direction is None else StufDirection(direction).value),
        ("batch_id", batch_id),
    ):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if referentienummer is not None:
        where.append("(referentienummer = ? OR cross_ref = ?)")
        params += [referentienummer, referentienummer]
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = cur.execute(
        f"SELECT {_ITEM_COLUMNS} FROM stuf_message{clause} "
        "ORDER BY created_at DESC, id DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [_item(row) for row in rows]


# -- retention -------------------------------------------------------------------------

# An item the purge keeps: logged after the age cut-off, and not read before the read one.
_KEPT = (
    "NOT (m.created_at <= ? OR (m.status = 'read' AND m.read_at IS NOT NULL AND m.read_at <= ?))"
)


def purge(
    cur: Cursor,
    now: datetime,
    read_after: timedelta = DEFAULT_READ_AFTER,
    max_age: timedelta = DEFAULT_MAX_AGE,
    *,
    dry_run: bool = False,
) -> PurgeCounts:
    """Apply retention at ``now``; returns what was deleted (or would be, with ``dry_run``).

    Deleted: items logged ``max_age`` or longer ago, whatever their status; items read
    (so delivered) ``read_after`` or longer ago; then batches without items left that are
    finished (or were started ``max_age`` ago: an upload that died halfway).  An item
    delivered but never read stays until ``max_age``.
    """
    if read_after <= timedelta(0) or max_age <= timedelta(0):
        raise ValueError("read_after and max_age must be positive")
    age_cut = to_db(now - max_age)
    read_cut = to_db(now - read_after)
    expired_where = "created_at <= ?"
    read_where = "created_at > ? AND status = 'read' AND read_at IS NOT NULL AND read_at <= ?"
    batch_where = (
        "(b.finished_at IS NOT NULL OR b.created_at <= ?) AND NOT EXISTS "
        f"(SELECT 1 FROM stuf_message m WHERE m.batch_id = b.id AND {_KEPT})"
    )
    batch_params = (age_cut, age_cut, read_cut)
    # The ebMS copies of the items that go, unless a kept item still names them.
    copies = [
        str(r[0])
        for r in cur.execute(
            "SELECT DISTINCT m.ebms_message_id FROM stuf_message m WHERE m.ebms_message_id IS NOT "
            f"NULL AND NOT {_KEPT} AND NOT EXISTS (SELECT 1 FROM stuf_message k WHERE "
            f"k.ebms_message_id = m.ebms_message_id AND {_KEPT.replace('m.', 'k.')})",
            (age_cut, read_cut, age_cut, read_cut),
        ).fetchall()
    ]
    if dry_run:
        ebms = purge_copies(cur, copies, now, dry_run=True)
        expired = _count(
            cur, f"SELECT COUNT(*) FROM stuf_message WHERE {expired_where}", (age_cut,)
        )
        read = _count(
            cur, f"SELECT COUNT(*) FROM stuf_message WHERE {read_where}", (age_cut, read_cut)
        )
        batches = _count(
            cur, f"SELECT COUNT(*) FROM stuf_batch b WHERE {batch_where}", batch_params
        )
        return PurgeCounts(read=read, expired=expired, batches=batches, ebms=ebms)
    cur.execute(f"DELETE FROM stuf_message WHERE {expired_where}", (age_cut,))
    expired = cur.rowcount
    cur.execute(f"DELETE FROM stuf_message WHERE {read_where}", (age_cut, read_cut))
    read = cur.rowcount
    cur.execute(
        f"DELETE FROM stuf_batch WHERE id IN (SELECT b.id FROM stuf_batch b WHERE {batch_where})",
        batch_params,
    )
    batches = cur.rowcount
    ebms = purge_copies(cur, copies, now, dry_run=False)
    return PurgeCounts(read=read, expired=expired, batches=batches, ebms=ebms)


def _count(cur: Cursor, sql: str, params: tuple[object, ...]) -> int:
    row = cur.execute(sql, params).fetchone()
    assert row is not None  # COUNT(*) always yields a row
    return int(row[0])
