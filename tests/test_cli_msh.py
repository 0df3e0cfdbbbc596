"""``dkgw serve``, ``ping``, ``send`` and ``message`` as an operator runs them: real processes.

The gateways run in this process (``tests.gateways``) or as ``dkgw serve``
subprocesses; the commands run as subprocesses against the same stores, the
way a monitoring check or a script would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from gateway.commands.demo import DemoGateway
from tests.conftest import GEMEENTE_OIN, NODE_OIN
from tests.gateways import Pair, Side, free_port, gateway_config, store_url, wait_until

RM_FAST = {"retries": 2, "retry_interval": timedelta(seconds=1)}


def dkgw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """dkgw in a subprocess, off the reactor thread (the gateways must keep running)."""
    result: subprocess.CompletedProcess[str] = await deferToThread(dkgw, *args, timeout=timeout)
    return result


@pytest_twisted.async_yield_fixture
async def pair(pki: Path, make_spec, tmp_path: Path) -> AsyncIterator[Pair]:
    a = Side("a", gateway_config(pki, "gemeente-voorbeeld", tmp_path / "a",
                                 store_url("sqlite", tmp_path, "a")))  # fmt: skip
    b = Side("b", gateway_config(pki, "ggk-rinis-test", tmp_path / "b",
                                 store_url("sqlite", tmp_path, "b")))  # fmt: skip
    a.start()
    b.start()
    p = Pair(a, b, "cli-cpa", make_spec, {"profile": "osb-rm", **RM_FAST})
    p.import_cpa()
    yield p
    await p.stop()


@pytest_twisted.ensureDeferred
async def test_ping_both_ways_exits_0(pair: Pair) -> None:
    for side, me, peer in ((pair.a, GEMEENTE_OIN, NODE_OIN), (pair.b, NODE_OIN, GEMEENTE_OIN)):
        done = await run("--store", side.config.store, "ping", pair.cpa_id,
                         "--from", me, "--to", peer, "--timeout", "20")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Pong ")


@pytest_twisted.ensureDeferred
async def test_ping_to_a_partner_that_is_down_exits_2(pair: Pair) -> None:
    await pair.b.stop()
    done = await run("--store", pair.a.config.store, "ping", pair.cpa_id,
                     "--from", GEMEENTE_OIN, "--to", NODE_OIN, "--timeout", "20")  # fmt: skip
    assert done.returncode == 2
    assert "Ping not delivered" in done.stdout


@pytest_twisted.ensureDeferred
async def test_ping_without_answer_in_time_exits_2(pair: Pair) -> None:
    # A partner that accepts the Ping but whose Pong never arrives: stop our own
    # listener, so the node's Pong POST is refused.
    assert pair.a.gateway is not None and pair.a.gateway.port is not None
    await pair.a.gateway.port.stopListening()
    done = await run("--store", pair.a.config.store, "ping", pair.cpa_id,
                     "--from", GEMEENTE_OIN, "--to", NODE_OIN, "--timeout", "2")  # fmt: skip
    assert done.returncode == 2
    assert "no Pong within 2 s" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("no-such-cpa", "--from", GEMEENTE_OIN, "--to", NODE_OIN), "no-such-cpa"),
        (("cli-cpa", "--from", GEMEENTE_OIN, "--to", "00000001999999999000"), "not allowed"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_ping_refused_by_the_cpa_exits_1(pair: Pair, args: Any, message: str) -> None:
    done = await run("--store", pair.a.config.store, "ping", *args)
    assert done.returncode == 1
    assert message in done.stderr


@pytest_twisted.ensureDeferred
async def test_send_then_message_shows_delivery(pair: Pair, tmp_path: Path) -> None:
    first, second = tmp_path / "one.xml", tmp_path / "two.bin"
    first.write_bytes(b"<bericht/>")
    second.write_bytes(bytes(range(256)) * 100)
    done = await run(
        "--store", pair.a.config.store, "send", pair.cpa_id,
        "--from", GEMEENTE_OIN, "--from-role", "Gemeente", "--to", NODE_OIN, "--to-role", "GGk",
        "--service", "urn:osb:services:GGK:iWmo:3.2", "--action", "WMO301",
        "--file", str(first), "--file", str(second),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    message_id = done.stdout.strip()
    await wait_until(lambda: pair.a.status(message_id, "out") == "DELIVERED")
    shown = await run("--store", pair.b.config.store, "message", message_id)
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{message_id} in RECEIVED cpa=cli-cpa")
    assert sum("payload" in line for line in lines) == 2
    assert any("25600 bytes" in line for line in lines)
    sent = await run("--store", pair.a.config.store, "message", message_id, "--direction", "out")
    assert "DELIVERED" in sent.stdout.splitlines()[0]
    assert any("attempt 1" in line and "HTTP 204" in line for line in sent.stdout.splitlines())


@pytest_twisted.ensureDeferred
async def test_send_refused_by_the_cpa_exits_1(pair: Pair, tmp_path: Path) -> None:
    done = await run(
        "--store", pair.a.config.store, "send", pair.cpa_id,
        "--from", GEMEENTE_OIN, "--from-role", "Gemeente", "--to", NODE_OIN, "--to-role", "GGk",
        "--service", "urn:osb:services:GGK:iWmo:3.2", "--action", "WMO302",
    )  # fmt: skip
    assert done.returncode == 1
    assert "not allowed by CPA cli-cpa" in done.stderr
    missing = await run("--store", pair.a.config.store, "message", "nothing@here")
    assert missing.returncode == 1


def test_serve_process_checks_config_and_stops_gracefully(pki: Path, tmp_path: Path) -> None:
    gw = DemoGateway("node", "ggk-rinis-test", NODE_OIN, free_port(), tmp_path)
    gw.write_config(pki)
    checked = dkgw("serve", "--config", str(gw.config), "--check")
    assert (checked.returncode, checked.stdout.strip()) == (
        0,
        f"configuration {gw.config} is valid",
    )
    gw.start()
    try:
        gw.wait_listening()
    finally:
        code = gw.stop()
    assert code == 0
    log = gw.log.read_text()
    assert "event=started node=demo-node" in log and "event=stopped node=demo-node" in log
    assert "Traceback" not in log


def test_a_demo_gateway_whose_admin_port_was_taken_starts_on_another(
    pki: Path, tmp_path: Path
) -> None:
    """The demo picks its admin and API ports before the gateway binds them; when another
    program takes one in between, the gateway is started again on new ports."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = DemoGateway("node", "ggk-rinis-test", NODE_OIN, free_port(), tmp_path,
                         admin_port=port, api_port=free_port())  # fmt: skip
        gw.write_config(pki)
        gw.start()
        try:
            gw.wait_listening()
        finally:
            code = gw.stop()
    assert code == 0
    assert gw.admin_port != port
    assert f'listen = "127.0.0.1:{gw.admin_port}"' in gw.config.read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("[delivery]", "[delivery]\nretries_forever = true"), "unknown option 'retries_forever'"),
        (('listen = "127.0.0.1:', 'listen = "127.0.0.1:x'), "[http] listen must be HOST:PORT"),
        (("tls-server.key", "missing.key"), "does not exist"),
        (("tls-server.key", "tls-client.key"), "does not belong to the certificate"),
    ],
)
def test_serve_check_refuses_bad_configs(pki: Path, tmp_path: Path, edit, message) -> None:
    gw = DemoGateway("node", "ggk-rinis-test", NODE_OIN, 1443, tmp_path)
    gw.write_config(pki)
    gw.config.write_text(gw.config.read_text().replace(*edit, 1))
    checked = dkgw("serve", "--config", str(gw.config), "--check")
    assert checked.returncode == 1
    assert message in checked.stderr


def test_json_log_lines_carry_the_correlation_id_to_the_ack(
    pki: Path, tmp_path: Path, make_spec
) -> None:
    """``--log-format json``: one object per line with ids, parties, service/action,
    outcome and duration; the back office's correlation id on the message and its ack."""
    from cpa.generate import make_cpa
    from gateway.store.cpas import CpaRegistry
    from gateway.store.database import Database
    from gateway.store.migrate import apply_migrations

    gemeente = DemoGateway("gemeente", "gemeente-voorbeeld", GEMEENTE_OIN, free_port(), tmp_path,
                           log_format="json")  # fmt: skip
    node = DemoGateway("node", "ggk-rinis-test", NODE_OIN, free_port(), tmp_path)
    base = make_spec(cpa_id="json-cpa", profile="osb-rm", **RM_FAST)
    spec = replace(
        base,
        a=replace(base.a, endpoint=f"https://localhost:{gemeente.port}/ebms"),
        b=replace(base.b, endpoint=f"https://localhost:{node.port}/ebms"),
    )
    for gw in (gemeente, node):
        gw.write_config(pki)
        db = Database.from_url(gw.store)
        apply_migrations(db)
        CpaRegistry(db).insert(make_cpa(spec))
        db.close()
    gemeente.start()
    node.start()
    try:
        gemeente.wait_listening()
        node.wait_listening()
        (tmp_path / "b.xml").write_bytes(b"<bericht/>")
        sent = dkgw(
            "--store", gemeente.store, "send", "json-cpa",
            "--from", GEMEENTE_OIN, "--from-role", "Gemeente", "--to", NODE_OIN,
            "--to-role", "GGk", "--service", "urn:osb:services:GGK:iWmo:3.2",
            "--action", "WMO301", "--file", str(tmp_path / "b.xml"),
            "--correlation-id", "bo-4711",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        message_id = sent.stdout.strip()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not gemeente.log_lines('"outcome":"delivered"'):
            time.sleep(0.1)
    finally:
        assert gemeente.stop() == 0
        node.stop()
    entries = [json.loads(line) for line in gemeente.log.read_text().splitlines() if line]
    assert all({"time", "level", "logger"} <= set(e) for e in entries)
    delivery = next(e for e in entries if e.get("event") == "delivery"
                    and e.get("message_id") == message_id)  # fmt: skip
    assert delivery["correlation_id"] == "bo-4711"
    assert delivery["cpa_id"] == "json-cpa" and delivery["action"] == "WMO301"
    assert delivery["from"] == f"urn:osb:oin:{GEMEENTE_OIN}"
    assert delivery["service"] == "urn:osb:services:GGK:iWmo:3.2"
    # "superseded" when the asynchronous ack was recorded before the attempt itself.
    assert float(delivery["ms"]) >= 0
    assert delivery["outcome"] in ("sent-awaiting-ack", "superseded")
    ack = next(e for e in entries if e.get("event") == "inbound"
               and e.get("action") == "Acknowledgment")  # fmt: skip
    assert ack["ref_to"] == message_id and ack["correlation_id"] == "bo-4711"
    assert ack["outcome"] == "delivered"
    assert "<bericht" not in gemeente.log.read_text()
