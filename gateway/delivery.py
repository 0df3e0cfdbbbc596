"""The delivery worker: claims due tasks and POSTs the stored messages.

ebMS 2.0 §6.5: a reliable message is resent, byte for byte, every
RetryInterval until it is acknowledged, the attempts run out or its TimeToLive
passes; a best-effort message gets one attempt.  What each claimed task and
each attempt's outcome lead to is decided by pure functions
(:mod:`gateway.msh.attempt`) and written by one executor
(:mod:`gateway.msh.attempt_apply`); the claim-time preparation (the wire body,
the pin, the URL mapping) is :mod:`gateway.msh.attempt_prepare`.  This module
reads the facts, posts, and calls them.

The worker owns no state: tasks live in the store and are claimed with a
lease, so any number of nodes can run workers on one PostgreSQL store, and a
restarted node picks up where it (or a dead colleague) left off.  The network
is behind the ``post`` callable so the scheduling logic is tested without it.

The URL posted to is the task's CPA endpoint after the operator's URL mapping
(:mod:`gateway.store.urlmap`), looked up at every claim: a mapping set or
deleted while the gateway runs applies to the next attempt.  The server
certificate pin stays the one the CPA names for the CPA endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gateway.http.failures import describe_failure, describe_http
from gateway.logfmt import log_event
from gateway.msh.attempt import (
    FINAL_SERVER_ERRORS,
    RETRYABLE_CLIENT_ERRORS,
    UNDELIVERABLE_CODE,
    classify,
    decide_attempt,
    decide_refusal,
    needs_last_error,
    nothing_to_send,
    takes_sync_reply,
)
from gateway.msh.attempt_apply import apply_effects
from gateway.msh.attempt_facts import Answered, AttemptResult, MessageHead, Unreached
from gateway.msh.attempt_prepare import (
    Body,
    Outgoing,
    Pin,
    PinLookup,
    Undeliverable,
    asks_for_ack,
    close_body,
    prepare,
    refusal_reason,
    task_facts,
    wire_body,
)
from gateway.msh.inbound import AckCheck, accept_sync_reply
from gateway.services.loop import LoopService
from gateway.store.attempts import message_head
from gateway.store.database import Cursor, Database
from gateway.store.messages import (
    Task,
    TaskOutcome,
    claim_due_tasks,
    last_task_error,
    release_node_leases,
    unclaim_task,
)
from gateway.store.timeutil import utcnow

__all__ = [
    "FINAL_SERVER_ERRORS",
    "MAX_REPLY_BYTES",
    "RETRYABLE_CLIENT_ERRORS",
    "UNDELIVERABLE_CODE",
    "Body",
    "DeliveryWorker",
    "HttpResult",
    "Outgoing",
    "Pin",
    "PinLookup",
    "Poster",
    "Undeliverable",
    "asks_for_ack",
    "classify",
    "close_body",
    "refusal_reason",
    "wire_body",
]

log = logging.getLogger("dkgw.delivery")

T = TypeVar("T")

#: Pauses before recording an attempt again when the store refused it.
STORE_RETRY_PAUSES = (0.1, 0.5, 2.0)
#: A synchronous reply is one signal; anything bigger is not an ebMS answer.
MAX_REPLY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class HttpResult:
    """What came back from one POST."""

    status: int
    content_type: str
    body: bytes


class Poster(Protocol):
    """POST ``body`` to ``url``; the edge implements it with treq and mutual TLS.

    ``pin`` is the server certificate the CPA names for that endpoint.
    """

    def __call__(
        self, url: str, headers: dict[str, str], body: Body, pin: Pin
    ) -> Deferred[HttpResult]: ...


RunInThread = Callable[..., Deferred[Any]]


class DeliveryWorker(Service):
    """Poll the store for due tasks and deliver them, a few at a time.

    A ``twisted.application`` service: its :attr:`loop`
    (:class:`~gateway.services.loop.LoopService`) ticks one claim at a time;
    the attempts a claim starts run on past the tick, up to ``concurrency``.
    """

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        db: Database,
        run_in_thread: RunInThread,
        post: Poster,
        node_id: str,
        poll_interval: float = 1.0,
        concurrency: int = 8,
        lease: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = utcnow,
        pin_lookup: PinLookup | None = None,
        on_event: Callable[[dict[str, str]], None] | None = None,
        verify_ack: AckCheck | None = None,
    ) -> None:
        self.reactor = reactor
        #: Checks a synchronous acknowledgment (its signature) before it settles a message.
        self.verify_ack = verify_ack
        self.pin_lookup = pin_lookup
        self.on_event = on_event
        self.db = db
        self.run = run_in_thread
        self.post = post
        self.node_id = node_id
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.lease = lease
        self.clock = clock
        self._in_flight: set[Deferred[None]] = set()
        self._more = False  # all slots were taken: claim again when an attempt ends
        self._first_claim = True
        #: One claim per tick; a claim that fails is logged and the next tick tries again.
        self.loop = LoopService(
            self._poll_once,
            reactor=reactor,
            interval=poll_interval,
            on_failure=lambda f: log.error("claiming tasks failed: %s", f.getErrorMessage()),
        )

    @property
    def heartbeat(self) -> Callable[[], None] | None:
        """Called as the loop ticks (/ready; gateway.monitor.heartbeat)."""
        return self.loop.heartbeat

    @heartbeat.setter
    def heartbeat(self, beat: Callable[[], None] | None) -> None:
        self.loop.heartbeat = beat

    @property
    def _running(self) -> bool:
        return bool(self.loop.running)

    # -- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        """Start polling; the first poll runs at once."""
        super().startService()  # type: ignore[no-untyped-call]
        self._first_claim = True
        self.loop.startService()

    def start(self) -> None:
        """Start polling; the first poll runs at once."""
        self.startService()

    def stopService(self) -> Deferred[None]:
        """Stop polling and wait for the claim and the attempts in flight to finish."""
        super().stopService()  # type: ignore[no-untyped-call]
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        # A claim in progress is waited for: its tasks are handed back (see _dispatch).
        await self.loop.stopService()
        await defer.DeferredList(list(self._in_flight), consumeErrors=True)

    def stop(self) -> Deferred[None]:
        """Stop polling and wait for the claim and the attempts in flight to finish."""
        return self.stopService()

    # -- one poll ------------------------------------------------------------------

    def wake(self) -> None:
        """Poll now: a task was just queued by this process (an API call, a reply).

        Tasks queued by other processes or nodes are found by the regular poll.
        """
        self.loop.wake()

    def poll(self) -> None:
        """Claim what is due (up to the free capacity) and start delivering it.

        A claim in progress is followed by another right after it ends.
        """
        self.loop.wake()

    def _poll_once(self) -> Deferred[Any] | None:
        """The loop's tick: claim up to the free capacity and start the attempts."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            self._more = True  # claimed when an attempt in flight ends
            return None
        d: Deferred[Any] = self.run(self._claim, free)
        d.addCallback(self._dispatch)
        return d

    def _dispatch(
        self, claimed: tuple[list[Outgoing], list[dict[str, str]]]
    ) -> Deferred[None] | None:
        batch, refused = claimed
        for fields in refused:
            log_event(log, logging.WARNING, fields)
            if self.on_event is not None:
                self.on_event(fields)
        if not self.loop.running:
            # Stopped while claiming: hand the tasks back instead of starting
            # attempts that could not be recorded.
            return self.run(self._unclaim, [o.task for o in batch]) if batch else None
        for outgoing in batch:
            attempt = defer.ensureDeferred(self._deliver(outgoing))
            attempt.addErrback(self._unexpected, outgoing)
            self._in_flight.add(attempt)
            attempt.addBoth(self._attempt_done, attempt)
        if batch and len(self._in_flight) >= self.concurrency:
            # Full: more may be due; claim again as soon as a slot frees up.
            self._more = True
        return None

    @staticmethod
    def _unexpected(failure: Failure, outgoing: Outgoing) -> None:
        # A bug or a store outage: the lease runs out and the task is tried again.
        log.error(
            "delivery of %s failed unexpectedly: %s",
            outgoing.message.message_id,
            failure.getTraceback(),
        )

    def _attempt_done(self, result: object, attempt: Deferred[None]) -> None:
        self._in_flight.discard(attempt)
        if self._more:
            self._more = False
            self.poll()

    def _unclaim(self, tasks: list[Task]) -> None:
        with self.db.transaction() as cur:
            for t in tasks:
                unclaim_task(cur, t, node=self.node_id, now=self.clock())

    def _claim(self, limit: int) -> tuple[list[Outgoing], list[dict[str, str]]]:
        """Claim due tasks; returns those to send and the log fields of those refused.

        Each task is prepared in its own savepoint: one that cannot be (its CPA
        deleted or expired, a certificate unreadable, a URL mapping invalid, a
        row inconsistent) fails alone with its reason, and the others go out.
        """
        now = self.clock()
        with self.db.transaction() as cur:
            if self._first_claim:
                # Leases this node held when it last stopped without finishing
                # (a crash): the attempts are over, the tasks due again.
                released = release_node_leases(cur, node=self.node_id, now=now)
                if released:
                    log.info("event=recovered node=%s tasks=%d", self.node_id, released)
                self._first_claim = False
            tasks = claim_due_tasks(cur, node=self.node_id, now=now, lease=self.lease, limit=limit)
            batch: list[Outgoing] = []
            refused: list[dict[str, str]] = []
            try:
                for t in tasks:
                    try:
                        with cur.savepoint():
                            batch.append(self._prepare(cur, t))
                    except Exception as exc:
                        refused.append(self._refuse(cur, t, refusal_reason(exc), now))
            except BaseException:
                for o in batch:
                    close_body(o.body)
                raise
        return batch, refused

    def _prepare(self, cur: Cursor, t: Task) -> Outgoing:
        """What to send for one claimed task; raises when it cannot be sent."""
        return prepare(cur, t, self.pin_lookup)

    def _refuse(self, cur: Cursor, t: Task, reason: str, now: datetime) -> dict[str, str]:
        """End a task that cannot be sent: FAILED with ``reason``, its message too."""
        row = message_head(cur, t.message_pk)
        head = MessageHead(*row) if row is not None else None
        refusal = decide_refusal(task_facts(t), head, reason, node=self.node_id, now=now)
        apply_effects(cur, refusal.effects)
        return refusal.log_fields

    async def _deliver(self, outgoing: Outgoing) -> None:
        try:
            await self._attempt(outgoing)
        finally:
            close_body(outgoing.body)

    async def _attempt(self, outgoing: Outgoing) -> None:
        started = self.clock()
        result: AttemptResult | None = nothing_to_send(outgoing.claimed, started)
        answer: HttpResult | None = None
        if result is None:
            headers = {"Content-Type": outgoing.content_type, "SOAPAction": '"ebXML"'}
            try:
                answer = await self.post(outgoing.post_url, headers, outgoing.body, outgoing.pin)
            except Exception as exc:  # connection refused, TLS failure, timeout
                # Stored, logged and shown as one plain sentence, never a repr.
                result = Unreached(describe_failure(exc, outgoing.post_url))
            else:
                result = Answered(
                    answer.status,
                    None
                    if classify(answer.status) is TaskOutcome.DONE
                    else describe_http(answer.status, answer.content_type, answer.body),
                )
        fields = await self._record(outgoing, result, started, answer)
        self._report(fields)

    async def _record(self, outgoing: Outgoing, *args: Any) -> dict[str, str]:
        """Run :meth:`_finish`, again after a pause for as long as the store refuses it.

        The attempt happened; losing its record (a synchronous acknowledgment,
        say) to a store outage would leave the task leased, in ``sending``, until
        the lease runs out (five minutes by default) although the store may be
        back in seconds (a PostgreSQL restart).  So it is tried again until the
        lease is about to run out: after that, another node (or this one) may
        claim the task and the lease-guarded update would change nothing.  A
        stopping worker does not wait for the store; the next start releases
        its leases.  The transaction is atomic, so a retry repeats nothing.
        """
        pauses = iter(STORE_RETRY_PAUSES)
        while True:
            try:
                fields: dict[str, str] = await self.run(self._finish, outgoing, *args)
                return fields
            except Exception as exc:
                pause = next(pauses, STORE_RETRY_PAUSES[-1])
                left = (outgoing.task.lease_until - self.clock()).total_seconds()
                if not self._running or left <= pause:
                    raise
                log.warning(
                    "recording the attempt of %s failed (%s); again in %.1f s",
                    outgoing.message.message_id,
                    exc,
                    pause,
                )
                await task.deferLater(self.reactor, pause, lambda: None)

    def _report(self, fields: dict[str, str]) -> None:
        """Log the attempt and tell the listener (on the reactor thread)."""
        log_event(log, logging.INFO, fields)
        if self.on_event is not None:
            self.on_event(fields)

    def _finish(
        self,
        outgoing: Outgoing,
        result: AttemptResult,
        started: datetime,
        answer: HttpResult | None,
    ) -> dict[str, str]:
        """Record the attempt and its consequences in one transaction; returns log fields.

        Read (the synchronous reply taken in, the task's last failure), decide
        (:func:`~gateway.msh.attempt.decide_attempt`), apply.
        """
        now = self.clock()
        with self.db.transaction() as cur:
            reply = None
            if answer is not None and answer.body and takes_sync_reply(result):
                reply = accept_sync_reply(
                    cur,
                    answer.body[:MAX_REPLY_BYTES],
                    answer.content_type,
                    now=now,
                    verify_ack=self.verify_ack,
                )
            decision = decide_attempt(
                outgoing.claimed,
                result,
                reply=reply,
                # One read fewer per attempt: the last error only matters for an expiry.
                last_error=(
                    last_task_error(cur, outgoing.task.id)
                    if needs_last_error(outgoing.claimed, result, now)
                    else None
                ),
                node=self.node_id,
                started=started,
                now=now,
            )
            moved = apply_effects(cur, decision.effects)
        return decision.log_fields(moved)
