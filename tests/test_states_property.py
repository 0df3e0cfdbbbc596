"""No sequence of events moves a message or a task the way the state tables forbid.

Hypothesis draws sequences of what happens to a message (a claim, an attempt's
outcome, an acknowledgment, a MessageError, the operator's retry, a resend, a
deleted CPA, ...).  Each is applied twice: to a model that is nothing but the
tables of :mod:`gateway.msh.states` (and the pure retry decision), and through
the store's own guarded updates on a real SQLite store.  After every step the
stored status and task state must be the model's, and every change the store
made must be a transition of the tables.

Each example runs in one transaction that is rolled back, so examples share
one store without seeing each other's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.webhooks import store as webhooks
from gateway.msh.states import (
    INBOUND,
    OUTBOUND,
    TASK,
    TASK_EVENT_OF_OUTCOME,
    WEBHOOK,
    InboundStatus,
    MessageEvent,
    OutboundStatus,
    TaskEvent,
    TaskOutcome,
    TaskState,
    WebhookState,
)
from gateway.store.backoffice import process_message
from gateway.store.database import Cursor, Database
from gateway.store.messages import (
    Direction,
    MessageRecord,
    Task,
    claim_due_tasks,
    fail_received,
    finish_attempt,
    insert_message,
    insert_task,
    move_status,
    release_node_leases,
    release_task,
    resend_task,
    unclaim_task,
)
from gateway.store.migrate import apply_migrations
from gateway.store.pending import fail_pending
from gateway.store.queries import RetryRefused, retry_message, retry_refusal, supersede
from gateway.store.timeutil import to_db

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)
STEP = 2 * LEASE  # every step comes after the previous claim's lease ran out
NODE = "n1"
CPA = "cpa-1"

OUTCOME_STATUS = {
    TaskOutcome.DONE: MessageEvent.DELIVERED,
    TaskOutcome.FAILED: MessageEvent.FAILED,
    TaskOutcome.EXPIRED: MessageEvent.EXPIRED,
}


class _Rollback(Exception):
    """Ends an example's transaction without keeping anything."""


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.sqlite(tmp_path / "states.sqlite")
    apply_migrations(database)
    yield database
    database.close()


def _run(db: Database, example: Callable[[Cursor], None]) -> None:
    with pytest.raises(_Rollback), db.transaction() as cur:
        example(cur)
        raise _Rollback


def _record(message_id: str, direction: Direction, status: str) -> MessageRecord:
    return MessageRecord(
        message_id=message_id,
        direction=direction,
        cpa_id=CPA,
        conversation_id="c1",
        from_party="urn:osb:oin:00000001001234567000",
        to_party="urn:osb:oin:00000001007654321000",
        service="urn:osb:services:GGK:iWmo:3.2",
        action="WMO301",
        sent_at=T0,
        content_type="text/xml",
        envelope=f"<Envelope>{message_id}</Envelope>".encode(),
        status=status,
    )


# -- outbound messages and their delivery tasks --------------------------------------------

OPS = (
    "claim",
    "done",
    "retry",
    "failed",
    "expired",
    "unclaim",
    "restart",
    "ack",
    "error",
    "lapse",
    "cancel",
    "supersede",
    "reopen",
    "retry-by-operator",
)


@dataclass
class Outbound:
    """The model: the status and task state the tables say the message is in."""

    status: OutboundStatus = OutboundStatus.CREATED
    task: TaskState = TaskState.PENDING
    claimed: Task | None = None
    """The task as the worker holds it since its last claim."""


def _stored(cur: Cursor, pk: int) -> tuple[str, str, str | None]:
    row = cur.execute(
        "SELECT m.status, t.state, t.last_error FROM ebms_message m "
        "JOIN delivery_task t ON t.message_pk = m.id WHERE m.id = ?",
        (pk,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _task(cur: Cursor, pk: int, claimed: Task | None, n: int) -> Task:
    """The task as the worker holds it from its claim.

    Without a claim in hand (finished, handed back): a stale worker's task,
    under an attempt number of its own, so the attempt log takes it.
    """
    if claimed is not None:
        return claimed
    row = cur.execute(
        "SELECT id, url, max_attempts FROM delivery_task WHERE message_pk = ?", (pk,)
    ).fetchone()
    return Task(int(row[0]), pk, row[1], 10_000 + n, int(row[2]), None, None, T0)


def _step_outbound(
    cur: Cursor, model: Outbound, op: str, pk: int, message_id: str, now: datetime, n: int
) -> Outbound:
    """Apply ``op`` to the store; return what the tables say it leads to."""
    status, task, claimed = model.status, model.task, model.claimed

    def move_message(event: MessageEvent) -> bool:
        return move_status(cur, pk, event, message_id=message_id, direction=Direction.OUT, now=now)

    if op == "claim":
        got = claim_due_tasks(cur, node=NODE, now=now, lease=LEASE)
        claimed = got[0] if got else claimed
        if TASK.allows(task, TaskEvent.CLAIMED):
            task = TASK.next(task, TaskEvent.CLAIMED)
            assert got, "a due task was not claimed"
        else:
            assert not got
    elif op in ("done", "retry", "failed", "expired"):
        outcome = TaskOutcome(op)
        effective = finish_attempt(
            cur, _task(cur, pk, claimed, n), outcome, node=NODE, started_at=now, now=now
        )
        claimed = None  # a claim is finished once
        event = TASK_EVENT_OF_OUTCOME[outcome]
        if TASK.allows(task, event):
            assert effective is outcome
            task = TASK.next(task, event)
            # As the worker settles a business message after its attempt.
            if outcome in OUTCOME_STATUS:
                moved = move_message(OUTCOME_STATUS[outcome])
                assert moved is OUTBOUND.allows(status, OUTCOME_STATUS[outcome])
                if moved:
                    status = OUTBOUND.next(status, OUTCOME_STATUS[outcome])
        else:
            assert effective is None
    elif op == "unclaim":
        undone = unclaim_task(cur, _task(cur, pk, claimed, n), node=NODE, now=now)
        claimed = None
        assert undone is TASK.allows(task, TaskEvent.UNCLAIMED)
        if undone:
            task = TASK.next(task, TaskEvent.UNCLAIMED)
    elif op == "restart":
        released = release_node_leases(cur, node=NODE, now=now)
        claimed = None
        assert released == int(TASK.allows(task, TaskEvent.RELEASED))
        if released:
            task = TASK.next(task, TaskEvent.RELEASED)
    elif op in ("ack", "error"):
        # As an acknowledgment or a MessageError is correlated with our message.
        event, ended, task_event = (
            (MessageEvent.DELIVERED, TaskOutcome.DONE, TaskEvent.ACKNOWLEDGED)
            if op == "ack"
            else (MessageEvent.FAILED, TaskOutcome.FAILED, TaskEvent.ERROR_RECEIVED)
        )
        moved = move_message(event)
        assert moved is OUTBOUND.allows(status, event)
        if moved:
            status = OUTBOUND.next(status, event)
            released = release_task(cur, pk, ended, now=now)
            assert released is TASK.allows(task, task_event)
            if released:
                task = TASK.next(task, task_event)
    elif op == "lapse":
        released = release_task(cur, pk, TaskOutcome.EXPIRED, now=now)
        assert released is TASK.allows(task, TaskEvent.LAPSED)
        if released:
            task = TASK.next(task, TaskEvent.LAPSED)
    elif op == "cancel":
        count = fail_pending(cur, CPA, now=now)
        assert count == int(TASK.allows(task, TaskEvent.CANCELLED))
        if count:
            task = TASK.next(task, TaskEvent.CANCELLED)
            if OUTBOUND.allows(status, MessageEvent.FAILED):
                status = OUTBOUND.next(status, MessageEvent.FAILED)
    elif op == "supersede":
        allowed = OUTBOUND.allows(status, MessageEvent.FAILED) and TASK.allows(
            task, TaskEvent.SUPERSEDED
        )
        try:
            retired = supersede(cur, pk, message_id, f"new-{n}@gw", now=now)
        except RetryRefused:
            # The original may be on the wire: its double must not be queued.
            assert task == TaskState.SENDING
        else:
            assert task != TaskState.SENDING
            assert retired is allowed
            if retired:
                task = TASK.next(task, TaskEvent.SUPERSEDED)
                status = OUTBOUND.next(status, MessageEvent.FAILED)
    elif op == "reopen":
        resend_task(cur, pk, now=now, attempts=1)
        if TASK.allows(task, TaskEvent.REOPENED):
            task = TASK.next(task, TaskEvent.REOPENED)
    elif op == "retry-by-operator":
        last_error = _stored(cur, pk)[2]
        refusal = retry_refusal(message_id, status, task, None, now, last_error)
        try:
            retry_message(cur, message_id, now=now)
        except RetryRefused as refused:
            assert str(refused) == refusal
        else:
            assert refusal is None
            task = TASK.next(task, TaskEvent.RETRIED)
            if OUTBOUND.allows(status, MessageEvent.RETRIED):
                status = OUTBOUND.next(status, MessageEvent.RETRIED)
    else:  # pragma: no cover - OPS lists every op
        raise AssertionError(op)
    return Outbound(status, task, claimed)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(st.sampled_from(OPS), max_size=30))
def test_outbound_message_and_task_move_only_as_the_tables_allow(
    db: Database, ops: list[str]
) -> None:
    def example(cur: Cursor) -> None:
        message_id = "m@gw"
        (initial,) = OUTBOUND.initial
        pk = insert_message(cur, _record(message_id, Direction.OUT, initial.value), (), now=T0)
        insert_task(cur, pk, "https://partner.example/ebms", now=T0, max_attempts=3)
        model = Outbound()
        for n, op in enumerate(ops, start=1):
            before = _stored(cur, pk)
            model = _step_outbound(cur, model, op, pk, message_id, T0 + n * STEP, n)
            status, state, _ = _stored(cur, pk)
            assert (status, state) == (model.status.value, model.task.value), op
            # Whatever the store did is a transition of the tables.
            if status != before[0]:
                assert any(
                    OUTBOUND.allows(before[0], e) and OUTBOUND.next(before[0], e) == status
                    for e in MessageEvent
                )
            if state != before[1]:
                assert any(
                    TASK.allows(before[1], e) and TASK.next(before[1], e) == state
                    for e in TaskEvent
                )

    _run(db, example)


# -- inbound messages --------------------------------------------------------------------

INBOUND_OPS = ("processed", "fail", "process-by-back-office")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    initial=st.sampled_from(sorted(INBOUND.initial)),
    ops=st.lists(st.sampled_from(INBOUND_OPS), max_size=8),
)
def test_inbound_message_moves_only_as_the_table_allows(
    db: Database, initial: InboundStatus, ops: list[str]
) -> None:
    def example(cur: Cursor) -> None:
        pk = insert_message(cur, _record("in@gw", Direction.IN, initial.value), (), now=T0)
        status = initial
        for n, op in enumerate(ops, start=1):
            now = T0 + n * STEP
            event = MessageEvent.FAILED if op == "fail" else MessageEvent.PROCESSED
            allowed = INBOUND.allows(status, event)
            if op == "processed":
                moved = move_status(
                    cur, pk, event, message_id="in@gw", direction=Direction.IN, now=now
                )
                assert moved is allowed
            elif op == "fail":
                assert (fail_received(cur, "in@gw", "cannot hand on", now=now) is not None) is (
                    allowed
                )
            else:
                assert process_message(cur, "in@gw", now=now)
            if allowed:
                status = INBOUND.next(status, event)
            row = cur.execute("SELECT status FROM ebms_message WHERE id = ?", (pk,)).fetchone()
            assert row[0] == status.value, op

    _run(db, example)


# -- webhook deliveries ------------------------------------------------------------------

WEBHOOK_OPS = ("claim", "done", "retry", "give-up", "fail", "unclaim", "release", "restart")
BACKOFF = webhooks.Backoff(timedelta(seconds=1), timedelta(seconds=2), max_age=timedelta(days=1))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(st.sampled_from(WEBHOOK_OPS), max_size=25))
def test_webhook_delivery_moves_only_as_the_table_allows(db: Database, ops: list[str]) -> None:
    def example(cur: Cursor) -> None:
        pk = insert_message(cur, _record("w@gw", Direction.IN, "RECEIVED"), (), now=T0)
        cur.execute(
            "INSERT INTO message_event (message_pk, message_id, event_type, created_at) "
            "VALUES (?, ?, 'RECEIVED', ?)",
            (pk, "w@gw", to_db(T0)),
        )
        event_id = cur.execute("SELECT id FROM message_event").fetchone()[0]
        cur.execute(
            "INSERT INTO webhook_delivery (webhook, event_id, message_id, event_type, state, "
            "attempts, next_attempt_at, created_at, updated_at) "
            "VALUES ('hook', ?, 'w@gw', 'RECEIVED', 'pending', 0, ?, ?, ?)",
            (event_id, to_db(T0), to_db(T0), to_db(T0)),
        )
        (delivery_id,) = cur.execute("SELECT id FROM webhook_delivery").fetchone()
        state = WebhookState.PENDING
        late = timedelta(0)
        for n, op in enumerate(ops, start=1):
            # "give-up" comes after max_age: the retry fails the delivery for good.
            if op == "give-up":
                late = timedelta(days=2)
            now = T0 + n * STEP + late
            if op == "claim":
                event = TaskEvent.CLAIMED
                got = webhooks.claim_due(
                    cur, node=NODE, now=now, limit=5, lease=LEASE, webhooks=["hook"]
                )
                moved = bool(got)
            elif op in ("done", "retry", "give-up") and late and op == "retry":
                # Past max_age a retry is a give-up.
                event = TaskEvent.FAILED
                moved = (
                    webhooks.finish(cur, delivery_id, "retry", node=NODE, now=now, backoff=BACKOFF)
                    is not None
                )
            elif op in ("done", "retry", "give-up"):
                event = {
                    "done": TaskEvent.DELIVERED,
                    "retry": TaskEvent.RETRY_DUE,
                    "give-up": TaskEvent.FAILED,
                }[op]
                finished = webhooks.finish(
                    cur,
                    delivery_id,
                    "done" if op == "done" else "retry",
                    node=NODE,
                    now=now,
                    backoff=BACKOFF,
                )
                moved = finished is not None
                if moved:
                    assert finished.state == WEBHOOK.target(event)
            elif op == "fail":
                event = TaskEvent.FAILED
                moved = webhooks.fail(cur, delivery_id, node=NODE, now=now, error="broken")
            elif op in ("unclaim", "release"):
                event = TaskEvent.UNCLAIMED if op == "unclaim" else TaskEvent.RELEASED
                moved = bool(
                    webhooks.release(
                        cur, [delivery_id], node=NODE, now=now, attempted=op == "release"
                    )
                )
            else:
                event = TaskEvent.RELEASED
                moved = bool(webhooks.release_node(cur, node=NODE, now=now))
            # A retry is due after its backoff: the next step (a minute on) is past it.
            assert moved is WEBHOOK.allows(state, event), (op, state)
            if moved:
                state = WEBHOOK.next(state, event)
            row = cur.execute(
                "SELECT state FROM webhook_delivery WHERE id = ?", (delivery_id,)
            ).fetchone()
            assert row[0] == state.value, op

    _run(db, example)
