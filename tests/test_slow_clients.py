"""Slow clients against a running ``dkgw serve``: header deadline, minimum body rate, cap.

One gateway process serves the module: the ebMS endpoint over real mutual TLS,
the back-office API and the admin listener over plain HTTP on 127.0.0.1.  The
deadlines are configured small (``header_timeout`` 2 s, ``min_body_rate`` 2000
bytes/s over 1 s windows) and the idle timeout larger than the gap between the
slow clients' bytes, so only the new deadlines can cut them: before them, a
client sending a byte every half second kept its connection as long as it
liked.  Timing asserts are generous ("cut within the deadline plus a few
seconds"): the machine running them is small and shared.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cpa.generate import make_cpa
from gateway.config import ConfigError, load_config
from gateway.ebms.mime import OutgoingPart, build_swa
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import SpecFactory
from tests.gateways import free_port, start_serve, stop_serve, tls_toml
from tests.messages import render

CPA_ID = "slow-clients-cpa"
HEADER_TIMEOUT = 2.0
#: The admin listener's: longer, so the connection-cap test can hold connections.
ADMIN_HEADER_TIMEOUT = 6.0
#: The ebMS listener's cap; the tests before the cap test use one connection at a time.
EBMS_MAX_CONNECTIONS = 6
MIN_BODY_RATE = 2000
#: Larger than any gap a slow client here leaves between its bytes: the idle
#: timeout restarts with every byte and must not be what cuts them.
IDLE_TIMEOUT = 5.0
#: How late after its deadline a cut may come on a loaded machine (the gateway
#: also waits 2 s for the client's TLS close before it aborts).
SLACK = 6.0
#: How long a slow client keeps trying before the test declares it was never cut.
GIVE_UP = 20.0


@dataclass
class Gateway:
    process: object
    ebms_port: int
    api_port: int
    admin_port: int
    log: Path
    context: ssl.SSLContext

    def tls(self, *, handshake: bool = True) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.ebms_port), timeout=10)
        if not handshake:
            return raw
        return self.context.wrap_socket(raw, server_hostname="localhost")

    def plain(self, port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if re.search(pattern, line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r}:\n{self.log_text()}")
            time.sleep(0.05)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())


@pytest.fixture(scope="module")
def gateway(
    pki: Path, make_spec: SpecFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    base = tmp_path_factory.mktemp("slow")
    port, api_port, admin_port = free_port(), free_port(), free_port()
    store = base / "store.sqlite3"
    db = Database.from_url(f"sqlite:///{store}")
    try:
        apply_migrations(db)
        spec = make_spec(profile="osb-rm", sync_reply=True, cpa_id=CPA_ID)
        spec = replace(spec, b=replace(spec.b, endpoint=f"https://localhost:{port}/ebms"))
        CpaRegistry(db).insert(make_cpa(spec), overwrite=True)
    finally:
        db.close()
    config = base / "gateway.toml"
    config.write_text(
        f"""[gateway]
data_dir = "{base / "data"}"
store = "sqlite:///{store}"
node_id = "slow"

[http]
listen = "127.0.0.1:{port}"
path = "/ebms"
idle_timeout = {IDLE_TIMEOUT}
header_timeout = {HEADER_TIMEOUT}
min_body_rate = {MIN_BODY_RATE}
body_rate_window = 1.0
max_connections = {EBMS_MAX_CONNECTIONS}

[api]
listen = "127.0.0.1:{api_port}"
header_timeout = {HEADER_TIMEOUT}
min_body_rate = {MIN_BODY_RATE}

[admin]
listen = "127.0.0.1:{admin_port}"
header_timeout = {ADMIN_HEADER_TIMEOUT}
max_connections = 3

[monitoring]
pings = false

{tls_toml(pki, "ggk-rinis-test")}""",
        encoding="utf-8",
    )
    log = base / "gateway.log"
    process = start_serve(config, log)
    context = ssl.create_default_context(cafile=str(pki / "ca" / "root.pem"))
    client = pki / "gemeente-voorbeeld"
    chain = base / "client-chain.pem"
    chain.write_bytes(
        (client / "tls-client.pem").read_bytes() + (pki / "ca" / "intermediate.pem").read_bytes()
    )
    context.load_cert_chain(chain, client / "tls-client.key")
    try:
        yield Gateway(process, port, api_port, admin_port, log, context)
    finally:
        stop_serve(process)  # type: ignore[arg-type]


# -- slow clients ----------------------------------------------------------------------------


@dataclass
class Cut:
    """How a slow client ended: after how many seconds, and what the server sent."""

    after: float | None  # None: never cut within GIVE_UP
    answer: bytes


def _poll(sock: socket.socket, wait: float) -> tuple[bool, bytes]:
    """(closed, bytes read) after waiting up to ``wait`` seconds for the server."""
    ready, _, _ = select.select([sock], [], [], wait)
    pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
    if not ready and not pending:
        return False, b""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return False, b""  # TLS 1.3 session tickets: no application data
    except (ConnectionError, ssl.SSLError, OSError):
        return True, b""
    finally:
        sock.setblocking(True)
    return (not data), data


def dribble(sock: socket.socket, data: bytes, *, step: int, interval: float) -> Cut:
    """Send ``data`` ``step`` bytes every ``interval`` seconds until the server ends it."""
    start = time.monotonic()
    answer = b""
    offset = 0
    while time.monotonic() - start < GIVE_UP:
        if offset < len(data):
            try:
                sock.sendall(data[offset : offset + step])
            except (ConnectionError, ssl.SSLError, OSError):
                return Cut(time.monotonic() - start, answer)
            offset += step
        closed, got = _poll(sock, interval)
        answer += got
        if closed:
            return Cut(time.monotonic() - start, answer)
    return Cut(None, answer)


def head(path: str = "/ebms", length: int = 10_000) -> bytes:
    return (
        f'POST {path} HTTP/1.1\r\nHost: localhost\r\nSOAPAction: "ebXML"\r\n'
        f"Content-Type: text/xml; charset=UTF-8\r\nContent-Length: {length}\r\n"
        "X-Padding: " + "p" * 200 + "\r\n\r\n"
    ).encode()


def message(size: int, *, keep_alive: bool = False) -> tuple[bytes, bytes]:
    """(head, body) of an ebMS message with one payload of ``size`` bytes."""
    cid = f"payload-{time.monotonic_ns()}@slow"
    content_type, chunks, _ = build_swa(
        render("EbMSMessageWithAttachments", cpa_id=CPA_ID, cids=(cid,)),
        [OutgoingPart(cid, "application/octet-stream", bytes(range(256)) * (size // 256))],
    )
    body = b"".join(chunks)
    request = (
        f"POST /ebms HTTP/1.1\r\nHost: localhost\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        f'SOAPAction: "ebXML"\r\nContent-Type: {content_type}\r\n'
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return request, body


def _cut_in_time(cut: Cut, deadline: float) -> None:
    assert cut.after is not None, f"never cut within {GIVE_UP} s"
    assert deadline - 0.5 <= cut.after <= deadline + SLACK, cut.after


def test_a_client_dribbling_header_bytes_is_cut_at_the_header_deadline(gateway: Gateway) -> None:
    sock = gateway.tls()
    try:
        request_line = b"POST /ebms HTTP/1.1\r\n"
        sock.sendall(request_line)
        cut = dribble(sock, head()[len(request_line) :], step=1, interval=0.5)
    finally:
        sock.close()
    _cut_in_time(cut, HEADER_TIMEOUT)
    # The request line was in, nothing answered yet: a 408.
    assert cut.answer.startswith(b"HTTP/1.1 408 "), cut.answer
    line = gateway.wait_log(r"event=slow-client listener=ebms .*missing=headers")
    assert "peer=127.0.0.1:" in line and "status=408" in line


def test_a_client_dribbling_the_request_line_is_closed_without_an_answer(
    gateway: Gateway,
) -> None:
    sock = gateway.tls()
    try:
        cut = dribble(sock, head(), step=1, interval=0.5)
    finally:
        sock.close()
    _cut_in_time(cut, HEADER_TIMEOUT)
    assert cut.answer == b""
    gateway.wait_log(r"event=slow-client listener=ebms .*missing=request-line")


def test_a_refused_request_is_not_reported_as_a_slow_client(gateway: Gateway) -> None:
    # twisted.web answers a malformed request line with 400 and closes; a client
    # that never reads the answer nor closes is not a slow client.
    sock = gateway.tls()
    try:
        sock.sendall(b"NOT A REQUEST LINE\r\n")
        refused = gateway.wait_log(r"refused: malformed HTTP request")
        time.sleep(HEADER_TIMEOUT + 2.0)
    finally:
        sock.close()
    after = gateway.log_text().split(refused, 1)[1]
    assert "event=slow-client" not in after, after


def test_a_client_that_never_finishes_the_tls_handshake_is_cut(gateway: Gateway) -> None:
    sock = gateway.tls(handshake=False)
    try:
        # The first bytes of a ClientHello record header, then nothing more.
        cut = dribble(sock, b"\x16\x03\x01", step=1, interval=0.5)
    finally:
        sock.close()
    _cut_in_time(cut, HEADER_TIMEOUT)
    line = gateway.wait_log(r"event=slow-client listener=ebms .*missing=tls-handshake")
    _logged_once(gateway, line)


def _logged_once(gateway: Gateway, line: str) -> None:
    """No second line (the handshake watch's ``tls-refused``) for the peer of ``line``."""
    match = re.search(r" peer=(\S+)", line)
    assert match is not None, line
    time.sleep(0.5)
    assert f"event=tls-refused listener=ebms peer={match.group(1)} " not in gateway.log_text()


def test_a_body_under_the_minimum_rate_is_cut(gateway: Gateway) -> None:
    request, body = message(64 * 1024)
    sock = gateway.tls()
    try:
        sock.sendall(request)
        # 100 bytes every half second: 200 B/s, a tenth of the minimum.
        cut = dribble(sock, body, step=100, interval=0.5)
    finally:
        sock.close()
    # Cut at the end of the first 1 s window (deadline counted from the headers).
    _cut_in_time(cut, 1.0)
    assert cut.answer.startswith(b"HTTP/1.1 408 "), cut.answer
    line = gateway.wait_log(r"event=slow-client listener=ebms .*missing=body")
    assert "min_rate=2000B/s" in line


def test_a_slow_but_steady_upload_above_the_rate_passes(gateway: Gateway) -> None:
    # 2 KiB every 0.1 s (about 20 KB/s, ten times the minimum) for some 6 s:
    # longer than the header deadline and than several rate windows.
    request, body = message(120 * 1024)
    sock = gateway.tls()
    try:
        sock.sendall(request)
        cut = dribble(sock, body, step=2048, interval=0.1)
        if cut.after is not None and not cut.answer.startswith(b"HTTP/1.1 200"):
            raise AssertionError(f"cut after {cut.after:.1f} s: {cut.answer[:200]!r}")
    finally:
        sock.close()
    assert cut.answer.startswith(b"HTTP/1.1 200 "), cut.answer[:200]
    assert b"Acknowledgment" in cut.answer


def test_a_normal_message_is_answered(gateway: Gateway) -> None:
    request, body = message(4096)
    sock = gateway.tls()
    try:
        sock.sendall(request + body)
        cut = dribble(sock, b"", step=1, interval=0.5)
    finally:
        sock.close()
    assert cut.answer.startswith(b"HTTP/1.1 200 "), cut.answer[:200]
    assert b"Acknowledgment" in cut.answer


def _answer(sock: socket.socket, timeout: float = 20.0) -> bytes:
    """One whole response with a Content-Length, read from a kept-alive connection."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
        if sep and match and len(body) >= int(match.group(1)):
            return data
        closed, got = _poll(sock, 0.5)
        data += got
        if closed:
            break
    raise AssertionError(f"no whole answer: {data[:200]!r}")


def test_a_kept_alive_connection_is_not_cut_between_requests(gateway: Gateway) -> None:
    # The header deadline runs from the next request's first byte, not from the
    # connection's start; a quiet kept-alive connection is the idle timeout's.
    sock = gateway.tls()
    try:
        for _ in range(2):
            request, body = message(4096, keep_alive=True)
            sock.sendall(request + body)
            assert _answer(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(HEADER_TIMEOUT + 1.0)  # below IDLE_TIMEOUT
        # The next request, dribbled, is cut at its own header deadline.
        line = b"POST /ebms HTTP/1.1\r\n"
        sock.sendall(line)
        cut = dribble(sock, head()[len(line) :], step=1, interval=0.5)
    finally:
        sock.close()
    _cut_in_time(cut, HEADER_TIMEOUT)
    assert cut.answer.startswith(b"HTTP/1.1 408 "), cut.answer


def test_the_api_and_admin_listeners_have_the_header_deadline(gateway: Gateway) -> None:
    for name, port, path, timeout in (
        ("api", gateway.api_port, "/service/rest/v19/cpas", HEADER_TIMEOUT),
        ("admin", gateway.admin_port, "/metrics", ADMIN_HEADER_TIMEOUT),
    ):
        sock = gateway.plain(port)
        try:
            line = f"POST {path} HTTP/1.1\r\n".encode()
            sock.sendall(line)
            cut = dribble(sock, head(path)[len(line) :], step=1, interval=0.5)
        finally:
            sock.close()
        _cut_in_time(cut, timeout)
        assert cut.answer.startswith(b"HTTP/1.1 408 "), (name, cut.answer)
        gateway.wait_log(rf"event=slow-client listener={name} .*missing=headers")


def test_the_api_listener_has_the_minimum_body_rate(gateway: Gateway) -> None:
    sock = gateway.plain(gateway.api_port)
    try:
        sock.sendall(head("/service/rest/v19/cpas", 50_000))
        cut = dribble(sock, b"x" * 50_000, step=100, interval=0.5)
    finally:
        sock.close()
    # The API's window is [http] body_rate_window (1 s here).
    _cut_in_time(cut, 1.0)
    gateway.wait_log(r"event=slow-client listener=api .*missing=body")


def test_a_listener_over_its_connection_cap_closes_new_connections(gateway: Gateway) -> None:
    # [admin] max_connections = 3: three idle connections fill it.
    held = [gateway.plain(gateway.admin_port) for _ in range(3)]
    try:
        time.sleep(0.3)
        try:
            extra = gateway.plain(gateway.admin_port)
        except ConnectionResetError:
            # Closed so fast that the reset reached connect() itself: closed all the same.
            pass
        else:
            try:
                closed, _ = _poll(extra, 5.0)
                assert closed, "the connection over the cap was not closed"
            finally:
                extra.close()
        gateway.wait_log(r"event=connections-full listener=admin .*limit=3")
    finally:
        for sock in held:
            sock.close()


def test_the_ebms_listener_over_its_cap_closes_new_connections(gateway: Gateway) -> None:
    # TCP connections that never start their TLS handshake fill the cap; the
    # header deadline ends them after 2 s, so the log line is the evidence.
    held = [gateway.tls(handshake=False) for _ in range(EBMS_MAX_CONNECTIONS)]
    for _ in range(2):
        # Over the cap the gateway closes at once: on a busy machine the reset can
        # reach this client before its connect() returns.
        with contextlib.suppress(ConnectionResetError):
            held.append(gateway.tls(handshake=False))
    try:
        line = gateway.wait_log(
            rf"event=connections-full listener=ebms .*limit={EBMS_MAX_CONNECTIONS}"
        )
        _logged_once(gateway, line)
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, a new client is served again.
    time.sleep(HEADER_TIMEOUT + 1.0)
    request, body = message(4096)
    sock = gateway.tls()
    try:
        sock.sendall(request + body)
        cut = dribble(sock, b"", step=1, interval=0.5)
    finally:
        sock.close()
    assert cut.answer.startswith(b"HTTP/1.1 200 "), cut.answer[:200]


def test_the_cuts_are_counted(gateway: Gateway) -> None:
    sock = gateway.tls()
    try:
        cut = dribble(sock, head(), step=1, interval=0.5)
    finally:
        sock.close()
    assert cut.after is not None
    deadline = time.monotonic() + 10
    while True:
        text = gateway.metrics()
        match = re.search(
            r'^dkgw_slow_clients_total\{listener="ebms",missing="request-line"\} (\S+)$',
            text,
            re.MULTILINE,
        )
        if match and float(match.group(1)) >= 1:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert "dkgw_connections_refused_total" in text


@pytest.mark.parametrize(
    ("section", "setting", "message"),
    [
        ("http", "header_timeout = 0", "[http] header_timeout must be positive"),
        ("http", "min_body_rate = -1", "[http] min_body_rate must be 0 (off) or positive"),
        ("http", "body_rate_window = 0", "[http] body_rate_window must be positive"),
        ("http", "max_connections = 0", "[http] max_connections must be at least 1"),
        ("api", "header_timeout = -2", "[api] header_timeout must be positive"),
        ("api", "min_body_rate = -5", "[api] min_body_rate must be 0 (off) or positive"),
        ("admin", "max_connections = 0", "[admin] max_connections must be at least 1"),
    ],
)
def test_nonsense_deadlines_are_refused_in_the_config(
    pki: Path, tmp_path: Path, section: str, setting: str, message: str
) -> None:
    listen = {"http": "127.0.0.1:8443", "api": "127.0.0.1:8444", "admin": "127.0.0.1:8445"}
    sections = "\n".join(
        f'[{name}]\nlisten = "{address}"\n{setting if name == section else ""}\n'
        for name, address in listen.items()
    )
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path}"\n\n{sections}\n{tls_toml(pki, "ggk-rinis-test")}',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert message in str(caught.value)


def test_the_deadlines_reach_the_config(pki: Path, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path}"\n\n[http]\nlisten = "127.0.0.1:8443"\n'
        "header_timeout = 7.5\nmin_body_rate = 0\nbody_rate_window = 3.0\nmax_connections = 9\n"
        '[api]\nlisten = "127.0.0.1:8444"\nheader_timeout = 4.0\nmax_connections = 5\n'
        '[admin]\nlisten = "127.0.0.1:8445"\nmax_connections = 2\n\n'
        + tls_toml(pki, "ggk-rinis-test"),
        encoding="utf-8",
    )
    loaded = load_config(config)
    http = loaded.http
    assert (http.header_timeout, http.min_body_rate, http.body_rate_window) == (7.5, 0, 3.0)
    assert http.max_connections == 9
    assert (loaded.api.header_timeout, loaded.api.min_body_rate) == (4.0, 4096)
    assert loaded.api.max_connections == 5
    assert (loaded.admin.header_timeout, loaded.admin.max_connections) == (20.0, 2)
