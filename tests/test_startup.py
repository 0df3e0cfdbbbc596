"""``dkgw serve`` as a process: honest starts, SIGHUP, /health and /ready, refused handshakes.

Every gateway here is a real ``dkgw serve`` subprocess on 127.0.0.1 with the
session's example PKI; clients are ``openssl s_client`` and Python's ``ssl``.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, task

from gateway.monitor.heartbeat import Heartbeats
from tests.conftest import DIALECTS
from tests.gateways import (
    Side,
    free_port,
    gateway_config,
    start_serve,
    stop_serve,
    store_url,
    tls_toml,
)


def dkgw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(tmp_path: Path, pki: Path, *, port: int, extra: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "var"}"\nnode_id = "startup"\n'
        f'[http]\nlisten = "127.0.0.1:{port}"\n'
        "[monitoring]\npings = false\n" + tls_toml(pki, "gemeente-voorbeeld") + extra
    )
    return config


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- failed starts --------------------------------------------------------------------


@pytest.mark.parametrize("busy", ["ebms", "admin"])
def test_a_port_in_use_ends_serve_with_one_line_and_nothing_left_open(
    pki: Path, tmp_path: Path, busy: str
) -> None:
    ebms, admin = free_port(), free_port()
    config = write_config(
        tmp_path, pki, port=ebms, extra=f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
    )
    taken = ebms if busy == "ebms" else admin
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        done = dkgw("serve", "--config", str(config), timeout=30)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"dkgw: cannot listen on 127.0.0.1:{taken}: address already in use"
    )
    assert "Traceback" not in done.stderr + done.stdout
    # The listener that did open was closed again (the process is gone anyway, but
    # it closed it itself: "event=stopped" after the failure).
    assert port_is_free(ebms) and port_is_free(admin)
    assert "event=stopped" in done.stderr


def test_data_dir_that_is_a_file_ends_serve_with_one_line(pki: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, pki, port=free_port())
    (tmp_path / "var").write_text("not a directory")
    done = dkgw("serve", "--config", str(config), timeout=30)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"dkgw: error: [gateway] data_dir: {tmp_path / 'var'} is not a directory"
    ]


def test_unreadable_key_ends_serve_with_one_line(pki: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, pki, port=free_port())
    key = pki / "gemeente-voorbeeld" / "tls-server.key"
    config.write_text(config.read_text().replace(str(key), str(tmp_path)))  # a directory
    done = dkgw("serve", "--config", str(config), timeout=30)
    assert done.returncode == 1
    assert f"dkgw: error: [tls] key: cannot read {tmp_path}: Is a directory" in done.stderr
    assert "Traceback" not in done.stderr


# -- a running gateway ----------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    log: Path
    ebms: int
    api: int
    admin: int
    tmp: Path

    def admin_get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str, **labels: str) -> float:
        _, body = self.admin_get("/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log.read_text(errors="replace")
            if text in log:
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{self.log.read_text(errors='replace')}")


@pytest.fixture
def served(pki: Path, tmp_path: Path) -> Iterator[Served]:
    """A gateway whose [tls] server certificate is a copy we may replace."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("tls-server.pem", "tls-server.key"):
        shutil.copy(pki / "gemeente-voorbeeld" / name, certs / name)
    ebms, api, admin = free_port(), free_port(), free_port()
    party = pki / "gemeente-voorbeeld"
    config = write_config(
        tmp_path,
        pki,
        port=ebms,
        extra=f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'[api]\nlisten = "127.0.0.1:{api}"\n'
        f'certificate = "{party / "tls-server.pem"}"\nkey = "{party / "tls-server.key"}"\n'
        f'client_ca = "{pki / "ca" / "root.pem"}"\n',
    )
    text = config.read_text()
    text = text.replace(str(party / "tls-server.pem"), str(certs / "tls-server.pem"), 1)
    text = text.replace(str(party / "tls-server.key"), str(certs / "tls-server.key"), 1)
    config.write_text(text)
    process = start_serve(config, tmp_path / "serve.log")
    try:
        yield Served(process, tmp_path / "serve.log", ebms, api, admin, tmp_path)
    finally:
        stop_serve(process)


def client_context(pki: Path) -> ssl.SSLContext:
    """Our client certificate with its intermediate; the server's is not checked here."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    party = pki / "gemeente-voorbeeld"
    chained = pki.parent / "tls-client-chain.pem"
    if not chained.exists():
        chained.write_bytes(
            (party / "tls-client.pem").read_bytes() + (pki / "ca/intermediate.pem").read_bytes()
        )
    ctx.load_cert_chain(chained, party / "tls-client.key")
    return ctx


def server_certificate(port: int, pki: Path) -> x509.Certificate:
    """The certificate a new TLS connection to ``port`` is shown (we present ours too)."""
    ctx = client_context(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_sighup_serves_the_new_certificate_to_new_connections(served: Served, pki: Path) -> None:
    before = server_certificate(served.ebms, pki)
    assert "Gemeente Voorbeeld" in before.subject.rfc4514_string()
    # An open connection made before the reload stays open.
    kept = client_context(pki).wrap_socket(
        socket.create_connection(("127.0.0.1", served.ebms), timeout=10)
    )
    try:
        other = pki / "ggk-rinis-test"
        certs = served.tmp / "certs"
        shutil.copy(other / "tls-server.pem", certs / "tls-server.pem")
        shutil.copy(other / "tls-server.key", certs / "tls-server.key")
        served.process.send_signal(signal.SIGHUP)
        log = served.wait_log("event=reloaded")
        assert "tls-ebms" in log and "tls-client" in log and "tls-api" in log
        after = server_certificate(served.ebms, pki)
        assert (
            after.subject
            == x509.load_pem_x509_certificate((other / "tls-server.pem").read_bytes()).subject
        )
        assert served.process.poll() is None
        assert "event=tls-refused" not in log
        kept.sendall(b"GET /ebms HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(12).startswith(b"HTTP/1.1")

        # A reload that fails keeps what is in use and says so in one line.
        (certs / "tls-server.key").write_text("not a key")
        served.process.send_signal(signal.SIGHUP)
        log = served.wait_log("event=reload-failed")
        [line] = [x for x in log.splitlines() if "event=reload-failed" in x]
        assert "holds no PEM private key" in line or "no PEM private key" in line
        assert server_certificate(served.ebms, pki).subject == after.subject
        assert served.process.poll() is None
    finally:
        kept.close()


def test_health_and_ready(served: Served) -> None:
    code, body = served.admin_get("/health")
    assert (code, json.loads(body)) == (200, {"status": "alive"})
    code, body = served.admin_get("/ready")
    assert (code, json.loads(body)) == (200, {"status": "ready"})


def test_ready_says_why_not(pki: Path, tmp_path: Path) -> None:
    admin = free_port()
    config = write_config(
        tmp_path,
        pki,
        port=free_port(),
        # More free space than any disk has.
        extra=f'[admin]\nlisten = "127.0.0.1:{admin}"\nready_min_free_mb = 1000000000000\n',
    )
    process = start_serve(config, tmp_path / "serve.log")
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=10)
        except urllib.error.HTTPError as exc:
            code, document = exc.code, json.loads(exc.read())
        else:  # pragma: no cover - the assertion below fails
            code, document = 200, {}
        assert code == 503
        assert document["status"] == "not ready"
        [reason] = document["reasons"]
        assert reason.startswith("disk: ") and "below 1000000000000 MiB" in reason
    finally:
        stop_serve(process)


# -- refused handshakes ---------------------------------------------------------------


def s_client(port: int, *args: str) -> None:
    subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input=b"GET / HTTP/1.1\r\n\r\n",
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_refused_handshakes_are_logged_and_counted(served: Served, pki: Path) -> None:
    foreign = pki / "negative"
    s_client(served.ebms)
    s_client(
        served.ebms,
        "-cert",
        str(foreign / "foreign-client.pem"),
        "-key",
        str(foreign / "foreign-client.key"),
    )
    s_client(served.ebms, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    s_client(
        served.ebms,
        "-cert",
        str(foreign / "expired.pem"),
        "-key",
        str(foreign / "expired.key"),
        "-cert_chain",
        str(pki / "ca" / "intermediate.pem"),
    )
    s_client(served.api)
    log = served.wait_log("listener=api")
    lines = [x for x in log.splitlines() if "event=tls-refused" in x]
    assert len(lines) == 5, log
    expired = lines.pop(3)
    assert "reason=expired-certificate" in expired and "client certificate has expired" in expired
    assert "subject=" in expired and "Gemeente Voorbeeld TLS client" in expired
    assert "listener=ebms" in lines[0] and "reason=no-client-certificate" in lines[0]
    assert "peer=127.0.0.1:" in lines[0] and "detail=no client certificate" in lines[0]
    assert "reason=untrusted-certificate" in lines[1]
    assert "subject=" in lines[1] and "subject=-" not in lines[1]
    assert "client certificate not trusted" in lines[1]
    assert "reason=protocol-version" in lines[2] and "protocol version too old" in lines[2]
    assert "listener=api" in lines[3] and "reason=no-client-certificate" in lines[3]
    name = "dkgw_tls_handshake_failures_total"
    assert served.metric(name, listener="ebms", reason="no-client-certificate") == 1
    assert served.metric(name, listener="ebms", reason="untrusted-certificate") == 1
    assert served.metric(name, listener="ebms", reason="protocol-version") == 1
    assert served.metric(name, listener="ebms", reason="expired-certificate") == 1
    assert served.metric(name, listener="api", reason="no-client-certificate") == 1
    # A good client is not counted.
    server_certificate(served.ebms, pki)
    assert served.metric(name, listener="ebms", reason="no-client-certificate") == 1


# -- readiness of an in-process gateway -----------------------------------------------


def test_heartbeats_go_stale_after_three_intervals() -> None:
    now = [100.0]
    beats = Heartbeats(clock=lambda: now[0])
    beats.beat("delivery", 1.0)
    beats.beater("pings", 5.0)()
    assert beats.last("delivery") == 100.0 and beats.last("webhooks") is None
    now[0] = 102.9
    assert beats.stale() == []
    now[0] = 103.5
    assert beats.stale() == ["delivery: no tick for 3.5 s (interval 1 s)"]
    assert beats.stale(now=116.0) == [
        "delivery: no tick for 16.0 s (interval 1 s)",
        "pings: no tick for 16.0 s (interval 5 s)",
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest_twisted.ensureDeferred
async def test_ready_reports_a_stuck_loop_and_a_store_that_does_not_answer(
    pki: Path, tmp_path: Path, dialect: str
) -> None:
    config = gateway_config(
        pki, "gemeente-voorbeeld", tmp_path / "a", store_url(dialect, tmp_path, "a")
    )
    side = Side("a", config)
    side.start()
    gateway = side.gateway
    assert gateway is not None and gateway.worker is not None and gateway.db is not None
    try:
        assert await gateway.readiness() == []
        await gateway.worker.stop()  # the delivery loop no longer ticks
        await task.deferLater(reactor, 3 * config.delivery.poll_interval + 0.3, lambda: None)
        [reason] = await gateway.readiness()
        assert reason.startswith("delivery: no tick for ")
        gateway.db.close()
        reasons = await gateway.readiness()
        assert reasons[-1].startswith("store: ") and "is closed" in reasons[-1]
    finally:
        await side.stop()
