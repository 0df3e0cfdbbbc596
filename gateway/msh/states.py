"""The ebMS lifecycles as explicit state machines: states, events and transition tables.

Four things in the store have a lifecycle, and each is a table here:

* an outbound business message (``ebms_message.status``, direction ``out``),
* an inbound business message (``ebms_message.status``, direction ``in``),
* a delivery task (``delivery_task.state``): one message's way to the partner,
* a webhook delivery (``webhook_delivery.state``): one event's way to the back office.

The enum values are the literals stored in those columns, so rows written before
these tables existed read back unchanged.  Signals (acknowledgments, errors, Pong,
StatusResponse) are stored without a status: those we send have a delivery task,
none has a message lifecycle.

The tables follow h11's ``_state.py``: ``state -> {event: next state}``, and a
transition not in the table is refused (:class:`TransitionRefused`).  Every event
of a table leads to one next state, whatever state it leaves, so the store can
apply it as one guarded ``UPDATE ... SET state = <next> WHERE state IN
(<sources>)``: :meth:`StateMachine.sources` gives the guard.  An update that
finds the row outside its sources changes nothing; that is how races resolve
(an acknowledgment and an expiry for the same message: the first one wins).

Sources.  ebMS 2.0 §6 (reliable messaging): a message is persisted before it
is sent and its MessageId remembered for duplicate elimination (§6.4.1), sent
again at the RetryInterval up to Retries times within its TimeToLive (§6.4),
until an Acknowledgment arrives (§6.3.2); the answer to a duplicate is sent
again (§6.5); a MessageError with severity Error ends it (§4.2.3).  ebMS 2.0 §7
(message status service): a StatusResponse reports a received message as
Received or Processed (``messageStatus``, §7.3; :data:`STATUS_RESPONSE`).  The
status names and their meaning are ebms-core's (docs/msh.md, "Statuses and
events").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from gateway.ebms.model import MessageStatus

__all__ = [
    "EVENT_ON_ENTRY",
    "INBOUND",
    "OUTBOUND",
    "STATUS_RESPONSE",
    "TASK",
    "TASK_BUSY",
    "TASK_EVENT_OF_OUTCOME",
    "TASK_UNDELIVERED",
    "WEBHOOK",
    "EventType",
    "InboundStatus",
    "MessageEvent",
    "OutboundStatus",
    "StateMachine",
    "TaskEvent",
    "TaskOutcome",
    "TaskState",
    "TransitionRefused",
    "WebhookState",
]


# -- states ------------------------------------------------------------------------------


class OutboundStatus(StrEnum):
    """Status of a message we send; the names and meanings are ebms-core's."""

    CREATED = "CREATED"  # stored with its delivery task; not acknowledged yet
    DELIVERED = "DELIVERED"  # acknowledged (reliable) or accepted with a 2xx (best effort)
    DELIVERY_FAILED = "DELIVERY_FAILED"  # a MessageError, a final failure, or retired
    EXPIRED = "EXPIRED"  # TimeToLive passed or retries used up without an acknowledgment


class InboundStatus(StrEnum):
    """Status of a message we received; the names and meanings are ebms-core's."""

    RECEIVED = "RECEIVED"  # stored and acknowledged; the back office may fetch it
    PROCESSED = "PROCESSED"  # the back office said it has it
    FAILED = "FAILED"  # refused with a MessageError, or could not be handed on


class TaskState(StrEnum):
    """State of a delivery task (``delivery_task.state``)."""

    PENDING = "pending"  # waiting for its next attempt (next_attempt_at)
    SENDING = "sending"  # claimed by a node under a lease (locked_by, lease_until)
    DONE = "done"  # delivered (best effort: 2xx; reliable: acknowledged)
    FAILED = "failed"  # ended without delivery: never tried again unless reopened
    EXPIRED = "expired"  # TimeToLive passed or attempts used up


class WebhookState(StrEnum):
    """State of a webhook delivery (``webhook_delivery.state``)."""

    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class TaskOutcome(StrEnum):
    """What one delivery attempt leads to (stored in ``delivery_attempt.outcome``)."""

    DONE = "done"  # delivered (best effort: 2xx; reliable: acknowledged)
    RETRY = "retry"  # try again after the retry interval, if attempts and time remain
    FAILED = "failed"  # final failure: never try again
    EXPIRED = "expired"  # TimeToLive passed or attempts used up


class EventType(StrEnum):
    """Events the back office can read (ebms-core's message events, ``message_event``).

    An event has a lifecycle of its own that is no status column: it is new
    until the back office marks it processed (``processed_at``).
    """

    RECEIVED = "RECEIVED"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


# -- events ------------------------------------------------------------------------------


class MessageEvent(StrEnum):
    """What moves a business message from one status to the next."""

    DELIVERED = "delivered"
    """An acknowledgment arrived (ebMS 2.0 §6.3), or best effort got a 2xx."""
    FAILED = "failed"
    """A MessageError with severity Error (§4.2.3), a final failure, a retirement;
    inbound: the message could not be handed on."""
    EXPIRED = "expired"
    """TimeToLive passed or the retries ran out unacknowledged (§6.4.4, §6.5.3)."""
    RETRIED = "retried"
    """The operator sends a failed or expired message again, same MessageId (§6.5.3)."""
    PROCESSED = "processed"
    """The back office processed a received message (ebms-core)."""


class TaskEvent(StrEnum):
    """What moves a delivery task (and, for the lease events, a webhook delivery)."""

    CLAIMED = "claimed"
    """A node leases it: due, or another node's lease ran out (that node died)."""
    DELIVERED = "delivered"
    """The attempt delivered it (:attr:`TaskOutcome.DONE`)."""
    RETRY_DUE = "retry-due"
    """The attempt failed, or waits for an acknowledgment: try again later."""
    FAILED = "failed"
    """The attempt failed for good, or the task could not be prepared."""
    EXPIRED = "expired"
    """Claimed with its TimeToLive or attempts used up: ended without sending."""
    UNCLAIMED = "unclaimed"
    """Handed back never attempted (the node is stopping); the claim does not count."""
    RELEASED = "released"
    """Handed back after an attempt was cut off (node stopping or restarting)."""
    ACKNOWLEDGED = "acknowledged"
    """An acknowledgment ended it from outside the worker (ebMS 2.0 §6.5.3)."""
    ERROR_RECEIVED = "error-received"
    """A MessageError with severity Error ended it from outside the worker (§4.2.3)."""
    LAPSED = "lapsed"
    """Ended as expired from outside the worker: its TimeToLive is known to have passed."""
    CANCELLED = "cancelled"
    """Its CPA was deleted (docs/operations.md, "CPA lifecycle")."""
    SUPERSEDED = "superseded"
    """A resend of the message under a new MessageId retired it before its next attempt."""
    REOPENED = "reopened"
    """The partner resent its message: our stored reply goes again (§6.5.4)."""
    HURRIED = "hurried"
    """As :attr:`REOPENED`, for a reply still waiting out a retry interval: it goes now."""
    RETRIED = "retried"
    """The operator makes the message due now (``dkgw message retry``)."""


# -- the machine -------------------------------------------------------------------------

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)


class TransitionRefused(ValueError):
    """An event the state machine does not allow in the current state.

    ``machine``, ``state`` and ``event`` say which; ``state`` is None for a
    row without a state (a signal has no message status).
    """

    def __init__(self, machine: str, state: StrEnum | None, event: StrEnum) -> None:
        super().__init__(f"{machine}: {event.value!r} is not allowed in state {state!r}")
        self.machine = machine
        self.state = state
        self.event = event


@dataclass(frozen=True)
class StateMachine(Generic[S, E]):
    """One lifecycle: its states, where it starts, and ``state -> {event: next}``.

    Construction checks the table: every state is listed, and each event leads
    to one next state from all the states it leaves (so one guarded ``UPDATE``
    applies it).
    """

    name: str
    states: type[S]
    initial: frozenset[S]
    table: Mapping[S, Mapping[E, S]]
    _sources: dict[E, frozenset[S]] = field(init=False, repr=False, compare=False)
    _targets: dict[E, S] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if set(self.table) != set(self.states):
            raise ValueError(f"{self.name}: the table must list every state once")
        sources: dict[E, set[S]] = {}
        targets: dict[E, S] = {}
        for state, moves in self.table.items():
            for event, after in moves.items():
                if targets.setdefault(event, after) is not after:
                    raise ValueError(f"{self.name}: {event!r} leads to more than one state")
                sources.setdefault(event, set()).add(state)
        object.__setattr__(self, "_sources", {e: frozenset(s) for e, s in sources.items()})
        object.__setattr__(self, "_targets", targets)

    @property
    def events(self) -> frozenset[E]:
        """Every event some state allows."""
        return frozenset(self._targets)

    @property
    def final(self) -> frozenset[S]:
        """States no event leaves."""
        return frozenset(s for s, moves in self.table.items() if not moves)

    def allows(self, state: S | str | None, event: E) -> bool:
        """Whether ``event`` may happen in ``state`` (a stored literal is accepted)."""
        return state is not None and event in self.table.get(self._state(state), {})

    def next(self, state: S | str | None, event: E) -> S:
        """The state ``event`` leads to from ``state``.

        Raises :class:`TransitionRefused` when the table has no such transition
        (including a ``state`` that is not one of this machine's).
        """
        after = None if state is None else self.table.get(self._state(state), {}).get(event)
        if after is None:
            shown = self._state(state) if state is not None else None
            raise TransitionRefused(self.name, shown, event)
        return after

    def sources(self, event: E) -> frozenset[S]:
        """The states ``event`` may leave: the guard of its ``UPDATE``."""
        return self._sources.get(event, frozenset())

    def target(self, event: E) -> S:
        """The state ``event`` leads to (raises :class:`TransitionRefused` if none)."""
        if event not in self._targets:
            raise TransitionRefused(self.name, None, event)
        return self._targets[event]

    def _state(self, state: S | str) -> S:
        try:
            return self.states(state)
        except ValueError:
            # Not one of ours: no transition leaves it.  The literal is kept for the error.
            return state  # type: ignore[return-value]


# -- the tables --------------------------------------------------------------------------

_Out = OutboundStatus
_In = InboundStatus
_M = MessageEvent

OUTBOUND: StateMachine[OutboundStatus, MessageEvent] = StateMachine(
    "outbound message",
    OutboundStatus,
    initial=frozenset({_Out.CREATED}),
    table={
        _Out.CREATED: {
            _M.DELIVERED: _Out.DELIVERED,
            _M.FAILED: _Out.DELIVERY_FAILED,
            _M.EXPIRED: _Out.EXPIRED,
        },
        _Out.DELIVERED: {},
        # Retrying keeps the MessageId and the bytes: the partner's duplicate
        # elimination (ebMS 2.0 §6.4.1) keeps a late first copy from counting twice.
        _Out.DELIVERY_FAILED: {_M.RETRIED: _Out.CREATED},
        _Out.EXPIRED: {_M.RETRIED: _Out.CREATED},
    },
)
"""Outbound business messages: CREATED → DELIVERED | DELIVERY_FAILED | EXPIRED."""

INBOUND: StateMachine[InboundStatus, MessageEvent] = StateMachine(
    "inbound message",
    InboundStatus,
    # A message refused with a MessageError is stored FAILED (docs/msh.md).
    initial=frozenset({_In.RECEIVED, _In.FAILED}),
    table={
        _In.RECEIVED: {_M.PROCESSED: _In.PROCESSED, _M.FAILED: _In.FAILED},
        _In.PROCESSED: {},
        _In.FAILED: {},
    },
)
"""Inbound business messages: RECEIVED → PROCESSED | FAILED."""

_T = TaskState
_E = TaskEvent

TASK: StateMachine[TaskState, TaskEvent] = StateMachine(
    "delivery task",
    TaskState,
    initial=frozenset({_T.PENDING}),
    table={
        _T.PENDING: {
            _E.CLAIMED: _T.SENDING,
            _E.ACKNOWLEDGED: _T.DONE,
            _E.ERROR_RECEIVED: _T.FAILED,
            _E.LAPSED: _T.EXPIRED,
            _E.CANCELLED: _T.FAILED,
            _E.SUPERSEDED: _T.FAILED,
            _E.HURRIED: _T.PENDING,
            _E.RETRIED: _T.PENDING,
        },
        _T.SENDING: {
            # Taken over: the lease of the node that claimed it ran out.
            _E.CLAIMED: _T.SENDING,
            _E.DELIVERED: _T.DONE,
            _E.RETRY_DUE: _T.PENDING,
            _E.FAILED: _T.FAILED,
            _E.EXPIRED: _T.EXPIRED,
            _E.UNCLAIMED: _T.PENDING,
            _E.RELEASED: _T.PENDING,
            # The acknowledgment may overtake the attempt's own update, which
            # then finds the task no longer sending and changes nothing.
            _E.ACKNOWLEDGED: _T.DONE,
            _E.ERROR_RECEIVED: _T.FAILED,
            _E.LAPSED: _T.EXPIRED,
            _E.CANCELLED: _T.FAILED,
        },
        _T.DONE: {_E.REOPENED: _T.PENDING},
        _T.FAILED: {_E.REOPENED: _T.PENDING, _E.RETRIED: _T.PENDING},
        _T.EXPIRED: {_E.REOPENED: _T.PENDING, _E.RETRIED: _T.PENDING},
    },
)
"""Delivery tasks: pending ⇄ sending → done | failed | expired (reopened by a resend)."""

_W = WebhookState

WEBHOOK: StateMachine[WebhookState, TaskEvent] = StateMachine(
    "webhook delivery",
    WebhookState,
    initial=frozenset({_W.PENDING}),
    table={
        _W.PENDING: {_E.CLAIMED: _W.SENDING},
        _W.SENDING: {
            _E.CLAIMED: _W.SENDING,
            _E.DELIVERED: _W.DONE,
            _E.RETRY_DUE: _W.PENDING,
            _E.FAILED: _W.FAILED,
            _E.UNCLAIMED: _W.PENDING,
            _E.RELEASED: _W.PENDING,
        },
        _W.DONE: {},
        _W.FAILED: {},
    },
)
"""Webhook deliveries: pending ⇄ sending → done | failed (docs/webhooks.md)."""


# -- derived sets and maps ---------------------------------------------------------------

TASK_BUSY: frozenset[TaskState] = frozenset({_T.PENDING, _T.SENDING})
"""A task in these states still has an attempt (or the final wait) to come."""

TASK_UNDELIVERED: frozenset[TaskState] = frozenset({_T.FAILED, _T.EXPIRED})
"""A task that ended in these states never reached the partner (a Ping got no Pong)."""

TASK_EVENT_OF_OUTCOME: Mapping[TaskOutcome, TaskEvent] = {
    TaskOutcome.DONE: _E.DELIVERED,
    TaskOutcome.RETRY: _E.RETRY_DUE,
    TaskOutcome.FAILED: _E.FAILED,
    TaskOutcome.EXPIRED: _E.EXPIRED,
}
"""The event an attempt's outcome is for its task."""

EVENT_ON_ENTRY: Mapping[OutboundStatus | InboundStatus, EventType] = {
    _Out.DELIVERED: EventType.DELIVERED,
    _Out.DELIVERY_FAILED: EventType.FAILED,
    _Out.EXPIRED: EventType.EXPIRED,
    _In.FAILED: EventType.FAILED,
}
"""The back-office event a move into a status raises (ebms-core's message events).

A received message announces itself with RECEIVED when it is stored (no move);
a retried one (CREATED again) and a processed one raise none.
"""

STATUS_RESPONSE: Mapping[InboundStatus, MessageStatus] = {
    _In.RECEIVED: MessageStatus.RECEIVED,
    _In.PROCESSED: MessageStatus.PROCESSED,
}
"""ebMS 2.0 §7.3: what a StatusResponse says about a received message in a status.

A status not listed (FAILED) is answered NotRecognized, as ebms-core does.
"""
