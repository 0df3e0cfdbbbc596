"""The ebMS state tables, transition by transition, with no database."""

from __future__ import annotations

import itertools
from enum import StrEnum

import pytest

from cpa.model import PartyId
from gateway.ebms.model import MessageStatus
from gateway.msh.states import (
    EVENT_ON_ENTRY,
    INBOUND,
    OUTBOUND,
    STATUS_RESPONSE,
    TASK,
    TASK_BUSY,
    TASK_EVENT_OF_OUTCOME,
    TASK_UNDELIVERED,
    WEBHOOK,
    EventType,
    InboundStatus,
    MessageEvent,
    OutboundStatus,
    StateMachine,
    TaskEvent,
    TaskOutcome,
    TaskState,
    TransitionRefused,
    WebhookState,
)
from gateway.store import parties
from gateway.store.guards import in_states, literal
from gateway.store.leases import DELIVERY_TASKS, WEBHOOK_DELIVERIES

# Every allowed move, written out as the stored literals: (state, event) -> next.
# Any pair not listed must be refused.
OUTBOUND_MOVES = {
    ("CREATED", "delivered"): "DELIVERED",
    ("CREATED", "failed"): "DELIVERY_FAILED",
    ("CREATED", "expired"): "EXPIRED",
    ("DELIVERY_FAILED", "retried"): "CREATED",
    ("EXPIRED", "retried"): "CREATED",
}
INBOUND_MOVES = {
    ("RECEIVED", "processed"): "PROCESSED",
    ("RECEIVED", "failed"): "FAILED",
}
TASK_MOVES = {
    ("pending", "claimed"): "sending",
    ("pending", "acknowledged"): "done",
    ("pending", "error-received"): "failed",
    ("pending", "lapsed"): "expired",
    ("pending", "cancelled"): "failed",
    ("pending", "superseded"): "failed",
    ("pending", "hurried"): "pending",
    ("pending", "retried"): "pending",
    ("sending", "claimed"): "sending",
    ("sending", "delivered"): "done",
    ("sending", "retry-due"): "pending",
    ("sending", "failed"): "failed",
    ("sending", "expired"): "expired",
    ("sending", "unclaimed"): "pending",
    ("sending", "released"): "pending",
    ("sending", "acknowledged"): "done",
    ("sending", "error-received"): "failed",
    ("sending", "lapsed"): "expired",
    ("sending", "cancelled"): "failed",
    ("done", "reopened"): "pending",
    ("failed", "reopened"): "pending",
    ("failed", "retried"): "pending",
    ("expired", "reopened"): "pending",
    ("expired", "retried"): "pending",
}
WEBHOOK_MOVES = {
    ("pending", "claimed"): "sending",
    ("sending", "claimed"): "sending",
    ("sending", "delivered"): "done",
    ("sending", "retry-due"): "pending",
    ("sending", "failed"): "failed",
    ("sending", "unclaimed"): "pending",
    ("sending", "released"): "pending",
}

MACHINES: list[tuple[StateMachine, type[StrEnum], dict[tuple[str, str], str]]] = [
    (OUTBOUND, MessageEvent, OUTBOUND_MOVES),
    (INBOUND, MessageEvent, INBOUND_MOVES),
    (TASK, TaskEvent, TASK_MOVES),
    (WEBHOOK, TaskEvent, WEBHOOK_MOVES),
]


def _cases() -> list[tuple[StateMachine, StrEnum, StrEnum, str | None]]:
    out = []
    for machine, events, moves in MACHINES:
        for state, event in itertools.product(machine.states, events):
            out.append((machine, state, event, moves.get((state.value, event.value))))
    return out


CASES = _cases()


@pytest.mark.parametrize(
    ("machine", "state", "event", "expected"),
    CASES,
    ids=[f"{m.name}:{s.value}+{e.value}" for m, s, e, _ in CASES],
)
def test_every_transition_is_allowed_or_refused_as_listed(
    machine: StateMachine,
    state: StrEnum,
    event: StrEnum,
    expected: str | None,
) -> None:
    assert machine.allows(state, event) is (expected is not None)
    assert machine.allows(state.value, event) is (expected is not None)
    if expected is None:
        with pytest.raises(TransitionRefused) as refused:
            machine.next(state, event)
        assert refused.value.machine == machine.name
        assert refused.value.state == state
        assert refused.value.event == event
        assert state not in machine.sources(event)
    else:
        assert machine.next(state, event) == expected
        assert machine.next(state.value, event) == expected
        assert state in machine.sources(event)
        assert machine.target(event) == expected


def test_the_values_are_the_stored_literals() -> None:
    assert [s.value for s in OutboundStatus] == [
        "CREATED",
        "DELIVERED",
        "DELIVERY_FAILED",
        "EXPIRED",
    ]
    assert [s.value for s in InboundStatus] == ["RECEIVED", "PROCESSED", "FAILED"]
    assert [s.value for s in TaskState] == ["pending", "sending", "done", "failed", "expired"]
    assert [s.value for s in WebhookState] == ["pending", "sending", "done", "failed"]
    assert [s.value for s in TaskOutcome] == ["done", "retry", "failed", "expired"]
    assert [s.value for s in EventType] == ["RECEIVED", "DELIVERED", "FAILED", "EXPIRED"]


def test_where_each_lifecycle_starts_and_ends() -> None:
    assert OUTBOUND.initial == {OutboundStatus.CREATED}
    assert OUTBOUND.final == {OutboundStatus.DELIVERED}
    assert INBOUND.initial == {InboundStatus.RECEIVED, InboundStatus.FAILED}
    assert INBOUND.final == {InboundStatus.PROCESSED, InboundStatus.FAILED}
    assert TASK.initial == {TaskState.PENDING}
    assert TASK.final == set()  # a resend can reopen any ended task
    assert WEBHOOK.final == {WebhookState.DONE, WebhookState.FAILED}


@pytest.mark.parametrize("state", [None, "retry", "bogus", ""])
def test_no_event_leaves_a_state_outside_the_table(state: str | None) -> None:
    for event in TaskEvent:
        assert not TASK.allows(state, event)
        with pytest.raises(TransitionRefused, match="not allowed"):
            TASK.next(state, event)


def test_an_event_the_machine_does_not_know_has_no_target() -> None:
    with pytest.raises(TransitionRefused):
        OUTBOUND.target(MessageEvent.PROCESSED)
    with pytest.raises(TransitionRefused):
        WEBHOOK.target(TaskEvent.ACKNOWLEDGED)
    assert OUTBOUND.sources(MessageEvent.PROCESSED) == frozenset()


def test_a_table_whose_event_leads_to_two_states_is_refused() -> None:
    class S(StrEnum):
        A = "a"
        B = "b"

    class E(StrEnum):
        GO = "go"

    with pytest.raises(ValueError, match="more than one state"):
        StateMachine("bad", S, frozenset({S.A}), {S.A: {E.GO: S.B}, S.B: {E.GO: S.A}})
    with pytest.raises(ValueError, match="every state"):
        StateMachine("short", S, frozenset({S.A}), {S.A: {E.GO: S.B}})


def test_the_derived_sets_and_maps() -> None:
    assert set(TASK_BUSY) == {TaskState.PENDING, TaskState.SENDING}
    assert set(TASK_UNDELIVERED) == {TaskState.FAILED, TaskState.EXPIRED}
    assert {o.value: e.value for o, e in TASK_EVENT_OF_OUTCOME.items()} == {
        "done": "delivered",
        "retry": "retry-due",
        "failed": "failed",
        "expired": "expired",
    }
    assert [TASK.target(e) for e in TASK_EVENT_OF_OUTCOME.values()] == [
        "done",
        "pending",
        "failed",
        "expired",
    ]
    assert dict(EVENT_ON_ENTRY) == {
        "DELIVERED": EventType.DELIVERED,
        "DELIVERY_FAILED": EventType.FAILED,
        "EXPIRED": EventType.EXPIRED,
        "FAILED": EventType.FAILED,
    }
    assert STATUS_RESPONSE == {
        InboundStatus.RECEIVED: MessageStatus.RECEIVED,
        InboundStatus.PROCESSED: MessageStatus.PROCESSED,
    }


@pytest.mark.parametrize(
    ("states", "sql"),
    [
        ([TaskState.SENDING], "state = 'sending'"),
        ([TaskState.SENDING, TaskState.PENDING], "state IN ('pending', 'sending')"),
        (
            TASK.sources(TaskEvent.REOPENED),
            "state IN ('done', 'expired', 'failed')",
        ),
    ],
)
def test_guards_are_written_from_the_states(states: list[TaskState], sql: str) -> None:
    assert in_states("state", states) == sql


def test_a_guard_needs_plain_states() -> None:
    class Odd(StrEnum):
        QUOTE = "it's"

    with pytest.raises(ValueError, match="plain"):
        literal(Odd.QUOTE)
    with pytest.raises(ValueError, match="no states"):
        in_states("state", [])


def test_the_lease_conditions_come_from_the_tables() -> None:
    due = "(state = 'pending' AND next_attempt_at <= ?) OR (state = 'sending' AND lease_until < ?)"
    assert DELIVERY_TASKS.due() == due
    assert WEBHOOK_DELIVERIES.due() == due
    assert DELIVERY_TASKS.leased == WEBHOOK_DELIVERIES.leased == "state = 'sending'"


OIN = "urn:osb:oin"


@pytest.mark.parametrize(
    ("ids", "text"),
    [
        ((PartyId("00000001001234567000", OIN),), "urn:osb:oin:00000001001234567000"),
        (
            (PartyId("00000001001234567000", OIN), PartyId("12345678", "urn:agb")),
            "urn:osb:oin:00000001001234567000,urn:agb:12345678",
        ),
        ((PartyId("plain"),), "plain"),
        ((), ""),
    ],
)
def test_parties_codec_round_trips_the_stored_text(ids: tuple[PartyId, ...], text: str) -> None:
    assert parties.encode(ids) == text
    assert parties.decode(text) == ids


def test_parties_like_patterns_match_a_whole_id() -> None:
    assert parties.like_patterns("urn:osb:oin:1") == ("%urn:osb:oin:1", "%urn:osb:oin:1,%")
