"""Two real gateways on 127.0.0.1 over mutual TLS: Ping/Pong, osb-be and osb-rm, retries.

Each test starts a municipality gateway and a node gateway in this process
(real HTTPS listeners with client certificates, real stores, the real delivery
worker) with a CPA generated for their ports.  Reliable-messaging CPAs use a
retry interval of one second so that retries and expiry fit in a test.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from gateway.delivery import wire_body
from gateway.ebms.envelope import parse_envelope
from gateway.msh.outbound import Payload
from gateway.store.messages import Direction, find_message
from tests.conftest import DIALECTS
from tests.gateways import Pair, Side, gateway_config, store_url, wait_until

pytestmark = pytest.mark.integration

RM_FAST = {
    "retries": 3,
    "retry_interval": timedelta(seconds=1),
    "persist_duration": timedelta(hours=1),
}


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def pair_factory(pki: Path, make_spec, tmp_path: Path, dialect: str) -> AsyncIterator[Any]:
    """Start a pair with CPA overrides; everything started is stopped afterwards."""
    pairs: list[Pair] = []

    async def start(*, start_b: bool = True, **overrides: Any) -> Pair:
        n = len(pairs)
        a = Side(
            "a",
            gateway_config(
                pki, "gemeente-voorbeeld", tmp_path / f"a{n}", store_url(dialect, tmp_path, f"a{n}")
            ),
        )
        b = Side(
            "b",
            gateway_config(
                pki, "ggk-rinis-test", tmp_path / f"b{n}", store_url(dialect, tmp_path, f"b{n}")
            ),
        )
        a.start()
        b.start()
        pair = Pair(a, b, f"it-cpa-{n}", make_spec, dict(overrides))
        pairs.append(pair)
        pair.import_cpa()
        if not start_b:
            await b.stop()
        return pair

    yield start
    for pair in pairs:
        await pair.stop()


def payloads(*sizes: int) -> tuple[Payload, ...]:
    return tuple(
        Payload(os.urandom(size), "application/octet-stream", f"part{n}.bin")
        for n, size in enumerate(sizes)
    )


def received_payloads(side: Side, message_id: str) -> list[tuple[str, bytes]]:
    return [
        (r[0], bytes(r[1]))
        for r in side.rows(
            "SELECT a.content_type, a.content FROM ebms_attachment a JOIN ebms_message m "
            "ON m.id = a.message_pk WHERE m.message_id = ? AND m.direction = 'in' "
            "ORDER BY a.order_nr",
            message_id,
        )
    ]


def events(side: Side, message_id: str) -> list[str]:
    return [
        r[0]
        for r in side.rows(
            "SELECT event_type FROM message_event WHERE message_id = ? ORDER BY id", message_id
        )
    ]


# -- Ping/Pong -------------------------------------------------------------------------


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest_twisted.ensureDeferred
async def test_ping_pong_both_ways(pair_factory, sync: bool) -> None:
    pair = await pair_factory(profile="osb-rm", sync_reply=sync, **RM_FAST)
    from tests.gateways import GEMEENTE, NODE

    for sender, receiver, me, peer in (
        (pair.a, pair.b, GEMEENTE, NODE),
        (pair.b, pair.a, NODE, GEMEENTE),
    ):
        ping = await sender.gateway.send_ping(cpa_id=pair.cpa_id, from_party=me, to_party=peer)
        pong = await wait_until(
            lambda s=sender, p=ping: s.rows(
                "SELECT message_id FROM ebms_message WHERE direction = 'in' AND action = 'Pong' "
                "AND ref_to_message_id = ?",
                p.message_id,
            )
        )
        assert len(pong) == 1
        assert receiver.rows(
            "SELECT action FROM ebms_message WHERE direction = 'in' AND message_id = ?",
            ping.message_id,
        ) == [("Ping",)]


# -- business messages -------------------------------------------------------------------


@pytest.mark.parametrize("parts", [0, 1, 3])
@pytest.mark.parametrize("profile", ["osb-be", "osb-rm"])
@pytest_twisted.ensureDeferred
async def test_business_message_is_delivered_with_its_payloads(
    pair_factory, profile: str, parts: int
) -> None:
    overrides = RM_FAST if profile == "osb-rm" else {}
    pair = await pair_factory(profile=profile, **overrides)
    sent = payloads(*[2048, 70_000, 5][:parts])
    queued = await pair.send(sent)
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    assert pair.b.status(queued.message_id, "in") == "RECEIVED"
    got = received_payloads(pair.b, queued.message_id)
    assert [(ct, hashlib.sha256(c).digest()) for ct, c in got] == [
        (p.content_type, hashlib.sha256(p.content).digest()) for p in sent
    ]
    assert events(pair.a, queued.message_id) == ["DELIVERED"]
    assert events(pair.b, queued.message_id) == ["RECEIVED"]
    acks = pair.a.rows(
        "SELECT count(*) FROM ebms_message WHERE direction = 'in' AND action = 'Acknowledgment' "
        "AND ref_to_message_id = ?",
        queued.message_id,
    )
    assert acks == [(1 if profile == "osb-rm" else 0,)]


@pytest.mark.parametrize("sync", [False, True], ids=["async-ack", "sync-ack"])
@pytest_twisted.ensureDeferred
async def test_reliable_message_both_directions(pair_factory, sync: bool) -> None:
    pair = await pair_factory(profile="osb-rm", sync_reply=sync, **RM_FAST)
    there = await pair.send(payloads(100))
    back = await pair.send(payloads(200), from_a=False)
    await wait_until(lambda: pair.a.status(there.message_id, "out") == "DELIVERED")
    await wait_until(lambda: pair.b.status(back.message_id, "out") == "DELIVERED")
    # A sync ack comes back in the HTTP response: the acking side queues no POST for it.
    ack_tasks = pair.b.rows(
        "SELECT count(*) FROM delivery_task t JOIN ebms_message m ON m.id = t.message_pk "
        "WHERE m.action = 'Acknowledgment'"
    )
    assert ack_tasks == [(0 if sync else 1,)]


# -- failures and recovery -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_receiver_down_then_up_is_delivered_on_a_retry(pair_factory) -> None:
    pair = await pair_factory(start_b=False, profile="osb-rm", **RM_FAST)
    queued = await pair.send(payloads(2048))
    await wait_until(
        lambda: (
            pair.a.rows("SELECT count(*) FROM delivery_attempt WHERE error IS NOT NULL")[0][0] >= 1
        )
    )
    assert pair.a.status(queued.message_id, "out") == "CREATED"
    pair.b.start()
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED", timeout=15)
    assert pair.b.rows(
        "SELECT count(*) FROM ebms_message WHERE direction = 'in' AND message_id = ?",
        queued.message_id,
    ) == [(1,)]


@pytest_twisted.ensureDeferred
async def test_receiver_never_up_expires_with_an_event(pair_factory) -> None:
    pair = await pair_factory(
        start_b=False,
        profile="osb-rm",
        retries=2,
        # TimeToLive is 3 intervals: 2 s each leaves a loaded machine time for the third try.
        retry_interval=timedelta(seconds=2),
        persist_duration=timedelta(hours=1),
    )
    queued = await pair.send()
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "EXPIRED", timeout=20)
    assert events(pair.a, queued.message_id) == ["EXPIRED"]
    attempts = pair.a.rows(
        "SELECT count(*) FROM delivery_attempt a JOIN delivery_task t ON t.id = a.task_id "
        "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ? "
        "AND a.outcome = 'retry'",
        queued.message_id,
    )
    assert attempts == [(3,)]  # the first attempt and two retries


@pytest_twisted.ensureDeferred
async def test_best_effort_to_a_receiver_that_is_down_fails_at_once(pair_factory) -> None:
    pair = await pair_factory(start_b=False, profile="osb-be")
    queued = await pair.send(payloads(10))
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERY_FAILED")
    assert events(pair.a, queued.message_id) == ["FAILED"]
    assert pair.a.rows("SELECT count(*) FROM delivery_attempt") == [(1,)]


@pytest_twisted.ensureDeferred
async def test_url_mapping_sends_to_the_mapped_url_until_deleted(pair_factory) -> None:
    """The CPA names a dead endpoint; a URL mapping to the node's real URL delivers.

    The connection to the mapped URL is still pinned to the node's server certificate
    from the CPA (looked up by the CPA's URL), so it has to succeed over mutual TLS.
    """
    from gateway.store.urlmap import delete_url_mapping, set_url_mapping
    from tests.gateways import free_port

    pair = await pair_factory(profile="osb-be")
    cpa_url = f"https://localhost:{free_port()}/ebms"
    real_url = f"https://localhost:{pair.b.port}/ebms"
    pair.import_cpa(b_endpoint=cpa_url)
    with pair.a.db.transaction() as cur:
        set_url_mapping(cur, cpa_url, real_url)

    def attempts(message_id: str) -> list[tuple[str, str]]:
        return pair.a.rows(
            "SELECT a.url, t.url FROM delivery_attempt a JOIN delivery_task t "
            "ON t.id = a.task_id JOIN ebms_message m ON m.id = t.message_pk "
            "WHERE m.message_id = ?",
            message_id,
        )

    mapped = await pair.send(payloads(10))
    await wait_until(lambda: pair.a.status(mapped.message_id, "out") == "DELIVERED")
    assert attempts(mapped.message_id) == [(real_url, cpa_url)]
    assert received_payloads(pair.b, mapped.message_id)

    # Deleted in the store while the gateway runs: the next message goes to the CPA's URL.
    with pair.a.db.transaction() as cur:
        assert delete_url_mapping(cur, cpa_url)
    unmapped = await pair.send(payloads(10))
    await wait_until(lambda: pair.a.status(unmapped.message_id, "out") == "DELIVERY_FAILED")
    assert attempts(unmapped.message_id) == [(cpa_url, cpa_url)]
    assert pair.b.status(unmapped.message_id, "in") is None

    # Mapped to a server with another certificate (the municipality's own endpoint): the
    # pin is still the node's certificate from the CPA, so the connection is refused.
    with pair.a.db.transaction() as cur:
        set_url_mapping(cur, cpa_url, f"https://localhost:{pair.a.port}/ebms")
    elsewhere = await pair.send(payloads(10))
    await wait_until(lambda: pair.a.status(elsewhere.message_id, "out") == "DELIVERY_FAILED")
    ((error,),) = pair.a.rows(
        "SELECT a.error FROM delivery_attempt a JOIN delivery_task t ON t.id = a.task_id "
        "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ?",
        elsewhere.message_id,
    )
    assert "is not the one in the CPA" in error


@pytest_twisted.ensureDeferred
async def test_sender_restart_with_pending_tasks_delivers_once(pair_factory) -> None:
    pair = await pair_factory(
        start_b=False,
        profile="osb-rm",
        retries=5,
        retry_interval=timedelta(seconds=1),
        persist_duration=timedelta(hours=1),
    )
    queued = [await pair.send(payloads(500)) for _ in range(3)]
    await pair.a.stop()
    pair.b.start()
    pair.a.start()  # a new process on the same store: picks the tasks up
    for q in queued:
        await wait_until(lambda q=q: pair.a.status(q.message_id, "out") == "DELIVERED", timeout=15)
    for q in queued:
        assert pair.b.rows(
            "SELECT count(*) FROM ebms_message WHERE direction = 'in' AND message_id = ?",
            q.message_id,
        ) == [(1,)]
        assert events(pair.b, q.message_id) == ["RECEIVED"]
        assert events(pair.a, q.message_id) == ["DELIVERED"]


@pytest.mark.parametrize("sync", [False, True], ids=["async-ack", "sync-ack"])
@pytest_twisted.ensureDeferred
async def test_resent_duplicate_is_stored_once_and_the_ack_repeated(pair_factory, sync) -> None:
    pair = await pair_factory(profile="osb-rm", sync_reply=sync, **RM_FAST)
    seen: list[dict[str, str]] = []
    pair.a.gateway.add_listener(seen.append)
    queued = await pair.send(payloads(3000, 10))
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    # The sender resends the identical bytes, as after a lost acknowledgment.
    with pair.a.db.transaction() as cur:
        message = find_message(cur, queued.message_id, Direction.OUT)
        assert message is not None
        content_type, body = wire_body(message, cur)
    client = pair.a.gateway.client
    result = await client.post(
        queued.url, {"Content-Type": content_type, "SOAPAction": '"ebXML"'}, body, None
    )
    ack_ids = [
        r[0]
        for r in pair.b.rows(
            "SELECT message_id FROM ebms_message WHERE direction = 'out' "
            "AND action = 'Acknowledgment' AND ref_to_message_id = ?",
            queued.message_id,
        )
    ]
    assert len(ack_ids) == 1  # one acknowledgment, stored once, sent again
    if sync:
        assert result.status == 200
        assert parse_envelope(result.body)[0].header.message_id == ack_ids[0]
    else:
        assert result.status == 204
        await wait_until(
            lambda: [
                e for e in seen
                if e.get("event") == "inbound" and e.get("message_id") == ack_ids[0]
                and e.get("outcome") == "duplicate"
            ]
        )  # fmt: skip
    assert pair.b.rows(
        "SELECT count(*) FROM ebms_message WHERE direction = 'in' AND message_id = ?",
        queued.message_id,
    ) == [(1,)]
    assert events(pair.b, queued.message_id) == ["RECEIVED"]
    assert pair.a.status(queued.message_id, "out") == "DELIVERED"


@pytest_twisted.ensureDeferred
async def test_an_async_ack_resent_after_delivery_is_recorded_cleanly(
    pair_factory, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: the resend reopened the ack's task with its attempts at 0.

    The second POST of the ack went out, but recording it as attempt 1 again hit
    the primary key of delivery_attempt: an ERROR in the worker and the task
    stuck in 'sending' until its lease ran out.
    """
    caplog.set_level(logging.WARNING, logger="dkgw")
    pair = await pair_factory(profile="osb-rm", **RM_FAST)
    queued = await pair.send(payloads(100))
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED")
    ((ack_pk,),) = pair.b.rows(
        "SELECT id FROM ebms_message WHERE direction = 'out' AND action = 'Acknowledgment' "
        "AND ref_to_message_id = ?",
        queued.message_id,
    )
    ack_attempts = (
        "SELECT a.attempt, a.outcome FROM delivery_attempt a JOIN delivery_task t "
        "ON t.id = a.task_id WHERE t.message_pk = ? ORDER BY a.attempt"
    )
    await wait_until(lambda: pair.b.rows(ack_attempts, ack_pk) == [(1, "done")])
    with pair.a.db.transaction() as cur:
        message = find_message(cur, queued.message_id, Direction.OUT)
        assert message is not None
        content_type, body = wire_body(message, cur)
    assert pair.a.gateway is not None
    result = await pair.a.gateway.client.post(
        queued.url, {"Content-Type": content_type, "SOAPAction": '"ebXML"'}, body, None
    )
    assert result.status == 204
    await wait_until(lambda: pair.b.rows(ack_attempts, ack_pk) == [(1, "done"), (2, "done")])
    assert pair.b.rows(
        "SELECT state, attempts FROM delivery_task WHERE message_pk = ?", ack_pk
    ) == [("done", 2)]
    noisy = [r for r in caplog.records if r.name.startswith("dkgw.delivery")]
    assert noisy == [], [r.getMessage() for r in noisy]
