"""The executor writes exactly what an attempt's decision says, guarded by the lease.

Real stores (SQLite, and PostgreSQL when the session has one): a task is
queued and claimed, a decision is made by :mod:`gateway.msh.attempt` and
applied; the rows must say what the decision said, and a task this node no
longer holds must be left alone, its message with it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.msh.attempt import decide_attempt, decide_refusal
from gateway.msh.attempt_apply import apply_effects
from gateway.msh.attempt_facts import Answered, Claimed, MessageHead, NotSent, Unreached
from gateway.msh.attempt_prepare import message_facts, task_facts
from gateway.store.attempts import message_head
from gateway.store.database import Database
from gateway.store.messages import (
    Direction,
    MessageRecord,
    Task,
    TaskOutcome,
    claim_due_tasks,
    insert_message,
    insert_task,
    message_by_pk,
    release_task,
)
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import from_db

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=5)
URL = "https://partner.example/ebms"
NODE = "n1"


@pytest.fixture
def db(store: Database) -> Database:
    apply_migrations(store)
    return store


def queue(db: Database, *, status: str | None = "CREATED", ttl: datetime | None = None) -> int:
    with db.transaction() as cur:
        pk = insert_message(
            cur,
            MessageRecord(
                message_id="m1@gw",
                direction=Direction.OUT,
                cpa_id="cpa",
                conversation_id="c1",
                from_party="urn:osb:oin:00000001001234567000",
                to_party="urn:osb:oin:00000001007654321000",
                service="urn:osb:services:GGK:iWmo:3.2",
                action="WMO301",
                sent_at=T0,
                time_to_live=ttl,
                status=status,
                content_type="text/xml",
                envelope=b"<SOAP:Envelope/>",
            ),
            (),
            now=T0,
        )
        insert_task(cur, pk, URL, now=T0, max_attempts=3, retry_interval=INTERVAL, expires_at=ttl)
    return pk


def claim(db: Database, now: datetime = T0, node: str = NODE) -> Task:
    with db.transaction() as cur:
        (task,) = claim_due_tasks(cur, node=node, now=now, lease=timedelta(minutes=1))
    return task


def claimed(db: Database, task: Task, *, reliable: bool = True) -> Claimed:
    with db.transaction() as cur:
        message = message_by_pk(cur, task.message_pk)
    facts = message_facts(message, ack_requested=reliable)
    return Claimed(task_facts(task), facts, URL, 100)


def rows(db: Database, pk: int):
    with db.transaction() as cur:
        attempts = cur.execute(
            "SELECT a.attempt, a.node, a.http_status, a.outcome, a.error FROM delivery_attempt a "
            "JOIN delivery_task t ON t.id = a.task_id WHERE t.message_pk = ? ORDER BY a.attempt",
            (pk,),
        ).fetchall()
        task = cur.execute(
            "SELECT state, next_attempt_at, locked_by, last_error FROM delivery_task "
            "WHERE message_pk = ?",
            (pk,),
        ).fetchone()
        message = cur.execute("SELECT status FROM ebms_message WHERE id = ?", (pk,)).fetchone()
        events = cur.execute(
            "SELECT event_type, error_code, error_text FROM message_event WHERE message_pk = ?",
            (pk,),
        ).fetchall()
    state, next_at, locked_by, last_error = task
    return (
        [tuple(a) for a in attempts],
        (state, from_db(next_at), locked_by, last_error),
        message[0],
        [tuple(e) for e in events],
    )


def apply(db: Database, effects) -> bool:
    with db.transaction() as cur:
        return apply_effects(cur, effects)


def test_a_retry_waits_one_interval_with_its_failure(db: Database) -> None:
    pk = queue(db, ttl=T0 + 3 * INTERVAL)
    task = claim(db)
    now = T0 + timedelta(seconds=2)
    d = decide_attempt(
        claimed(db, task),
        Answered(503, "HTTP 503 from partner"),
        reply=None,
        last_error=None,
        node=NODE,
        started=T0,
        now=now,
    )
    assert apply(db, d.effects) is True
    assert rows(db, pk) == (
        [(1, NODE, 503, "retry", "HTTP 503 from partner")],
        ("pending", now + INTERVAL, None, "HTTP 503 from partner"),
        "CREATED",
        [],
    )


def test_an_expiry_keeps_the_last_failure_and_settles_the_message(db: Database) -> None:
    pk = queue(db, ttl=T0 + INTERVAL)
    first = claim(db)
    d = decide_attempt(
        claimed(db, first), Unreached("connection refused by partner.example:443"),
        reply=None, last_error=None, node=NODE, started=T0, now=T0,
    )  # fmt: skip
    apply(db, d.effects)
    second = claim(db, T0 + INTERVAL)
    late = T0 + INTERVAL + timedelta(seconds=1)
    d = decide_attempt(
        claimed(db, second), Answered(204), reply=None,
        last_error="connection refused by partner.example:443", node=NODE,
        started=T0 + INTERVAL, now=late,
    )  # fmt: skip
    assert apply(db, d.effects) is True
    attempts, task, status, events = rows(db, pk)
    # The attempt was a wait for an acknowledgment ("retry"); the task expired with it.
    assert attempts[1] == (2, NODE, 204, "retry", None)
    assert task == ("expired", late, None, "connection refused by partner.example:443")
    assert status == "EXPIRED"
    assert events == [("EXPIRED", None, "connection refused by partner.example:443")]


def test_a_task_no_longer_held_is_left_alone_with_its_message(db: Database) -> None:
    pk = queue(db)
    task = claim(db)
    d = decide_attempt(
        claimed(db, task, reliable=False), Answered(204), reply=None, last_error=None,
        node="another-node", started=T0, now=T0,
    )  # fmt: skip
    assert apply(db, d.effects) is False
    attempts, state, status, events = rows(db, pk)
    assert attempts == [(1, "another-node", 204, "done", None)]  # the attempt happened
    assert state[0] == "sending" and state[2] == NODE
    assert (status, events) == ("CREATED", [])


def test_an_acknowledgment_that_ended_the_task_first_wins(db: Database) -> None:
    pk = queue(db)
    task = claim(db)
    with db.transaction() as cur:
        assert release_task(cur, pk, TaskOutcome.DONE, now=T0)
    d = decide_attempt(
        claimed(db, task), NotSent(TaskOutcome.EXPIRED), reply=None, last_error=None,
        node=NODE, started=T0, now=T0,
    )  # fmt: skip
    assert apply(db, d.effects) is False
    assert d.log_fields(moved=False)["outcome"] == "superseded"
    _, state, status, events = rows(db, pk)
    assert (state[0], status, events) == ("done", "CREATED", [])


@pytest.mark.parametrize("status", ["CREATED", None], ids=["business", "signal"])
def test_a_refused_task_fails_and_its_message_with_the_delivery_failure_code(
    db: Database, status: str | None
) -> None:
    pk = queue(db, status=status)
    task = claim(db)
    with db.transaction() as cur:
        row = message_head(cur, pk)
    assert row == ("m1@gw", "cpa", status)
    reason = "The CPA of this message no longer exists (no CPA 'cpa')."
    refusal = decide_refusal(task_facts(task), MessageHead(*row), reason, node=NODE, now=T0)
    assert apply(db, refusal.effects) is True
    attempts, state, message_status, events = rows(db, pk)
    assert attempts == [(1, NODE, None, "failed", reason)]
    assert (state[0], state[3]) == ("failed", reason)
    if status is None:
        assert (message_status, events) == (None, [])
    else:
        assert message_status == "DELIVERY_FAILED"
        assert events == [("FAILED", "DeliveryFailure", reason)]


def test_the_head_of_a_message_that_is_gone_is_none(db: Database) -> None:
    with db.transaction() as cur:
        assert message_head(cur, 12345) is None
