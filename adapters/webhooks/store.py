"""Webhook deliveries: which message events are POSTed to which back-office URL.

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction, like :mod:`gateway.store.messages`.  The webhook
dispatcher (:mod:`adapters.webhooks`) only *reads* ``message_event``; what it
still has to push is persisted here before anything is POSTed:

* :func:`enqueue` copies the new events that match a webhook's filters into
  ``webhook_delivery`` (one row per webhook and event, ``UNIQUE``) and moves
  the webhook's cursor (``webhook_cursor.last_event_id``) on.  The cursor row
  is locked first (``FOR UPDATE`` on PostgreSQL; on SQLite the transaction
  began with ``BEGIN IMMEDIATE``), so nodes sharing a store take turns, and
  the unique key makes a second copy of an event impossible anyway.
* :func:`claim_due` leases due deliveries to one node, skipping rows other
  nodes hold (``FOR UPDATE SKIP LOCKED`` on PostgreSQL).  An expired lease
  (a node died mid-POST) makes the delivery due again.  The lease is the one
  delivery tasks have too (:mod:`gateway.store.leases`).
* :func:`finish` records an attempt: done, or a retry after an exponential
  backoff, or failed once ``max_age`` has passed since the delivery was queued.

A webhook seen for the first time starts at the newest event: it does not
replay the history of the store.  The cursor is kept by webhook name, so a
webhook renamed in the configuration is a new webhook.

Late commits.  Event ids come from a sequence and are handed out when a
transaction inserts the event, not when it commits.  On SQLite writers are
serialised, so ids become visible in order and the cursor can simply be the
highest id seen.  On PostgreSQL a transaction that took id 10 may commit after
one that took id 11; a cursor moved to 11 would skip 10 for ever.  So there
the cursor only moves past events older than :data:`LATE_COMMIT_WINDOW`, and
each pass also looks at the newer events above it that have no delivery yet.
An event whose transaction commits more than that window after it was
stamped could still be missed; the gateway's transactions take milliseconds.

Delivery is at least once: a POST whose answer is lost (timeout, crash, an
expired lease) is repeated, so receivers deduplicate by ``event_id``.

The tables are this package's: ``migrations/`` next to this module creates them
(0008_webhooks), declared as :data:`MIGRATIONS` for :mod:`gateway.store.migrate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Literal

from gateway.msh.states import WEBHOOK, TaskEvent, WebhookState
from gateway.store import leases
from gateway.store.database import Cursor, Row
from gateway.store.leases import WEBHOOK_DELIVERIES
from gateway.store.timeutil import from_db, to_db

__all__ = [
    "BACKOFF_JITTER",
    "LATE_COMMIT_WINDOW",
    "MIGRATIONS",
    "Backoff",
    "Delivery",
    "Finished",
    "Refused",
    "claim_due",
    "enqueue",
    "fail",
    "finish",
    "read_committed",
    "release",
    "release_node",
    "retry_delay",
]

#: This package's migrations directory, declared in pyproject.toml for gateway.store.migrate.
MIGRATIONS: Traversable = files("adapters.webhooks").joinpath("migrations")

DeliveryState = WebhookState
"""A webhook delivery's state (the table :data:`gateway.msh.states.WEBHOOK`)."""
Outcome = Literal["done", "retry"]

LATE_COMMIT_WINDOW = timedelta(minutes=5)
"""PostgreSQL: how long after its timestamp an event's transaction may still commit."""

BACKOFF_JITTER = 0.1
"""A retry waits its backoff times a factor in [1 - this, 1 + this]."""


@dataclass(frozen=True)
class Backoff:
    """When to try a delivery again, and when to give up."""

    initial: timedelta
    """Wait after the first failed attempt; it doubles after each further one."""
    maximum: timedelta
    """The wait never grows beyond this (before jitter)."""
    max_age: timedelta
    """A delivery not done this long after it was queued is failed."""


@dataclass(frozen=True)
class Delivery:
    """A claimed delivery, with the event and message properties its POST carries.

    The properties are None when the message is no longer in the store.
    """

    id: int
    webhook: str
    event_id: int
    message_id: str
    event_type: str
    attempts: int
    """Attempts so far, the one just claimed included."""
    created_at: datetime
    lease_until: datetime
    event_at: datetime | None
    cpa_id: str | None
    from_party: str | None
    from_role: str | None
    to_party: str | None
    to_role: str | None
    service: str | None
    action: str | None
    conversation_id: str | None
    ref_to_message_id: str | None
    error_code: str | None = None
    error_text: str | None = None


@dataclass(frozen=True)
class Finished:
    """What :func:`finish` did to a delivery."""

    state: DeliveryState
    """``done``, ``pending`` (a retry is due at ``next_attempt_at``) or ``failed``."""
    attempts: int
    next_attempt_at: datetime | None
    """When the next attempt is due, for ``pending``."""


@dataclass(frozen=True)
class Refused:
    """A claimed delivery that could not be prepared: :func:`fail` ended it with ``reason``."""

    id: int
    webhook: str
    event_id: int | None
    message_id: str | None
    reason: str


def read_committed(cur: Cursor) -> None:
    """Run this transaction at READ COMMITTED on PostgreSQL, whatever the server default.

    Must be the transaction's first statement.  :func:`enqueue` waits for the
    cursor lock another node holds; at READ COMMITTED it then sees that node's
    work, where REPEATABLE READ would fail with a serialisation error.  No-op on
    SQLite.
    """
    if cur.dialect == "postgresql":
        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")


def _in(values: Sequence[object]) -> str:
    return f"({', '.join('?' for _ in values)})"


def enqueue(
    cur: Cursor,
    webhook: str,
    *,
    now: datetime,
    cpa_ids: Sequence[str] = (),
    services: Sequence[str] = (),
    event_types: Sequence[str] = (),
    window: timedelta | None = None,
) -> int:
    """Queue the new events that match ``webhook``'s filters; returns how many.

    An empty filter matches everything; ``services`` are ``type:value`` as
    stored.  ``window`` is how far back events are looked at again for a late
    commit (default :data:`LATE_COMMIT_WINDOW` on PostgreSQL, none on SQLite).
    When several webhooks are enqueued in one transaction, do them in the same
    order on every node (e.g. by name), so their cursor locks cannot deadlock.
    """
    if window is None:
        window = LATE_COMMIT_WINDOW if cur.dialect == "postgresql" else timedelta(0)
    stamp = to_db(now)
    # "WHERE 1 = 1": SQLite would read the ON of ON CONFLICT as a join constraint.
    cur.execute(
        "INSERT INTO webhook_cursor (name, last_event_id, created_at, updated_at) "
        "SELECT ?, COALESCE(MAX(id), 0), ?, ? FROM message_event WHERE 1 = 1 "
        "ON CONFLICT (name) DO NOTHING",
        (webhook, stamp, stamp),
    )
    lock = " FOR UPDATE" if cur.dialect == "postgresql" else ""
    row = cur.execute(
        f"SELECT last_event_id FROM webhook_cursor WHERE name = ?{lock}", (webhook,)
    ).fetchone()
    assert row is not None
    floor = int(row[0])

    # The new floor is read before the events are copied: on PostgreSQL each
    # statement sees what was committed when it began, so the copy below sees
    # at least every event up to it.
    if window:
        top = cur.execute(
            "SELECT MAX(id) FROM message_event WHERE id > ? AND created_at < ?",
            (floor, to_db(now - window)),
        ).fetchone()
    else:
        top = cur.execute("SELECT MAX(id) FROM message_event WHERE id > ?", (floor,)).fetchone()
    new_floor = int(top[0]) if top is not None and top[0] is not None else floor

    conditions = ""
    params: list[object] = [webhook, stamp, stamp, stamp, floor]
    for column, values in (
        ("e.event_type", event_types),
        ("m.cpa_id", cpa_ids),
        ("m.service", services),
    ):
        if values:
            conditions += f" AND {column} IN {_in(values)}"
            params.extend(values)
    params.append(webhook)
    cur.execute(
        "INSERT INTO webhook_delivery (webhook, event_id, message_id, event_type, state, "
        "attempts, next_attempt_at, created_at, updated_at) "
        "SELECT ?, e.id, e.message_id, e.event_type, 'pending', 0, ?, ?, ? "
        "FROM message_event e JOIN ebms_message m ON m.id = e.message_pk "
        f"WHERE e.id > ?{conditions} AND NOT EXISTS (SELECT 1 FROM webhook_delivery d "
        "WHERE d.webhook = ? AND d.event_id = e.id) ORDER BY e.id "
        "ON CONFLICT (webhook, event_id) DO NOTHING",
        params,
    )
    added = max(cur.rowcount, 0)
    if new_floor > floor:
        cur.execute(
            "UPDATE webhook_cursor SET last_event_id = ?, updated_at = ? WHERE name = ?",
            (new_floor, stamp, webhook),
        )
    return added


_DELIVERY_COLUMNS = (
    "d.id, d.webhook, d.event_id, d.message_id, d.event_type, d.attempts, d.created_at, "
    "d.lease_until, e.created_at, m.cpa_id, m.from_party, m.from_role, m.to_party, m.to_role, "
    "m.service, m.action, m.conversation_id, m.ref_to_message_id, e.error_code, e.error_text"
)


def _delivery(row: Row) -> Delivery:
    return Delivery(
        id=int(row[0]),
        webhook=row[1],
        event_id=int(row[2]),
        message_id=row[3],
        event_type=row[4],
        attempts=int(row[5]),
        created_at=from_db(row[6]),
        lease_until=from_db(row[7]),
        event_at=None if row[8] is None else from_db(row[8]),
        cpa_id=row[9],
        from_party=row[10],
        from_role=row[11],
        to_party=row[12],
        to_role=row[13],
        service=row[14],
        action=row[15],
        conversation_id=row[16],
        ref_to_message_id=row[17],
        error_code=row[18],
        error_text=row[19],
    )


def claim_due(
    cur: Cursor,
    *,
    node: str,
    now: datetime,
    limit: int,
    lease: timedelta,
    webhooks: Sequence[str],
    refused: list[Refused] | None = None,
) -> list[Delivery]:
    """Lease up to ``limit`` due deliveries of ``webhooks`` to ``node``, oldest due first.

    Due: pending with its next attempt time come, or sending under a lease
    that ran out (its node died mid-POST).  The claim counts as an attempt.
    Deliveries of webhooks no longer configured are left alone.

    A claimed row that cannot be read (an inconsistent delivery or event row)
    is failed alone with its reason (:func:`fail`, in its own savepoint) and
    appended to ``refused``; the others are returned.
    """
    if limit <= 0 or not webhooks:
        return []
    rows = leases.claim(
        cur,
        WEBHOOK_DELIVERIES,
        node=node,
        now=now,
        lease=lease,
        limit=limit,
        where=f"webhook IN {_in(webhooks)}",
        params=webhooks,
    )
    if not rows:
        return []
    ids = sorted(int(r[0]) for r in rows)
    found = cur.execute(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_delivery d "
        "LEFT JOIN message_event e ON e.id = d.event_id "
        f"LEFT JOIN ebms_message m ON m.id = e.message_pk WHERE d.id IN {_in(ids)} "
        "ORDER BY d.id",
        ids,
    ).fetchall()
    batch: list[Delivery] = []
    for r in found:
        try:
            batch.append(_delivery(r))
        except Exception as exc:
            reason = f"The stored delivery or its event is inconsistent ({type(exc).__name__})."
            try:
                with cur.savepoint():
                    fail(cur, int(r[0]), node=node, now=now, error=reason)
            except Exception as again:
                reason += (
                    f" It could not be failed either ({type(again).__name__}):"
                    " it is due again when its lease runs out."
                )
            if refused is not None:
                event_id = r[2] if isinstance(r[2], int) else None
                message_id = r[3] if isinstance(r[3], str) else None
                refused.append(Refused(int(r[0]), str(r[1]), event_id, message_id, reason))
    return batch


def retry_delay(attempts: int, backoff: Backoff, jitter: float = 0.5) -> timedelta:
    """The wait after ``attempts`` failed attempts: ``initial`` doubling, capped at ``maximum``.

    ``jitter`` in [0, 1) spreads it by :data:`BACKOFF_JITTER` either way (0.5: none),
    so that deliveries failed together do not all come back at the same moment.
    """
    exponent = min(max(attempts - 1, 0), 32)
    base = min(backoff.initial * (1 << exponent), backoff.maximum)
    return base * (1 + BACKOFF_JITTER * (2 * jitter - 1))


def finish(
    cur: Cursor,
    delivery_id: int,
    outcome: Outcome,
    *,
    node: str,
    now: datetime,
    backoff: Backoff,
    status: int | None = None,
    error: str | None = None,
    jitter: float = 0.5,
) -> Finished | None:
    """Record the outcome of ``node``'s attempt; None when the delivery is no longer its own.

    ``retry`` schedules the next attempt after :func:`retry_delay`, but never
    later than ``max_age`` after the delivery was queued: that last attempt
    is made, and a retry after it (``now`` at or past the deadline) fails the
    delivery for good.  None means this node's lease ran out and another node
    took the delivery over: nothing is changed.
    """
    row = leases.held(
        cur, WEBHOOK_DELIVERIES, delivery_id, node=node, columns="attempts, created_at"
    )
    if row is None:
        return None
    attempts, created_at = int(row[0]), from_db(row[1])
    next_attempt_at: datetime | None = None
    event = TaskEvent.DELIVERED
    if outcome != "done":
        deadline = created_at + backoff.max_age
        if now >= deadline:
            event = TaskEvent.FAILED
        else:
            event = TaskEvent.RETRY_DUE
            next_attempt_at = min(now + retry_delay(attempts, backoff, jitter), deadline)
    if not leases.complete(
        cur,
        WEBHOOK_DELIVERIES,
        delivery_id,
        event,
        node=node,
        now=now,
        sets="next_attempt_at = ?, last_status = ?, last_error = ?",
        params=(to_db(next_attempt_at or now), status, None if outcome == "done" else error),
    ):
        return None
    return Finished(WEBHOOK.target(event), attempts, next_attempt_at)


def fail(cur: Cursor, delivery_id: int, *, node: str, now: datetime, error: str) -> bool:
    """End ``node``'s claimed delivery for good: it cannot be made (``error`` says why).

    Returns False when the delivery is no longer ``node``'s claim (nothing changed).
    """
    return leases.complete(
        cur,
        WEBHOOK_DELIVERIES,
        delivery_id,
        TaskEvent.FAILED,
        node=node,
        now=now,
        sets="next_attempt_at = ?, last_status = NULL, last_error = ?",
        params=(to_db(now), error[:500]),
    )


def release(
    cur: Cursor, delivery_ids: Sequence[int], *, node: str, now: datetime, attempted: bool
) -> int:
    """Hand ``node``'s claims back, due at once (the node is stopping); returns how many.

    ``attempted=False``: never POSTed, so the claim does not count as an
    attempt.  ``attempted=True``: the POST was cut off; it may have arrived,
    so it stays counted.
    """
    if not delivery_ids:
        return 0
    return leases.release(
        cur,
        WEBHOOK_DELIVERIES,
        TaskEvent.RELEASED if attempted else TaskEvent.UNCLAIMED,
        node=node,
        now=now,
        ids=delivery_ids,
        sets="next_attempt_at = ?" if attempted else "attempts = attempts - 1, next_attempt_at = ?",
        params=(to_db(now),),
    )


def release_node(cur: Cursor, *, node: str, now: datetime) -> int:
    """Make the deliveries ``node`` had in flight when it last went down due now.

    Called when the node's dispatcher starts; node ids are unique among the
    nodes sharing a store.  The cut-off attempts stay counted.
    """
    return leases.release(
        cur,
        WEBHOOK_DELIVERIES,
        TaskEvent.RELEASED,
        node=node,
        now=now,
        sets="next_attempt_at = ?",
        params=(to_db(now),),
    )
