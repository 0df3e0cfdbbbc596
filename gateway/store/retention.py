"""Retention of citizens' data: which stored rows may go, and deleting them in batches.

The messages hold medical data, so nothing is kept longer than needed; but a row may
only go when nothing still needs it (docs/operations.md, "Retention and purge"):

* the duplicate-elimination window: a received message's id is kept until its
  ``persist_until`` (the CPA's PersistDuration, at least the sender's retry window):
  a resend within it must be recognised and answered with the stored
  acknowledgment (ebMS 2.0 §6.4.1, §7.4);
* pending work: a message whose delivery task is pending or being sent, an outbound
  message not yet DELIVERED/DELIVERY_FAILED/EXPIRED, a received message the back
  office has not processed (RECEIVED), and a message with events a webhook has not
  looked at yet (its cursor is below them);
* referential integrity: a signal (acknowledgment, error) goes with the message it
  answers, never before it, because a duplicate gets that stored answer again.

Everything else goes ``messages_days`` after its final state: the message with its
payloads (attachments, chunks), task, attempts, events and status history (the foreign
keys cascade).  Webhook deliveries and file-drop history have their own periods.

The rules are one pure function, :func:`decide`, over :class:`MessageFacts` read from
the store; :func:`purge` reads one batch, decides and deletes it in one transaction,
and goes on with the next, so a large purge never holds the write lock for long.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.msh.states import INBOUND, OUTBOUND, TASK_BUSY, WEBHOOK, OutboundStatus
from gateway.settings.options import POSITIVE, at_least, option
from gateway.store.database import Cursor, Database, Row
from gateway.store.guards import in_states
from gateway.store.timeutil import from_db, to_db

__all__ = [
    "KINDS",
    "MessageFacts",
    "PurgeReport",
    "RetentionSettings",
    "decide",
    "purge",
    "purge_copies",
    "store_bytes",
]

#: Final states, after which a message only waits for its retention period to end
#: (an operator's retry of a failed or expired message aside: gateway/msh/states.py).
FINAL_OUT = frozenset(OutboundStatus) - OUTBOUND.initial
FINAL_IN = INBOUND.final
_BUSY_TASK = TASK_BUSY

#: The kinds of rows a purge reports, in report order.
KINDS = (
    "messages",
    "signals",
    "payloads",
    "payload_chunks",
    "attempts",
    "events",
    "webhook_deliveries",
    "filedrop_items",
)


_POSITIVE_DAYS = "[retention] messages_days, webhook_days, filedrop_days: positive"
_POSITIVE_BATCH = "[retention] batch_size and interval must be positive"


@dataclass(frozen=True)
class RetentionSettings:
    """How long finished data is kept (``[retention]`` in the config)."""

    messages_days: float = option(
        30.0,
        "ebMS messages and signals with everything attached: days after their final state.",
        bound=POSITIVE,
        refusal=_POSITIVE_DAYS,
    )
    webhook_days: float = option(
        7.0,
        "Webhook deliveries: days after they were done or failed.",
        bound=POSITIVE,
        refusal=_POSITIVE_DAYS,
    )
    filedrop_days: float = option(
        30.0,
        "File-drop history rows: days after the file was sent or refused.",
        bound=POSITIVE,
        refusal=_POSITIVE_DAYS,
    )
    batch_size: int = option(
        500, "Messages looked at per transaction.", bound=at_least(1), refusal=_POSITIVE_BATCH
    )
    interval: float = option(
        3600.0,
        "Seconds between the purges dkgw serve runs.",
        bound=POSITIVE,
        refusal=_POSITIVE_BATCH,
    )


@dataclass(frozen=True)
class MessageFacts:
    """What the rules need to know about one stored message or signal."""

    pk: int
    message_id: str
    direction: str
    is_signal: bool
    status: str | None
    final_at: datetime
    """When it reached its final state (``status_at``; a signal's ``created_at``)."""
    persist_until: datetime | None
    task_state: str | None
    unpushed_events: bool
    """An event of it lies beyond some webhook's cursor: not looked at yet."""
    refers_to_stored: bool
    """A signal whose message (RefToMessageId) is still stored."""
    ref_to_message_id: str | None = None


@dataclass
class PurgeReport:
    """Rows and bytes per kind that a purge deleted (or, dry, would delete)."""

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dry_run: bool = False

    def add(self, kind: str, rows: int, size: int = 0) -> None:
        """Count ``rows`` rows holding ``size`` bytes of ``kind``."""
        self.rows[kind] += rows
        self.bytes[kind] += size

    @property
    def total_rows(self) -> int:
        """All rows of all kinds."""
        return sum(self.rows.values())


def _kept_for_the_window(f: MessageFacts, now: datetime) -> bool:
    # ebMS 2.0 §6.4.1: the receiver must remember a MessageId for PersistDuration.
    return f.persist_until is not None and now < f.persist_until


def _pending(f: MessageFacts) -> bool:
    if f.task_state in _BUSY_TASK or f.unpushed_events:
        return True
    if f.is_signal:
        return False
    final = FINAL_OUT if f.direction == "out" else FINAL_IN
    return f.status not in final


def decide(facts: Sequence[MessageFacts], now: datetime, settings: RetentionSettings) -> set[int]:
    """The primary keys among ``facts`` that may be deleted at ``now``.

    A signal goes when the message it answers goes in the same decision or is gone
    already; otherwise with the same rules as a message.
    """
    keep_for = timedelta(days=settings.messages_days)

    def eligible(f: MessageFacts) -> bool:
        return f.final_at + keep_for <= now and not _kept_for_the_window(f, now) and not _pending(f)

    gone = {f.pk for f in facts if not f.is_signal and eligible(f)}
    gone_ids = {f.message_id for f in facts if f.pk in gone}
    for f in facts:
        if not f.is_signal or not eligible(f):
            continue
        if f.refers_to_stored and f.ref_to_message_id not in gone_ids:
            continue
        gone.add(f.pk)
    return gone


# -- reading the facts -----------------------------------------------------------------

_FACTS_SQL = (
    "SELECT m.id, m.message_id, m.direction, m.status, "
    "COALESCE(m.status_at, m.created_at), m.persist_until, t.state, m.ref_to_message_id, "
    "CASE WHEN EXISTS (SELECT 1 FROM message_event e, webhook_cursor c "
    "  WHERE e.message_pk = m.id AND e.id > c.last_event_id AND c.updated_at > ?) "
    "  THEN 1 ELSE 0 END, "
    "CASE WHEN m.ref_to_message_id IS NOT NULL AND EXISTS (SELECT 1 FROM ebms_message r "
    "  WHERE r.message_id = m.ref_to_message_id AND r.id <> m.id) THEN 1 ELSE 0 END "
    "FROM ebms_message m LEFT JOIN delivery_task t ON t.message_pk = m.id "
    "WHERE m.id > ? AND COALESCE(m.status_at, m.created_at) <= ? ORDER BY m.id LIMIT ?"
)


def _facts(cur: Cursor, after_pk: int, cutoff: datetime, limit: int) -> list[MessageFacts]:
    # A webhook cursor that has not moved for a whole retention period belongs to a
    # webhook taken out of the config (or one that cannot keep up for that long): it
    # no longer holds messages back.
    params = (to_db(cutoff), after_pk, to_db(cutoff), limit)
    return _to_facts(cur.execute(_FACTS_SQL, params).fetchall())


def _to_facts(rows: Sequence[Row]) -> list[MessageFacts]:
    return [
        MessageFacts(
            pk=int(r[0]),
            message_id=r[1],
            direction=r[2],
            # Signals are the rows without a status (gateway/store/messages.py).
            is_signal=r[3] is None,
            status=r[3],
            final_at=from_db(r[4]),
            persist_until=None if r[5] is None else from_db(r[5]),
            task_state=r[6],
            ref_to_message_id=r[7],
            unpushed_events=bool(r[8]),
            refers_to_stored=bool(r[9]),
        )
        for r in rows
    ]


def _marks(values: Iterable[object]) -> str:
    return ", ".join("?" for _ in values)


def _count_bytes(cur: Cursor, sql: str, params: Sequence[object]) -> tuple[int, int]:
    row = cur.execute(sql, params).fetchone()
    assert row is not None  # aggregates always yield a row
    return int(row[0] or 0), int(row[1] or 0)


def _measure(cur: Cursor, pks: Sequence[int], signals: set[int], report: PurgeReport) -> None:
    """Count what deleting messages ``pks`` removes, cascades included."""
    for kind, chosen in (
        ("messages", [pk for pk in pks if pk not in signals]),
        ("signals", [pk for pk in pks if pk in signals]),
    ):
        if chosen:
            report.add(
                kind,
                *_count_bytes(
                    cur,
                    f"SELECT COUNT(*), SUM(LENGTH(envelope)) FROM ebms_message "
                    f"WHERE id IN ({_marks(chosen)})",
                    chosen,
                ),
            )
    marks = _marks(pks)
    # A chunked payload's bytes are in its chunks (its own content is empty).
    rows, _ = _count_bytes(
        cur, f"SELECT COUNT(*), 0 FROM ebms_attachment WHERE message_pk IN ({marks})", pks
    )
    _, size = _count_bytes(
        cur,
        f"SELECT COUNT(*), SUM(LENGTH(content)) FROM ebms_attachment WHERE message_pk IN ({marks})",
        pks,
    )
    report.add("payloads", rows, size)
    report.add(
        "payload_chunks",
        *_count_bytes(
            cur,
            f"SELECT COUNT(*), SUM(LENGTH(data)) FROM ebms_payload_chunk "
            f"WHERE message_pk IN ({marks})",
            pks,
        ),
    )
    report.add(
        "attempts",
        *_count_bytes(
            cur,
            "SELECT COUNT(*), 0 FROM delivery_attempt a JOIN delivery_task t ON t.id = a.task_id "
            f"WHERE t.message_pk IN ({marks})",
            pks,
        ),
    )
    report.add(
        "events",
        *_count_bytes(
            cur, f"SELECT COUNT(*), 0 FROM message_event WHERE message_pk IN ({marks})", pks
        ),
    )


def _purge_messages(
    db: Database, now: datetime, settings: RetentionSettings, report: PurgeReport
) -> None:
    cutoff = now - timedelta(days=settings.messages_days)
    after = 0
    while True:
        with db.transaction() as cur:
            facts = _facts(cur, after, cutoff, settings.batch_size)
            if not facts:
                return
            after = facts[-1].pk
            gone = sorted(decide(facts, now, settings))
            if not gone:
                continue
            signals = {f.pk for f in facts if f.is_signal}
            _measure(cur, gone, signals, report)
            if not report.dry_run:
                # Foreign keys cascade to payloads, chunks, task, attempts, events
                # and status history (migrations 0002, 0006).
                cur.execute(f"DELETE FROM ebms_message WHERE id IN ({_marks(gone)})", gone)


def _purge_simple(
    db: Database,
    report: PurgeReport,
    *,
    kind: str,
    table: str,
    where: str,
    cutoff: datetime,
    batch_size: int,
) -> None:
    """Delete finished rows of ``table`` last updated before ``cutoff``, in batches."""
    select = (
        f"SELECT id FROM {table} WHERE {where} AND updated_at <= ? AND id > ? ORDER BY id LIMIT ?"
    )
    after = 0
    while True:
        with db.transaction() as cur:
            ids = [
                int(r[0])
                for r in cur.execute(select, (to_db(cutoff), after, batch_size)).fetchall()
            ]
            if not ids:
                return
            after = ids[-1]
            report.add(kind, len(ids))
            if not report.dry_run:
                cur.execute(f"DELETE FROM {table} WHERE id IN ({_marks(ids)})", ids)


def purge(
    db: Database, now: datetime, settings: RetentionSettings, *, dry_run: bool = False
) -> PurgeReport:
    """Apply retention at ``now``, one batch per transaction; ``dry_run`` only counts."""
    report = PurgeReport(dry_run=dry_run)
    _purge_messages(db, now, settings, report)
    _purge_simple(
        db,
        report,
        kind="webhook_deliveries",
        table="webhook_delivery",
        where=in_states("state", WEBHOOK.final),
        cutoff=now - timedelta(days=settings.webhook_days),
        batch_size=settings.batch_size,
    )
    _purge_simple(
        db,
        report,
        kind="filedrop_items",
        table="filedrop_item",
        # A queued item is the claim of a file in .work/: it must outlive the crash
        # it guards against (gateway/store/migrations/0009_filedrop.sqlite.sql).
        where="state IN ('sent', 'failed')",
        cutoff=now - timedelta(days=settings.filedrop_days),
        batch_size=settings.batch_size,
    )
    return report


def purge_copies(cur: Cursor, message_ids: Sequence[str], now: datetime, *, dry_run: bool) -> int:
    """Delete the ebMS messages ``message_ids`` (both directions) and their signals now.

    For the StUF relay, whose log has its own, shorter retention
    (gateway/store/stuf.py): when its log rows go, the ebMS copies that carried them
    go too, in the caller's transaction.  The window and pending rules of
    :func:`decide` still hold (a copy they keep goes with the general retention
    later); only the ``messages_days`` wait is skipped.  Returns how many messages
    (signals not counted) went or, dry, would go.
    """
    ids = sorted(set(message_ids))
    if not ids:
        return 0
    marks = _marks(ids)
    where = f"(m.message_id IN ({marks}) OR m.ref_to_message_id IN ({marks}))"
    sql = _FACTS_SQL.replace(
        "WHERE m.id > ? AND COALESCE(m.status_at, m.created_at) <= ? ORDER BY m.id LIMIT ?",
        f"WHERE {where} ORDER BY m.id",
    )
    stale = now - timedelta(days=RetentionSettings().messages_days)
    facts = _to_facts(cur.execute(sql, (to_db(stale), *ids, *ids)).fetchall())
    gone = sorted(decide(facts, now, RetentionSettings(messages_days=0)))
    if gone and not dry_run:
        cur.execute(f"DELETE FROM ebms_message WHERE id IN ({_marks(gone)})", gone)
    return sum(1 for f in facts if f.pk in gone and not f.is_signal)


def store_bytes(cur: Cursor) -> int:
    """The size of the store in bytes: the SQLite file's pages, or the PostgreSQL tables."""
    if cur.dialect == "sqlite":
        row = cur.execute(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
        ).fetchone()
    else:
        row = cur.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def reclaim_space(db: Database, *, min_free_fraction: float = 0.25) -> bool:
    """VACUUM a SQLite store when at least ``min_free_fraction`` of its pages are free.

    The store is not created with ``auto_vacuum`` (gateway/store/database.py), so deleted
    rows leave free pages that later inserts reuse but the file does not shrink; VACUUM
    rewrites it.  It needs the write lock for its duration and as much free disk as
    the store, hence only after a purge that freed much.  PostgreSQL's autovacuum does
    this itself.  Returns whether it vacuumed.
    """
    if db.dialect != "sqlite":
        return False
    with db.transaction() as cur:
        row = cur.execute(
            "SELECT f.freelist_count, p.page_count FROM pragma_freelist_count() f, "
            "pragma_page_count() p"
        ).fetchone()
    assert row is not None
    free, pages = int(row[0]), int(row[1])
    if pages == 0 or free / pages < min_free_fraction:
        return False
    db.vacuum()
    return True
