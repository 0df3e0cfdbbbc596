"""One broken task never stops delivery for the others: two real gateways on 127.0.0.1.

The municipality gateway (``a``) has two CPAs with the node (``b``): a good one
and one that is broken while a message waits on it (the CPA deleted or
expired, its URL mapping invalid, its server certificate unreadable, a payload
row missing).  The delivery worker is paused while the messages are queued
and the damage is done, so one claim holds both tasks: the good message is
delivered, the broken one fails with its reason and a FAILED event, and the
worker goes on ticking (:mod:`gateway.monitor.heartbeat`).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from gateway.msh.outbound import Payload
from gateway.store.database import Cursor
from tests.conftest import DIALECTS
from tests.gateways import Pair, Side, gateway_config, store_url, wait_until

pytestmark = pytest.mark.integration

GOOD = "iso-good"
BROKEN = "iso-broken"


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def pairs(pki: Path, make_spec, tmp_path: Path, dialect: str) -> AsyncIterator[Any]:
    """Gateways a and b with a good and a to-be-broken CPA (another endpoint path on b)."""
    a = Side(
        "a",
        gateway_config(
            pki, "gemeente-voorbeeld", tmp_path / "a", store_url(dialect, tmp_path, "a")
        ),
    )
    b = Side(
        "b",
        gateway_config(pki, "ggk-rinis-test", tmp_path / "b", store_url(dialect, tmp_path, "b")),
    )
    a.start()
    b.start()
    good = Pair(a, b, GOOD, make_spec, {"profile": "osb-be"})
    good.import_cpa()
    broken = Pair(a, b, BROKEN, make_spec, {"profile": "osb-be"})
    # Its own endpoint URL on b (same listener), so a URL mapping can touch it alone.
    broken.import_cpa(b_endpoint=f"https://localhost:{b.port}/ebms?cpa=broken")
    yield good, broken
    await good.stop()


def delete_cpa(cur: Cursor, broken: Pair) -> str:
    cur.execute("DELETE FROM cpa WHERE cpa_id = ?", (BROKEN,))
    return "no longer exists"


def expire_cpa(cur: Cursor, broken: Pair) -> str:
    xml = cur.execute("SELECT xml FROM cpa WHERE cpa_id = ?", (BROKEN,)).fetchone()
    assert xml is not None
    text = bytes(xml[0]).decode()
    # The end of the validity period half an hour ago.
    spec = broken.make_spec()
    past = (spec.start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S")
    text, n = re.subn(r"(<(?:\w+:)?End>)[^<]+(</(?:\w+:)?End>)", rf"\g<1>{past}Z\g<2>", text)
    assert n == 1
    cur.execute(
        "UPDATE cpa SET xml = ?, sha256 = ? WHERE cpa_id = ?", (text.encode(), "expired", BROKEN)
    )
    return f"CPA {BROKEN} is not in force"


def invalid_url_mapping(cur: Cursor, broken: Pair) -> str:
    source = f"https://localhost:{broken.b.port}/ebms?cpa=broken"
    cur.execute(
        "INSERT INTO url_mapping (source, destination, created_at, updated_at) VALUES (?, ?, ?, ?)",
        (source, "not a url", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    )
    return "URL mapping"


def unreadable_certificate(cur: Cursor, broken: Pair) -> str:
    xml = cur.execute("SELECT xml FROM cpa WHERE cpa_id = ?", (BROKEN,)).fetchone()
    assert xml is not None
    text = bytes(xml[0]).decode()
    # Every certificate of the node: valid base64, not a certificate.
    junk = base64.b64encode(b"not a certificate").decode()
    text, n = re.subn(
        r"(<ds:X509Certificate>)[^<]+(</ds:X509Certificate>)", rf"\g<1>{junk}\g<2>", text
    )
    assert n > 0
    cur.execute(
        "UPDATE cpa SET xml = ?, sha256 = ? WHERE cpa_id = ?", (text.encode(), "junk", BROKEN)
    )
    return "cannot be read"


def missing_payload_chunk(cur: Cursor, broken: Pair) -> str:
    cur.execute("DELETE FROM ebms_payload_chunk WHERE seq = 1")
    return "inconsistent"


BREAKAGES: dict[str, Callable[[Cursor, Pair], str]] = {
    "cpa-deleted": delete_cpa,
    "cpa-expired": expire_cpa,
    "url-mapping-invalid": invalid_url_mapping,
    "certificate-unreadable": unreadable_certificate,
    "payload-row-missing": missing_payload_chunk,
}


@pytest.mark.parametrize("kind", sorted(BREAKAGES))
@pytest_twisted.ensureDeferred
async def test_a_broken_task_fails_alone_and_delivery_goes_on(pairs, kind: str) -> None:
    good, broken = pairs
    a = good.a
    assert a.gateway is not None and a.gateway.worker is not None
    await a.gateway.worker.stop()
    big = (Payload(os.urandom(3 << 20), "application/octet-stream", "big.bin"),)
    lost = await broken.send(big)
    with a.db.transaction() as cur:
        expected = BREAKAGES[kind](cur, broken)
    sent = await good.send()
    before = a.gateway.heartbeats.last("delivery")
    a.gateway.worker.start()

    assert await wait_until(lambda: a.status(sent.message_id, "out") == "DELIVERED")
    assert await wait_until(lambda: a.status(lost.message_id, "out") == "DELIVERY_FAILED")
    assert b_has(good.b, sent.message_id)
    (reason,) = a.rows(
        "SELECT h.reason FROM status_history h JOIN ebms_message m ON m.id = h.message_pk "
        "WHERE m.message_id = ? AND h.status = 'DELIVERY_FAILED'",
        lost.message_id,
    )[0:1]
    assert expected in reason[0], reason
    events = a.rows(
        "SELECT event_type, error_code, error_text FROM message_event WHERE message_id = ?",
        lost.message_id,
    )
    assert events == [("FAILED", "DeliveryFailure", reason[0])]
    (task,) = a.rows(
        "SELECT t.state, t.last_error FROM delivery_task t JOIN ebms_message m "
        "ON m.id = t.message_pk WHERE m.message_id = ?",
        lost.message_id,
    )
    assert task == ("failed", reason[0])
    # The loop keeps ticking, and a message sent afterwards still goes out.
    after = await good.send()
    assert await wait_until(lambda: a.status(after.message_id, "out") == "DELIVERED")
    last = a.gateway.heartbeats.last("delivery")
    assert last is not None and (before is None or last > before)


def b_has(b: Side, message_id: str) -> bool:
    return bool(
        b.rows("SELECT 1 FROM ebms_message WHERE message_id = ? AND direction = 'in'", message_id)
    )
