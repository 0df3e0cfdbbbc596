"""What one delivery attempt leads to: facts and an outcome in, a decision out.

Pure functions over small frozen values: no store, no I/O, no Twisted.  The
delivery worker (:mod:`gateway.delivery`) reads the facts (the claimed task,
its message, the answer to the POST), calls one of the ``decide_*`` functions
and hands the decision's effects to :mod:`gateway.msh.attempt_apply`.

The rules, in the order they are applied (docs/msh.md, "Sending"):

* ebMS 2.0 §6.4 gives the reliable-messaging parameters; they reach the task
  when it is queued: 1 + Retries attempts, RetryInterval apart, and the
  message's TimeToLive (Timestamp + RetryInterval × (Retries + 1), as
  ebms-core sets it) as the deadline.  PersistDuration is the receiver's
  promise to remember the message id, not a limit on our attempts.  Whether
  the message asks for an acknowledgment (``eb:AckRequested``) is read from
  the stored envelope at the claim.
* ebMS 2.0 §6.5: a reliable message is resent every RetryInterval until it is
  acknowledged, the attempts run out or its TimeToLive passes; a 2xx only says
  the transport took it.  After the last attempt the task waits one more
  RetryInterval for a late acknowledgment, then expires at its next claim
  without sending (ebms-core's final wait).
* HTTP 503, other 5xx (but 501, 505 and 510), 408, 429 and transport failures
  are worth another attempt; any other status is final (the Digikoppeling
  Koppelvlakstandaard ebMS2: 503 must not end reliable messaging; the other
  codes are ebms-core's defaults).  A synchronous MessageError (severity
  Error) is final too.
* Best effort (Koppelvlakstandaard ebMS2, the osb-be profiles) has no
  retries: a 2xx delivers the message, a failure of any kind fails it.
* A task that cannot be prepared at the claim (its CPA deleted or no longer in
  force, its stored message inconsistent, a URL mapping invalid) fails at
  once, with the ebMS 2.0 §4.2.3.4.1 DeliveryFailure code on the event.

Every end state of a business message raises an event for the back office
(DELIVERED, FAILED, EXPIRED); MSH signals (acknowledgments, errors, Ping and
Pong) have no status to keep, so their tasks end without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.msh.attempt_effects import (
    AttemptEffect,
    FinishTask,
    RecordAttempt,
    RescheduleTask,
    SettleMessage,
)
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

# The state enums only: nothing here reads or writes the store.
from gateway.msh.states import EventType, OutboundStatus, TaskOutcome

__all__ = [
    "FINAL_SERVER_ERRORS",
    "RETRYABLE_CLIENT_ERRORS",
    "UNDELIVERABLE_CODE",
    "AttemptDecision",
    "Refusal",
    "classify",
    "decide_attempt",
    "decide_refusal",
    "needs_last_error",
    "nothing_to_send",
    "past_time_to_live",
    "takes_sync_reply",
]

#: ebms-core's http.errors defaults: 5xx are worth retrying except these.
FINAL_SERVER_ERRORS = frozenset({501, 505, 510})
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
#: The error code of the event for a message that cannot be sent at all: ebMS 2.0
#: §4.2.3.4.1 DeliveryFailure, the code a receiving MSH would use for the same.
UNDELIVERABLE_CODE = "DeliveryFailure"
#: Reply words (from the synchronous reply's correlation) that settled the
#: message and ended its task before the attempt was recorded.
_SETTLING_REPLIES = frozenset({"delivered", "delivery-failed"})


def classify(status: int) -> TaskOutcome:
    """DONE for 2xx, RETRY for transient failures, FAILED for the rest."""
    if 200 <= status < 300:
        return TaskOutcome.DONE
    if status in RETRYABLE_CLIENT_ERRORS or (status >= 500 and status not in FINAL_SERVER_ERRORS):
        return TaskOutcome.RETRY
    return TaskOutcome.FAILED


def nothing_to_send(claimed: Claimed, now: datetime) -> NotSent | None:
    """Whether the claim ends the task without a POST; None: send.

    The final wait is over (no attempt left, or the TimeToLive passed), or an
    acknowledgment or error settled the business message while its task waited.
    """
    task, message = claimed.task, claimed.message
    if task.exhausted or (task.expires_at is not None and now > task.expires_at):
        return NotSent(TaskOutcome.EXPIRED)
    if message.business and message.status != OutboundStatus.CREATED:
        return NotSent(TaskOutcome.DONE)
    return None


def takes_sync_reply(result: AttemptResult) -> bool:
    """Whether the answer's body is read as a synchronous ebMS reply: only after a 2xx."""
    return isinstance(result, Answered) and classify(result.status) is TaskOutcome.DONE


# -- the decision after an attempt ---------------------------------------------------


@dataclass(frozen=True)
class AttemptDecision:
    """What an attempt leads to: effects to apply, and what the log says of it."""

    claimed: Claimed
    outcome: TaskOutcome
    """The attempt's own outcome, as recorded in its row."""
    state: TaskOutcome
    """The task's state after it: RETRY (pending again), DONE, FAILED or EXPIRED."""
    effects: tuple[AttemptEffect, ...]
    http_status: int | None
    reply: str | None
    error: str | None
    """The attempt's failure sentence, if any."""
    settle_error: str | None
    """The reason the task and message end with: ``error``, or for an expiry without
    one the task's last failure ("why did this Ping expire")."""
    awaiting_ack: bool
    started: datetime
    finished: datetime

    def log_fields(self, moved: bool) -> dict[str, str]:
        """The attempt's log line; ``moved``: the task effect took (this node held the task).

        Never content: ids, parties, service/action, outcome, size and timing.
        """
        effective: TaskOutcome | None
        error = self.error
        if moved:
            effective = self.state
            error = self.settle_error
        elif self.reply in _SETTLING_REPLIES:
            # The synchronous reply's correlation ended the task itself.
            effective = self.outcome
        else:
            effective = None
        fields = _fields(self.claimed, self.http_status, effective, self.reply)
        if self.awaiting_ack and effective is TaskOutcome.RETRY:
            fields["outcome"] = "sent-awaiting-ack"
        fields["size"] = str(self.claimed.size)
        fields["ms"] = f"{(self.finished - self.started).total_seconds() * 1000:.1f}"
        if error:
            fields["error"] = error
        return fields


def past_time_to_live(claimed: Claimed, now: datetime) -> bool:
    """Whether the task's TimeToLive has passed: a retry then ends it as expired."""
    expires_at = claimed.task.expires_at
    return expires_at is not None and now >= expires_at


def needs_last_error(claimed: Claimed, result: AttemptResult, now: datetime) -> bool:
    """Whether :func:`decide_attempt` may use the task's last failure sentence.

    Only an expiry without a failure of its own repeats it: a claim that found
    the task over (:class:`NotSent`) or a retry past the TimeToLive.  Any other
    attempt need not have it read.
    """
    return isinstance(result, NotSent) or past_time_to_live(claimed, now)


def _first_outcome(result: AttemptResult) -> tuple[TaskOutcome, int | None, str | None]:
    """(outcome, HTTP status, failure sentence) of the attempt on its own."""
    if isinstance(result, NotSent):
        return result.outcome, None, None
    if isinstance(result, Unreached):
        return TaskOutcome.RETRY, None, result.failure
    outcome = classify(result.status)
    return outcome, result.status, None if outcome is TaskOutcome.DONE else result.failure


def _next_attempt(now: datetime, interval: timedelta | None) -> datetime:
    try:
        return now + (interval or timedelta(0))
    except OverflowError:
        # A CPA stored before validation refused such a RetryInterval (past the
        # year 9999): the task waits as long as a date can say.
        return datetime.max.replace(tzinfo=UTC)


def decide_attempt(
    claimed: Claimed,
    result: AttemptResult,
    *,
    reply: str | None,
    last_error: str | None,
    node: str,
    started: datetime,
    now: datetime,
) -> AttemptDecision:
    """Decide what an attempt leads to.

    ``reply`` is the word the synchronous reply in a 2xx answer came to, once
    taken in ("delivered", "delivery-failed", "pong", "bad-reply", ...; None:
    no body); ``last_error`` the task's last failure sentence before this
    attempt (needed only when :func:`needs_last_error`); ``node`` this node's
    id (the lease the task effects are guarded by); ``started`` when the
    attempt began and ``now`` when it ended.
    """
    message, task = claimed.message, claimed.task
    outcome, status, error = _first_outcome(result)
    awaiting_ack = False
    if reply == "delivery-failed":
        # A synchronous MessageError settled the message already.
        outcome = TaskOutcome.FAILED
    elif outcome is TaskOutcome.DONE and message.reliable and reply != "delivered":
        # Transport accepted; the acknowledgment comes in its own POST.  Wait
        # for it until the next attempt is due (ebMS 2.0 §6.5).
        outcome = TaskOutcome.RETRY
        awaiting_ack = True
    elif outcome is TaskOutcome.RETRY and message.business and not message.reliable:
        # Best effort has no retries (Koppelvlakstandaard ebMS2, osb-be): a
        # transport failure fails the message, as in ebms-core.
        outcome = TaskOutcome.FAILED

    # The task waits one retry interval, also after the last attempt (an
    # acknowledgment may be on its way): it expires at its next claim with no
    # attempt left.  Only a TimeToLive already passed ends it now; expiring as
    # soon as the next attempt *would* fall after it would cut the final wait
    # short by however long this attempt took.
    state = outcome
    if outcome is TaskOutcome.RETRY and past_time_to_live(claimed, now):
        state = TaskOutcome.EXPIRED
    # An expiry without an error of its own keeps the last failure: "why did
    # this Ping expire" is answered by the attempt before it.
    keep = state is TaskOutcome.EXPIRED and error is None
    settle_error = last_error if keep else error
    task_effect: AttemptEffect
    if state is TaskOutcome.RETRY:
        at = _next_attempt(now, task.retry_interval)
        task_effect = RescheduleTask(task.id, node, at, error, now)
    else:
        task_effect = FinishTask(task.id, node, state, error, keep, now)
    effects: list[AttemptEffect] = [
        RecordAttempt(
            task_id=task.id,
            attempt=task.attempt,
            node=node,
            url=claimed.url,
            started_at=started,
            finished_at=now,
            http_status=status,
            outcome=outcome,
            error=error,
        ),
        task_effect,
    ]
    if message.business:
        settle = _settle(message, state, settle_error, now)
        if settle is not None:
            effects.append(settle)
    return AttemptDecision(
        claimed=claimed,
        outcome=outcome,
        state=state,
        effects=tuple(effects),
        http_status=status,
        reply=reply,
        error=error,
        settle_error=settle_error,
        awaiting_ack=awaiting_ack,
        started=started,
        finished=now,
    )


def _settle(
    message: MessageFacts, state: TaskOutcome, error: str | None, now: datetime
) -> SettleMessage | None:
    """The business message's end that goes with the task's, if the task ended."""
    if state is TaskOutcome.DONE:
        # Best effort: a 2xx is delivery.  Reliable: the ack already did it,
        # and then the guard (only from CREATED) leaves the message alone.
        return SettleMessage(
            message.pk, message.message_id, OutboundStatus.DELIVERED, EventType.DELIVERED, now
        )
    if state is TaskOutcome.FAILED:
        return SettleMessage(
            message.pk,
            message.message_id,
            OutboundStatus.DELIVERY_FAILED,
            EventType.FAILED,
            now,
            reason=error,
            error_text=error,
        )
    if state is TaskOutcome.EXPIRED:
        return SettleMessage(
            message.pk,
            message.message_id,
            OutboundStatus.EXPIRED,
            EventType.EXPIRED,
            now,
            reason=error,
            error_text=error,
        )
    return None


def _fields(
    claimed: Claimed, status: int | None, outcome: TaskOutcome | None, reply: str | None
) -> dict[str, str]:
    """What one attempt is logged with: ids, parties, service/action, outcome; never content.

    ``url`` is where the attempt went; the CPA endpoint follows as ``cpa_url`` when a
    URL mapping replaced it, so the log shows both sides of the mapping.
    """
    message, task, url = claimed.message, claimed.task, claimed.url
    fields: dict[str, object | None] = {
        "event": "delivery",
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "ref_to": message.ref_to_message_id,
        "cpa_id": message.cpa_id,
        "from": message.from_party,
        "to": message.to_party,
        "service": message.service,
        "action": message.action,
        "attempt": task.attempt,
        "url": url,
        "cpa_url": task.url if url != task.url else None,
        "http_status": status,
        "outcome": outcome.value if outcome else "superseded",
        "reply": reply,
    }
    return {k: str(v) for k, v in fields.items() if v is not None}


# -- the decision for a task that cannot be sent -------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A claimed task that cannot be sent: it fails at once, its message with it."""

    effects: tuple[AttemptEffect, ...]
    log_fields: dict[str, str]


def decide_refusal(
    task: TaskFacts, head: MessageHead | None, reason: str, *, node: str, now: datetime
) -> Refusal:
    """End a task that could not be prepared: FAILED with ``reason``, its message too.

    ``head`` is what is left of its message (None: the row is gone).  The
    message is failed whether or not the task update takes (a signal has no
    status, so only a business message is), with the DeliveryFailure code.
    """
    effects: list[AttemptEffect] = [
        RecordAttempt(
            task_id=task.id,
            attempt=task.attempt,
            node=node,
            url=task.url,
            started_at=now,
            finished_at=now,
            http_status=None,
            outcome=TaskOutcome.FAILED,
            error=reason,
        ),
        FinishTask(task.id, node, TaskOutcome.FAILED, reason, False, now),
    ]
    fields = {"event": "delivery", "task": str(task.id), "outcome": "failed", "error": reason}
    if head is not None:
        fields.update(message_id=head.message_id, cpa_id=head.cpa_id)
        if head.status is not None:
            effects.append(
                SettleMessage(
                    task.message_pk,
                    head.message_id,
                    OutboundStatus.DELIVERY_FAILED,
                    EventType.FAILED,
                    now,
                    reason=reason,
                    error_code=UNDELIVERABLE_CODE,
                    error_text=reason,
                    after_task=False,
                )
            )
    return Refusal(tuple(effects), fields)
