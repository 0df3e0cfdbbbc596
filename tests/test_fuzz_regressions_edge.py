"""Regressions found by fuzzing the HTTP edges and the back-office APIs.

Each test holds the smallest input that made the gateway answer badly (a
traceback in the log, a 500, library internals in an answer, a stored row that
broke a listing) before its fix.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import re
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cpa.generate import make_cpa
from gateway.store.cpas import PARSED_CPAS, CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import GEMEENTE_OIN, SpecFactory
from tests.gateways import SERVICE, free_port, start_serve, stop_serve, tls_toml
from tests.messages import render

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
    store: Path
    pki: Path

    def api(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> tuple[int, str]:
        """One request to the API listener: (status, body text)."""
        conn = http.client.HTTPSConnection(
            "localhost", self.ports["api"], context=self.context, timeout=30
        )
        try:
            conn.request(method, path, body=body, headers={"Content-Type": content_type})
            answer = conn.getresponse()
            return answer.status, answer.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def rest(self, method: str, path: str, document: object = None) -> tuple[int, str]:
        body = b"" if document is None else json.dumps(document).encode()
        return self.api(method, "/service/rest/v19" + path, body)

    def soap(
        self, service: str, namespace: str, operation: str, inner: str = ""
    ) -> tuple[int, str]:
        envelope = (
            '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
            f'<soap:Body><ns:{operation} xmlns:ns="{namespace}">{inner}</ns:{operation}>'
            "</soap:Body></soap:Envelope>"
        )
        return self.api("POST", f"/service/{service}", envelope.encode(), "text/xml; charset=utf-8")

    def send(self, listener: str, data: bytes, timeout: float = 10.0, read: bool = True) -> bytes:
        """``data`` in one write; everything the server answers (nothing: hang up at once)."""
        raw = socket.create_connection(("127.0.0.1", self.ports[listener]), timeout=timeout)
        with self.context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(data)
            if not read:
                return b""
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
        yield Edge(process, ports, log, context, store, pki)
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


# -- the REST API: what reaches the door ----------------------------------------------------

CERTMAP_NS = "http://www.ordina.nl/cpa/certificateMapping/2.18"


def _der(path: Path) -> str:
    pem = path.read_text()
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    return base64.b64encode(base64.b64decode(body)).decode()


@pytest.mark.parametrize("path", ["/urlMappings", "/certificateMappings", "/ebms/messages"])
def test_deeply_nested_json_is_a_bad_request(edge: Edge, path: str) -> None:
    # json.loads recursed into a RecursionError: "internal error", a 500.
    status, text = edge.api("POST", "/service/rest/v19" + path, b"[" * 100_000)
    assert status == 400, text
    assert "nested deeper than" in text
    # Just within the bound is parsed (and refused for what it is, not for its depth).
    status, text = edge.api("POST", "/service/rest/v19" + path, b"[" * 32 + b"]" * 32)
    assert status == 400 and "nested" not in text, text


def test_a_bad_certificate_is_refused_in_our_words(edge: Edge) -> None:
    destination = _der(edge.pki / "ggk-rinis-test" / "signing.pem")
    junk = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    status, text = edge.rest(
        "POST", "/certificateMappings", {"source": junk, "destination": destination}
    )
    # Before: "source is not a DER X.509 certificate: error parsing asn1 value: ParseError {...}"
    assert (status, text) == (400, "source is not a DER X.509 certificate\n")


@pytest.mark.parametrize(
    ("cpa_id", "reason"),
    [
        ("edge-cpa\x01", "control character"),
        ("no-such-cpa", "names no stored CPA"),
        ("x" * 257, "longer than 256"),
    ],
    ids=["control", "unknown", "long"],
)
def test_a_certificate_mapping_must_name_a_stored_cpa(edge: Edge, cpa_id: str, reason: str) -> None:
    source = _der(edge.pki / "gemeente-voorbeeld" / "signing.pem")
    destination = _der(edge.pki / "ggk-rinis-test" / "signing.pem")
    mapping = {"source": source, "destination": destination, "cpaId": cpa_id}
    status, text = edge.rest("POST", "/certificateMappings", mapping)
    assert status == 400 and reason in text, (status, text)
    status, text = edge.soap("certificateMapping", CERTMAP_NS, "getCertificateMappings")
    assert status == 200, text


def test_the_soap_listing_survives_a_bad_row_stored_earlier(edge: Edge) -> None:
    source = _der(edge.pki / "gemeente-voorbeeld" / "signing.pem")
    destination = _der(edge.pki / "ggk-rinis-test" / "signing.pem")
    good = {"source": source, "destination": destination, "cpaId": CPA_ID}
    assert edge.rest("POST", "/certificateMappings", good)[0] == 204
    # A row as an earlier version stored it: a cpaId with a control character.
    conn = sqlite3.connect(edge.store)
    try:
        conn.execute(
            "INSERT INTO certificate_mapping "
            "(source_sha256, source, destination, cpa_id, created_at, updated_at) "
            "SELECT source_sha256, source, destination, 'bad\x01', created_at, updated_at "
            "FROM certificate_mapping WHERE cpa_id = ?",
            (CPA_ID,),
        )
        conn.commit()
    finally:
        conn.close()
    try:
        status, text = edge.soap("certificateMapping", CERTMAP_NS, "getCertificateMappings")
        assert status == 200, text
        assert f"<cpaId>{CPA_ID}</cpaId>" in text and "bad" not in text
        status, text = edge.rest("GET", "/certificateMappings")
        assert status == 200 and "bad\\u0001" in text, text
    finally:
        conn = sqlite3.connect(edge.store)
        conn.execute("DELETE FROM certificate_mapping")
        conn.commit()
        conn.close()


def _message(**properties: str) -> dict[str, object]:
    return {
        "properties": {
            "cpaId": CPA_ID,
            "fromPartyId": f"urn:osb:oin:{GEMEENTE_OIN}",
            "service": SERVICE.key(),
            "action": "WMO301",
            **properties,
        },
        "dataSources": [{"contentType": "application/xml", "content": "PHgvPg=="}],
    }


@pytest.mark.parametrize(
    ("properties", "reason"),
    [
        ({"conversationId": "c\x01"}, "properties.conversationId contains a control"),
        ({"messageId": "m\x7f@edge"}, "properties.messageId contains a control"),
        ({"refToMessageId": "r\u0085"}, "properties.refToMessageId contains a control"),
        ({"conversationId": "c" * 257}, "properties.conversationId is longer than 256"),
        ({"fromRole": "Gemeente\x00"}, "properties.fromRole contains a control"),
    ],
    ids=["conversation", "message", "ref-to", "long-conversation", "role"],
)
def test_send_message_refuses_identifiers_no_listing_could_show(
    edge: Edge, properties: dict[str, str], reason: str
) -> None:
    status, text = edge.rest("POST", "/ebms/messages", _message(**properties))
    assert status == 400 and text.startswith(reason), (status, text)


def test_a_url_mapping_is_bounded(edge: Edge) -> None:
    long = "https://partner.example/" + "a" * 2100
    status, text = edge.rest(
        "POST", "/urlMappings", {"source": long, "destination": "https://b.example/"}
    )
    assert status == 400 and "longer than 2048" in text, text


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        # A lone surrogate (a JSON escape) cannot be stored: the store's encoder raised (500).
        (_message(cpaId="\ud800"), "properties.cpaId contains a control character"),
        (_message(conversationId="\udfff"), "properties.conversationId contains a control"),
        (
            {**_message(), "dataSources": [{"contentType": "\ud800", "content": "PHgvPg=="}]},
            "dataSources[0].contentType contains a control character",
        ),
        (
            {
                **_message(),
                "dataSources": [
                    {"contentType": "text/xml", "content": "PHgvPg==", "name": "a\ud800"}
                ],
            },
            "dataSources[0].name contains a control character",
        ),
        (
            {
                **_message(),
                "dataSources": [
                    {"contentType": "text/xml", "content": "PHgvPg==", "contentId": "\x00"}
                ],
            },
            "dataSources[0].contentId contains a control character",
        ),
    ],
    ids=["cpa-surrogate", "conversation-surrogate", "content-type", "name", "content-id"],
)
def test_send_message_refuses_what_the_store_cannot_hold(
    edge: Edge, document: dict[str, object], reason: str
) -> None:
    status, text = edge.rest("POST", "/ebms/messages", document)
    assert status == 400 and text.startswith(reason), (status, text)


# -- resources under a hostile loop -----------------------------------------------------------


def _open_files(pid: int) -> list[str]:
    """What the process's descriptors point at, store files aside (one set per store thread)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while listing
        if ".sqlite3" not in target:
            found.append(re.sub(r"\[\d+\]", "", target))
    return sorted(found)


def test_hostile_requests_leave_no_socket_or_spool_file_open(edge: Edge) -> None:
    rng = random.Random(7)  # noqa: S311 - a reproducible mix, not a secret
    template = render("EbMSMessage", cpa_id=CPA_ID)
    pid = edge.process.pid  # type: ignore[attr-defined]

    def hostile(n: int) -> None:
        for _ in range(n):
            body = bytearray(template)
            for _ in range(rng.randint(1, 6)):
                i = rng.randrange(len(body))
                if rng.random() < 0.5:
                    body[i] = rng.randrange(256)
                else:
                    del body[i : i + rng.randint(1, 100)]
            if rng.random() < 0.3:
                body += os.urandom(rng.randint(1, 300_000))  # spooled to disk
            head = (
                f"POST /ebms HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                f'SOAPAction: "ebXML"\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n'
            ).encode()
            cut = rng.random() < 0.15  # hang up halfway
            if cut:
                edge.send("ebms", head + bytes(body[: len(body) // 2]), read=False)
            else:
                edge.send("ebms", head + bytes(body), timeout=10)

    hostile(50)  # the store threads and their connections exist from here on
    before = _open_files(pid)
    hostile(300)
    # Nothing more than before (a connection of the warm-up may still have been closing).
    deadline = time.monotonic() + 20
    while (extra := Counter(_open_files(pid)) - Counter(before)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not extra, (extra, before)


def test_the_parsed_cpa_cache_is_bounded(tmp_path: Path, make_spec: SpecFactory) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    try:
        apply_migrations(db)
        registry = CpaRegistry(db, max_parsed=3)
        for n in range(5):
            registry.insert(make_cpa(make_spec(cpa_id=f"cpa-{n}")))
            registry.get_cpa(f"cpa-{n}")
        assert list(registry._parsed) == [registry.get(f"cpa-{n}").sha256 for n in (2, 3, 4)]
        registry.get_cpa("cpa-3")  # used: now the most recent
        assert list(registry._parsed)[-1] == registry.get("cpa-3").sha256
        assert CpaRegistry(db)._max_parsed == PARSED_CPAS
    finally:
        db.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"source": "htt' + b"ab" * 60,  # an unterminated string
        b'"' + b'a\\"' * 20_000,  # escaped quotes all the way, never closed
        b"[" * 33 + b"]" * 33,
    ],
    ids=["unterminated", "escaped-quotes", "33-levels"],
)
def test_the_json_depth_check_answers_at_once(body: bytes) -> None:
    # The depth was counted with a regular expression over the raw bytes that
    # backtracked exponentially on an unterminated string: a 130-byte body held
    # an API thread for good.  Run in a child so a regression is a failure, not
    # a hung suite.
    code = (
        "import sys\n"
        "from adapters.api.rest import bounded_json\n"
        "from adapters.api.service import BadRequest\n"
        "try:\n"
        "    bounded_json(sys.stdin.buffer.read())\n"
        "except BadRequest as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=body, capture_output=True, timeout=30, check=True
    )
    assert done.stdout.strip(), done.stderr
