"""Retrying sendMessage safely: Idempotency-Key and a client's own MessageId (docs/api.md).

Two real gateways over mutual TLS with their REST APIs, on SQLite and
PostgreSQL: the same request sent twice is one message at the partner; the
same key with another request is 422.  Then two ``dkgw serve`` processes, the
sender SIGKILLed again and again while a client sends with keys and retries
until answered: the partner still gets every document exactly once.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import sqlite3
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from cpa.generate import make_cpa
from gateway.config import ApiConfig
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from gateway.store.retention import RetentionSettings, purge
from tests.conftest import GEMEENTE_OIN, NODE_OIN, PG_DSN, SpecFactory
from tests.gateways import SERVICE, Pair, Side, free_port, gateway_config, store_url, wait_until
from tests.test_api_fuzz import _serve
from tests.test_integration import RM_FAST

GEMEENTE = f"urn:osb:oin:{GEMEENTE_OIN}"
NODE = f"urn:osb:oin:{NODE_OIN}"


def message(content: bytes, cpa_id: str = "idem-cpa", **properties: str) -> bytes:
    return json.dumps(
        {
            "properties": {
                "cpaId": cpa_id,
                "fromPartyId": GEMEENTE,
                "service": SERVICE.key(),
                "action": "WMO301",
                **properties,
            },
            "dataSources": [
                {"contentType": "application/xml", "content": base64.b64encode(content).decode()}
            ],
        }
    ).encode()


def post(base: str, body: bytes, key: str | None = None, timeout: float = 30) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(
        f"{base}/service/rest/v19/ebms/messages", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and PG_DSN is None:
        pytest.skip("DKGW_TEST_PG_DSN is not set: no PostgreSQL server to test on")
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def pair(
    pki: Path, make_spec: SpecFactory, tmp_path: Path, dialect: str
) -> AsyncIterator[Pair]:
    sides = []
    for name, slug in (("a", "gemeente-voorbeeld"), ("b", "ggk-rinis-test")):
        config = gateway_config(
            pki, slug, tmp_path / name, store_url(dialect, tmp_path, name), api=ApiConfig(port=0)
        )
        side = Side(name, config)
        side.start()
        sides.append(side)
    p = Pair(sides[0], sides[1], "idem-cpa", make_spec, {"profile": "osb-rm", **RM_FAST})
    p.import_cpa()
    yield p
    await p.stop()


def base(side: Side) -> str:
    assert side.gateway is not None
    return f"http://127.0.0.1:{side.gateway.api_listening_port}"


async def call(*args: Any, **kwargs: Any) -> tuple[int, str]:
    result: tuple[int, str] = await deferToThread(post, *args, **kwargs)
    return result


def received(side: Side) -> list[str]:
    """The SHA-256 of every payload the side has received, one per inbound business message."""
    return [
        str(row[0])
        for row in side.rows(
            "SELECT a.sha256 FROM ebms_message m JOIN ebms_attachment a ON a.message_pk = m.id "
            "WHERE m.direction = 'in' AND m.action = 'WMO301'"
        )
    ]


@pytest_twisted.ensureDeferred
async def test_a_retried_key_is_one_message_at_the_partner(pair: Pair) -> None:
    a = base(pair.a)
    key = str(uuid.uuid4())
    first = await call(a, message(b"<doc>1</doc>"), key)
    assert first[0] == 200, first
    # The retry a client makes when the first answer was lost: same key, same request
    # (formatted differently: the request counts, not its bytes).
    again = await call(a, json.dumps(json.loads(message(b"<doc>1</doc>")), indent=2).encode(), key)
    assert again == first
    # The same key with another document: refused, nothing stored.
    other = await call(a, message(b"<doc>2</doc>"), key)
    assert other[0] == 422 and "Idempotency-Key was used before" in other[1], other
    # A malformed key is refused before anything is stored.
    bad = await call(a, message(b"<doc>3</doc>"), "two words")
    assert bad[0] == 400 and "Idempotency-Key" in bad[1], bad
    await wait_until(lambda: pair.a.status(first[1], "out") == "DELIVERED", timeout=20)
    assert len(received(pair.b)) == 1
    assert pair.a.rows("SELECT COUNT(*) FROM ebms_message WHERE direction = 'out'")[0][0] == 1

    # A client-chosen MessageId is a key too: the identical retry answers the first answer.
    own = f"{uuid.uuid4()}@idem"
    first = await call(a, message(b"<doc>4</doc>", messageId=own))
    assert first == (200, own)
    assert await call(a, message(b"<doc>4</doc>", messageId=own)) == first
    changed = await call(a, message(b"<doc>5</doc>", messageId=own))
    assert changed[0] == 400 and "already exists" in changed[1], changed
    await wait_until(lambda: pair.a.status(own, "out") == "DELIVERED", timeout=20)
    assert len(received(pair.b)) == 2

    # The keys go with their messages when retention purges them.
    assert pair.a.rows("SELECT COUNT(*) FROM api_idempotency")[0][0] == 2
    later = datetime.now(UTC) + timedelta(days=365)
    purge(pair.a.db, later, RetentionSettings(messages_days=30))
    assert pair.a.rows("SELECT COUNT(*) FROM api_idempotency")[0][0] == 0


# -- a sender that dies mid-request -----------------------------------------------------------


def _store(path: Path, cpa: bytes) -> None:
    db = Database.from_url(f"sqlite:///{path}")
    try:
        apply_migrations(db)
        CpaRegistry(db).insert(cpa, overwrite=True)
    finally:
        db.close()


def test_a_killed_sender_delivers_every_document_exactly_once(
    pki: Path, make_spec: SpecFactory, tmp_path: Path
) -> None:
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    # TimeToLive follows Retries x RetryInterval: 5 s intervals leave a restart that a
    # loaded machine makes slow its time, where RM_FAST's 1 s would let messages expire.
    spec = make_spec(
        profile="osb-rm", cpa_id="kill-cpa", **{**RM_FAST, "retry_interval": timedelta(seconds=5)}
    )
    spec = replace(
        spec,
        a=replace(spec.a, endpoint=f"https://127.0.0.1:{ports['a'][0]}/ebms"),
        b=replace(spec.b, endpoint=f"https://localhost:{ports['b'][0]}/ebms"),
    )
    stores = {name: tmp_path / f"{name}.sqlite3" for name in ports}
    for store in stores.values():
        _store(store, make_cpa(spec))
    args = {
        "a": (tmp_path, pki, "gemeente-voorbeeld", *ports["a"], stores["a"]),
        "b": (tmp_path, pki, "ggk-rinis-test", *ports["b"], stores["b"]),
    }
    receiver, _ = _serve(*args["b"])
    sender, _ = _serve(*args["a"])
    api = f"http://127.0.0.1:{ports['a'][1]}"
    documents = {f"<doc>{n}</doc>".encode(): str(uuid.uuid4()) for n in range(12)}
    kills = 0
    try:
        for n, (document, key) in enumerate(documents.items()):
            # Every other document: the sender is SIGKILLed while the request is in flight
            # (before, during or after its commit: the timing is the machine's).
            killer = None
            if n % 2 == 0:
                victim = sender
                killer = threading.Timer(
                    0.002 * (n % 7), lambda v=victim: v.send_signal(signal.SIGKILL)
                )
                killer.start()
            deadline = time.monotonic() + 120
            while True:
                try:
                    status, text = post(api, message(document, "kill-cpa"), key, timeout=10)
                except (URLError, ConnectionError, TimeoutError, OSError):
                    status, text = 0, ""
                if status == 200:
                    break
                assert status == 0, (status, text)  # only "no answer" is retried
                if killer is not None:
                    killer.join()
                if sender.poll() is not None:
                    kills += 1
                    sender, _ = _serve(*args["a"])
                assert time.monotonic() < deadline, "no answer for two minutes"
                time.sleep(0.1)
            if killer is not None:
                killer.join()
                if sender.poll() is not None:  # killed just after it answered
                    kills += 1
                    sender, _ = _serve(*args["a"])

        def every_document_arrived() -> bool:
            conn = sqlite3.connect(f"{stores['b'].as_uri()}?mode=ro", uri=True)
            try:
                rows = conn.execute(
                    "SELECT COUNT(*) FROM ebms_message WHERE direction = 'in' AND action = 'WMO301'"
                ).fetchone()
            finally:
                conn.close()
            return bool(rows and rows[0] >= len(documents))

        deadline = time.monotonic() + 120
        while not every_document_arrived():
            assert time.monotonic() < deadline, "not every document arrived"
            time.sleep(0.2)
        time.sleep(2)  # a second copy, if one were on its way
        conn = sqlite3.connect(f"{stores['b'].as_uri()}?mode=ro", uri=True)
        try:
            arrived = [
                str(r[0])
                for r in conn.execute(
                    "SELECT a.sha256 FROM ebms_message m "
                    "JOIN ebms_attachment a ON a.message_pk = m.id "
                    "WHERE m.direction = 'in' AND m.action = 'WMO301'"
                )
            ]
        finally:
            conn.close()
        expected = sorted(hashlib.sha256(d).hexdigest() for d in documents)
        assert sorted(arrived) == expected
        assert kills >= 3, kills  # the test did kill the sender mid-request
    finally:
        for process in (sender, receiver):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except Exception:
                    process.kill()
                    process.wait()
