"""Scheduled-ping bookkeeping: the links the gateway watches and what each Ping found.

A *link* is one (CPA, our party, their party) triple.  Its ``ping_link`` row is both
the schedule (``next_due``) and the latest verdict.  The row also names the Ping in
flight, which is what keeps a link to one Ping at a time across every node sharing
the store: a node claims a due link by setting ``ping_message_id`` in the same
transaction that queues the Ping, and settles it with a compare-and-set on that id,
so two nodes never both count one Ping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gateway.store.database import Cursor
from gateway.store.timeutil import from_db, to_db

__all__ = [
    "LinkKey",
    "LinkStatus",
    "PingProbe",
    "claim_due_links",
    "in_flight",
    "link_statuses",
    "mark_sent",
    "probe",
    "purge_results",
    "recent_results",
    "settle",
    "sync_links",
]


@dataclass(frozen=True, order=True)
class LinkKey:
    """One watched link; parties as ``type:value`` strings."""

    cpa_id: str
    from_party: str
    to_party: str


@dataclass(frozen=True)
class LinkStatus:
    """A link's schedule and latest verdict, as monitoring reports it."""

    key: LinkKey
    active: bool
    next_due: datetime
    ping_message_id: str | None
    last_checked_at: datetime | None
    last_outcome: str | None
    last_rtt: float | None
    last_reason: str | None
    last_success_at: datetime | None
    consecutive_failures: int

    @property
    def up(self) -> bool | None:
        """True/False after the first verdict, None before it."""
        return None if self.last_outcome is None else self.last_outcome == "up"


@dataclass(frozen=True)
class PingProbe:
    """What the store knows about one Ping: its delivery and its Pong, if any."""

    task_state: str | None
    last_error: str | None
    attempt_started_at: datetime | None
    pong_at: datetime | None


def _opt(value: str | None) -> datetime | None:
    return from_db(value) if value is not None else None


def sync_links(cur: Cursor, wanted: dict[LinkKey, datetime], *, now: datetime) -> tuple[int, int]:
    """Make the active links exactly ``wanted`` (key -> first due time for new ones).

    Links no longer implied by a CPA are deactivated, not deleted, so their history
    stays readable.  Returns (added or reactivated, deactivated).
    """
    rows = cur.execute("SELECT cpa_id, from_party, to_party, active FROM ping_link").fetchall()
    existing = {LinkKey(r[0], r[1], r[2]): bool(r[3]) for r in rows}
    added = dropped = 0
    for key, first_due in wanted.items():
        if key not in existing:
            cur.execute(
                "INSERT INTO ping_link (cpa_id, from_party, to_party, active, next_due) "
                "VALUES (?, ?, ?, 1, ?) ON CONFLICT DO NOTHING",
                (key.cpa_id, key.from_party, key.to_party, to_db(first_due)),
            )
            added += cur.rowcount
        elif not existing[key]:
            # Reactivated (a CPA came back): a Ping left over from before is void.
            cur.execute(
                "UPDATE ping_link SET active = 1, next_due = ?, ping_message_id = NULL, "
                "ping_queued_at = NULL WHERE cpa_id = ? AND from_party = ? AND to_party = ?",
                (to_db(first_due), key.cpa_id, key.from_party, key.to_party),
            )
            added += 1
    for key, active in existing.items():
        if active and key not in wanted:
            cur.execute(
                "UPDATE ping_link SET active = 0, ping_message_id = NULL, ping_queued_at = NULL "
                "WHERE cpa_id = ? AND from_party = ? AND to_party = ?",
                (key.cpa_id, key.from_party, key.to_party),
            )
            dropped += 1
    return added, dropped


def claim_due_links(cur: Cursor, *, now: datetime, limit: int = 32) -> list[LinkKey]:
    """Active links whose next Ping is due and that have none in flight.

    The caller queues a Ping for each and records it with :func:`mark_sent` in the
    same transaction; on PostgreSQL the rows stay locked until then and other nodes
    skip them (``SKIP LOCKED``), on SQLite the transaction holds the write lock.
    """
    skip_locked = " FOR UPDATE SKIP LOCKED" if cur.dialect == "postgresql" else ""
    rows = cur.execute(
        "SELECT cpa_id, from_party, to_party FROM ping_link WHERE active = 1 AND "
        "ping_message_id IS NULL AND next_due <= ? ORDER BY next_due LIMIT ?" + skip_locked,
        (to_db(now), limit),
    ).fetchall()
    return [LinkKey(r[0], r[1], r[2]) for r in rows]


def mark_sent(cur: Cursor, key: LinkKey, message_id: str, *, now: datetime) -> None:
    """Record the Ping just queued for ``key``."""
    cur.execute(
        "UPDATE ping_link SET ping_message_id = ?, ping_queued_at = ? "
        "WHERE cpa_id = ? AND from_party = ? AND to_party = ?",
        (message_id, to_db(now), key.cpa_id, key.from_party, key.to_party),
    )


def in_flight(cur: Cursor) -> list[tuple[LinkKey, str, datetime]]:
    """(link, Ping message id, queued at) for every Ping not yet settled."""
    rows = cur.execute(
        "SELECT cpa_id, from_party, to_party, ping_message_id, ping_queued_at FROM ping_link "
        "WHERE active = 1 AND ping_message_id IS NOT NULL ORDER BY ping_queued_at"
    ).fetchall()
    return [(LinkKey(r[0], r[1], r[2]), r[3], from_db(r[4])) for r in rows]


def probe(cur: Cursor, ping_message_id: str) -> PingProbe:
    """The Ping's delivery state and the arrival time of its Pong (ebMS 2.0 §8)."""
    task = cur.execute(
        "SELECT t.state, t.last_error, (SELECT MIN(a.started_at) FROM delivery_attempt a "
        "WHERE a.task_id = t.id) FROM delivery_task t JOIN ebms_message m ON m.id = t.message_pk "
        "WHERE m.message_id = ? AND m.direction = 'out'",
        (ping_message_id,),
    ).fetchone()
    pong = cur.execute(
        "SELECT MIN(created_at) FROM ebms_message WHERE direction = 'in' AND action = 'Pong' "
        "AND ref_to_message_id = ?",
        (ping_message_id,),
    ).fetchone()
    return PingProbe(
        task_state=task[0] if task else None,
        last_error=task[1] if task else None,
        attempt_started_at=_opt(task[2]) if task else None,
        pong_at=_opt(pong[0]) if pong else None,
    )


def settle(
    cur: Cursor,
    key: LinkKey,
    ping_message_id: str | None,
    *,
    outcome: str,
    rtt: float | None,
    reason: str | None,
    started_at: datetime,
    now: datetime,
    next_due: datetime,
    node: str,
) -> bool:
    """Record a verdict for ``key`` and schedule its next Ping.

    With a ``ping_message_id`` this is a compare-and-set: it only succeeds while that
    Ping is still the one in flight, so when two nodes settle the same Ping only the
    first counts.  Returns whether this call recorded the verdict.
    """
    up = outcome == "up"
    params: list[object] = [
        to_db(next_due),
        to_db(now),
        outcome,
        rtt,
        reason,
        to_db(now) if up else None,
        1 if up else 0,
        key.cpa_id,
        key.from_party,
        key.to_party,
    ]
    in_flight_check = "ping_message_id IS NULL"
    if ping_message_id is not None:
        in_flight_check = "ping_message_id = ?"
        params.append(ping_message_id)
    cur.execute(
        "UPDATE ping_link SET ping_message_id = NULL, ping_queued_at = NULL, next_due = ?, "
        "last_checked_at = ?, last_outcome = ?, last_rtt = ?, last_reason = ?, "
        "last_success_at = COALESCE(?, last_success_at), "
        "consecutive_failures = CASE WHEN ? = 1 THEN 0 ELSE consecutive_failures + 1 END "
        f"WHERE cpa_id = ? AND from_party = ? AND to_party = ? AND {in_flight_check}",
        tuple(params),
    )
    if cur.rowcount != 1:
        return False
    cur.execute(
        "INSERT INTO ping_result (cpa_id, from_party, to_party, message_id, node, started_at, "
        "finished_at, outcome, rtt, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key.cpa_id,
            key.from_party,
            key.to_party,
            ping_message_id,
            node,
            to_db(started_at),
            to_db(now),
            outcome,
            rtt,
            reason,
        ),
    )
    return True


_STATUS_COLUMNS = (
    "cpa_id, from_party, to_party, active, next_due, ping_message_id, last_checked_at, "
    "last_outcome, last_rtt, last_reason, last_success_at, consecutive_failures"
)


def link_statuses(
    cur: Cursor, *, cpa_ids: Iterable[str] | None = None, include_inactive: bool = False
) -> list[LinkStatus]:
    """Every (active) link with its latest verdict, ordered by CPA and parties."""
    sql = f"SELECT {_STATUS_COLUMNS} FROM ping_link"
    where, params = [], []
    if not include_inactive:
        where.append("active = 1")
    wanted = list(cpa_ids) if cpa_ids is not None else None
    if wanted is not None:
        if not wanted:
            return []
        where.append(f"cpa_id IN ({', '.join('?' for _ in wanted)})")
        params.extend(wanted)
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = cur.execute(sql + " ORDER BY cpa_id, from_party, to_party", tuple(params)).fetchall()
    return [
        LinkStatus(
            key=LinkKey(r[0], r[1], r[2]),
            active=bool(r[3]),
            next_due=from_db(r[4]),
            ping_message_id=r[5],
            last_checked_at=_opt(r[6]),
            last_outcome=r[7],
            last_rtt=float(r[8]) if r[8] is not None else None,
            last_reason=r[9],
            last_success_at=_opt(r[10]),
            consecutive_failures=int(r[11]),
        )
        for r in rows
    ]


def recent_results(
    cur: Cursor, key: LinkKey, *, limit: int = 20
) -> list[tuple[datetime, str, float | None, str | None]]:
    """(finished at, outcome, rtt, reason) of a link's latest Pings, newest first."""
    rows = cur.execute(
        "SELECT finished_at, outcome, rtt, reason FROM ping_result WHERE cpa_id = ? AND "
        "from_party = ? AND to_party = ? ORDER BY finished_at DESC LIMIT ?",
        (key.cpa_id, key.from_party, key.to_party, limit),
    ).fetchall()
    return [(from_db(r[0]), r[1], float(r[2]) if r[2] is not None else None, r[3]) for r in rows]


def purge_results(cur: Cursor, *, before: datetime) -> int:
    """Delete results that finished before ``before`` (history is kept 30 days)."""
    cur.execute("DELETE FROM ping_result WHERE finished_at < ?", (to_db(before),))
    return max(cur.rowcount, 0)
