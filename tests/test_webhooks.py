"""Webhooks (event push): the store's queue, the dispatcher, and two real gateways.

The store tests drive :mod:`adapters.webhooks.store` with a fake clock.  The
dispatcher tests run :class:`~adapters.webhooks.WebhookDispatcher` on the test
reactor against a small twisted.web receiver on 127.0.0.1; the integration
tests start a municipality and a node gateway over mutual TLS, each with a
webhook, and send a message between them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from adapters.webhooks import WebhookDispatcher, event_body, signature
from adapters.webhooks import store as wh
from gateway.config import WebhookConfig
from gateway.store.database import Database
from gateway.store.messages import (
    Direction,
    EventType,
    MessageRecord,
    add_event,
    insert_message,
)
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import from_db, to_db
from gateway.tls import TlsIdentity, api_server_context_factory
from tests.conftest import DIALECTS, GEMEENTE_OIN, NODE_OIN, StoreFactory
from tests.gateways import Pair, Side, free_port, gateway_config, store_url, wait_until

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SERVICE = "urn:osb:services:GGK:iWmo:3.2"
OTHER_SERVICE = "urn:osb:services:GGK:iJw:3.2"
BACKOFF = wh.Backoff(timedelta(seconds=5), timedelta(seconds=60), timedelta(minutes=10))
LEASE = timedelta(seconds=30)


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def db(store: Database) -> Database:
    apply_migrations(store)
    return store


_counter = iter(range(1, 1_000_000))


def new_event(
    db: Database,
    event: str = "RECEIVED",
    *,
    cpa_id: str = "cpa-a",
    service: str = SERVICE,
    now: datetime = T0,
    message_id: str | None = None,
    error: tuple[str, str] | None = None,
) -> tuple[int, str]:
    """Store a message and one event for it; returns (event id, message id)."""
    message_id = message_id or f"m{next(_counter)}@test"
    record = MessageRecord(
        message_id=message_id,
        direction=Direction.IN,
        cpa_id=cpa_id,
        conversation_id=f"conv-{message_id}",
        from_party=f"urn:osb:oin:{GEMEENTE_OIN}",
        from_role="Gemeente",
        to_party=f"urn:osb:oin:{NODE_OIN}",
        to_role="GGk",
        service=service,
        action="WMO301",
        sent_at=now,
        content_type="text/xml",
        envelope=b"<SOAP:Envelope/>",
        status="RECEIVED",
        ref_to_message_id="earlier@test",
    )
    with db.transaction() as cur:
        pk = insert_message(cur, record, (), now=now)
        add_event(
            cur,
            pk,
            message_id,
            EventType(event),
            now=now,
            error_code=error[0] if error else None,
            error_text=error[1] if error else None,
        )
        row = cur.execute("SELECT MAX(id) FROM message_event").fetchone()
    assert row is not None
    return int(row[0]), message_id


def enqueue(db: Database, name: str = "hook", now: datetime = T0, **filters: Any) -> int:
    with db.transaction() as cur:
        return wh.enqueue(cur, name, now=now, **filters)


def claim(
    db: Database, node: str = "n1", now: datetime = T0, limit: int = 10, hooks: tuple[str, ...] = ()
) -> list[wh.Delivery]:
    with db.transaction() as cur:
        return wh.claim_due(
            cur, node=node, now=now, limit=limit, lease=LEASE, webhooks=hooks or ("hook",)
        )


def finish(
    db: Database, delivery_id: int, outcome: wh.Outcome, now: datetime, node: str = "n1", **kw: Any
) -> wh.Finished | None:
    with db.transaction() as cur:
        return wh.finish(cur, delivery_id, outcome, node=node, now=now, backoff=BACKOFF, **kw)


def deliveries(db: Database, name: str | None = None) -> list[tuple[Any, ...]]:
    """(event_id, state, attempts, last_status, last_error) per delivery, by event id."""
    sql = "SELECT event_id, state, attempts, last_status, last_error, webhook FROM webhook_delivery"
    with db.transaction() as cur:
        rows = cur.execute(sql + " ORDER BY event_id, webhook").fetchall()
    return [r[:5] for r in rows if name is None or r[5] == name]


# -- the store ---------------------------------------------------------------------------


def test_a_new_webhook_starts_at_the_newest_event(db: Database) -> None:
    new_event(db)
    new_event(db)
    assert enqueue(db) == 0  # history is not replayed
    third, _ = new_event(db, "DELIVERED")
    assert enqueue(db) == 1
    assert enqueue(db) == 0  # never twice
    assert deliveries(db) == [(third, "pending", 0, None, None)]
    # On PostgreSQL the cursor trails by the late-commit window; nothing is queued twice.
    assert cursor(db) == (third if db.dialect == "sqlite" else third - 1)
    assert enqueue(db, now=T0 + wh.LATE_COMMIT_WINDOW * 2) == 0
    assert cursor(db) == third


def cursor(db: Database, name: str = "hook") -> int:
    with db.transaction() as cur:
        row = cur.execute("SELECT last_event_id FROM webhook_cursor WHERE name = ?", (name,))
        return int(row.fetchone()[0])  # type: ignore[index]


def test_filters_choose_the_events_of_a_webhook(db: Database) -> None:
    filters = {
        "only-cpa": {"cpa_ids": ("cpa-b",)},
        "only-service": {"services": (OTHER_SERVICE,)},
        "only-failed": {"event_types": ("FAILED", "EXPIRED")},
        "all": {},
    }
    for name, f in filters.items():
        enqueue(db, name, **f)
    plain, _ = new_event(db)
    cpa_b, _ = new_event(db, cpa_id="cpa-b")
    other, _ = new_event(db, service=OTHER_SERVICE)
    failed, _ = new_event(db, "FAILED")
    for name, f in filters.items():
        enqueue(db, name, **f)
    assert [r[0] for r in deliveries(db, "only-cpa")] == [cpa_b]
    assert [r[0] for r in deliveries(db, "only-service")] == [other]
    assert [r[0] for r in deliveries(db, "only-failed")] == [failed]
    assert [r[0] for r in deliveries(db, "all")] == [plain, cpa_b, other, failed]


def test_claim_and_retry_with_doubling_capped_backoff_until_max_age(db: Database) -> None:
    enqueue(db)
    event_id, message_id = new_event(db)
    enqueue(db)
    [d] = claim(db)
    assert (d.event_id, d.message_id, d.attempts, d.event_type) == (
        event_id,
        message_id,
        1,
        "RECEIVED",
    )
    assert (d.cpa_id, d.service, d.action, d.from_role, d.event_at) == (
        "cpa-a",
        SERVICE,
        "WMO301",
        "Gemeente",
        T0,
    )
    assert claim(db) == []  # leased

    now = T0
    waits = []
    for attempt in range(1, 8):
        done = finish(db, d.id, "retry", now, status=503, error="HTTP 503")
        assert done is not None and done.state == "pending" and done.attempts == attempt
        assert done.next_attempt_at is not None
        waits.append((done.next_attempt_at - now).total_seconds())
        assert claim(db, now=done.next_attempt_at - timedelta(microseconds=1)) == []
        now = done.next_attempt_at
        [d] = claim(db, now=now)
    # 5 s doubling, capped at 60 s (no jitter at jitter=0.5)
    assert waits == [5, 10, 20, 40, 60, 60, 60]
    assert deliveries(db)[0][1:] == ("sending", 8, 503, "HTTP 503")

    # A retry never waits past max_age; the attempt at the deadline is the last one.
    deadline = T0 + BACKOFF.max_age
    almost = deadline - timedelta(seconds=1)
    done = finish(db, d.id, "retry", almost, error="HTTP 502", status=502)
    assert done is not None and done.next_attempt_at == deadline
    [d] = claim(db, now=deadline)
    done = finish(db, d.id, "retry", deadline, error="ConnectionRefusedError: refused")
    assert done is not None and done.state == "failed" and done.next_attempt_at is None
    assert deliveries(db) == [(event_id, "failed", 9, None, "ConnectionRefusedError: refused")]
    assert claim(db, now=deadline + timedelta(days=1)) == []


def test_jitter_spreads_the_backoff_a_little() -> None:
    low = wh.retry_delay(3, BACKOFF, 0.0)
    high = wh.retry_delay(3, BACKOFF, 0.999)
    assert low == timedelta(seconds=18)
    assert timedelta(seconds=21.9) < high < timedelta(seconds=22)


def test_done_is_final(db: Database) -> None:
    enqueue(db)
    event_id, _ = new_event(db)
    enqueue(db)
    [d] = claim(db)
    done = finish(db, d.id, "done", T0, status=204)
    assert done == wh.Finished("done", 1, None)
    assert deliveries(db) == [(event_id, "done", 1, 204, None)]
    assert claim(db, now=T0 + timedelta(days=2)) == []


def test_expired_lease_is_reclaimed_and_the_old_node_changes_nothing(db: Database) -> None:
    enqueue(db)
    new_event(db)
    enqueue(db)
    [d] = claim(db, "n1")
    assert claim(db, "n2", now=T0 + LEASE) == []
    [taken] = claim(db, "n2", now=T0 + LEASE + timedelta(seconds=1))
    assert (taken.id, taken.attempts) == (d.id, 2)
    assert finish(db, d.id, "done", T0 + LEASE * 2, node="n1") is None
    assert finish(db, d.id, "done", T0 + LEASE * 2, node="n2") is not None


def test_released_claims_are_due_at_once(db: Database) -> None:
    enqueue(db)
    new_event(db)
    new_event(db)
    enqueue(db)
    first, second = claim(db, "n1")
    with db.transaction() as cur:
        assert wh.release(cur, [first.id], node="n1", now=T0, attempted=False) == 1
        assert wh.release(cur, [second.id], node="n2", now=T0, attempted=True) == 0
    [again] = claim(db, "n2")
    assert (again.id, again.attempts) == (first.id, 1)  # never POSTed: not counted
    with db.transaction() as cur:
        # n1 restarts: what it had in flight is due again, the cut-off attempt counted.
        assert wh.release_node(cur, node="n1", now=T0) == 1
    [after] = claim(db, "n3")
    assert (after.id, after.attempts) == (second.id, 2)


def test_deliveries_of_webhooks_no_longer_configured_are_left_alone(db: Database) -> None:
    enqueue(db, "old")
    new_event(db)
    enqueue(db, "old")
    assert claim(db, hooks=("new",)) == []
    assert len(claim(db, hooks=("old", "new"))) == 1


def test_delivery_of_a_purged_message_still_has_its_ids(db: Database) -> None:
    enqueue(db)
    event_id, message_id = new_event(db)
    enqueue(db)
    with db.transaction() as cur:
        cur.execute("DELETE FROM ebms_message WHERE message_id = ?", (message_id,))
    [d] = claim(db)
    body = json.loads(event_body(d))
    assert body["messageId"] == message_id and body["eventId"] == event_id
    assert body["cpaId"] is None and body["fromParty"] is None


# PostgreSQL only: SQLite has one writer at a time, so its ids always commit in order.
@pytest.mark.parametrize("open_store", ["postgresql"], indirect=True)
def test_postgresql_event_committed_late_is_not_skipped(open_store: StoreFactory) -> None:
    db = open_store()
    assert db.dialect == "postgresql"
    apply_migrations(db)
    enqueue(db)
    # A transaction takes an event id and commits only after a later id did.
    late = db._connect()
    try:
        cur = late.cursor()
        cur.execute(
            "INSERT INTO ebms_message (message_id, direction, cpa_id, conversation_id, "
            "from_party, to_party, service, action, sent_at, content_type, envelope, "
            "fingerprint, created_at) VALUES ('late@test', 'in', 'cpa-a', 'c', 'a', 'b', %s, "
            "'WMO301', %s, 'text/xml', '\\x00', 'f', %s) RETURNING id",
            (SERVICE, to_db(T0), to_db(T0)),
        )
        row = cur.fetchone()
        assert row is not None
        cur.execute(
            "INSERT INTO message_event (message_pk, message_id, event_type, created_at) "
            "VALUES (%s, 'late@test', 'RECEIVED', %s) RETURNING id",
            (row[0], to_db(T0)),
        )
        late_row = cur.fetchone()
        assert late_row is not None
        early_id, _ = new_event(db)
        assert early_id > late_row[0]
        assert enqueue(db, now=T0 + timedelta(seconds=1)) == 1
        late.commit()
    finally:
        late.close()
    assert enqueue(db, now=T0 + timedelta(seconds=2)) == 1
    assert {r[0] for r in deliveries(db)} == {early_id, late_row[0]}
    # Past the window the cursor moves on and nothing is queued twice.
    assert enqueue(db, now=T0 + wh.LATE_COMMIT_WINDOW * 2) == 0
    assert cursor(db) == early_id


def test_two_nodes_enqueue_and_claim_each_event_once(open_store: StoreFactory) -> None:
    first = open_store()
    apply_migrations(first)
    nodes = [first, open_store()]
    enqueue(first, "h1")
    enqueue(first, "h2")
    claimed: dict[str, list[tuple[str, int]]] = {"n0": [], "n1": []}
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(db: Database, node: str) -> None:
        try:
            while not stop.is_set():
                with db.transaction() as cur:
                    wh.read_committed(cur)
                    for name in ("h1", "h2"):
                        wh.enqueue(cur, name, now=T0)
                    got = wh.claim_due(
                        cur, node=node, now=T0, limit=5, lease=LEASE, webhooks=("h1", "h2")
                    )
                claimed[node].extend((d.webhook, d.event_id) for d in got)
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=work, args=(db, f"n{n}"), daemon=True) for n, db in enumerate(nodes)
    ]
    for w in workers:
        w.start()
    ids = [new_event(first)[0] for _ in range(30)]
    deadline = time.monotonic() + 10
    while len(claimed["n0"]) + len(claimed["n1"]) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for w in workers:
        w.join()
    assert not errors
    everything = claimed["n0"] + claimed["n1"]
    assert sorted(everything) == sorted((h, i) for h in ("h1", "h2") for i in ids)
    assert len(deliveries(first)) == 60


# -- the dispatcher ----------------------------------------------------------------------


@dataclass
class Posted:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document

    @property
    def event_id(self) -> int:
        return int(self.json["eventId"])


class Receiver(Resource):
    """A back office's webhook endpoint: records POSTs, answers ``statuses`` then 200."""

    isLeaf = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = statuses
        self.posts: list[Posted] = []
        #: (event id, time) of every 200 that reached the client.
        self.acked: list[tuple[int, float]] = []
        #: While set, requests are recorded but not answered.
        self.hold = False
        self.url = ""

    def render_POST(self, request: Request) -> Any:
        assert request.content is not None
        headers = {
            k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()
        }
        posted = Posted(time.monotonic(), headers, request.content.read())
        self.posts.append(posted)
        if self.hold:
            return NOT_DONE_YET
        status = self.statuses.pop(0) if self.statuses else 200
        request.setResponseCode(status)
        if status == 200:
            request.notifyFinish().addCallback(
                lambda _: self.acked.append((posted.event_id, time.monotonic()))
            )
        return b"thanks"

    def event_ids(self) -> list[int]:
        return sorted(p.event_id for p in self.posts)


@pytest_twisted.async_yield_fixture
async def receivers() -> AsyncIterator[Callable[..., Receiver]]:
    ports = []

    def start(*statuses: int, tls: Path | None = None) -> Receiver:
        receiver = Receiver(list(statuses))
        if tls is None:
            port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
            scheme = "http"
        else:
            identity = TlsIdentity.from_files(
                tls / "tls-server.pem",
                tls / "tls-server.key",
                tls.parent / "ca" / "intermediate.pem",
            )
            options = api_server_context_factory(identity)
            port = reactor.listenSSL(0, Site(receiver), options, interface="127.0.0.1")
            scheme = "https"
        ports.append(port)
        receiver.url = f"{scheme}://127.0.0.1:{port.getHost().port}/events"
        return receiver

    yield start
    for port in ports:
        await port.stopListening()


def run_in_thread(fn: Any, *args: Any) -> Any:
    return threads.deferToThread(fn, *args)


@pytest_twisted.async_yield_fixture
async def dispatchers() -> AsyncIterator[Callable[..., WebhookDispatcher]]:
    started: list[WebhookDispatcher] = []

    def start(
        db: Database, *hooks: WebhookConfig, node: str = "n1", **kw: Any
    ) -> WebhookDispatcher:
        kw.setdefault("poll_interval", 0.1)
        d = WebhookDispatcher(reactor, db, run_in_thread, hooks, node_id=node, **kw)
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        await d.stop()


def hook(url: str, name: str = "hook", **kw: Any) -> WebhookConfig:
    kw.setdefault("initial_backoff", 0.1)
    kw.setdefault("timeout", 2.0)
    return WebhookConfig(name=name, url=url, **kw)


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Blocking store work off the reactor thread (the dispatcher needs the reactor)."""
    return threads.deferToThread(fn, *args)


@pytest_twisted.ensureDeferred
async def test_retried_with_growing_backoff_until_the_receiver_accepts(
    db: Database, receivers, dispatchers
) -> None:
    receiver = receivers(503, 503)
    dispatchers(db, hook(receiver.url, max_backoff=5.0))
    await wait_until(lambda: _cursor_exists(db))
    event_id, _ = await in_thread(new_event, db, "RECEIVED")
    await wait_until(lambda: receiver.acked, timeout=5)
    first, second, third = receiver.posts
    assert [p.headers["x-dkgw-delivery-attempt"] for p in receiver.posts] == ["1", "2", "3"]
    assert {p.headers["x-dkgw-event-id"] for p in receiver.posts} == {str(event_id)}
    assert first.body == second.body == third.body  # the same bytes every time
    gap1, gap2 = second.at - first.at, third.at - second.at
    assert 0.09 <= gap1 < gap2, (gap1, gap2)
    assert gap2 >= 0.18
    await wait_until(lambda: deliveries(db)[0][1] == "done")
    assert deliveries(db) == [(event_id, "done", 3, 200, None)]


def _cursor_exists(db: Database) -> bool:
    with db.transaction() as cur:
        return cur.execute("SELECT 1 FROM webhook_cursor").fetchone() is not None


@pytest_twisted.ensureDeferred
async def test_only_matching_events_are_posted(db: Database, receivers, dispatchers) -> None:
    receiver = receivers()
    dispatchers(
        db,
        hook(
            receiver.url,
            cpa_ids=("cpa-a",),
            services=(SERVICE,),
            event_types=("RECEIVED", "FAILED"),
        ),
    )
    await wait_until(lambda: _cursor_exists(db))
    wanted = [
        (await in_thread(new_event, db, "RECEIVED"))[0],
        (await in_thread(new_event, db, "FAILED"))[0],
    ]
    for kw in (
        {"cpa_id": "cpa-b"},
        {"service": OTHER_SERVICE},
        {"event": "DELIVERED"},
        {"event": "EXPIRED"},
    ):
        await in_thread(lambda kw=kw: new_event(db, **kw))
    wanted.append((await in_thread(new_event, db, "RECEIVED"))[0])
    await wait_until(lambda: len(receiver.acked) == 3)
    await sleep(0.3)
    assert receiver.event_ids() == sorted(wanted)


@pytest_twisted.ensureDeferred
async def test_signed_body_carries_ids_and_properties_only(
    db: Database, receivers, dispatchers, tmp_path: Path
) -> None:
    receiver = receivers()
    secret = tmp_path / "secret"
    secret.write_text("  s3cret-key\n")
    dispatchers(db, hook(receiver.url, secret_file=secret))
    await wait_until(lambda: _cursor_exists(db))
    event_id, message_id = await in_thread(new_event, db, "RECEIVED")
    await wait_until(lambda: receiver.acked)
    [posted] = receiver.posts
    expected = "sha256=" + hmac.new(b"s3cret-key", posted.body, hashlib.sha256).hexdigest()
    assert posted.headers["x-dkgw-signature"] == expected
    assert posted.headers["content-type"] == "application/json"
    assert posted.json == {
        "messageId": message_id,
        "type": "RECEIVED",
        "eventId": event_id,
        "timestamp": "2026-11-22T12:00:00.000000Z",
        "cpaId": "cpa-a",
        "fromParty": {"partyId": f"urn:osb:oin:{GEMEENTE_OIN}", "role": "Gemeente"},
        "toParty": {"partyId": f"urn:osb:oin:{NODE_OIN}", "role": "GGk"},
        "service": SERVICE,
        "action": "WMO301",
        "conversationId": f"conv-{message_id}",
        "refToMessageId": "earlier@test",
    }


@pytest_twisted.ensureDeferred
async def test_a_failed_event_says_why_when_the_gateway_knows(
    db: Database, receivers, dispatchers
) -> None:
    receiver = receivers()
    dispatchers(db, hook(receiver.url))
    await wait_until(lambda: _cursor_exists(db))
    await in_thread(lambda: new_event(db, "FAILED", error=("IB002", "not authorised for 0363")))
    await wait_until(lambda: receiver.acked)
    [posted] = receiver.posts
    assert (posted.json["type"], posted.json["errorCode"], posted.json["errorText"]) == (
        "FAILED",
        "IB002",
        "not authorised for 0363",
    )


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"eventId":1}'
    assert signature(b"k", body) == "sha256=" + hmac.new(b"k", body, "sha256").hexdigest()


@pytest_twisted.ensureDeferred
async def test_timeout_is_a_retry(db: Database, receivers, dispatchers) -> None:
    receiver = receivers()
    receiver.hold = True
    dispatchers(db, hook(receiver.url, timeout=0.2, initial_backoff=0.1))
    await wait_until(lambda: _cursor_exists(db))
    await in_thread(new_event, db, "RECEIVED")
    await wait_until(lambda: len(receiver.posts) >= 2, timeout=5)
    rows = await in_thread(deliveries, db)
    assert rows[0][4] == "no answer within 0.2 s"
    receiver.hold = False
    await wait_until(lambda: receiver.acked, timeout=5)


@pytest.fixture(params=DIALECTS)
def two_nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Two Database objects on one store (a SQLite file or a PostgreSQL schema)."""
    url = store_url(request.param, tmp_path, "shared")
    opened = [Database.from_url(url), Database.from_url(url)]
    apply_migrations(opened[0])
    yield opened
    for db in opened:
        db.close()


@pytest_twisted.ensureDeferred
async def test_two_dispatchers_on_one_store_post_each_event_once(
    two_nodes: list[Database], receivers, dispatchers
) -> None:
    receiver = receivers(503, 503, 503)  # some retries too
    one, two = two_nodes
    dispatchers(one, hook(receiver.url), node="n1")
    dispatchers(two, hook(receiver.url), node="n2", poll_interval=0.05)
    await wait_until(lambda: _cursor_exists(one))
    ids = []
    for n in range(24):
        ids.append((await in_thread(new_event, one if n % 2 else two, "RECEIVED"))[0])
        if n % 6 == 0:
            await sleep(0.05)
    await wait_until(lambda: len(receiver.acked) >= 24, timeout=10)
    await sleep(0.3)
    assert sorted(i for i, _ in receiver.acked) == sorted(ids)
    assert len(receiver.posts) == 24 + 3
    assert {r[1] for r in await in_thread(deliveries, one)} == {"done"}


@pytest_twisted.ensureDeferred
async def test_restart_loses_nothing_and_repeats_nothing_acknowledged(
    db: Database, receivers, dispatchers
) -> None:
    receiver = receivers()
    first = dispatchers(db, hook(receiver.url), node="n1", stop_grace=0.2)
    await wait_until(lambda: _cursor_exists(db))
    ids = [(await in_thread(new_event, db, "RECEIVED"))[0] for _ in range(3)]
    await wait_until(lambda: len(receiver.acked) == 3)
    receiver.hold = True  # the back office stalls
    ids += [(await in_thread(new_event, db, "RECEIVED"))[0] for _ in range(6)]
    await wait_until(lambda: len(receiver.posts) >= 7)
    await first.stop()  # cuts the stalled POSTs off after stop_grace
    stopped = await in_thread(deliveries, db)
    assert {r[1] for r in stopped} == {"done", "pending"}
    assert len([r for r in stopped if r[1] == "pending" and r[2] == 1]) == 4  # cut off
    receiver.hold = False
    dispatchers(db, hook(receiver.url), node="n1")
    await wait_until(lambda: len(receiver.acked) == 9, timeout=10)
    await sleep(0.3)
    assert sorted(i for i, _ in receiver.acked) == sorted(ids)
    # Nothing is POSTed again once its 200 arrived.
    acked_at = dict(receiver.acked)
    assert not [p for p in receiver.posts if p.at > acked_at[p.event_id]]
    assert {r[1] for r in await in_thread(deliveries, db)} == {"done"}


@pytest_twisted.ensureDeferred
async def test_deliveries_a_crashed_node_left_in_flight_are_sent_on_restart(
    db: Database, receivers, dispatchers
) -> None:
    receiver = receivers()
    now = datetime.now(UTC)
    enqueue(db, now=now)
    event_id, _ = new_event(db, now=now)
    enqueue(db, now=now)
    assert len(claim(db, "n1", now=now)) == 1  # ... and then n1 died
    dispatchers(db, hook(receiver.url), node="n1")
    await wait_until(lambda: receiver.acked)
    [posted] = receiver.posts
    assert posted.event_id == event_id
    assert posted.headers["x-dkgw-delivery-attempt"] == "2"


@pytest_twisted.ensureDeferred
async def test_https_receiver_is_verified_against_ca_file(
    db: Database, receivers, dispatchers, pki: Path
) -> None:
    receiver = receivers(tls=pki / "ggk-rinis-test")
    assert receiver.url.startswith("https://127.0.0.1:")
    dispatchers(
        db,
        hook(receiver.url, "pinned", ca_file=pki / "ca" / "root.pem"),
        # The test root is in no system trust store: this one never gets through.
        hook(receiver.url, "system", initial_backoff=5.0),
    )
    await wait_until(lambda: _cursor_exists(db))
    event_id, _ = await in_thread(new_event, db, "RECEIVED")
    await wait_until(lambda: receiver.acked)
    system = await wait_until(
        lambda: [r for r in deliveries(db, "system") if r[2] >= 1 and r[1] == "pending"]
    )
    assert len(receiver.posts) == 1
    # The answer is recorded a moment after the receiver has it.
    await wait_until(lambda: deliveries(db, "pinned") == [(event_id, "done", 1, 200, None)])
    assert "SSL" in system[0][4] or "certificate" in system[0][4], system


def test_an_empty_secret_file_stops_the_start(db: Database, tmp_path: Path) -> None:
    secret = tmp_path / "empty"
    secret.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        WebhookDispatcher(
            reactor, db, run_in_thread, (hook("http://x/", secret_file=secret),), node_id="n"
        )


# -- failure isolation: one broken item never stops the others ---------------------------


def _corrupt_event(db: Database, event_id: int) -> None:
    """An inconsistent event row: its timestamp is not in the store's form."""
    with db.transaction() as cur:
        cur.execute("UPDATE message_event SET created_at = 'garbage' WHERE id = ?", (event_id,))


def test_claim_fails_an_inconsistent_row_alone(db: Database) -> None:
    enqueue(db)
    bad, _ = new_event(db)
    good, _ = new_event(db)
    _corrupt_event(db, bad)
    enqueue(db)
    refused: list[wh.Refused] = []
    with db.transaction() as cur:
        batch = wh.claim_due(
            cur, node="n1", now=T0, limit=10, lease=LEASE, webhooks=("hook",), refused=refused
        )
    assert [d.event_id for d in batch] == [good]
    [r] = refused
    assert r.event_id == bad and "inconsistent" in r.reason
    assert deliveries(db) == [(bad, "failed", 1, None, r.reason), (good, "sending", 1, None, None)]
    # Once the good one's lease runs out it is due again; the failed one never is.
    assert [d.event_id for d in claim(db, now=T0 + LEASE * 2)] == [good]
    with db.transaction() as cur:
        assert wh.fail(cur, batch[0].id, node="n2", now=T0, error="x") is False  # not n2's


@pytest_twisted.ensureDeferred
async def test_an_inconsistent_event_row_fails_alone_and_later_events_flow(
    db: Database, receivers, dispatchers
) -> None:
    receiver = receivers()
    enqueue(db)  # the cursor exists: the events below are all new to the dispatcher
    bad, _ = new_event(db)
    good, _ = new_event(db)
    _corrupt_event(db, bad)
    dispatchers(db, hook(receiver.url))
    await wait_until(lambda: len(receiver.acked) == 1, timeout=5)
    later, _ = await in_thread(new_event, db)
    await wait_until(lambda: len(receiver.acked) == 2, timeout=5)
    assert receiver.event_ids() == [good, later]
    [(event_id, state, _, _, reason), *_] = deliveries(db)
    assert (event_id, state) == (bad, "failed")
    assert reason == "The stored delivery or its event is inconsistent (ValueError)."


@pytest_twisted.ensureDeferred
async def test_a_webhook_whose_events_cannot_be_queued_stops_no_other(
    db: Database, receivers, dispatchers, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    real_enqueue = wh.enqueue

    def broken_enqueue(cur: Any, webhook: str, **kw: Any) -> int:
        if webhook == "bad":
            # A failing statement: on PostgreSQL it aborts the transaction too.
            cur.execute("SELECT no_such_column FROM webhook_cursor")
        return real_enqueue(cur, webhook, **kw)

    receiver = receivers()
    enqueue(db, "good")
    first, _ = new_event(db)
    monkeypatch.setattr(wh, "enqueue", broken_enqueue)
    caplog.set_level("ERROR", logger="dkgw.webhooks")
    # "bad" sorts first: it is enqueued before "good" in every pass.
    dispatchers(db, hook(receiver.url, name="bad"), hook(receiver.url, name="good"))
    await wait_until(lambda: len(receiver.acked) == 1, timeout=5)
    later, _ = await in_thread(new_event, db)
    await wait_until(lambda: len(receiver.acked) == 2, timeout=5)
    assert receiver.event_ids() == [first, later]
    assert deliveries(db, "bad") == []
    await wait_until(
        lambda: [r[:2] for r in deliveries(db, "good")] == [(first, "done"), (later, "done")]
    )
    assert any(
        "event=webhook-enqueue webhook=bad outcome=failed" in r.getMessage() for r in caplog.records
    )


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """An SQLite store only: PostgreSQL's BIGINT column cannot hold a broken cursor."""
    db = Database.sqlite(tmp_path / "gw.sqlite3")
    apply_migrations(db)
    yield db
    db.close()


@pytest_twisted.ensureDeferred
async def test_a_webhook_with_an_inconsistent_cursor_row_stops_no_other(
    sqlite_db: Database, receivers, dispatchers
) -> None:
    db = sqlite_db
    receiver = receivers()
    enqueue(db, "bad")
    enqueue(db, "good")
    with db.transaction() as cur:
        cur.execute("UPDATE webhook_cursor SET last_event_id = 'broken' WHERE name = 'bad'")
    first, _ = new_event(db)
    dispatchers(db, hook(receiver.url, name="bad"), hook(receiver.url, name="good"))
    await wait_until(lambda: len(receiver.acked) == 1, timeout=5)
    later, _ = await in_thread(new_event, db)
    await wait_until(lambda: len(receiver.acked) == 2, timeout=5)
    assert receiver.event_ids() == [first, later]
    assert deliveries(db, "bad") == []


@pytest_twisted.ensureDeferred
async def test_an_event_that_cannot_be_posted_fails_alone_and_later_events_flow(
    db: Database, dispatchers
) -> None:
    enqueue(db)
    bad, _ = new_event(db)
    good, _ = new_event(db)
    posted: list[int] = []

    def post(hook: WebhookConfig, headers: dict[str, str], body: bytes) -> Any:
        event_id = int(headers["X-Dkgw-Event-Id"])
        if event_id == bad:
            raise RuntimeError("cannot prepare this one")
        posted.append(event_id)
        return defer.succeed(200)

    dispatchers(db, hook("http://127.0.0.1:9/events"), post=post)
    await wait_until(lambda: posted == [good], timeout=5)
    later, _ = await in_thread(new_event, db)
    await wait_until(lambda: posted == [good, later], timeout=5)
    await wait_until(lambda: deliveries(db)[0][1] == "failed", timeout=5)
    assert deliveries(db)[0] == (
        bad,
        "failed",
        1,
        None,
        "The event could not be prepared for posting (RuntimeError).",
    )
    await wait_until(lambda: [r[1] for r in deliveries(db)] == ["failed", "done", "done"])


# -- two real gateways ------------------------------------------------------------------


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def pair_with_hooks(
    pki: Path, make_spec, tmp_path: Path, dialect: str
) -> AsyncIterator[Callable[..., Pair]]:
    pairs: list[Pair] = []

    def start(a_hooks: tuple[WebhookConfig, ...], b_hooks: tuple[WebhookConfig, ...]) -> Pair:
        a = Side(
            "a",
            gateway_config(
                pki,
                "gemeente-voorbeeld",
                tmp_path / "a",
                store_url(dialect, tmp_path, "wha"),
                webhooks=a_hooks,
            ),
        )
        b = Side(
            "b",
            gateway_config(
                pki,
                "ggk-rinis-test",
                tmp_path / "b",
                store_url(dialect, tmp_path, "whb"),
                webhooks=b_hooks,
            ),
        )
        a.start()
        b.start()
        pair = Pair(
            a,
            b,
            "wh-cpa",
            make_spec,
            {"retries": 3, "retry_interval": timedelta(seconds=1)},
        )
        pairs.append(pair)
        pair.import_cpa(profile="osb-rm")
        return pair

    yield start
    for pair in pairs:
        await pair.stop()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_two_gateways_push_delivered_and_received(
    pair_with_hooks, receivers, tmp_path: Path
) -> None:
    at_a, at_b = receivers(), receivers()
    secret = tmp_path / "webhook.key"
    secret.write_text("a shared secret\n")
    pair = pair_with_hooks(
        (hook(at_a.url, "bo-a", event_types=("DELIVERED",), secret_file=secret),),
        (hook(at_b.url, "bo-b", event_types=("RECEIVED",), secret_file=secret),),
    )
    queued = await pair.send()
    await wait_until(lambda: at_a.acked and at_b.acked)
    await sleep(0.3)
    for receiver, event, side in ((at_a, "DELIVERED", pair.a), (at_b, "RECEIVED", pair.b)):
        [posted] = receiver.posts
        body = posted.json
        assert posted.headers["x-dkgw-signature"] == signature(b"a shared secret", posted.body)
        assert posted.headers["x-dkgw-event-id"] == str(body["eventId"])
        assert posted.headers["x-dkgw-delivery-attempt"] == "1"
        [(event_id, created_at)] = side.rows(
            "SELECT id, created_at FROM message_event WHERE message_id = ? AND event_type = ?",
            queued.message_id,
            event,
        )
        assert body["eventId"] == event_id
        assert body["timestamp"] == created_at and from_db(body["timestamp"])
        assert body["messageId"] == queued.message_id
        assert body["type"] == event
        assert body["cpaId"] == pair.cpa_id
        assert body["fromParty"] == {"partyId": f"urn:osb:oin:{GEMEENTE_OIN}", "role": "Gemeente"}
        assert body["toParty"] == {"partyId": f"urn:osb:oin:{NODE_OIN}", "role": "GGk"}
        assert body["service"] == SERVICE and body["action"] == "WMO301"
        assert body["conversationId"] and body["refToMessageId"] is None
        assert set(body) == {
            "messageId",
            "type",
            "eventId",
            "timestamp",
            "cpaId",
            "fromParty",
            "toParty",
            "service",
            "action",
            "conversationId",
            "refToMessageId",
        }


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_receiver_down_never_hinders_the_message(pair_with_hooks) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/events"
    pair = pair_with_hooks((hook(nowhere, "down", max_age=1.5),), (hook(nowhere, "down"),))
    queued = await pair.send()
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    assert pair.b.status(queued.message_id, "in") == "RECEIVED"
    query = "SELECT state, attempts, last_error FROM webhook_delivery WHERE event_id = ?"
    [(event_id,)] = pair.a.rows(
        "SELECT id FROM message_event WHERE message_id = ?", queued.message_id
    )
    pending = await wait_until(lambda: pair.a.rows(query + " AND attempts >= 2", event_id))
    state, _, error = pending[0]
    assert state in ("pending", "sending")
    assert "ConnectionRefused" in error
    [(state, attempts, error)] = await wait_until(
        lambda: pair.a.rows(query + " AND state = 'failed'", event_id), timeout=5
    )
    assert attempts >= 3 and "ConnectionRefused" in error
