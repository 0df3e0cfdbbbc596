"""Regressions found by fuzzing the HTTP edges and the back-office APIs.

Each test holds the smallest input that made the gateway answer badly (a
traceback in the log, a 500, library internals in an answer, a stored row that
broke a listing) before its fix.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cpa.generate import make_cpa
from cpa.registry import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import SpecFactory
from tests.gateways import free_port, start_serve, stop_serve, tls_toml

CPA_ID = "edge-cpa"
#: What must never be in the gateway's log after a refusal.
CRASH = re.compile(r"Traceback|CRITICAL|Unhandled Error")


@dataclass
class Edge:
    """A running ``dkgw serve`` with its ebMS, API and admin listeners, all on mutual TLS."""

    process: object
    ports: dict[str, int]
    log: Path
    context: ssl.SSLContext

    def send(self, listener: str, data: bytes, timeout: float = 10.0) -> bytes:
        """``data`` in one TLS write (so one TLS record); everything the server answers."""
        raw = socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=timeout)
        with self.context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(data)
            answer = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, ConnectionResetError, ssl.SSLError):
                    break
                if not chunk:
                    break
                answer += chunk
            return answer

    def log_since(self, mark: int) -> str:
        with self.log.open("rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def edge(
    pki: Path, make_spec: SpecFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Edge]:
    base = tmp_path_factory.mktemp("edge")
    ports = {name: free_port() for name in ("ebms", "api", "admin")}
    store = base / "store.sqlite3"
    db = Database.from_url(f"sqlite:///{store}")
    try:
        apply_migrations(db)
        spec = make_spec(profile="osb-rm", cpa_id=CPA_ID)
        spec = replace(spec, b=replace(spec.b, endpoint=f"https://localhost:{ports['ebms']}/ebms"))
        CpaRegistry(db).insert(make_cpa(spec), overwrite=True)
    finally:
        db.close()
    party, ca = pki / "ggk-rinis-test", pki / "ca"
    listener_tls = (
        f'certificate = "{party / "tls-server.pem"}"\nkey = "{party / "tls-server.key"}"\n'
        f'client_ca = "{ca / "root.pem"}"\n'
    )
    config = base / "gateway.toml"
    config.write_text(
        f"""[gateway]
data_dir = "{base / "data"}"
store = "sqlite:///{store}"
node_id = "edge"

[http]
listen = "127.0.0.1:{ports["ebms"]}"
path = "/ebms"

{tls_toml(pki, "ggk-rinis-test")}
[monitoring]
pings = false

[api]
listen = "127.0.0.1:{ports["api"]}"
{listener_tls}
[admin]
listen = "127.0.0.1:{ports["admin"]}"
{listener_tls}""",
        encoding="utf-8",
    )
    log = base / "gateway.log"
    process = start_serve(config, log)
    # The API and admin listeners send their own certificate only: trust the intermediate.
    anchors = base / "anchors.pem"
    anchors.write_bytes((ca / "root.pem").read_bytes() + (ca / "intermediate.pem").read_bytes())
    context = ssl.create_default_context(cafile=str(anchors))
    client = pki / "gemeente-voorbeeld"
    chain = base / "client-chain.pem"
    chain.write_bytes(
        (client / "tls-client.pem").read_bytes() + (ca / "intermediate.pem").read_bytes()
    )
    context.load_cert_chain(chain, client / "tls-client.key")
    try:
        yield Edge(process, ports, log, context)
    finally:
        stop_serve(process)


PATHS = {"ebms": b"/ebms", "api": b"/service/rest/v19/ebms/cpa", "admin": b"/health"}
#: A body over one TLS record (16 KiB): whatever follows the refused head
#: arrives in a dataReceived call of its own.
BODY = b"<x/>\r\n" * 4096


def _status(answer: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize("listener", ["ebms", "api", "admin"])
@pytest.mark.parametrize(
    ("head", "expected"),
    [
        # An empty Content-Length, then the body.
        (b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
        (b"POST %s HTTP/1.1\r\nContent-Length:\r\nHost: a\r\n\r\n", 400),
        # An HTTP/2.0 request line: HTTP/2 has none (RFC 9113 §3.4).
        (b"POST %s HTTP/2.0\r\nHost: a\r\nContent-Length: 4\r\n\r\n", 505),
        (b"GET %s HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ],
    ids=["empty-length-last", "empty-length-first", "http2-post", "http2-get"],
)
def test_malformed_framing_is_answered_cleanly(
    edge: Edge, listener: str, head: bytes, expected: int
) -> None:
    mark = edge.log.stat().st_size
    answer = edge.send(listener, head % PATHS[listener] + BODY)
    deadline = time.monotonic() + 10
    while "refused: " not in edge.log_since(mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # anything the rest of the request would have caused
    assert not CRASH.search(edge.log_since(mark)), edge.log_since(mark)
    assert _status(answer) == expected, answer
    assert b"Content-Length: 0" in answer and b"Connection: close" in answer, answer
