"""The delivery worker's scheduling logic, with a scripted POST and a hand-driven clock.

No network and no threads: the worker's ``post`` is a fake that records what
was sent and answers from a script (an :class:`HttpResult` or a connection
error), store work runs synchronously, and both the reactor (``task.Clock``)
and the wall clock the worker stamps attempts with are moved by the test.
Messages are queued with ``send_message``/``send_ping`` under a generated CPA
on the real store (SQLite, and PostgreSQL when ``DKGW_TEST_PG_DSN`` is set).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError as TxConnectionRefused
from twisted.internet.task import Clock

from cpa.model import Service
from gateway.delivery import DeliveryWorker, HttpResult, classify
from gateway.ebms.envelope import Envelope, build_envelope, parse_envelope
from gateway.ebms.mime import SwaParser
from gateway.ebms.model import EbmsError, ErrorCode, Severity
from gateway.ebms.signals import acknowledgment, message_error
from gateway.msh.inbound import correlate_acknowledgment
from gateway.msh.outbound import Payload, Queued, parse_party, send_message, send_ping
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database, StoreUnavailable
from gateway.store.messages import (
    CHUNK_BYTES,
    Direction,
    TaskOutcome,
    claim_due_tasks,
    find_message,
    release_node_leases,
    unclaim_task,
)
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import from_db
from gateway.store.urlmap import delete_url_mapping, set_url_mapping
from tests.conftest import GEMEENTE_OIN, NODE_OIN

SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")
GEMEENTE = parse_party(f"urn:osb:oin:{GEMEENTE_OIN}")
NODE = parse_party(NODE_OIN)
URL = "https://localhost:18444/ebms"  # the node's endpoint in the generated CPA
XML = "text/xml; charset=UTF-8"
INTERVAL = timedelta(seconds=10)
#: Inside the CPA's validity (make_spec starts it an hour before the session).
T0 = datetime.now(UTC).replace(microsecond=0)
NO_CONTENT = HttpResult(204, "", b"")


class FakeNow:
    """The worker's wall clock: UTC, aware, moved only by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def set(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


@dataclass
class Posted:
    """One POST the worker made."""

    url: str
    headers: dict[str, str]
    body: bytes
    pin: object
    from_file: bool = False
    """The worker handed over a spooled file (a large message), read here."""


Answer = HttpResult | Exception | Deferred[HttpResult]


@dataclass
class FakePost:
    """The worker's ``post``: records requests, answers from ``script`` (default 204)."""

    now: FakeNow
    script: list[Answer] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)
    took: timedelta = timedelta(0)  # how long each POST takes on the fake clock

    def __call__(
        self, url: str, headers: dict[str, str], body: Any, pin: object
    ) -> Deferred[HttpResult]:
        # A file body is closed once the attempt is over, so it is read now.
        data = body if isinstance(body, bytes) else body.read()
        self.posted.append(Posted(url, dict(headers), data, pin, not isinstance(body, bytes)))
        self.now.now += self.took
        answer = self.script.pop(0) if self.script else NO_CONTENT
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


def sync_runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """``run_in_thread`` without a thread: the store work runs right away."""
    return defer.maybeDeferred(f, *args)


class GatedRunner:
    """``run_in_thread`` whose calls wait while ``hold`` is set, until :meth:`release`."""

    def __init__(self) -> None:
        self.hold = False
        self.held: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if not self.hold:
            return defer.maybeDeferred(f, *args)
        d: Deferred[Any] = Deferred()
        self.held.append((f, args, d))
        return d

    def release(self) -> None:
        self.hold = False
        while self.held:
            f, args, d = self.held.pop(0)
            defer.maybeDeferred(f, *args).chainDeferred(d)


@dataclass
class Harness:
    """One gateway's store and CPA, a worker on fake time and fake network."""

    store: Database
    registry: CpaRegistry
    now: FakeNow
    post: FakePost
    reactor: Clock
    events: list[dict[str, str]] = field(default_factory=list)
    workers: list[DeliveryWorker] = field(default_factory=list)

    def worker(self, *, start: bool = True, **kw: Any) -> DeliveryWorker:
        args: dict[str, Any] = dict(
            reactor=self.reactor,
            db=self.store,
            run_in_thread=sync_runner,
            post=self.post,
            node_id="n1",
            clock=self.now,
            on_event=self.events.append,
        )
        args.update(kw)
        worker = DeliveryWorker(**args)
        self.workers.append(worker)
        if start:
            worker.start()
        return worker

    def send(self, action: str = "WMO301", **kw: Any) -> Queued:
        args: dict[str, Any] = dict(
            cpa_id="test-cpa",
            from_party=GEMEENTE,
            from_role="Gemeente",
            to_party=NODE,
            to_role="GGk",
            service=SERVICE,
            action=action,
            clock=self.now,
        )
        args.update(kw)
        return send_message(self.store, self.registry, **args)

    def ping(self) -> Queued:
        return send_ping(
            self.store,
            self.registry,
            cpa_id="test-cpa",
            from_party=GEMEENTE,
            to_party=NODE,
            clock=self.now,
        )

    def at(self, seconds: float, worker: DeliveryWorker | None = None) -> None:
        """Move the wall clock to T0 + ``seconds`` and poll."""
        self.now.set(seconds)
        (worker or self.workers[-1]).poll()

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.store.transaction() as cur:
            return cur.execute(sql, params).fetchall()

    def status(self, message_id: str) -> str | None:
        ((status,),) = self.rows(
            "SELECT status FROM ebms_message WHERE message_id = ? AND direction = 'out'",
            message_id,
        )
        return status

    def task(self, message_id: str) -> tuple[str, int, datetime]:
        """(state, attempts, next_attempt_at) of the message's delivery task."""
        ((state, attempts, due),) = self.rows(
            "SELECT t.state, t.attempts, t.next_attempt_at FROM delivery_task t "
            "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ?",
            message_id,
        )
        return state, attempts, from_db(due)

    def attempts(self, message_id: str) -> list[tuple[Any, ...]]:
        """(attempt, http_status, outcome, error) of every recorded attempt, in order."""
        return self.rows(
            "SELECT a.attempt, a.http_status, a.outcome, a.error FROM delivery_attempt a "
            "JOIN delivery_task t ON t.id = a.task_id "
            "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ? "
            "ORDER BY a.attempt",
            message_id,
        )

    def message_events(self, message_id: str) -> list[str]:
        return [
            e
            for (e,) in self.rows(
                "SELECT event_type FROM message_event WHERE message_id = ? ORDER BY id",
                message_id,
            )
        ]

    def stored(self, message_id: str) -> Envelope:
        with self.store.transaction() as cur:
            message = find_message(cur, message_id, Direction.OUT)
        assert message is not None
        return parse_envelope(message.envelope)[0]

    def content_type(self, message_id: str) -> str:
        ((value,),) = self.rows(
            "SELECT content_type FROM ebms_message WHERE message_id = ? AND direction = 'out'",
            message_id,
        )
        return value


@pytest.fixture
def harness(store: Database, cpa_xml) -> Iterator[Callable[..., Harness]]:
    """Factory: a harness under a CPA built with the given overrides (osb-rm by default)."""
    apply_migrations(store)
    made: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        overrides.setdefault("profile", "osb-rm")
        overrides.setdefault("retries", 2)
        overrides.setdefault("retry_interval", INTERVAL)
        registry = CpaRegistry(store)
        registry.insert(cpa_xml(**overrides), overwrite=True)
        now = FakeNow()
        made.append(Harness(store, registry, now, FakePost(now), Clock()))
        return made[-1]

    yield make
    for h in made:
        for worker in h.workers:
            stopped = worker.stop()
            assert stopped.called, "the worker did not stop"


def sync_reply(h: Harness, queued: Queued, build: Callable[[Envelope], Envelope]) -> HttpResult:
    """A 200 text/xml response carrying the signal ``build`` makes from the stored message."""
    return HttpResult(200, XML, build_envelope(build(h.stored(queued.message_id))))


def ack_of(request: Envelope) -> Envelope:
    return acknowledgment(request, now=T0, host="node.example")


def error_of(request: Envelope, severity: Severity = Severity.ERROR) -> Envelope:
    problem = EbmsError(ErrorCode.DELIVERY_FAILURE, "//eb:MessageHeader", "refused", severity)
    return message_error(request, [problem], now=T0, host="node.example")


# -- classify ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_done(status: int) -> None:
    assert classify(status) is TaskOutcome.DONE


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 507, 599])
def test_transient_statuses_are_retried(status: int) -> None:
    assert classify(status) is TaskOutcome.RETRY


@pytest.mark.parametrize(
    "status", [100, 301, 302, 304, 307, 400, 401, 403, 404, 405, 409, 413, 415, 501, 505, 510]
)
def test_other_statuses_are_final(status: int) -> None:
    assert classify(status) is TaskOutcome.FAILED


# -- best effort ------------------------------------------------------------------------


def test_best_effort_2xx_is_delivered(harness) -> None:
    h = harness(profile="osb-be")
    queued = h.send()
    h.worker()
    (posted,) = h.post.posted
    assert posted.url == URL
    assert posted.headers == {"Content-Type": XML, "SOAPAction": '"ebXML"'}
    with h.store.transaction() as cur:
        stored = find_message(cur, queued.message_id, Direction.OUT)
    assert stored is not None and posted.body == stored.envelope
    assert h.status(queued.message_id) == "DELIVERED"
    assert h.message_events(queued.message_id) == ["DELIVERED"]
    assert h.task(queued.message_id)[:2] == ("done", 1)
    assert h.attempts(queued.message_id) == [(1, 204, "done", None)]
    assert h.events[-1]["outcome"] == "done" and h.events[-1]["http_status"] == "204"
    h.at(3600)
    assert len(h.post.posted) == 1


def test_best_effort_final_status_fails_without_another_attempt(harness) -> None:
    h = harness(profile="osb-be")
    h.post.script = [HttpResult(404, "text/plain", b"not here")]
    queued = h.send()
    h.worker()
    assert h.status(queued.message_id) == "DELIVERY_FAILED"
    assert h.message_events(queued.message_id) == ["FAILED"]
    assert h.task(queued.message_id)[:2] == ("failed", 1)
    assert h.attempts(queued.message_id) == [(1, 404, "failed", "HTTP 404 from partner")]
    assert h.rows("SELECT status, reason FROM status_history ORDER BY status") == [
        ("CREATED", None),
        ("DELIVERY_FAILED", "HTTP 404 from partner"),
    ]
    h.at(3600)
    assert len(h.post.posted) == 1


@pytest.mark.parametrize(
    "answer",
    [TxConnectionRefused(), HttpResult(503, "text/html", b"busy")],
    ids=["connection-refused", "503"],
)
def test_best_effort_transport_failure_fails_without_retry(harness, answer: Answer) -> None:
    """osb-be (Koppelvlakstandaard ebMS2): one attempt; a retryable failure fails it."""
    h = harness(profile="osb-be")
    h.post.script = [answer]
    queued = h.send()
    h.worker()
    assert h.status(queued.message_id) == "DELIVERY_FAILED"
    assert h.message_events(queued.message_id) == ["FAILED"]
    ((attempt, status, outcome, error),) = h.attempts(queued.message_id)
    assert (attempt, outcome) == (1, "failed")
    # The sentence is the status reason and the FAILED event's error text too.
    assert h.rows(
        "SELECT h.reason FROM status_history h JOIN ebms_message m ON m.id = h.message_pk "
        "WHERE m.message_id = ? AND h.status = 'DELIVERY_FAILED'",
        queued.message_id,
    ) == [(error,)]
    assert h.rows(
        "SELECT error_text FROM message_event WHERE message_id = ?", queued.message_id
    ) == [(error,)]
    if isinstance(answer, Exception):
        assert (status, error) == (None, "connection refused by localhost:18444")
    else:
        assert (status, error) == (503, "HTTP 503 from partner")
    for seconds in (10, 60, 3600, 86400):
        h.at(seconds)
    assert len(h.post.posted) == 1
    assert h.task(queued.message_id)[:2] == ("failed", 1)


# -- reliable messaging -----------------------------------------------------------------


def test_reliable_2xx_waits_for_the_ack_until_the_next_attempt(harness) -> None:
    h = harness()
    queued = h.send()
    h.worker()
    assert len(h.post.posted) == 1
    assert h.status(queued.message_id) == "CREATED"
    assert h.task(queued.message_id) == ("pending", 1, T0 + INTERVAL)
    assert h.events[-1]["outcome"] == "sent-awaiting-ack"
    assert h.attempts(queued.message_id) == [(1, 204, "retry", None)]
    for seconds in (0, 1, 5, 9.999999):
        h.at(seconds)
    h.reactor.advance(5)  # the regular poll finds nothing due either
    assert len(h.post.posted) == 1
    h.at(10)
    assert len(h.post.posted) == 2
    assert h.task(queued.message_id) == ("pending", 2, T0 + 2 * INTERVAL)


def test_reliable_retries_transient_failures_every_retry_interval(harness) -> None:
    h = harness()
    h.post.script = [HttpResult(503, "text/plain", b""), TxConnectionRefused(), NO_CONTENT]
    queued = h.send()
    h.worker()
    h.at(10)
    h.at(20)
    assert len(h.post.posted) == 3
    assert h.status(queued.message_id) == "CREATED"
    rows = h.attempts(queued.message_id)
    assert rows[0] == (1, 503, "retry", "HTTP 503 from partner")
    assert rows[1][:3] == (2, None, "retry") and rows[1][3] == (
        "connection refused by localhost:18444"
    )
    assert rows[2] == (3, 204, "retry", None)
    assert h.rows("SELECT DISTINCT node, url FROM delivery_attempt") == [("n1", URL)]
    assert h.task(queued.message_id) == ("pending", 3, T0 + 3 * INTERVAL)
    assert h.message_events(queued.message_id) == []


def test_reliable_final_status_fails_at_once(harness) -> None:
    h = harness()
    h.post.script = [HttpResult(403, "text/plain", b"")]
    queued = h.send()
    h.worker()
    h.at(10)
    h.at(3600)
    assert len(h.post.posted) == 1
    assert h.status(queued.message_id) == "DELIVERY_FAILED"
    assert h.message_events(queued.message_id) == ["FAILED"]
    assert h.attempts(queued.message_id) == [(1, 403, "failed", "HTTP 403 from partner")]


def test_resend_is_byte_identical_multipart(harness) -> None:
    h = harness()
    payloads = [
        Payload(b"<WMO301>\r\n--not-a-boundary</WMO301>", "application/xml", "wmo301.xml"),
        Payload(bytes(range(256)) * 4, "application/octet-stream"),
    ]
    queued = h.send(payloads=payloads)
    h.worker()
    h.at(10)
    h.at(20)
    first, second, third = h.post.posted
    assert first.body == second.body == third.body
    assert first.headers == second.headers == third.headers
    content_type = h.content_type(queued.message_id)
    assert first.headers == {"Content-Type": content_type, "SOAPAction": '"ebXML"'}
    assert content_type.startswith('multipart/related; type="text/xml"; boundary="')
    assert '; start="<soap-' in content_type
    parser = SwaParser(first.headers["Content-Type"])
    parser.feed(first.body)
    package = parser.close()
    try:
        assert [p.read() for p in package.attachments.values()] == [p.content for p in payloads]
        env, _ = parse_envelope(package.root.read())
        assert env.header.message_id == queued.message_id
        assert [r.href for r in env.manifest] == [f"cid:{c}" for c in package.attachments]
    finally:
        package.close()


def test_large_resend_is_streamed_and_byte_identical(harness) -> None:
    # Over one store chunk: stored in chunks, posted from a spooled file.
    big = bytes(range(256)) * (3 * CHUNK_BYTES // 256) + b"tail"
    h = harness()
    queued = h.send(payloads=[Payload(big, "application/octet-stream")])
    h.worker()
    h.at(10)
    h.at(20)
    first, second, third = h.post.posted
    assert first.from_file and second.from_file and third.from_file
    assert first.body == second.body == third.body
    parser = SwaParser(first.headers["Content-Type"])
    parser.feed(first.body)
    package = parser.close()
    try:
        [part] = package.attachments.values()
        assert part.read() == big
    finally:
        package.close()
    assert h.status(queued.message_id) == "CREATED"


def test_after_the_last_attempt_a_final_wait_then_expired(harness) -> None:
    h = harness()  # Retries 2: 3 attempts; TimeToLive = T0 + 3 × 10 s
    queued = h.send()
    assert h.stored(queued.message_id).header.time_to_live == T0 + 3 * INTERVAL
    h.worker()
    h.at(10)
    h.at(20)
    assert len(h.post.posted) == 3
    assert h.task(queued.message_id) == ("pending", 3, T0 + 3 * INTERVAL)
    h.at(29.999)
    assert h.status(queued.message_id) == "CREATED"
    h.at(30)
    assert len(h.post.posted) == 3  # the claim only ends the wait
    assert h.status(queued.message_id) == "EXPIRED"
    assert h.message_events(queued.message_id) == ["EXPIRED"]
    assert h.task(queued.message_id)[:2] == ("expired", 4)
    assert h.attempts(queued.message_id) == [
        (1, 204, "retry", None),
        (2, 204, "retry", None),
        (3, 204, "retry", None),
        (4, None, "expired", None),
    ]
    assert h.events[-1]["outcome"] == "expired"
    h.at(86400)
    assert len(h.post.posted) == 3
    assert h.message_events(queued.message_id) == ["EXPIRED"]


def test_time_to_live_passed_before_the_first_attempt_expires_unsent(harness) -> None:
    h = harness()
    queued = h.send()
    h.now.set(31)  # the gateway was down until after the TimeToLive
    h.worker()
    assert h.post.posted == []
    assert h.status(queued.message_id) == "EXPIRED"
    assert h.message_events(queued.message_id) == ["EXPIRED"]
    assert h.task(queued.message_id)[:2] == ("expired", 1)
    assert h.attempts(queued.message_id) == [(1, None, "expired", None)]


def test_time_to_live_passing_between_attempts_expires(harness) -> None:
    h = harness(retries=5)  # TimeToLive = T0 + 60 s
    h.post.script = [HttpResult(503, "text/plain", b"")] * 2
    queued = h.send()
    h.worker()
    h.at(10)
    assert len(h.post.posted) == 2
    h.at(61)  # the node was down when attempt 3 was due
    assert len(h.post.posted) == 2
    assert h.status(queued.message_id) == "EXPIRED"
    assert h.message_events(queued.message_id) == ["EXPIRED"]
    assert [r[2] for r in h.attempts(queued.message_id)] == ["retry", "retry", "expired"]


def test_ack_correlated_meanwhile_ends_the_task(harness) -> None:
    h = harness()
    queued = h.send()
    h.worker()
    h.now.set(3)
    ack = ack_of(h.stored(queued.message_id))
    with h.store.transaction() as cur:
        outcome = correlate_acknowledgment(cur, ack, now=h.now())
    assert outcome == "delivered"
    assert h.status(queued.message_id) == "DELIVERED"
    for seconds in (10, 20, 30, 40, 3600):
        h.at(seconds)
    assert len(h.post.posted) == 1
    assert h.status(queued.message_id) == "DELIVERED"
    assert h.message_events(queued.message_id) == ["DELIVERED"]
    assert h.task(queued.message_id)[:2] == ("done", 1)
    assert h.attempts(queued.message_id) == [(1, 204, "retry", None)]


def test_ack_arriving_during_the_attempt_wins(harness) -> None:
    h = harness()
    response: Deferred[HttpResult] = Deferred()
    h.post.script = [response]
    queued = h.send()
    h.worker()
    assert h.task(queued.message_id)[0] == "sending"
    ack = ack_of(h.stored(queued.message_id))
    with h.store.transaction() as cur:
        assert correlate_acknowledgment(cur, ack, now=T0) == "delivered"
    response.callback(NO_CONTENT)
    assert h.events[-1]["outcome"] == "superseded"
    for seconds in (10, 20, 30, 40):
        h.at(seconds)
    assert len(h.post.posted) == 1
    assert h.status(queued.message_id) == "DELIVERED"
    assert h.message_events(queued.message_id) == ["DELIVERED"]
    assert h.task(queued.message_id)[:2] == ("done", 1)


# -- synchronous replies ----------------------------------------------------------------


def test_sync_ack_in_the_response_delivers_at_once(harness) -> None:
    h = harness(sync_reply=True)
    queued = h.send()
    assert h.stored(queued.message_id).sync_reply is not None
    h.post.script = [sync_reply(h, queued, ack_of)]
    h.worker()
    assert h.status(queued.message_id) == "DELIVERED"
    assert h.message_events(queued.message_id) == ["DELIVERED"]
    assert h.task(queued.message_id)[:2] == ("done", 1)
    assert h.attempts(queued.message_id) == [(1, 200, "done", None)]
    assert h.events[-1]["reply"] == "delivered"
    # The acknowledgment is stored as an inbound signal referring to the message.
    assert h.rows("SELECT action, ref_to_message_id FROM ebms_message WHERE direction = 'in'") == [
        ("Acknowledgment", queued.message_id)
    ]
    for seconds in (10, 20, 30, 40):
        h.at(seconds)
    assert len(h.post.posted) == 1


def test_sync_message_error_fails_without_retry(harness) -> None:
    h = harness(sync_reply=True)
    queued = h.send()
    h.post.script = [sync_reply(h, queued, error_of)]
    h.worker()
    assert h.status(queued.message_id) == "DELIVERY_FAILED"
    assert h.message_events(queued.message_id) == ["FAILED"]
    assert h.task(queued.message_id)[:2] == ("failed", 1)
    ((attempt, status, _, _),) = h.attempts(queued.message_id)
    assert (attempt, status) == (1, 200)
    assert h.events[-1]["reply"] == "delivery-failed"
    ((reason,),) = h.rows("SELECT reason FROM status_history WHERE status = 'DELIVERY_FAILED'")
    assert reason == "DeliveryFailure at //eb:MessageHeader: refused"
    for seconds in (10, 20, 30, 40):
        h.at(seconds)
    assert len(h.post.posted) == 1


def test_sync_warning_is_not_delivery(harness) -> None:
    h = harness(sync_reply=True)
    queued = h.send()
    h.post.script = [sync_reply(h, queued, lambda r: error_of(r, Severity.WARNING))]
    h.worker()
    assert h.events[-1]["reply"] == "warning"
    assert h.status(queued.message_id) == "CREATED"
    assert h.task(queued.message_id) == ("pending", 1, T0 + INTERVAL)


@pytest.mark.parametrize("body", [b"not xml at all", b"<?xml version='1.0'?><html/>", b"\x00" * 10])
def test_unreadable_sync_reply_is_retried(harness, body: bytes) -> None:
    h = harness(sync_reply=True)
    queued = h.send()
    h.post.script = [HttpResult(200, XML, body)]
    h.worker()
    assert h.status(queued.message_id) == "CREATED"
    assert h.events[-1]["reply"] == "bad-reply"
    assert h.task(queued.message_id) == ("pending", 1, T0 + INTERVAL)
    assert h.rows("SELECT count(*) FROM ebms_message WHERE direction = 'in'") == [(0,)]
    h.post.script = [sync_reply(h, queued, ack_of)]
    h.at(10)
    assert len(h.post.posted) == 2 and h.post.posted[0].body == h.post.posted[1].body
    assert h.status(queued.message_id) == "DELIVERED"
    assert h.attempts(queued.message_id) == [(1, 200, "retry", None), (2, 200, "done", None)]


# -- Ping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [HttpResult(503, "text/plain", b""), TxConnectionRefused()],
    ids=["503", "connection-refused"],
)
def test_ping_gets_one_attempt_only(harness, answer: Answer) -> None:
    h = harness(retries=8)
    h.post.script = [answer]
    queued = h.ping()
    h.worker()
    for seconds in (0, 10, 60, 3600):
        h.at(seconds)
    (posted,) = h.post.posted
    assert posted.headers == {"Content-Type": XML, "SOAPAction": '"ebXML"'}
    assert parse_envelope(posted.body)[0].header.action == "Ping"
    assert h.status(queued.message_id) is None  # signals have no status
    assert h.message_events(queued.message_id) == []
    # The retry outcome is recorded; the next claim finds no attempt left and ends the task.
    assert h.task(queued.message_id)[:2] == ("expired", 2)
    assert [(a, o) for a, _, o, _ in h.attempts(queued.message_id)] == [
        (1, "retry"),
        (2, "expired"),
    ]
    # The expiry keeps the failure of the attempt before it: why the Ping expired.
    ((last_error,),) = h.rows(
        "SELECT t.last_error FROM delivery_task t JOIN ebms_message m ON m.id = t.message_pk "
        "WHERE m.message_id = ?",
        queued.message_id,
    )
    assert last_error == h.attempts(queued.message_id)[0][3]
    assert last_error in ("HTTP 503 from partner", "connection refused by localhost:18444")


def test_ping_delivered(harness) -> None:
    h = harness()
    queued = h.ping()
    h.worker()
    assert h.task(queued.message_id)[:2] == ("done", 1)
    assert h.attempts(queued.message_id) == [(1, 204, "done", None)]
    assert h.message_events(queued.message_id) == []


# -- what goes on the wire --------------------------------------------------------------


@pytest.mark.parametrize("with_payload", [True, False], ids=["multipart", "soap-only"])
def test_request_headers(harness, with_payload: bool) -> None:
    h = harness()
    payloads = [Payload(b"<WMO301/>", "application/xml", "a.xml")] if with_payload else []
    queued = h.send(payloads=payloads)
    h.worker()
    (posted,) = h.post.posted
    assert posted.headers["SOAPAction"] == '"ebXML"'
    content_type = posted.headers["Content-Type"]
    assert content_type == h.content_type(queued.message_id)
    if with_payload:
        assert content_type.startswith("multipart/related;")
        assert "boundary=" in content_type and "start=" in content_type
        assert b"<WMO301/>" in posted.body
    else:
        assert content_type == XML
        assert posted.body.startswith(b"<?xml")


def test_pin_lookup_is_asked_for_the_endpoint(harness) -> None:
    h = harness()
    pin = object()
    asked: list[tuple[str, str]] = []

    def lookup(cur, message, url):
        asked.append((message.message_id, url))
        return pin

    queued = h.send()
    h.worker(pin_lookup=lookup)
    assert asked == [(queued.message_id, URL)]
    assert h.post.posted[0].pin is pin


def test_url_mapping_is_resolved_at_every_claim(harness) -> None:
    """The mapped URL is posted to and recorded; the pin and the task keep the CPA's URL."""
    h = harness()
    stub = "http://127.0.0.1:9/stub/ebms"
    asked: list[str] = []

    def lookup(cur, message, url):
        asked.append(url)
        return None

    with h.store.transaction() as cur:
        set_url_mapping(cur, URL, stub)
    h.post.script = [HttpResult(503, "text/plain", b""), HttpResult(503, "text/plain", b"")]
    queued = h.send()
    h.worker(pin_lookup=lookup)
    first = h.post.posted[0]
    assert first.url == stub
    assert h.events[-1]["url"] == stub and h.events[-1]["cpa_url"] == URL
    # Deleted while the gateway runs: the next attempt goes to the CPA's URL again.
    with h.store.transaction() as cur:
        assert delete_url_mapping(cur, URL)
    h.at(10)
    second = h.post.posted[1]
    assert second.url == URL and second.body == first.body  # the resend is byte-identical
    assert "cpa_url" not in h.events[-1] and h.events[-1]["url"] == URL
    assert asked == [URL, URL]
    assert h.rows(
        "SELECT a.attempt, a.url FROM delivery_attempt a JOIN delivery_task t ON t.id = a.task_id "
        "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ? ORDER BY a.attempt",
        queued.message_id,
    ) == [(1, stub), (2, URL)]
    assert h.rows("SELECT DISTINCT url FROM delivery_task") == [(URL,)]


# -- concurrency, stop and leases -------------------------------------------------------


def test_concurrency_limits_attempts_in_flight(harness) -> None:
    h = harness(profile="osb-be")
    responses: list[Deferred[HttpResult]] = [Deferred() for _ in range(3)]
    h.post.script = list(responses)
    queued = [h.send() for _ in range(3)]
    h.worker(concurrency=2)
    assert len(h.post.posted) == 2
    responses[0].callback(NO_CONTENT)  # a slot frees up: the third is claimed at once
    assert len(h.post.posted) == 3
    responses[1].callback(NO_CONTENT)
    responses[2].callback(NO_CONTENT)
    assert [h.status(q.message_id) for q in queued] == ["DELIVERED"] * 3


def test_stop_with_nothing_in_flight_resolves(harness) -> None:
    h = harness()
    worker = h.worker()
    stopped = worker.stop()
    assert stopped.called and stopped.result is None
    queued = h.send()
    worker.poll()  # a stopped worker claims nothing
    worker.wake()
    h.reactor.advance(10)
    assert h.post.posted == []
    assert h.task(queued.message_id)[:2] == ("pending", 0)


def test_stop_waits_for_the_attempt_in_flight(harness) -> None:
    h = harness(profile="osb-be")
    response: Deferred[HttpResult] = Deferred()
    h.post.script = [response]
    queued = h.send()
    worker = h.worker()
    stopped = worker.stop()
    assert not stopped.called
    response.callback(NO_CONTENT)
    assert stopped.called
    assert h.status(queued.message_id) == "DELIVERED"
    assert h.attempts(queued.message_id) == [(1, 204, "done", None)]


def test_stop_while_claiming_hands_the_tasks_back(harness) -> None:
    h = harness()
    queued = [h.send(), h.send()]
    runner = GatedRunner()
    worker = h.worker(run_in_thread=runner, start=False)
    runner.hold = True
    worker.start()  # the claim is now waiting for its "thread"
    assert len(runner.held) == 1
    stopped = worker.stop()
    assert not stopped.called
    runner.release()  # the claim completes after the stop: its tasks go back
    assert stopped.called
    assert h.post.posted == []
    for q in queued:
        assert h.task(q.message_id) == ("pending", 0, T0)
    assert h.rows("SELECT locked_by, lease_until FROM delivery_task") == [(None, None)] * 2
    assert h.rows("SELECT count(*) FROM delivery_attempt") == [(0,)]
    # Another worker (a restarted node) takes them up with their attempts intact.
    h.worker()
    assert len(h.post.posted) == 2
    assert {h.task(q.message_id)[1] for q in queued} == {1}


def test_unclaim_task_only_for_the_claiming_node(harness) -> None:
    h = harness()
    queued = h.send()
    with h.store.transaction() as cur:
        (task,) = claim_due_tasks(cur, node="n1", now=T0, lease=timedelta(minutes=5))
        assert task.attempts == 1
        assert not unclaim_task(cur, task, node="n2", now=T0)
        assert unclaim_task(cur, task, node="n1", now=T0)
        assert not unclaim_task(cur, task, node="n1", now=T0)  # no longer 'sending'
    assert h.task(queued.message_id) == ("pending", 0, T0)


def test_release_node_leases_only_touches_that_node(harness) -> None:
    h = harness()
    mine, theirs = h.send(), h.send()
    later = T0 + timedelta(seconds=42)
    with h.store.transaction() as cur:
        claim_due_tasks(cur, node="n1", now=T0, lease=timedelta(minutes=5), limit=1)
        claim_due_tasks(cur, node="n2", now=T0, lease=timedelta(minutes=5), limit=1)
        assert release_node_leases(cur, node="n1", now=later) == 1
        assert release_node_leases(cur, node="n1", now=later) == 0
    states = {q.message_id: h.task(q.message_id) for q in (mine, theirs)}
    assert sorted(states.values()) == [("pending", 1, later), ("sending", 1, T0)]


def test_start_recovers_the_leases_of_a_crash(harness) -> None:
    h = harness()
    queued = h.send()
    with h.store.transaction() as cur:  # n1 claimed it, then died mid-attempt
        claim_due_tasks(cur, node="n1", now=T0, lease=timedelta(minutes=5))
    h.now.set(5)
    h.worker()  # the same node restarted: its own lease is released at once
    assert len(h.post.posted) == 1
    assert h.task(queued.message_id) == ("pending", 2, T0 + timedelta(seconds=5) + INTERVAL)
    assert h.attempts(queued.message_id) == [(2, 204, "retry", None)]


def test_another_nodes_expired_lease_is_taken_over(harness) -> None:
    h = harness(retry_interval=timedelta(minutes=10))  # TimeToLive after the lease
    queued = h.send()
    with h.store.transaction() as cur:
        claim_due_tasks(cur, node="dead", now=T0, lease=timedelta(minutes=5))
    h.worker()
    assert h.post.posted == []  # leased by a node that may still be sending
    h.at(301)
    assert len(h.post.posted) == 1
    assert h.attempts(queued.message_id) == [(2, 204, "retry", None)]


# -- regressions ------------------------------------------------------------------------


def test_last_attempt_a_moment_late_still_waits_for_the_ack(harness) -> None:
    h = harness()  # 3 attempts, TimeToLive = T0 + 30 s
    h.post.took = timedelta(milliseconds=1)  # every POST takes a millisecond
    queued = h.send()
    h.worker()
    h.at(10.001)
    h.at(20.002)
    assert len(h.post.posted) == 3
    # The partner acknowledges the third copy half a second later.
    h.now.set(20.5)
    ack = ack_of(h.stored(queued.message_id))
    with h.store.transaction() as cur:
        outcome = correlate_acknowledgment(cur, ack, now=h.now())
    assert (outcome, h.status(queued.message_id)) == ("delivered", "DELIVERED")


def test_sync_reply_seen_before_is_recorded(harness) -> None:
    h = harness(sync_reply=True)
    queued = h.send()
    warning = sync_reply(h, queued, lambda r: error_of(r, Severity.WARNING))
    h.post.script = [warning, warning]  # the partner repeats its stored reply for the resend
    h.worker()
    h.at(10)
    assert len(h.post.posted) == 2
    assert [a for a, *_ in h.attempts(queued.message_id)] == [1, 2]
    assert h.task(queued.message_id) == ("pending", 2, T0 + 2 * INTERVAL)


def test_an_attempt_is_recorded_once_the_store_is_back_within_the_lease(harness) -> None:
    # A PostgreSQL restart takes longer than the first few pauses; the attempt
    # (here: sent, awaiting its acknowledgment) must still be recorded, not leave
    # the task in "sending" until its five-minute lease runs out.
    h = harness(retry_interval=timedelta(minutes=2))  # TimeToLive well after the outage
    down = True

    def runner(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if down and getattr(f, "__name__", "") == "_finish":
            return defer.fail(StoreUnavailable("the store is down"))
        return defer.maybeDeferred(f, *args)

    h.worker(run_in_thread=runner)
    queued = h.send()
    h.at(0)
    for second in range(1, 31):  # a 30 s outage
        h.now.set(second)
        h.reactor.advance(1)
    assert h.task(queued.message_id)[:2] == ("sending", 1)
    down = False
    h.now.set(33)
    h.reactor.advance(3)
    assert h.task(queued.message_id)[:2] == ("pending", 1)
    assert [a[1:3] for a in h.attempts(queued.message_id)] == [(204, "retry")]
