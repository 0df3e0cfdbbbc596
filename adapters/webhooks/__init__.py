"""Event push: POST message events to back-office URLs (``[[webhook]]``).

The dispatcher is the Twisted edge of :mod:`adapters.webhooks.store`.  A pass
runs every ``poll_interval`` seconds and whenever the gateway calls
:meth:`WebhookDispatcher.wake` (after every inbound request and delivery
attempt); wakes coalesce, so at most one pass runs and a wake during a pass
asks for one more.  A pass, in one store transaction in the thread pool,
queues the new matching events of every webhook and claims the due
deliveries up to the free POST slots (``concurrency``).  The POSTs run on the
reactor; each outcome is recorded in the thread pool: 2xx is done, anything
else (another status, a connection error, a timeout) is retried with
exponential backoff until ``max_age``, then the delivery is failed.

One item never stops the others: a webhook whose events cannot be queued is
skipped for that pass (its own savepoint, an error line), and a delivery whose
row cannot be read or whose POST cannot be prepared is failed at once with
its reason (``last_error``) and a log line with its ids.

Message receipt never waits for any of this: the dispatcher only reads
``message_event``, every error in it is logged and swallowed, and a receiver
that is slow or down only delays its own deliveries.

The POST body is JSON with ids and ebMS properties only, never payload
content (see :func:`event_body` and docs/webhooks.md); log lines never carry
the body either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BytesIO
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer, task
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse

# zope.interface ships no type information; ``implementer`` only registers interfaces.
from zope.interface import implementer  # type: ignore[import-untyped]

from adapters.webhooks import store
from gateway.config import WebhookConfig
from gateway.http.body import read_body
from gateway.logfmt import log_event
from gateway.msh.states import WebhookState
from gateway.services.loop import LoopService
from gateway.store.database import Database
from gateway.store.timeutil import to_db, utcnow

__all__ = ["MAX_RESPONSE_BYTES", "Poster", "WebhookDispatcher", "event_body", "signature"]

log = logging.getLogger("dkgw.webhooks")

#: Of a receiver's answer only the status counts; this much of its body is read (and dropped).
MAX_RESPONSE_BYTES = 64 * 1024
#: Pauses before recording an outcome again when the store refused it.
STORE_RETRY_PAUSES = (0.1, 0.5, 2.0)
#: A claim's lease lasts this much longer than the webhooks' longest timeout.
LEASE_MARGIN = timedelta(seconds=60)


class Poster(Protocol):
    """POST ``body`` to the webhook's URL; fires with the HTTP status.

    Fails on connection errors; the dispatcher applies the webhook's timeout
    by cancelling the Deferred.
    """

    def __call__(
        self, hook: WebhookConfig, headers: dict[str, str], body: bytes
    ) -> Deferred[int]: ...


def event_body(delivery: store.Delivery) -> bytes:
    """The JSON document POSTed for a delivery: ids and properties, never content.

    Field names follow ebms-core's message properties.  ``timestamp`` is when
    the event happened (UTC).  The same delivery always gives the same bytes.
    """

    def party(ids: str | None, role: str | None) -> dict[str, str | None] | None:
        if ids is None:
            return None
        return {"partyId": ids.split(",")[0], "role": role}

    document = {
        "messageId": delivery.message_id,
        "type": delivery.event_type,
        "eventId": delivery.event_id,
        "timestamp": to_db(delivery.event_at or delivery.created_at),
        "cpaId": delivery.cpa_id,
        "fromParty": party(delivery.from_party, delivery.from_role),
        "toParty": party(delivery.to_party, delivery.to_role),
        "service": delivery.service,
        "action": delivery.action,
        "conversationId": delivery.conversation_id,
        "refToMessageId": delivery.ref_to_message_id,
    }
    if delivery.error_code is not None:
        # Why a FAILED event failed, when the gateway knows (a StUF Fo01's code and text).
        document["errorCode"] = delivery.error_code
        document["errorText"] = delivery.error_text
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def signature(secret: bytes, body: bytes) -> str:
    """``X-Dkgw-Signature``: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret(path: Any) -> bytes:
    """A webhook's HMAC key: the file's content, surrounding whitespace stripped."""
    with open(path, "rb") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError(f"webhook secret_file {path} is empty")
    return secret


@implementer(IPolicyForHTTPS)
class CaFilePolicy:
    """HTTPS to a webhook: the server's chain must end in one of ``ca_file``'s certificates.

    The host name (or IP address) of the URL is checked against the
    certificate, as with the system trust store (Agent's default policy).
    """

    def __init__(self, pem: bytes) -> None:
        certificates = x509.load_pem_x509_certificates(pem)
        self._root = trustRootFromCertificates(  # type: ignore[no-untyped-call]
            [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates]
        )

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """Connection creator for one ``host:port`` from a URL."""
        creator: IOpenSSLClientConnectionCreator = optionsForClientTLS(
            hostname.decode("ascii").strip("[]"), trustRoot=self._root
        )
        return creator


class HttpPoster:
    """POSTs with ``twisted.web.client.Agent``: one kept-alive pool, one agent per webhook."""

    def __init__(self, reactor: Any, hooks: tuple[WebhookConfig, ...], *, per_host: int) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self.pool.maxPersistentPerHost = per_host
        self._agents: dict[str, Agent] = {}
        for hook in hooks:
            if hook.ca_file is not None:
                agent = Agent(  # type: ignore[no-untyped-call]
                    reactor,
                    contextFactory=CaFilePolicy(hook.ca_file.read_bytes()),
                    pool=self.pool,
                    connectTimeout=hook.timeout,
                )
            else:
                # The default policy: the system trust store and the host name.
                agent = Agent(reactor, pool=self.pool, connectTimeout=hook.timeout)  # type: ignore[no-untyped-call]
            self._agents[hook.name] = agent

    def __call__(self, hook: WebhookConfig, headers: dict[str, str], body: bytes) -> Deferred[int]:
        return Deferred.fromCoroutine(self._post(hook, headers, body))

    async def _post(self, hook: WebhookConfig, headers: dict[str, str], body: bytes) -> int:
        producer: Any = FileBodyProducer(BytesIO(body))  # type: ignore[no-untyped-call]
        response: IResponse = await self._agents[hook.name].request(
            b"POST",
            hook.url.encode("ascii"),
            Headers({k: [v] for k, v in headers.items()}),
            producer,
        )
        # Only the status counts.  The body is read (and dropped) after it, so the
        # connection can be kept; one that is slow or breaks off changes nothing.
        drained = read_body(
            response,
            self.reactor,
            max_bytes=MAX_RESPONSE_BYTES,
            timeout=hook.timeout,
            too_large=lambda limit: ValueError(f"body over {limit} bytes"),
            timed_out=lambda seconds: TimeoutError(f"body not read within {seconds:g} s"),
            keep=False,
        )
        drained.addErrback(lambda f: log.debug("webhook %s: body: %s", hook.name, f.value))
        return int(response.code)

    def close(self) -> Deferred[None]:
        """Close kept-alive connections."""
        closed: Deferred[None] = self.pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return closed


@dataclass(frozen=True)
class _Hook:
    config: WebhookConfig
    secret: bytes | None
    backoff: store.Backoff


class WebhookDispatcher(LoopService):
    """Pushes the store's message events to the configured webhooks.

    A :class:`~gateway.services.loop.LoopService` whose tick is one pass: wakes
    coalesce, and wakes closer together than ``min_pass_gap`` share one pass.
    """

    def __init__(
        self,
        reactor: Any,
        db: Database,
        run_in_thread: Any,
        hooks: tuple[WebhookConfig, ...],
        *,
        node_id: str,
        poll_interval: float = 1.0,
        concurrency: int = 4,
        min_pass_gap: float = 0.05,
        stop_grace: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        post: Poster | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """Secrets and CA files are read now: an unreadable one stops the gateway's start."""
        super().__init__(
            self._one_pass_deferred,
            reactor=reactor,
            interval=poll_interval,
            on_failure=lambda failure: self._log_failure(failure, "webhook pass"),
            min_gap=min_pass_gap,
        )
        self.db = db
        self.run_in_thread = run_in_thread
        self.hooks = hooks
        self.node_id = node_id
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        #: Wakes closer together than this share one pass (a busy gateway wakes a lot).
        self.min_pass_gap = min_pass_gap
        #: How long stop() lets POSTs in flight finish before cutting them off.
        self.stop_grace = stop_grace
        self.clock = clock
        self.jitter = jitter
        self._hooks = {
            h.name: _Hook(
                h,
                read_secret(h.secret_file) if h.secret_file is not None else None,
                store.Backoff(
                    timedelta(seconds=h.initial_backoff),
                    timedelta(seconds=h.max_backoff),
                    timedelta(seconds=h.max_age),
                ),
            )
            for h in hooks
        }
        self._names = sorted(self._hooks)  # one locking order on every node
        self.lease = timedelta(seconds=max((h.timeout for h in hooks), default=0)) + LEASE_MARGIN
        self._http: HttpPoster | None = None
        if post is None:
            self._http = HttpPoster(reactor, hooks, per_host=concurrency)
            post = self._http
        self.post: Poster = post
        self._stopping = False
        self._first_pass = True
        self._more = False
        self._retry_timer: DelayedCall | None = None
        self._in_flight: set[Deferred[None]] = set()
        self._posts: set[Deferred[int]] = set()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Begin pushing; the first pass runs at once."""
        self._stopping = False
        self.startService()

    def startService(self) -> None:
        """Begin pushing (nothing to do without webhooks)."""
        if self._hooks:
            self._first_pass = True
            super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop; POSTs in flight are finished or abandoned (and retried later)."""
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        timer = self._retry_timer
        if timer is not None and timer.active():
            timer.cancel()
        # The pass in progress ends first; its claims are handed back (see _one_pass).
        await super().stopService()
        if self._in_flight:
            waiting = defer.DeferredList(list(self._in_flight), consumeErrors=True)
            grace = self.reactor.callLater(self.stop_grace, self._cut_off)
            await waiting
            if grace.active():
                grace.cancel()
        if self._http is not None:
            await self._http.close()

    def stop(self) -> Deferred[None]:
        """Stop; POSTs in flight are finished or abandoned (and retried later)."""
        return self.stopService()

    def _cut_off(self) -> None:
        """stop() waited long enough: cancel the POSTs; their deliveries are handed back."""
        self._stopping = True
        for d in list(self._posts):
            d.cancel()

    # -- one pass ------------------------------------------------------------------

    def _one_pass_deferred(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._one_pass())

    async def _one_pass(self) -> None:
        free = max(self.concurrency - len(self._in_flight), 0)
        batch: list[store.Delivery] = await self.run_in_thread(self._enqueue_and_claim, free)
        if not self.running:
            if batch:
                await self.run_in_thread(self._release, [d.id for d in batch], False)
            return
        for delivery in batch:
            attempt = Deferred.fromCoroutine(self._attempt(delivery))
            attempt.addErrback(self._log_failure, f"webhook delivery {delivery.id}")
            self._in_flight.add(attempt)
            attempt.addBoth(self._attempt_done, attempt)
        if len(batch) >= free:
            # All slots taken: more may be due, claimed when an attempt ends.
            self._more = True

    def _attempt_done(self, _: object, attempt: Deferred[None]) -> None:
        self._in_flight.discard(attempt)
        if self._more:
            self._more = False
            self.wake()

    def _enqueue_and_claim(self, limit: int) -> list[store.Delivery]:
        """In the thread pool: queue every webhook's new events, claim what is due."""
        now = self.clock()
        with self.db.transaction() as cur:
            store.read_committed(cur)
            released = 0
            if self._first_pass:
                # What this node had in flight when it last went down is due again.
                released = store.release_node(cur, node=self.node_id, now=now)
            queued = {}
            stalled: dict[str, str] = {}
            for name in self._names:
                hook = self._hooks[name].config
                # One webhook whose events cannot be queued (its cursor row
                # inconsistent, say) must not stop the others': its own savepoint.
                try:
                    with cur.savepoint():
                        queued[name] = store.enqueue(
                            cur,
                            name,
                            now=now,
                            cpa_ids=hook.cpa_ids,
                            services=hook.services,
                            event_types=hook.event_types,
                        )
                except Exception as exc:
                    kind = type(exc).__name__
                    stalled[name] = f"The new events of this webhook could not be queued ({kind})."
            refused: list[store.Refused] = []
            batch = store.claim_due(
                cur,
                node=self.node_id,
                now=now,
                limit=limit,
                lease=self.lease,
                webhooks=self._names,
                refused=refused,
            )
        self._first_pass = False
        for name, reason in stalled.items():
            log_event(
                log,
                logging.ERROR,
                {"event": "webhook-enqueue", "webhook": name, "outcome": "failed", "error": reason},
            )
        for r in refused:
            log_event(
                log,
                logging.WARNING,
                {
                    "event": "webhook",
                    "node": self.node_id,
                    "webhook": r.webhook,
                    "delivery": r.id,
                    "message_id": r.message_id,
                    "event_id": r.event_id,
                    "outcome": "failed",
                    "error": r.reason,
                },
            )
        if released:
            log_event(
                log,
                logging.INFO,
                {"event": "webhook-recovered", "node": self.node_id, "deliveries": released},
            )
        for name, count in queued.items():
            if count:
                log_event(
                    log,
                    logging.DEBUG,
                    {"event": "webhook-queued", "webhook": name, "events": count},
                )
        return batch

    def _release(self, ids: list[int], attempted: bool) -> None:
        with self.db.transaction() as cur:
            store.release(cur, ids, node=self.node_id, now=self.clock(), attempted=attempted)

    # -- one POST ------------------------------------------------------------------

    async def _attempt(self, delivery: store.Delivery) -> None:
        hook = self._hooks[delivery.webhook]
        started = self.reactor.seconds()
        try:
            body = event_body(delivery)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "dkgw-webhook",
                "X-Dkgw-Event-Id": str(delivery.event_id),
                "X-Dkgw-Delivery-Attempt": str(delivery.attempts),
            }
            if hook.secret is not None:
                headers["X-Dkgw-Signature"] = signature(hook.secret, body)
            posted = self.post(hook.config, headers, body)
        except Exception as exc:
            # Nothing was sent and trying again would fail the same way: failed for good.
            reason = f"The event could not be prepared for posting ({type(exc).__name__})."
            await self._refuse(delivery, reason, started)
            return
        status: int | None = None
        error: str | None = None
        timed_out = False

        def give_up() -> None:
            nonlocal timed_out
            timed_out = True
            posted.cancel()

        timer = self.reactor.callLater(hook.config.timeout, give_up)
        self._posts.add(posted)
        try:
            status = await posted
        except Exception as exc:
            if self._stopping:
                # Cut off by stop(): due again at once, on whichever node runs next.
                await self.run_in_thread(self._release, [delivery.id], True)
                self._log(delivery, "abandoned", None, None, started)
                return
            error = _describe(exc, hook.config.timeout if timed_out else None)
        finally:
            if timer.active():
                timer.cancel()
            self._posts.discard(posted)
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        outcome: store.Outcome = "done" if error is None else "retry"
        finished = await self._record(delivery, outcome, status, error)
        if finished is None:
            # The lease ran out meanwhile and another node took the delivery over.
            self._log(delivery, "lease-lost", status, error, started)
            return
        if finished.state == WebhookState.DONE:
            self._log(delivery, "delivered", status, None, started)
        elif finished.state == WebhookState.PENDING:
            self._log(delivery, "retry", status, error, started, finished.next_attempt_at)
            if finished.next_attempt_at is not None:
                self._wake_at(finished.next_attempt_at)
        else:
            log_event(
                log,
                logging.WARNING,
                {
                    "event": "webhook",
                    "node": self.node_id,
                    "webhook": delivery.webhook,
                    "message_id": delivery.message_id,
                    "event_type": delivery.event_type,
                    "event_id": delivery.event_id,
                    "attempts": finished.attempts,
                    "status": status,
                    "outcome": "failed",
                    "error": error,
                },
            )

    async def _refuse(self, delivery: store.Delivery, reason: str, started: float) -> None:
        """End a delivery that cannot be attempted: failed with ``reason``, logged."""
        failed: bool = await self.run_in_thread(self._fail, delivery.id, reason)
        self._log(delivery, "failed" if failed else "lease-lost", None, reason, started)

    def _fail(self, delivery_id: int, reason: str) -> bool:
        with self.db.transaction() as cur:
            return store.fail(cur, delivery_id, node=self.node_id, now=self.clock(), error=reason)

    async def _record(
        self,
        delivery: store.Delivery,
        outcome: store.Outcome,
        status: int | None,
        error: str | None,
    ) -> store.Finished | None:
        """Record the outcome, again after a pause when the store refuses it.

        If it cannot be recorded at all, the lease runs out and the event is
        POSTed again: at least once.
        """
        args = (delivery.webhook, delivery.id, outcome, status, error, self.jitter())
        for pause in STORE_RETRY_PAUSES:
            try:
                finished: store.Finished | None = await self.run_in_thread(self._finish, *args)
                return finished
            except Exception as exc:
                log.warning(
                    "recording webhook delivery %d failed (%s); again in %.1f s",
                    delivery.id,
                    exc,
                    pause,
                )
                await task.deferLater(self.reactor, pause, lambda: None)
        last: store.Finished | None = await self.run_in_thread(self._finish, *args)
        return last

    def _finish(
        self,
        webhook: str,
        delivery_id: int,
        outcome: store.Outcome,
        status: int | None,
        error: str | None,
        jitter: float,
    ) -> store.Finished | None:
        with self.db.transaction() as cur:
            return store.finish(
                cur,
                delivery_id,
                outcome,
                node=self.node_id,
                now=self.clock(),
                backoff=self._hooks[webhook].backoff,
                status=status,
                error=error,
                jitter=jitter,
            )

    def _wake_at(self, when: datetime) -> None:
        """Have a pass run when a retry falls due (one timer for all: the earliest)."""
        if not self.running:
            return
        delay = max((when - self.clock()).total_seconds(), 0.0)
        timer = self._retry_timer
        if timer is not None and timer.active():
            if timer.getTime() <= self.reactor.seconds() + delay:
                return
            timer.reset(delay)
            return
        self._retry_timer = self.reactor.callLater(delay, self.wake)

    def _log(
        self,
        delivery: store.Delivery,
        outcome: str,
        status: int | None,
        error: str | None,
        started: float,
        next_attempt_at: datetime | None = None,
    ) -> None:
        log_event(
            log,
            logging.INFO,
            {
                "event": "webhook",
                "node": self.node_id,
                "webhook": delivery.webhook,
                "message_id": delivery.message_id,
                "event_type": delivery.event_type,
                "event_id": delivery.event_id,
                "attempt": delivery.attempts,
                "status": status,
                "outcome": outcome,
                "error": error,
                "next_attempt_at": to_db(next_attempt_at) if next_attempt_at else None,
                "ms": f"{(self.reactor.seconds() - started) * 1000:.1f}",
            },
        )

    @staticmethod
    def _log_failure(failure: Failure, what: str) -> None:
        # Never propagates: a store outage or a bug here must not touch message handling.
        log.error("%s failed: %s", what, failure.getErrorMessage())
        return None


def _describe(exc: Exception, timed_out_after: float | None = None) -> str:
    """The last_error of a POST that got no status (never anything from a body)."""
    if timed_out_after is not None:
        return f"no answer within {timed_out_after:g} s"
    reasons = getattr(exc, "reasons", None)  # ResponseNeverReceived and friends
    if reasons:
        inner = reasons[0].value
        return f"{type(exc).__name__}: {type(inner).__name__}: {inner}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
