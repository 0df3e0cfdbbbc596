"""The delivery worker: claims due tasks and POSTs the stored messages.

ebMS 2.0 §6.5: a reliable message is resent, byte for byte, every
RetryInterval until it is acknowledged, the attempts run out or its TimeToLive
passes; a best-effort message gets one attempt.  HTTP 503, other 5xx (but 501,
505 and 510), 408, 429 and connection errors are worth another attempt; any
other status is final (ebms-core's defaults).  A MessageError with severity
Error, in the response or later in its own POST, is final too.

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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any, Protocol, TypeVar

from cryptography import x509
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from cpa.registry import CpaNotFound
from gateway.ebms.envelope import MAX_ENVELOPE_BYTES
from gateway.ebms.mime import OutgoingPart, build_swa, parse_content_type
from gateway.ebms.model import EB_NS, SOAP_NS
from gateway.http.failures import describe_failure, describe_http
from gateway.logfmt import log_event
from gateway.msh.inbound import AckCheck, accept_sync_reply
from gateway.services.loop import LoopService
from gateway.store.database import Cursor, Database
from gateway.store.messages import (
    EventType,
    OutboundStatus,
    StoredMessage,
    Task,
    TaskOutcome,
    add_event,
    claim_due_tasks,
    finish_attempt,
    last_task_error,
    load_attachments,
    message_by_pk,
    release_node_leases,
    set_status,
    unclaim_task,
)
from gateway.store.timeutil import utcnow
from gateway.store.urlmap import check_url, resolve_url
from gateway.xmlsafe import parse_xml

log = logging.getLogger("dkgw.delivery")

T = TypeVar("T")

#: ebms-core's http.errors defaults: 5xx are worth retrying except these.
FINAL_SERVER_ERRORS = frozenset({501, 505, 510})
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})
#: Pauses before recording an attempt again when the store refused it.
STORE_RETRY_PAUSES = (0.1, 0.5, 2.0)
#: A synchronous reply is one signal; anything bigger is not an ebMS answer.
MAX_REPLY_BYTES = 1024 * 1024
#: The error code of the event for a message that cannot be sent at all: ebMS 2.0
#: §4.2.3.4.1 DeliveryFailure, the code a receiving MSH would use for the same.
UNDELIVERABLE_CODE = "DeliveryFailure"


class Undeliverable(Exception):
    """A task that can never be sent as it stands; the text is the reason, one sentence."""


def refusal_reason(exc: Exception) -> str:
    """The plain sentence stored for a task that could not be prepared because of ``exc``.

    Never the message's content: exception texts of our own making only.
    """
    if isinstance(exc, Undeliverable):
        return str(exc)
    if isinstance(exc, CpaNotFound):
        return f"The CPA of this message no longer exists ({exc})."
    if isinstance(exc, LookupError):
        return f"The stored message is inconsistent: {exc}."
    return f"The message could not be prepared for sending ({type(exc).__name__})."


@dataclass(frozen=True)
class HttpResult:
    """What came back from one POST."""

    status: int
    content_type: str
    body: bytes


Pin = x509.Certificate | tuple[x509.Certificate, ...] | None
"""The partner's server certificate, or several during a rollover; None: no pin."""

Body = bytes | IO[bytes]
"""What is POSTed: bytes, or for a large message a file positioned at its start."""


class Poster(Protocol):
    """POST ``body`` to ``url``; the edge implements it with treq and mutual TLS.

    ``pin`` is the server certificate the CPA names for that endpoint.
    """

    def __call__(
        self, url: str, headers: dict[str, str], body: Body, pin: Pin
    ) -> Deferred[HttpResult]: ...


#: The partner's server certificate for a message and URL, looked up in the
#: claim's transaction (the CPA registry reads the store).
PinLookup = Callable[[Cursor, StoredMessage, str], Pin]


RunInThread = Callable[..., Deferred[Any]]


def classify(status: int) -> TaskOutcome:
    """DONE for 2xx, RETRY for transient failures, FAILED for the rest."""
    if 200 <= status < 300:
        return TaskOutcome.DONE
    if status in RETRYABLE_CLIENT_ERRORS or (status >= 500 and status not in FINAL_SERVER_ERRORS):
        return TaskOutcome.RETRY
    return TaskOutcome.FAILED


@dataclass(frozen=True)
class Outgoing:
    """A claimed task with what to send."""

    task: Task
    message: StoredMessage
    content_type: str
    body: Body
    pin: Pin = None
    reliable: bool = False
    """The message asks for an acknowledgment: 2xx alone does not deliver it."""
    size: int = 0
    """Length of the body; a file body is closed once sent, so it is measured at the claim."""
    url: str | None = None
    """The URL posted to, the task's CPA endpoint after URL mapping; None: the task's."""

    @property
    def post_url(self) -> str:
        """Where this attempt goes: the mapped URL, else the CPA endpoint of the task."""
        return self.url if self.url is not None else self.task.url

    @property
    def is_business(self) -> bool:
        """A business message, not an MSH signal: it has a status to keep."""
        return self.message.status is not None


_ACK_REQUESTED = f"{{{SOAP_NS}}}Header/{{{EB_NS}}}AckRequested"


def asks_for_ack(envelope: bytes) -> bool:
    """Whether a stored envelope (one we built) carries ``eb:AckRequested``.

    Read once per claim; our own envelopes need no schema validation.
    """
    return (
        parse_xml(envelope, max_bytes=MAX_ENVELOPE_BYTES).getroot().find(_ACK_REQUESTED) is not None
    )


def wire_body(message: StoredMessage, cur: Cursor) -> tuple[str, Body]:
    """The exact bytes to POST: the stored envelope, with its payloads if any.

    The boundary and start part id are kept in the stored Content-Type, so every
    resend repeats the first attempt byte for byte (ebMS 2.0 §6.5.3).  A body
    with a payload stored in chunks is written to a temporary file, positioned
    at the start, instead of memory; the caller closes it (:func:`close_body`).
    """
    if not message.content_type.lower().startswith("multipart/"):
        return message.content_type, message.envelope
    _, params = parse_content_type(message.content_type)
    attachments = load_attachments(cur, message.pk)
    try:
        parts = [
            OutgoingPart(
                a.content_id,
                a.content_type,
                a.content if isinstance(a.content, bytes) else a.open(),
                a.filename,
            )
            for a in attachments
        ]
        start = params["start"].strip("<>")
        content_type, chunks, _ = build_swa(
            message.envelope, parts, boundary=params["boundary"], start_cid=start
        )
        if all(isinstance(a.content, bytes) for a in attachments):
            return content_type, b"".join(chunks)
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller, who closes it
        try:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return content_type, spool
    finally:
        for a in attachments:
            a.close()


def _file_size(body: IO[bytes]) -> int:
    """Bytes from the current position to the end, leaving the position alone."""
    here = body.tell()
    end = body.seek(0, 2)
    body.seek(here)
    return end - here


def close_body(body: Body) -> None:
    """Release a body :func:`wire_body` spooled to a file; bytes need nothing."""
    if not isinstance(body, bytes):
        body.close()


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
        message = message_by_pk(cur, t.message_pk)
        content_type, body = wire_body(message, cur)
        try:
            # The pin is looked up by the CPA endpoint, not the mapped URL: the
            # partner we must reach is the CPA's, whichever way we go to it.
            pin = self.pin_lookup(cur, message, t.url) if self.pin_lookup else None
            url = resolve_url(cur, t.url)
            if url != t.url:
                try:
                    check_url(url, "mapped")
                except (TypeError, ValueError) as exc:
                    raise Undeliverable(f"The URL mapping for {t.url} is invalid: {exc}.") from None
            reliable = message.status is not None and asks_for_ack(message.envelope)
            size = len(body) if isinstance(body, bytes) else _file_size(body)
        except BaseException:
            close_body(body)
            raise
        return Outgoing(t, message, content_type, body, pin, reliable, size, url)

    def _refuse(self, cur: Cursor, t: Task, reason: str, now: datetime) -> dict[str, str]:
        """End a task that cannot be sent: FAILED with ``reason``, its message too."""
        finish_attempt(
            cur, t, TaskOutcome.FAILED, node=self.node_id, started_at=now, now=now, error=reason
        )
        row = cur.execute(
            "SELECT message_id, cpa_id, status FROM ebms_message WHERE id = ?", (t.message_pk,)
        ).fetchone()
        fields = {"event": "delivery", "task": str(t.id), "outcome": "failed", "error": reason}
        if row is None:
            return fields
        message_id, cpa_id, status = row
        fields.update(message_id=str(message_id), cpa_id=str(cpa_id))
        if status is not None and set_status(
            cur,
            t.message_pk,
            OutboundStatus.DELIVERY_FAILED.value,
            now=now,
            reason=reason,
            only_from=(OutboundStatus.CREATED.value,),
        ):
            add_event(
                cur,
                t.message_pk,
                str(message_id),
                EventType.FAILED,
                now=now,
                error_code=UNDELIVERABLE_CODE,
                error_text=reason,
            )
        return fields

    async def _deliver(self, outgoing: Outgoing) -> None:
        try:
            await self._attempt(outgoing)
        finally:
            close_body(outgoing.body)

    async def _attempt(self, outgoing: Outgoing) -> None:
        claimed, message = outgoing.task, outgoing.message
        started = self.clock()
        expired = claimed.exhausted or (
            claimed.expires_at is not None and started > claimed.expires_at
        )
        if expired or (outgoing.is_business and message.status != OutboundStatus.CREATED):
            # Nothing to send: the final wait is over, or an acknowledgment or
            # error settled the message while the task waited.
            outcome = TaskOutcome.EXPIRED if expired else TaskOutcome.DONE
            fields = await self._record(outgoing, outcome, started, None, None, None)
            self._report(fields)
            return
        headers = {"Content-Type": outgoing.content_type, "SOAPAction": '"ebXML"'}
        result: HttpResult | None = None
        try:
            result = await self.post(outgoing.post_url, headers, outgoing.body, outgoing.pin)
        except Exception as exc:  # connection refused, TLS failure, timeout
            # Stored, logged and shown as one plain sentence, never a repr.
            outcome, status = TaskOutcome.RETRY, None
            error: str | None = describe_failure(exc, outgoing.post_url)
        else:
            outcome, status = classify(result.status), result.status
            error = (
                None
                if outcome is TaskOutcome.DONE
                else describe_http(result.status, result.content_type, result.body)
            )
        fields = await self._record(outgoing, outcome, started, status, error, result)
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
        outcome: TaskOutcome,
        started: datetime,
        status: int | None,
        error: str | None,
        result: HttpResult | None,
    ) -> dict[str, str]:
        """Record the attempt and its consequences in one transaction; returns log fields."""
        now = self.clock()
        message = outgoing.message
        awaiting_ack = False
        with self.db.transaction() as cur:
            reply = None
            if result is not None and result.body and outcome is TaskOutcome.DONE:
                reply = accept_sync_reply(
                    cur,
                    result.body[:MAX_REPLY_BYTES],
                    result.content_type,
                    now=now,
                    verify_ack=self.verify_ack,
                )
            if reply == "delivery-failed":
                # A synchronous MessageError settled the message already.
                outcome = TaskOutcome.FAILED
            elif (
                outcome is TaskOutcome.DONE
                and outgoing.is_business
                and outgoing.reliable
                and reply != "delivered"
            ):
                # Transport accepted; the acknowledgment comes in its own POST.
                # Wait for it until the next attempt is due (ebMS 2.0 §6.5).
                outcome = TaskOutcome.RETRY
                awaiting_ack = True
            elif outcome is TaskOutcome.RETRY and outgoing.is_business and not outgoing.reliable:
                # Best effort has no retries (Koppelvlakstandaard ebMS2, osb-be): a
                # transport failure fails the message, as in ebms-core.
                outcome = TaskOutcome.FAILED
            effective = finish_attempt(
                cur,
                outgoing.task,
                outcome,
                node=self.node_id,
                started_at=started,
                now=now,
                http_status=status,
                error=error,
                url=outgoing.post_url,
            )
            if effective is TaskOutcome.EXPIRED and error is None:
                # Expired after failed attempts: the last failure says why.
                error = last_task_error(cur, outgoing.task.id)
            if outgoing.is_business and effective is not None:
                self._settle(cur, message, effective, now, error)
        if effective is None and reply in ("delivered", "delivery-failed"):
            # The synchronous reply's correlation ended the task itself.
            effective = outcome
        fields = _fields(message, outgoing.task, status, effective, reply, outgoing.post_url)
        if awaiting_ack and effective is TaskOutcome.RETRY:
            fields["outcome"] = "sent-awaiting-ack"
        fields["size"] = str(outgoing.size)
        fields["ms"] = f"{(now - started).total_seconds() * 1000:.1f}"
        if error:
            fields["error"] = error
        return fields

    @staticmethod
    def _settle(
        cur: Cursor, message: StoredMessage, outcome: TaskOutcome, now: datetime, error: str | None
    ) -> None:
        created = (OutboundStatus.CREATED.value,)
        if outcome is TaskOutcome.DONE:
            # Best effort: a 2xx is delivery.  Reliable: the ack already did it.
            if set_status(
                cur, message.pk, OutboundStatus.DELIVERED.value, now=now, only_from=created
            ):
                add_event(cur, message.pk, message.message_id, EventType.DELIVERED, now=now)
        elif outcome is TaskOutcome.FAILED:
            if set_status(
                cur,
                message.pk,
                OutboundStatus.DELIVERY_FAILED.value,
                now=now,
                reason=error,
                only_from=created,
            ):
                add_event(
                    cur, message.pk, message.message_id, EventType.FAILED, now=now, error_text=error
                )
        elif outcome is TaskOutcome.EXPIRED and set_status(
            cur, message.pk, OutboundStatus.EXPIRED.value, now=now, reason=error, only_from=created
        ):
            add_event(
                cur, message.pk, message.message_id, EventType.EXPIRED, now=now, error_text=error
            )


def _fields(
    message: StoredMessage,
    claimed: Task,
    status: int | None,
    outcome: TaskOutcome | None,
    reply: str | None,
    url: str,
) -> dict[str, str]:
    """What one attempt is logged with: ids, parties, service/action, outcome; never content.

    ``url`` is where the attempt went; the CPA endpoint follows as ``cpa_url`` when a
    URL mapping replaced it, so the log shows both sides of the mapping.
    """
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
        "attempt": claimed.attempts,
        "url": url,
        "cpa_url": claimed.url if url != claimed.url else None,
        "http_status": status,
        "outcome": outcome.value if outcome else "superseded",
        "reply": reply,
    }
    return {k: str(v) for k, v in fields.items() if v is not None}
