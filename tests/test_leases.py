"""The leased queue shared by delivery tasks and webhook deliveries, on both dialects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.msh.states import TaskEvent
from gateway.store import leases
from gateway.store.database import Database
from gateway.store.leases import DELIVERY_TASKS, WEBHOOK_DELIVERIES, LeasedQueue
from gateway.store.messages import Direction, MessageRecord, insert_message, insert_task
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import to_db

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


@pytest.fixture
def db(store: Database) -> Database:
    apply_migrations(store)
    return store


def _task(db: Database, n: int = 1) -> int:
    with db.transaction() as cur:
        pk = insert_message(
            cur,
            MessageRecord(
                message_id=f"m{n}@gw",
                direction=Direction.OUT,
                cpa_id="cpa",
                conversation_id="c",
                from_party="urn:osb:oin:1",
                to_party="urn:osb:oin:2",
                service="s",
                action="a",
                sent_at=T0,
                content_type="text/xml",
                envelope=b"<e/>",
                status="CREATED",
            ),
            (),
            now=T0,
        )
        return insert_task(cur, pk, "https://partner.example/ebms", now=T0, max_attempts=3)


def _webhook_delivery(db: Database) -> int:
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO webhook_delivery (webhook, event_id, message_id, event_type, state, "
            "attempts, next_attempt_at, created_at, updated_at) "
            "VALUES ('hook', 1, 'm@gw', 'RECEIVED', 'pending', 0, ?, ?, ?)",
            (to_db(T0), to_db(T0), to_db(T0)),
        )
        row = cur.execute("SELECT id FROM webhook_delivery").fetchone()
        return int(row[0])


def _claim(db: Database, queue: LeasedQueue, node: str, now: datetime) -> list[int]:
    with db.transaction() as cur:
        rows = leases.claim(cur, queue, node=node, now=now, lease=LEASE, limit=10)
        return sorted(int(r[0]) for r in rows)


def _row(db: Database, queue: LeasedQueue, row_id: int) -> tuple[str, int, str | None]:
    with db.transaction() as cur:
        row = cur.execute(
            f"SELECT state, attempts, locked_by FROM {queue.table} WHERE id = ?", (row_id,)
        ).fetchone()
        return row[0], int(row[1]), row[2]


@pytest.mark.parametrize("queue", [DELIVERY_TASKS, WEBHOOK_DELIVERIES], ids=lambda q: q.table)
def test_a_lease_is_held_extended_taken_over_and_completed(
    db: Database, queue: LeasedQueue
) -> None:
    row_id = _task(db) if queue is DELIVERY_TASKS else _webhook_delivery(db)
    assert _claim(db, queue, "n1", T0) == [row_id]
    assert _row(db, queue, row_id) == ("sending", 1, "n1")
    # Held: no other node gets it while the lease lasts.
    assert _claim(db, queue, "n2", T0 + LEASE / 2) == []
    with db.transaction() as cur:
        # Only the holder extends its lease.
        assert leases.extend(cur, queue, [row_id], node="n2", now=T0, lease=LEASE) == 0
        assert leases.extend(cur, queue, [row_id], node="n1", now=T0 + LEASE / 2, lease=LEASE) == 1
        assert leases.extend(cur, queue, [], node="n1", now=T0, lease=LEASE) == 0
    # Past the first lease, within the extended one: still held.
    assert _claim(db, queue, "n2", T0 + LEASE + timedelta(seconds=1)) == []
    # Past the extended lease: n1 died, n2 takes over and the attempt counts.
    assert _claim(db, queue, "n2", T0 + 2 * LEASE) == [row_id]
    assert _row(db, queue, row_id) == ("sending", 2, "n2")
    with db.transaction() as cur:
        assert leases.held(cur, queue, row_id, node="n1", columns="attempts") is None
        assert leases.held(cur, queue, row_id, node="n2", columns="attempts") == (2,)
        # The old holder's late completion changes nothing.
        assert not leases.complete(cur, queue, row_id, TaskEvent.DELIVERED, node="n1", now=T0)
        assert leases.complete(cur, queue, row_id, TaskEvent.DELIVERED, node="n2", now=T0)
        # Ended: no second completion, no release, no extension.
        assert not leases.complete(cur, queue, row_id, TaskEvent.FAILED, node="n2", now=T0)
        assert leases.release(cur, queue, TaskEvent.RELEASED, node="n2", now=T0) == 0
        assert leases.extend(cur, queue, [row_id], node="n2", now=T0, lease=LEASE) == 0
    assert _row(db, queue, row_id) == ("done", 2, None)


@pytest.mark.parametrize("queue", [DELIVERY_TASKS, WEBHOOK_DELIVERIES], ids=lambda q: q.table)
def test_released_leases_are_due_at_once(db: Database, queue: LeasedQueue) -> None:
    row_id = _task(db) if queue is DELIVERY_TASKS else _webhook_delivery(db)
    assert _claim(db, queue, "n1", T0) == [row_id]
    later = T0 + timedelta(hours=1)
    with db.transaction() as cur:
        assert leases.release(cur, queue, TaskEvent.RELEASED, node="n2", now=later) == 0
        released = leases.release(
            cur,
            queue,
            TaskEvent.UNCLAIMED,
            node="n1",
            now=later,
            ids=[row_id],
            sets="attempts = attempts - 1, next_attempt_at = ?",
            params=(to_db(later),),
        )
        assert released == 1
        assert leases.release(cur, queue, TaskEvent.UNCLAIMED, node="n1", now=later, ids=[]) == 0
    assert _row(db, queue, row_id) == ("pending", 0, None)
    assert _claim(db, queue, "n2", later) == [row_id]
