"""What the partner answered, and how long to wait for it: plain functions over values.

A Ping is answered by a Pong (ebMS 2.0 §8.2), a StatusRequest by a
StatusResponse (ebMS 2.0 §7.3), either of them by a MessageError; a request
that could not be delivered is never answered.  :func:`verdict` reads those
facts (gathered by :mod:`gateway.msh.service` in one transaction) as one
:class:`Answer`, or None while there is nothing to say yet.  Every front door
waits the same way, polling on :func:`next_delay`'s schedule until
:func:`verdict` says something or the deadline passes.

:func:`replay` is the decision of an idempotent request (docs/api.md,
"Retrying safely"): do it, give the first answer again, or refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gateway.msh.states import TASK_UNDELIVERED

__all__ = [
    "Answer",
    "AnswerFacts",
    "Outcome",
    "Replay",
    "next_delay",
    "replay",
    "verdict",
]

#: Task states after which a request will never be delivered.
UNDELIVERED_STATES = TASK_UNDELIVERED
#: The first pause between two looks at the store, and the longest.
FIRST_DELAY = 0.02
MAX_DELAY = 0.25


class Outcome(Enum):
    """How a Ping or StatusRequest ended."""

    ANSWERED = "answered"  # the Pong or StatusResponse arrived
    ERROR = "error"  # the partner answered with a MessageError
    UNDELIVERED = "undelivered"  # the request's delivery failed or expired


@dataclass(frozen=True)
class AnswerFacts:
    """What the store knows about one request we sent: its answer and its delivery."""

    answer_id: str | None = None  # the answering signal's MessageId
    answer_action: str | None = None  # "Pong", "StatusResponse" or "MessageError"
    task_state: str | None = None  # the request's delivery task, if it still has one
    last_error: str | None = None  # the last failed attempt's reason


@dataclass(frozen=True)
class Answer:
    """The end of a request: answered (with the answer's id), refused, or not delivered."""

    outcome: Outcome
    answer_id: str | None = None
    task_state: str | None = None
    last_error: str | None = None

    @property
    def failure(self) -> str | None:
        """Why an undelivered request failed: its last error, else its final state."""
        return self.last_error or self.task_state


def verdict(facts: AnswerFacts) -> Answer | None:
    """The request's end from ``facts``, or None while it may still be answered.

    An answer that arrived counts even if the delivery task later failed: a
    partner may answer a request whose acknowledgement got lost.
    """
    if facts.answer_action == "MessageError":
        return Answer(Outcome.ERROR, facts.answer_id)
    if facts.answer_action is not None:
        return Answer(Outcome.ANSWERED, facts.answer_id)
    if facts.task_state in UNDELIVERED_STATES:
        return Answer(Outcome.UNDELIVERED, None, facts.task_state, facts.last_error)
    return None


def next_delay(delay: float | None, remaining: float) -> float:
    """The pause before the next look: doubling from :data:`FIRST_DELAY` to
    :data:`MAX_DELAY`, never past the deadline (``remaining`` seconds away)."""
    wanted = FIRST_DELAY if delay is None else min(delay * 2, MAX_DELAY)
    return max(0.0, min(wanted, remaining))


class Replay(Enum):
    """The decision for a request under an idempotency key."""

    DO = "do"  # first use: claim the key and do the work
    ANSWER = "answer"  # the same request again: give the first answer
    REFUSE = "refuse"  # the key stands for another request


def replay(
    first_operation: str | None,
    first_digest: str | None,
    first_answered: bool,
    operation: str,
    digest: str,
) -> Replay:
    """Decide a request under a key whose first use was ``first_*`` (None: unused).

    The same operation with the same request digest gets the first answer;
    anything else under a used key is refused (draft-ietf-httpapi-idempotency-
    key-header §2.7).  A key claimed but never answered is refused too: its
    transaction committed without completing, which only a crash could cause.
    """
    if first_operation is None:
        return Replay.DO
    if first_operation != operation or first_digest != digest or not first_answered:
        return Replay.REFUSE
    return Replay.ANSWER
