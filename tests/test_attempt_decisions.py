"""The delivery attempt's decisions, table by table, without a store or a network.

Each row is one claimed task (its reliability parameters and its message), how
the attempt ended (nothing sent, an HTTP answer, no answer) and what the
synchronous reply in a 2xx came to; the decision must say exactly what the
attempt row records, what the task becomes (pending again at T, done, failed,
expired), how the message settles and what the log line says (docs/msh.md,
"Sending").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.msh.attempt import (
    UNDELIVERABLE_CODE,
    classify,
    decide_attempt,
    decide_refusal,
    needs_last_error,
    nothing_to_send,
    takes_sync_reply,
)
from gateway.msh.attempt_effects import FinishTask, RecordAttempt, RescheduleTask, SettleMessage
from gateway.msh.attempt_facts import (
    Answered,
    AttemptResult,
    Claimed,
    MessageFacts,
    MessageHead,
    NotSent,
    TaskFacts,
    Unreached,
)
from gateway.msh.attempt_prepare import Undeliverable, refusal_reason
from gateway.store.cpas import CpaNotFound
from gateway.store.messages import EventType, OutboundStatus, TaskOutcome

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=5)
NODE = "node-a"
CPA_URL = "https://partner.example/ebms"
LAST = "connection refused by partner.example:443"
REFUSED = "connection refused by partner.example:443"
HTTP_503 = "HTTP 503 from partner"
HTTP_400 = "HTTP 400 from partner: Bad envelope"

DONE, RETRY, FAILED, EXPIRED = (
    TaskOutcome.DONE,
    TaskOutcome.RETRY,
    TaskOutcome.FAILED,
    TaskOutcome.EXPIRED,
)


def task(
    *,
    attempt: int = 1,
    max_attempts: int = 4,
    interval: timedelta | None = INTERVAL,
    expires_at: datetime | None = T0 + 4 * INTERVAL,
) -> TaskFacts:
    return TaskFacts(
        id=7,
        message_pk=42,
        url=CPA_URL,
        attempt=attempt,
        max_attempts=max_attempts,
        retry_interval=interval,
        expires_at=expires_at,
    )


def message(
    *, status: str | None = "CREATED", ack: bool = True, action: str = "WMO301"
) -> MessageFacts:
    return MessageFacts(
        pk=42,
        message_id="m-1@gemeente.example",
        status=status,
        ack_requested=ack and status is not None,
        cpa_id="cpa-1",
        from_party="urn:osb:oin:00000001",
        to_party="urn:osb:oin:00000002",
        service="urn:osb:services:GGK:iWmo:3.2",
        action=action,
    )


#: The kinds of message a task can carry, with the task they are queued with.
RELIABLE = Claimed(task(), message(), CPA_URL, 2048)
"""osb-rm: AckRequested, 1 + Retries attempts RetryInterval apart, a TimeToLive."""
BEST_EFFORT = Claimed(
    task(max_attempts=1, interval=None, expires_at=None), message(ack=False), CPA_URL, 2048
)
"""osb-be: no AckRequested, one attempt, no TimeToLive."""
PING = Claimed(
    task(max_attempts=1, interval=None, expires_at=None),
    message(status=None, action="Ping"),
    CPA_URL,
    900,
)
"""An MSH signal (Ping, StatusRequest, Acknowledgment, MessageError): no status to keep."""
STATUS_REQUEST = replace(PING, message=message(status=None, action="StatusRequest"))


def at_attempt(claimed: Claimed, attempt: int) -> Claimed:
    return replace(claimed, task=replace(claimed.task, attempt=attempt))


def decide(
    claimed: Claimed,
    result: AttemptResult,
    *,
    reply: str | None = None,
    now: datetime = T0 + timedelta(seconds=1),
    last_error: str | None = LAST,
):
    return decide_attempt(
        claimed, result, reply=reply, last_error=last_error, node=NODE, started=T0, now=now
    )


# -- classify ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, DONE),
        (202, DONE),
        (204, DONE),
        (299, DONE),
        (100, FAILED),
        (301, FAILED),
        (400, FAILED),
        (401, FAILED),
        (403, FAILED),
        (404, FAILED),
        (408, RETRY),
        (429, RETRY),
        (500, RETRY),
        (501, FAILED),
        (502, RETRY),
        (503, RETRY),
        (504, RETRY),
        (505, FAILED),
        (510, FAILED),
        (599, RETRY),
    ],
)
def test_http_status_classes(status: int, outcome: TaskOutcome) -> None:
    assert classify(status) is outcome


@pytest.mark.parametrize(
    ("result", "reads"),
    [
        (Answered(200), True),
        (Answered(204), True),
        (Answered(503, HTTP_503), False),
        (Answered(400, HTTP_400), False),
        (Unreached(REFUSED), False),
        (NotSent(EXPIRED), False),
        (NotSent(DONE), False),
    ],
)
def test_only_a_2xx_body_is_read_as_a_synchronous_reply(result: AttemptResult, reads: bool) -> None:
    assert takes_sync_reply(result) is reads


# -- at the claim: anything to send? -----------------------------------------------------

_LATE = T0 + 4 * INTERVAL


@pytest.mark.parametrize(
    ("claimed", "now", "expected"),
    [
        pytest.param(RELIABLE, T0, None, id="reliable-first-attempt"),
        pytest.param(at_attempt(RELIABLE, 4), T0, None, id="reliable-last-attempt"),
        pytest.param(at_attempt(RELIABLE, 5), T0, NotSent(EXPIRED), id="retries-exhausted"),
        pytest.param(RELIABLE, _LATE, None, id="at-time-to-live"),
        pytest.param(
            RELIABLE, _LATE + timedelta(microseconds=1), NotSent(EXPIRED), id="time-to-live-passed"
        ),
        pytest.param(
            replace(RELIABLE, message=message(status="DELIVERED")),
            T0,
            NotSent(DONE),
            id="acknowledged-while-waiting",
        ),
        pytest.param(
            replace(RELIABLE, message=message(status="DELIVERY_FAILED")),
            T0,
            NotSent(DONE),
            id="message-error-while-waiting",
        ),
        pytest.param(
            replace(at_attempt(RELIABLE, 5), message=message(status="DELIVERED")),
            T0,
            NotSent(EXPIRED),
            id="exhausted-before-settled",
        ),
        pytest.param(BEST_EFFORT, T0, None, id="best-effort"),
        pytest.param(BEST_EFFORT, T0 + timedelta(days=400), None, id="best-effort-no-deadline"),
        pytest.param(PING, T0, None, id="ping"),
        pytest.param(at_attempt(PING, 2), T0, NotSent(EXPIRED), id="ping-final-wait-over"),
    ],
)
def test_what_the_claim_finds(claimed: Claimed, now: datetime, expected: NotSent | None) -> None:
    assert nothing_to_send(claimed, now) == expected


# -- after the attempt -------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One attempt and everything its decision must say."""

    claimed: Claimed
    result: AttemptResult
    reply: str | None
    now: datetime
    outcome: TaskOutcome  # the attempt row's
    state: TaskOutcome  # the task's after it (RETRY: pending again)
    error: str | None  # the attempt row's and the task's
    settle: OutboundStatus | None  # the business message's new status, if any
    reason: str | None  # what the task and message end with (log error)
    log: str  # the log line's outcome
    next_at: datetime | None = None  # RETRY: when the task is due again


_NOW = T0 + timedelta(seconds=1)
_AFTER_TTL = T0 + 4 * INTERVAL

# Short names for the table below: one row is its facts, then what it must lead to.
NOW, TTL, AT = _NOW, _AFTER_TTL, _NOW + INTERVAL
BE, RM, RM_LAST = BEST_EFFORT, RELIABLE, at_attempt(RELIABLE, 4)
H408, H501, H403 = (f"HTTP {s} from partner" for s in (408, 501, 403))
TIMEOUT = "no response from partner.example:443 within 60 s"
DLV, DF, EXP = OutboundStatus.DELIVERED, OutboundStatus.DELIVERY_FAILED, OutboundStatus.EXPIRED
WAIT = "sent-awaiting-ack"

ROWS: dict[str, Row] = {
    # best effort (osb-be): one attempt, the answer settles the message
    "be-2xx": Row(BE, Answered(204), None, NOW,
                  DONE, DONE, None, DLV, None, "done"),
    "be-2xx-with-body": Row(BE, Answered(200), "bad-reply", NOW,
                            DONE, DONE, None, DLV, None, "done"),
    "be-503": Row(BE, Answered(503, HTTP_503), None, NOW,
                  FAILED, FAILED, HTTP_503, DF, HTTP_503, "failed"),
    "be-400": Row(BE, Answered(400, HTTP_400), None, NOW,
                  FAILED, FAILED, HTTP_400, DF, HTTP_400, "failed"),
    "be-transport": Row(BE, Unreached(REFUSED), None, NOW,
                        FAILED, FAILED, REFUSED, DF, REFUSED, "failed"),
    "be-settled-elsewhere": Row(
        replace(BE, message=message(status="DELIVERED", ack=False)), NotSent(DONE), None, NOW,
        DONE, DONE, None, DLV, None, "done"),
    # reliable (osb-rm): a 2xx only says the transport took it
    "rm-2xx-async-ack": Row(RM, Answered(204), None, NOW,
                            RETRY, RETRY, None, None, None, WAIT, AT),
    "rm-2xx-sync-ack": Row(RM, Answered(200), "delivered", NOW,
                           DONE, DONE, None, DLV, None, "done"),
    "rm-2xx-sync-error": Row(RM, Answered(200), "delivery-failed", NOW,
                             FAILED, FAILED, None, DF, None, "failed"),
    "rm-2xx-bad-reply": Row(RM, Answered(200), "bad-reply", NOW,
                            RETRY, RETRY, None, None, None, WAIT, AT),
    "rm-2xx-reply-seen-before": Row(RM, Answered(200), "reply-duplicate", NOW,
                                    RETRY, RETRY, None, None, None, WAIT, AT),
    "rm-503": Row(RM, Answered(503, HTTP_503), None, NOW,
                  RETRY, RETRY, HTTP_503, None, HTTP_503, "retry", AT),
    "rm-408": Row(RM, Answered(408, H408), None, NOW,
                  RETRY, RETRY, H408, None, H408, "retry", AT),
    "rm-501": Row(RM, Answered(501, H501), None, NOW,
                  FAILED, FAILED, H501, DF, H501, "failed"),
    "rm-400": Row(RM, Answered(400, HTTP_400), None, NOW,
                  FAILED, FAILED, HTTP_400, DF, HTTP_400, "failed"),
    "rm-transport": Row(RM, Unreached(REFUSED), None, NOW,
                        RETRY, RETRY, REFUSED, None, REFUSED, "retry", AT),
    "rm-timeout": Row(RM, Unreached(TIMEOUT), None, NOW,
                      RETRY, RETRY, TIMEOUT, None, TIMEOUT, "retry", AT),
    # the last attempt still waits one interval for a late acknowledgment
    "rm-last-attempt-2xx": Row(RM_LAST, Answered(204), None, NOW,
                               RETRY, RETRY, None, None, None, WAIT, AT),
    "rm-last-attempt-503": Row(RM_LAST, Answered(503, HTTP_503), None, NOW,
                               RETRY, RETRY, HTTP_503, None, HTTP_503, "retry", AT),
    # the TimeToLive (the persist deadline) passed during the attempt
    "rm-503-after-ttl": Row(RM, Answered(503, HTTP_503), None, TTL,
                            RETRY, EXPIRED, HTTP_503, EXP, HTTP_503, "expired"),
    "rm-transport-after-ttl": Row(RM, Unreached(REFUSED), None, TTL,
                                  RETRY, EXPIRED, REFUSED, EXP, REFUSED, "expired"),
    "rm-2xx-after-ttl": Row(RM, Answered(204), None, TTL,
                            RETRY, EXPIRED, None, EXP, LAST, "expired"),
    "rm-sync-ack-after-ttl": Row(RM, Answered(200), "delivered", TTL,
                                 DONE, DONE, None, DLV, None, "done"),
    # the claim ended the task without a POST
    "rm-retries-exhausted": Row(at_attempt(RM, 5), NotSent(EXPIRED), None, NOW,
                                EXPIRED, EXPIRED, None, EXP, LAST, "expired"),
    "rm-ttl-passed-at-claim": Row(RM, NotSent(EXPIRED), None, TTL,
                                  EXPIRED, EXPIRED, None, EXP, LAST, "expired"),
    # a reliable message found settled at the claim waits like one sent (as it always has)
    "rm-settled-elsewhere": Row(replace(RM, message=message(status="DELIVERED")), NotSent(DONE),
                                None, NOW, RETRY, RETRY, None, None, None, WAIT, AT),
    # MSH signals: no status to keep, no best-effort rule (a Ping gets one attempt)
    "ping-sync-pong": Row(PING, Answered(200), "pong", NOW,
                          DONE, DONE, None, None, None, "done"),
    "ping-2xx": Row(PING, Answered(204), None, NOW,
                    DONE, DONE, None, None, None, "done"),
    "ping-503": Row(PING, Answered(503, HTTP_503), None, NOW,
                    RETRY, RETRY, HTTP_503, None, HTTP_503, "retry", NOW),
    "ping-transport": Row(PING, Unreached(REFUSED), None, NOW,
                          RETRY, RETRY, REFUSED, None, REFUSED, "retry", NOW),
    "ping-403": Row(PING, Answered(403, H403), None, NOW,
                    FAILED, FAILED, H403, None, H403, "failed"),
    "ping-final-wait-over": Row(at_attempt(PING, 2), NotSent(EXPIRED), None, NOW,
                                EXPIRED, EXPIRED, None, None, LAST, "expired"),
    "status-request-sync-response": Row(STATUS_REQUEST, Answered(200), "statusresponse", NOW,
                                        DONE, DONE, None, None, None, "done"),
    "status-request-503": Row(STATUS_REQUEST, Answered(503, HTTP_503), None, NOW,
                              RETRY, RETRY, HTTP_503, None, HTTP_503, "retry", NOW),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ROWS))
def test_attempt_decision(name: str) -> None:
    row = ROWS[name]
    d = decide(row.claimed, row.result, reply=row.reply, now=row.now)
    status = row.result.status if isinstance(row.result, Answered) else None
    assert (d.outcome, d.state, d.error, d.settle_error) == (
        row.outcome,
        row.state,
        row.error,
        row.reason,
    )
    record, task_effect, *settles = d.effects
    assert record == RecordAttempt(
        task_id=7,
        attempt=row.claimed.task.attempt,
        node=NODE,
        url=CPA_URL,
        started_at=T0,
        finished_at=row.now,
        http_status=status,
        outcome=row.outcome,
        error=row.error,
    )
    if row.state is RETRY:
        assert task_effect == RescheduleTask(7, NODE, row.next_at, row.error, row.now)
    else:
        assert row.next_at is None
        keep = row.state is EXPIRED and row.error is None
        assert task_effect == FinishTask(7, NODE, row.state, row.error, keep, row.now)
    if row.settle is None:
        assert settles == []
    else:
        event = {
            OutboundStatus.DELIVERED: EventType.DELIVERED,
            OutboundStatus.DELIVERY_FAILED: EventType.FAILED,
            OutboundStatus.EXPIRED: EventType.EXPIRED,
        }[row.settle]
        text = None if row.settle is OutboundStatus.DELIVERED else row.reason
        assert settles == [
            SettleMessage(
                42,
                "m-1@gemeente.example",
                row.settle,
                event,
                row.now,
                reason=text,
                error_text=text,
                after_task=True,
            )
        ]
    fields = d.log_fields(moved=True)
    assert fields["outcome"] == row.log
    assert fields.get("error") == row.reason
    assert fields.get("http_status") == (str(status) if status is not None else None)
    assert fields.get("reply") == row.reply


def test_every_task_transition_is_in_the_table() -> None:
    """From ``sending`` the task goes pending again, or done, failed or expired: all covered."""
    states = {row.state for row in ROWS.values()}
    assert states == {RETRY, DONE, FAILED, EXPIRED}
    kinds = {type(row.result) for row in ROWS.values()}
    assert kinds == {NotSent, Answered, Unreached}


def test_no_retry_interval_means_due_again_at_once() -> None:
    claimed = replace(RELIABLE, task=replace(RELIABLE.task, retry_interval=None))
    d = decide(claimed, Answered(503, HTTP_503))
    assert d.effects[1] == RescheduleTask(7, NODE, _NOW, HTTP_503, _NOW)


def test_a_retry_interval_past_the_calendar_waits_as_long_as_a_date_can_say() -> None:
    claimed = replace(
        RELIABLE, task=replace(RELIABLE.task, retry_interval=timedelta(days=3_000_000))
    )
    d = decide(claimed, Answered(503, HTTP_503))
    assert d.effects[1] == RescheduleTask(7, NODE, datetime.max.replace(tzinfo=UTC), HTTP_503, _NOW)


# -- the log line when the task was no longer ours -----------------------------------------


@pytest.mark.parametrize(
    ("result", "reply", "outcome", "error"),
    [
        # Another node took the task over after our lease ran out: nothing took.
        (Answered(204), None, "superseded", None),
        (Answered(503, HTTP_503), None, "superseded", HTTP_503),
        (NotSent(EXPIRED), None, "superseded", None),
        # The synchronous reply's correlation ended the task itself.
        (Answered(200), "delivered", "done", None),
        (Answered(200), "delivery-failed", "failed", None),
        (Answered(200), "pong", "superseded", None),
    ],
)
def test_log_when_the_task_effect_did_not_take(
    result: AttemptResult, reply: str | None, outcome: str, error: str | None
) -> None:
    d = decide(RELIABLE, result, reply=reply)
    fields = d.log_fields(moved=False)
    assert fields["outcome"] == outcome
    assert fields.get("error") == error


def test_log_fields_in_order_and_without_content() -> None:
    claimed = Claimed(
        task(attempt=2),
        replace(message(), correlation_id="req-9", ref_to_message_id="m-0@node.example"),
        "https://proxy.example/ebms",
        2048,
    )
    d = decide(claimed, Answered(503, HTTP_503), now=T0 + timedelta(milliseconds=12.5))
    assert list(d.log_fields(moved=True).items()) == [
        ("event", "delivery"),
        ("message_id", "m-1@gemeente.example"),
        ("correlation_id", "req-9"),
        ("ref_to", "m-0@node.example"),
        ("cpa_id", "cpa-1"),
        ("from", "urn:osb:oin:00000001"),
        ("to", "urn:osb:oin:00000002"),
        ("service", "urn:osb:services:GGK:iWmo:3.2"),
        ("action", "WMO301"),
        ("attempt", "2"),
        ("url", "https://proxy.example/ebms"),
        ("cpa_url", CPA_URL),
        ("http_status", "503"),
        ("outcome", "retry"),
        ("size", "2048"),
        ("ms", "12.5"),
        ("error", HTTP_503),
    ]
    assert d.effects[0].url == "https://proxy.example/ebms"  # type: ignore[union-attr]


# -- invariants over every combination -------------------------------------------------------

_RESULTS: list[AttemptResult] = [
    NotSent(EXPIRED),
    NotSent(DONE),
    Answered(200),
    Answered(204),
    Answered(408, "HTTP 408 from partner"),
    Answered(400, HTTP_400),
    Answered(501, "HTTP 501 from partner"),
    Answered(503, HTTP_503),
    Unreached(REFUSED),
]
_REPLIES = [None, "delivered", "delivery-failed", "pong", "bad-reply", "reply-duplicate"]
_CLAIMS = [RELIABLE, at_attempt(RELIABLE, 4), BEST_EFFORT, PING, STATUS_REQUEST]
_TIMES = [_NOW, _AFTER_TTL]


@pytest.mark.parametrize(
    ("claimed", "result", "reply", "now"),
    [
        c
        for c in itertools.product(_CLAIMS, _RESULTS, _REPLIES, _TIMES)
        if c[2] is None or takes_sync_reply(c[1])
    ],
)
def test_every_decision_records_the_attempt_and_moves_the_task_once(
    claimed: Claimed, result: AttemptResult, reply: str | None, now: datetime
) -> None:
    d = decide(claimed, result, reply=reply, now=now)
    record, task_effect, *rest = d.effects
    assert isinstance(record, RecordAttempt)
    assert isinstance(task_effect, RescheduleTask | FinishTask)
    assert all(isinstance(e, SettleMessage) and e.after_task for e in rest)
    # Only a business message settles, and only when its task ends.
    assert len(rest) == (1 if claimed.message.business and d.state is not RETRY else 0)
    # Best effort never waits for another attempt.
    if claimed.message.business and not claimed.message.reliable:
        assert d.state is not RETRY
    # Past the TimeToLive nothing waits either.
    if claimed.task.expires_at is not None and now >= claimed.task.expires_at:
        assert d.state is not RETRY
    # Only the outcome of a RETRY can differ from the task's state (an expiry).
    assert d.outcome is d.state or (d.outcome, d.state) == (RETRY, EXPIRED)


@pytest.mark.parametrize(
    ("claimed", "result", "now"),
    list(itertools.product(_CLAIMS, [*_RESULTS, NotSent(EXPIRED), NotSent(DONE)], _TIMES)),
)
def test_the_last_error_is_read_only_when_the_decision_can_use_it(
    claimed: Claimed, result: AttemptResult, now: datetime
) -> None:
    """The worker reads the task's last failure only when ``needs_last_error``."""
    with_it = decide(claimed, result, now=now, last_error=LAST)
    without = decide(claimed, result, now=now, last_error=None)
    if not needs_last_error(claimed, result, now):
        assert with_it == without


# -- a task that cannot be prepared at the claim -----------------------------------------------

_BUSINESS_HEAD = MessageHead("m-1@gemeente.example", "cpa-1", "CREATED")
_SIGNAL_HEAD = MessageHead("ack-1@gemeente.example", "cpa-1", None)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (
            CpaNotFound("no CPA 'cpa-1'"),
            "The CPA of this message no longer exists (no CPA 'cpa-1').",
        ),
        (
            Undeliverable("CPA cpa-1 is not in force (status revoked, valid a to b)."),
            "CPA cpa-1 is not in force (status revoked, valid a to b).",
        ),
        (
            LookupError("payload 1 of message 42 lacks chunk 3"),
            "The stored message is inconsistent: payload 1 of message 42 lacks chunk 3.",
        ),
        (
            LookupError("no message with pk 42"),
            "The stored message is inconsistent: no message with pk 42.",
        ),
        (
            ValueError("secret content"),
            "The message could not be prepared for sending (ValueError).",
        ),
    ],
)
def test_refusal_reasons(exc: Exception, reason: str) -> None:
    assert refusal_reason(exc) == reason


@pytest.mark.parametrize(
    ("head", "settles", "ids"),
    [
        pytest.param(_BUSINESS_HEAD, True, True, id="business-message"),
        pytest.param(
            replace(_BUSINESS_HEAD, status="DELIVERED"), True, True, id="settled-message-guarded"
        ),
        pytest.param(_SIGNAL_HEAD, False, True, id="signal"),
        pytest.param(None, False, False, id="message-row-gone"),
    ],
)
def test_refusal_fails_the_task_and_its_message(
    head: MessageHead | None, settles: bool, ids: bool
) -> None:
    reason = "The CPA of this message no longer exists (no CPA 'cpa-1')."
    t = task(attempt=3)
    refusal = decide_refusal(t, head, reason, node=NODE, now=_NOW)
    expected: list[object] = [
        RecordAttempt(7, 3, NODE, CPA_URL, _NOW, _NOW, None, FAILED, reason),
        FinishTask(7, NODE, FAILED, reason, False, _NOW),
    ]
    if settles:
        assert head is not None
        expected.append(
            SettleMessage(
                42,
                head.message_id,
                OutboundStatus.DELIVERY_FAILED,
                EventType.FAILED,
                _NOW,
                reason=reason,
                error_code=UNDELIVERABLE_CODE,
                error_text=reason,
                after_task=False,
            )
        )
    assert list(refusal.effects) == expected
    fields = {"event": "delivery", "task": "7", "outcome": "failed", "error": reason}
    if ids:
        assert head is not None
        fields.update(message_id=head.message_id, cpa_id="cpa-1")
    assert list(refusal.log_fields.items()) == list(fields.items())
