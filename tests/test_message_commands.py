"""``dkgw message list/show/retry`` and the queries behind them, on both store dialects.

The store-level tests drive the delivery worker on fake time (tests.test_delivery's
harness); the command tests run ``dkgw`` as a subprocess against two real gateways.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.error import ConnectionRefusedError as TxConnectionRefused
from twisted.internet.threads import deferToThread

from adapters.api.service import BackOffice
from gateway.config import ApiConfig
from gateway.delivery import HttpResult
from gateway.store.cpas import CpaRegistry
from gateway.store.messages import Direction
from gateway.store.queries import (
    MessageQuery,
    RetryRefused,
    list_messages,
    message_detail,
    retry_message,
    retry_refusal,
)
from tests.conftest import DIALECTS, NODE_OIN
from tests.gateways import Pair, Side, gateway_config, store_url, wait_until
from tests.test_api_rest import raw
from tests.test_cli_msh import run
from tests.test_delivery import harness  # noqa: F401 - the fixture

T = datetime(2026, 1, 1, tzinfo=UTC)


# -- decisions ----------------------------------------------------------------------------


def test_retry_refusals() -> None:
    later = T + timedelta(hours=1)
    assert retry_refusal("m", "CREATED", "pending", later, T) is None
    assert retry_refusal("m", "DELIVERY_FAILED", "failed", None, T) is None
    assert retry_refusal("m", "EXPIRED", "expired", later, T) is None
    assert "delivered already" in (retry_refusal("m", "DELIVERED", "done", later, T) or "")
    assert "being sent" in (retry_refusal("m", "CREATED", "sending", later, T) or "")
    assert "TimeToLive passed" in (retry_refusal("m", "EXPIRED", "expired", T, later) or "")
    assert "signal" in (retry_refusal("m", None, "pending", None, T) or "")


# -- the store ----------------------------------------------------------------------------


def test_list_filters_and_pages(harness) -> None:  # noqa: F811
    h = harness(profile="osb-be")
    h.post.script = [HttpResult(503, "text/plain", b""), HttpResult(204, "", b"")]
    failed = h.send(correlation_id="c-1")
    delivered = h.send(action="WMO301")
    h.worker()
    with h.store.transaction() as cur:
        everything = list_messages(cur, MessageQuery())
        by_status = list_messages(cur, MessageQuery(status="DELIVERY_FAILED"))
        by_corr = list_messages(cur, MessageQuery(correlation_id="c-1"))
        by_party = list_messages(cur, MessageQuery(party=NODE_OIN, direction=Direction.OUT))
        nobody = list_messages(cur, MessageQuery(party="1234", cpa_id="test-cpa"))
        page = list_messages(cur, MessageQuery(limit=1, offset=1))
        future = list_messages(cur, MessageQuery(since=datetime.now(UTC) + timedelta(days=9)))
    assert [m.message_id for m in everything] == [delivered.message_id, failed.message_id]
    assert [m.message_id for m in by_status] == [failed.message_id]
    assert by_status[0].last_error == "HTTP 503 from partner"
    assert by_status[0].attempts_left == 0 and by_status[0].next_attempt_at is None
    assert [m.message_id for m in by_corr] == [failed.message_id]
    assert len(by_party) == 2 and nobody == [] and future == []
    assert [m.message_id for m in page] == [failed.message_id]
    with pytest.raises(ValueError):
        list_messages(h.store.transaction().__enter__(), MessageQuery(limit=0))


def test_retry_a_failed_message_sends_it_again_unchanged(harness) -> None:  # noqa: F811
    h = harness(profile="osb-be")
    h.post.script = [TxConnectionRefused(), HttpResult(204, "", b"")]
    queued = h.send()
    worker = h.worker()
    assert h.status(queued.message_id) == "DELIVERY_FAILED"
    with h.store.transaction() as cur:
        summary = retry_message(cur, queued.message_id, now=h.now())
    assert (summary.status, summary.task_state, summary.attempts_left) == ("CREATED", "pending", 1)
    h.at(1, worker)
    assert h.status(queued.message_id) == "DELIVERED"
    first, second = h.post.posted
    assert first.body == second.body
    with h.store.transaction() as cur:
        (detail,) = message_detail(cur, queued.message_id)
        with pytest.raises(RetryRefused, match="delivered already"):
            retry_message(cur, queued.message_id, now=h.now())
        with pytest.raises(RetryRefused) as unknown:
            retry_message(cur, "nothing@here", now=h.now())
    assert unknown.value.unknown
    assert [c.status for c in detail.history] == [
        "CREATED",
        "DELIVERY_FAILED",
        "CREATED",
        "DELIVERED",
    ]
    assert detail.history[1].reason == "connection refused by localhost:18444"
    assert detail.history[2].reason == "retried by the operator after DELIVERY_FAILED"


def test_retry_after_the_time_to_live_is_refused(harness) -> None:  # noqa: F811
    h = harness(retries=1)
    h.post.script = [TxConnectionRefused(), TxConnectionRefused()]
    queued = h.send()
    worker = h.worker()
    for seconds in (10, 20, 30, 40):
        h.at(seconds, worker)
    assert h.status(queued.message_id) == "EXPIRED"
    with h.store.transaction() as cur:
        (detail,) = message_detail(cur, queued.message_id)
        with pytest.raises(RetryRefused, match="TimeToLive passed"):
            retry_message(cur, queued.message_id, now=h.now())
    # The expiry says why: the last attempt's failure.
    assert detail.history[-1].reason == "connection refused by localhost:18444"
    assert detail.summary.last_error == "connection refused by localhost:18444"


# -- the commands, two real gateways ------------------------------------------------------


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def slow_pair(pki: Path, make_spec, tmp_path: Path, dialect: str) -> AsyncIterator[Pair]:
    """Reliable messaging with 5 minutes between attempts: a retry is visibly 'now'.

    Long enough that no second attempt falls among the test's ``dkgw`` commands, which
    take seconds each on a loaded machine.
    """
    p = _pair(pki, make_spec, tmp_path, dialect, timedelta(seconds=300))
    yield p
    await p.stop()


@pytest_twisted.async_yield_fixture
async def fast_pair(pki: Path, make_spec, tmp_path: Path, dialect: str) -> AsyncIterator[Pair]:
    """Reliable messaging with 1 s between attempts: a pending original is soon resent."""
    p = _pair(pki, make_spec, tmp_path, dialect, timedelta(seconds=1), retries=5)
    yield p
    await p.stop()


def _pair(
    pki: Path, make_spec, tmp_path: Path, dialect: str, interval: timedelta, retries: int = 2
) -> Pair:
    a = Side("a", gateway_config(pki, "gemeente-voorbeeld", tmp_path / "a",
                                 store_url(dialect, tmp_path, "a"),
                                 api=ApiConfig(port=0, wait_timeout=10.0)))  # fmt: skip
    b = Side("b", gateway_config(pki, "ggk-rinis-test", tmp_path / "b",
                                 store_url(dialect, tmp_path, "b")))  # fmt: skip
    a.start()
    b.start()
    rm = {"profile": "osb-rm", "retries": retries, "retry_interval": interval}
    p = Pair(a, b, "msg-cpa", make_spec, rm)
    p.import_cpa()
    return p


def inbound(side: Side, message_id: str) -> int:
    return len(side.rows("SELECT 1 FROM ebms_message WHERE message_id = ?", message_id))


@pytest_twisted.ensureDeferred
async def test_list_show_and_retry_commands(slow_pair: Pair) -> None:
    pair = slow_pair
    store = pair.a.config.store
    await pair.b.stop()
    queued = await pair.send()
    port = pair.b.port
    await wait_until(
        lambda: pair.a.rows(
            "SELECT a.error FROM delivery_attempt a JOIN delivery_task t ON t.id = a.task_id "
            "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ?",
            queued.message_id,
        ),
        timeout=20,
    )
    listed = await run("--store", store, "message", "list", "--status", "CREATED", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)["messages"]
    assert row["messageId"] == queued.message_id
    assert row["lastError"] == f"connection refused by localhost:{port}"
    assert (row["attempts"], row["attemptsLeft"]) == (1, 2)
    assert row["nextAttempt"] is not None

    table = await run("--store", store, "message", "list", "--direction", "out")
    assert table.stdout.splitlines()[0].split()[:3] == ["CREATED", "DIR", "STATUS"]
    assert queued.message_id in table.stdout and "connection refused" in table.stdout
    empty = await run("--store", store, "message", "list", "--status", "DELIVERED")
    assert queued.message_id not in empty.stdout

    shown = await run("--store", store, "message", "show", queued.message_id)
    assert shown.returncode == 0, shown.stderr
    assert "1 attempt(s), 2 left" in shown.stdout
    assert f"last failure   connection refused by localhost:{port}" in shown.stdout

    pair.b.start()
    retried = await run("--store", store, "message", "retry", queued.message_id)
    assert retried.returncode == 0, retried.stderr
    # Far sooner than the 5 minute retry interval.
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED", timeout=15)
    assert inbound(pair.b, queued.message_id) == 1

    shown = await run("--store", store, "message", "show", queued.message_id, "--json")
    (detail,) = json.loads(shown.stdout)["messages"]
    assert [s["action"] for s in detail["signals"]] == ["Acknowledgment"]
    assert detail["attemptsLeft"] == 0 and detail["nextAttempt"] is None

    again = await run("--store", store, "message", "retry", queued.message_id)
    assert again.returncode == 1 and "delivered already" in again.stderr
    unknown = await run("--store", store, "message", "retry", "nothing@here")
    assert unknown.returncode == 1 and "no outgoing message" in unknown.stderr
    legacy = await run("--store", store, "message", queued.message_id)
    assert legacy.returncode == 0 and "DELIVERED" in legacy.stdout.splitlines()[0]


def received_business(side: Side) -> list[str]:
    return [
        r[0]
        for r in side.rows(
            "SELECT message_id FROM ebms_message WHERE direction = 'in' AND action = 'WMO301'"
        )
    ]


@pytest_twisted.ensureDeferred
async def test_resend_of_a_pending_message_retires_it(fast_pair: Pair) -> None:
    pair = fast_pair
    await pair.b.stop()
    queued = await pair.send()
    await wait_until(
        lambda: pair.a.rows(
            "SELECT 1 FROM delivery_attempt a JOIN delivery_task t ON t.id = a.task_id "
            "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ?",
            queued.message_id,
        ),
        timeout=20,
    )
    office = BackOffice(pair.a.db, CpaRegistry(pair.a.db))
    # Between two attempts: the task is pending, not in flight.
    await wait_until(
        lambda: pair.a.rows(
            "SELECT 1 FROM delivery_task t JOIN ebms_message m ON m.id = t.message_pk "
            "WHERE m.message_id = ? AND t.state = 'pending'",
            queued.message_id,
        )
    )
    new_id = office.resend_message(queued.message_id)
    pair.b.start()
    await wait_until(lambda: pair.a.status(new_id, "out") == "DELIVERED", timeout=20)
    # The original would have had its next attempt within 1 s: wait past a few.
    await task.deferLater(reactor, 3.0, lambda: None)
    assert received_business(pair.b) == [new_id]
    assert pair.a.status(queued.message_id, "out") == "DELIVERY_FAILED"
    reason = f"superseded by resend {new_id}"
    assert pair.a.rows(
        "SELECT h.reason FROM status_history h JOIN ebms_message m ON m.id = h.message_pk "
        "WHERE m.message_id = ? AND h.status = 'DELIVERY_FAILED'",
        queued.message_id,
    ) == [(reason,)]
    assert pair.a.rows(
        "SELECT event_type, error_text FROM message_event WHERE message_id = ?",
        queued.message_id,
    ) == [("FAILED", reason)]
    with pair.a.db.transaction() as cur, pytest.raises(RetryRefused, match="superseded"):
        retry_message(cur, queued.message_id, now=datetime.now(UTC))


REST = "/service/rest/v19/ebms/messages"


async def rest(pair: Pair, method: str, path: str) -> tuple[int, Any]:
    assert pair.a.gateway is not None
    port = pair.a.gateway.api_listening_port
    status, headers, body = await deferToThread(raw, port, method, REST + path)
    if headers.get("Content-Type") == "application/json":
        return status, json.loads(body)
    return status, body.decode()


@pytest_twisted.ensureDeferred
async def test_rest_list_and_retry(slow_pair: Pair) -> None:
    pair = slow_pair
    await pair.b.stop()
    queued = await pair.send(correlation_id="rest-1")
    port = pair.b.port
    await wait_until(
        lambda: pair.a.rows(
            "SELECT 1 FROM delivery_attempt a JOIN delivery_task t ON t.id = a.task_id "
            "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ?",
            queued.message_id,
        ),
        timeout=20,
    )
    status, page = await rest(pair, "GET", "?status=CREATED&direction=out&correlationId=rest-1")
    assert status == 200
    (row,) = page["messages"]
    assert row["messageId"] == queued.message_id
    assert row["lastError"] == f"connection refused by localhost:{port}"
    assert "statusTime" in row and "expires" in row
    status, page = await rest(pair, "GET", f"?partyId={NODE_OIN}&since=2999-01-01T00:00:00Z")
    assert (status, page) == (200, {"messages": []})
    for bad in ("?limit=0", "?limit=x", "?since=yesterday", "?direction=up"):
        status, text = await rest(pair, "GET", bad)
        assert status == 400 and "Traceback" not in text, bad

    assert (await rest(pair, "POST", "/nothing@here/retry"))[0] == 404
    pair.b.start()
    status, retried = await rest(pair, "POST", f"/{queued.message_id}/retry")
    assert status == 200 and retried["status"] == "CREATED" and retried["attemptsLeft"] == 2
    await wait_until(lambda: pair.a.status(queued.message_id, "out") == "DELIVERED", timeout=15)
    status, text = await rest(pair, "POST", f"/{queued.message_id}/retry")
    assert status == 400 and "delivered already" in text
