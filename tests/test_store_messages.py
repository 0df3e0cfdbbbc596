"""Messages, payloads, delivery tasks and events on both store dialects."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime, timedelta

import pytest

from gateway.store.database import Database, IntegrityConflict
from gateway.store.messages import (
    CHUNK_BYTES,
    AttachmentRecord,
    Direction,
    EventType,
    MessageRecord,
    OutboundStatus,
    SpooledPayload,
    TaskOutcome,
    add_event,
    claim_due_tasks,
    find_message,
    find_reply,
    fingerprint,
    finish_attempt,
    insert_message,
    insert_task,
    load_attachments,
    release_task,
    set_status,
    task_for_message,
)
from gateway.store.migrate import apply_migrations
from tests.conftest import StoreFactory

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


@pytest.fixture
def db(store: Database) -> Database:
    apply_migrations(store)
    return store


def record(message_id: str = "m1@gw", direction: Direction = Direction.OUT, **kw) -> MessageRecord:
    values = dict(
        message_id=message_id,
        direction=direction,
        cpa_id="cpa",
        conversation_id="c1",
        from_party="urn:osb:oin:00000001001234567000",
        to_party="urn:osb:oin:0000000100765432100",
        service="urn:osb:services:GGK:iWmo:3.2",
        action="WMO301",
        sent_at=T0,
        content_type='multipart/related; type="text/xml"; boundary="b"',
        envelope=b"<SOAP:Envelope/>",
        status=OutboundStatus.CREATED.value,
    )
    values.update(kw)
    return MessageRecord(**values)


def store_message(
    db: Database, rec: MessageRecord | None = None, attachments: tuple[AttachmentRecord, ...] = ()
) -> int:
    with db.transaction() as cur:
        return insert_message(cur, rec or record(), attachments, now=T0)


def test_message_with_payloads_round_trips_byte_exact(db: Database) -> None:
    payloads = (
        AttachmentRecord("p1@gw", "application/xml", b"<a/>\r\n", "a.xml"),
        AttachmentRecord("p2@gw", "application/octet-stream", bytes(range(256)) * 100),
    )
    pk = store_message(db, record(time_to_live=T0 + timedelta(hours=1)), payloads)
    with db.transaction() as cur:
        stored = find_message(cur, "m1@gw", Direction.OUT)
        assert stored is not None and stored.pk == pk
        assert (stored.status, stored.envelope, stored.time_to_live) == (
            "CREATED",
            b"<SOAP:Envelope/>",
            T0 + timedelta(hours=1),
        )
        assert load_attachments(cur, pk) == list(payloads)
        assert find_message(cur, "m1@gw", Direction.IN) is None


def test_large_payload_round_trips_in_chunks(db: Database) -> None:
    # Over two chunks and not a multiple of the chunk size: the last chunk is short.
    big = bytes(range(256)) * (2 * CHUNK_BYTES // 256) + b"0123456789"
    spooled = SpooledPayload.copy_of(io.BytesIO(big))
    payloads = (
        AttachmentRecord("small@gw", "application/xml", b"<a/>"),
        AttachmentRecord("big@gw", "application/octet-stream", big),
        AttachmentRecord("file@gw", "application/octet-stream", spooled, "f.bin"),
    )
    pk = store_message(db, record(), payloads)
    with db.transaction() as cur:
        rows = cur.execute(
            "SELECT order_nr, COUNT(*), SUM(LENGTH(data)) FROM ebms_payload_chunk "
            "WHERE message_pk = ? GROUP BY order_nr ORDER BY order_nr",
            (pk,),
        ).fetchall()
        assert [tuple(int(v) for v in r) for r in rows] == [(1, 3, len(big)), (2, 3, len(big))]
        loaded = load_attachments(cur, pk)
        stored = find_message(cur, "m1@gw", Direction.OUT)
    try:
        assert loaded == list(payloads)
        assert loaded[0].content == b"<a/>"
        assert [a.open().read() for a in loaded[1:]] == [big, big]
        assert [a.size for a in loaded] == [4, len(big), len(big)]
        assert stored is not None
        # The fingerprint reads spooled and in-memory payloads alike.
        assert stored.fingerprint == fingerprint(
            b"<SOAP:Envelope/>", [payloads[0], payloads[1], AttachmentRecord("x", "y", big)]
        )
    finally:
        for a in (*loaded, *payloads):
            a.close()
    with db.transaction() as cur:
        cur.execute("DELETE FROM ebms_attachment WHERE message_pk = ?", (pk,))
        gone = cur.execute(
            "SELECT COUNT(*) FROM ebms_payload_chunk WHERE message_pk = ?", (pk,)
        ).fetchone()
    assert gone is not None and int(gone[0]) == 0


def test_same_id_and_direction_is_a_conflict(db: Database) -> None:
    store_message(db)
    with pytest.raises(IntegrityConflict), db.transaction() as cur:
        insert_message(cur, record(), (), now=T0)
    store_message(db, record(direction=Direction.IN, status="RECEIVED"))  # other direction


def test_fingerprint_tells_resends_from_reuse(db: Database) -> None:
    a = store_message(db, record("x@gw"), (AttachmentRecord("p", "text/plain", b"one"),))
    b = store_message(db, record("y@gw"), (AttachmentRecord("p", "text/plain", b"one"),))
    c = store_message(db, record("z@gw"), (AttachmentRecord("p", "text/plain", b"two"),))
    with db.transaction() as cur:
        prints = [find_message(cur, m, Direction.OUT).fingerprint for m in ("x@gw", "y@gw", "z@gw")]
    assert prints[0] == prints[1] != prints[2]
    assert len({a, b, c}) == 3


def test_find_reply_returns_the_stored_ack(db: Database) -> None:
    store_message(db, record("in1@p", Direction.IN, status="RECEIVED"))
    ack = record(
        "ack1@gw",
        action="Acknowledgment",
        ref_to_message_id="in1@p",
        status=None,
        service="urn:oasis:names:tc:ebxml-msg:service",
        envelope=b"<ack/>",
    )
    store_message(db, ack)
    with db.transaction() as cur:
        reply = find_reply(cur, "in1@p", ("Acknowledgment", "MessageError"))
        assert reply is not None and reply.envelope == b"<ack/>" and reply.status is None
        assert find_reply(cur, "in1@p", ("Pong",)) is None


def test_status_transitions_are_guarded_and_recorded(db: Database) -> None:
    pk = store_message(db)
    later = T0 + timedelta(minutes=1)
    with db.transaction() as cur:
        assert set_status(cur, pk, "DELIVERED", now=later, only_from=("CREATED",))
        assert not set_status(cur, pk, "EXPIRED", now=later, only_from=("CREATED",))
        add_event(cur, pk, "m1@gw", EventType.DELIVERED, now=later)
        history = cur.execute(
            "SELECT status FROM status_history WHERE message_pk = ? ORDER BY at, status", (pk,)
        ).fetchall()
        events = cur.execute("SELECT event_type FROM message_event").fetchall()
        stored = find_message(cur, "m1@gw", Direction.OUT)
    assert [h[0] for h in history] == ["CREATED", "DELIVERED"]
    assert events == [("DELIVERED",)]
    assert stored is not None and (stored.status, stored.status_at) == ("DELIVERED", later)


def queue(db: Database, message_id: str = "m1@gw", **kw) -> int:
    pk = store_message(db, record(message_id))
    with db.transaction() as cur:
        insert_task(cur, pk, "https://partner/ebms", now=T0, **kw)
    return pk


def claim(db: Database, node: str = "n1", now: datetime = T0, limit: int = 16):
    with db.transaction() as cur:
        return claim_due_tasks(cur, node=node, now=now, lease=LEASE, limit=limit)


def finish(db: Database, task, outcome: TaskOutcome, node: str = "n1", now: datetime = T0, **kw):
    with db.transaction() as cur:
        return finish_attempt(cur, task, outcome, node=node, started_at=now, now=now, **kw)


def test_task_is_claimed_once_and_retried_on_schedule(db: Database) -> None:
    pk = queue(
        db, max_attempts=3, retry_interval=timedelta(minutes=5), expires_at=T0 + timedelta(hours=1)
    )
    (task,) = claim(db)
    assert (task.message_pk, task.attempts, task.url) == (pk, 1, "https://partner/ebms")
    assert claim(db, "n2") == []  # leased
    assert finish(db, task, TaskOutcome.RETRY, http_status=503, error="busy") is TaskOutcome.RETRY
    assert claim(db, now=T0 + timedelta(minutes=4)) == []  # not due yet
    (task,) = claim(db, now=T0 + timedelta(minutes=5))
    assert task.attempts == 2
    finish(db, task, TaskOutcome.RETRY, now=T0 + timedelta(minutes=5))
    (task,) = claim(db, now=T0 + timedelta(minutes=10))
    assert task.attempts == 3
    assert not task.exhausted
    # The third of three attempts went unanswered: wait one more interval for an
    # acknowledgment; the claim after that finds no attempt left.
    assert finish(db, task, TaskOutcome.RETRY, now=T0 + timedelta(minutes=10)) is TaskOutcome.RETRY
    (task,) = claim(db, now=T0 + timedelta(minutes=15))
    assert task.exhausted
    assert (
        finish(db, task, TaskOutcome.EXPIRED, now=T0 + timedelta(minutes=15)) is TaskOutcome.EXPIRED
    )
    assert claim(db, now=T0 + timedelta(days=1)) == []
    with db.transaction() as cur:
        assert task_for_message(cur, pk) == ("expired", 4, None)
        attempts = cur.execute(
            "SELECT attempt, http_status, outcome FROM delivery_attempt ORDER BY attempt"
        ).fetchall()
    assert attempts == [
        (1, 503, "retry"),
        (2, None, "retry"),
        (3, None, "retry"),
        (4, None, "expired"),
    ]


def test_retry_past_time_to_live_expires(db: Database) -> None:
    queue(
        db,
        max_attempts=9,
        retry_interval=timedelta(minutes=30),
        expires_at=T0 + timedelta(minutes=20),
    )
    (task,) = claim(db)
    # Before the TimeToLive: wait (an acknowledgment may still come) ...
    assert finish(db, task, TaskOutcome.RETRY) is TaskOutcome.RETRY
    (task,) = claim(db, now=T0 + timedelta(minutes=30))
    # ... after it, the attempt's retry is an expiry.
    later = T0 + timedelta(minutes=30)
    assert finish(db, task, TaskOutcome.RETRY, now=later) is TaskOutcome.EXPIRED


def test_a_retry_interval_past_the_year_9999_waits_instead_of_overflowing(db: Database) -> None:
    # A CPA stored before validation refused such a RetryInterval: the attempt is
    # recorded and the task waits as long as a date can say, not an OverflowError.
    pk = queue(db, max_attempts=3, retry_interval=timedelta(days=3_000_000))
    (task,) = claim(db)
    assert finish(db, task, TaskOutcome.RETRY, http_status=503) is TaskOutcome.RETRY
    with db.transaction() as cur:
        assert task_for_message(cur, pk)[0] == "pending"
        (due,) = cur.execute("SELECT next_attempt_at FROM delivery_task").fetchone()
    assert due.startswith("9999-12-31T")
    assert claim(db, now=T0 + timedelta(days=36_500)) == []


def test_expired_lease_is_taken_over_and_the_old_node_changes_nothing(db: Database) -> None:
    pk = queue(db, max_attempts=5, retry_interval=timedelta(minutes=1))
    (stale,) = claim(db, "dead-node")
    (task,) = claim(db, "n2", now=T0 + LEASE + timedelta(seconds=1))
    assert task.attempts == 2
    assert finish(db, stale, TaskOutcome.DONE, node="dead-node") is None
    assert finish(db, task, TaskOutcome.DONE, node="n2") is TaskOutcome.DONE
    with db.transaction() as cur:
        assert task_for_message(cur, pk)[0] == "done"


def test_acknowledgment_releases_a_task_in_flight(db: Database) -> None:
    pk = queue(db, max_attempts=5, retry_interval=timedelta(minutes=1))
    (task,) = claim(db)
    with db.transaction() as cur:
        assert release_task(cur, pk, TaskOutcome.DONE, now=T0)
        assert not release_task(cur, pk, TaskOutcome.DONE, now=T0)
    assert finish(db, task, TaskOutcome.RETRY) is None  # the ack won
    assert claim(db, now=T0 + timedelta(hours=1)) == []


def test_final_failure_is_not_retried(db: Database) -> None:
    pk = queue(db, max_attempts=5, retry_interval=timedelta(minutes=1))
    (task,) = claim(db)
    assert (
        finish(db, task, TaskOutcome.FAILED, http_status=400, error="bad request")
        is TaskOutcome.FAILED
    )
    assert claim(db, now=T0 + timedelta(hours=1)) == []
    with db.transaction() as cur:
        assert task_for_message(cur, pk) == ("failed", 1, "bad request")


def test_two_nodes_claim_every_task_exactly_once(open_store: StoreFactory) -> None:
    nodes = [open_store(), open_store()]
    apply_migrations(nodes[0])
    for n in range(120):
        queue(nodes[0], f"m{n}@gw")
    claimed: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(db: Database, name: str) -> None:
        try:
            while True:
                tasks = claim(db, name, limit=7)
                if not tasks:
                    return
                for task in tasks:
                    finish(db, task, TaskOutcome.DONE, node=name)
                with lock:
                    claimed.extend(t.id for t in tasks)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(nodes[i % 2], f"node{i}")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(claimed) == 120 and len(set(claimed)) == 120
