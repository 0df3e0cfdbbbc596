"""Hostile input at the HTTP, MIME and XML levels, against a running ``dkgw serve``.

One gateway process serves the whole module (real mutual TLS on 127.0.0.1, a
SQLite store holding one message received before the attacks).  Every case
is sent over a raw TLS socket, so requests can be truncated, stalled or
malformed in ways no HTTP client library would produce, and must be:

* answered (or cut off) quickly, with the status docs/msh.md promises;
* answered without a stack trace or exception text in the body;
* logged: one line in the gateway's log names the reason, and no traceback;
* harmless: the stored message is untouched and nothing new is stored;
* for the cases that could make a naive parser allocate a lot: bounded in
  memory, measured as the gateway process's peak resident size (VmHWM).

The gateway's idle timeout (``[http] idle_timeout``) is one second here so the stalling
clients can be tested in the time budget.
"""

from __future__ import annotations

import io
import re
import select
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from cpa.generate import make_cpa
from gateway.ebms.envelope import MAX_ENVELOPE_BYTES, EnvelopeError, parse_envelope
from gateway.ebms.mime import MimeError, MimeLimits, OutgoingPart, build_swa
from gateway.http.server import SoapPartTooLarge, split_package
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import SpecFactory
from tests.gateways import free_port, start_serve, stop_serve, tls_toml
from tests.messages import render
from xmlsafe import UnsafeXmlError, parse_xml

# The matrix shares one dkgw serve process (the module's target): one worker runs it all.
pytestmark = pytest.mark.xdist_group("hardening")

CPA_ID = "hardening-cpa"
MAX_REQUEST = 8 * 1024 * 1024
IDLE_TIMEOUT = 1.0
#: How long a refusal may take (the machine is small and shared).
FAST = 2.0
#: How far the gateway's peak resident size may rise during one memory case.
#: Measured: at most 1.5 MiB.  Before the fixes a 6 MiB text/xml envelope cost
#: 11.7 MiB, a 7 MiB form upload 55 MiB and a 7 MiB urlencoded body 69 MiB.
MEMORY_BOUND = 8 * 1024 * 1024

#: What must never reach a partner: Python's traceback and exception names.
LEAK = re.compile(
    rb"Traceback|File \"|\b(?!MessageError\b)[A-Z][A-Za-z]*(?:Error|Exception)\b|lxml|twisted"
)


# -- the gateway under attack --------------------------------------------------------------


@dataclass
class Answer:
    """What came back: the status (None when the server hung up without one), headers, body."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    elapsed: float
    sent_all: bool


@dataclass
class Target:
    """The running gateway process and what the tests need to reach and watch it."""

    process: subprocess.Popen[bytes]
    port: int
    pki: Path
    store: Path
    log: Path
    trap: socket.socket  # must never be connected to (external entities)
    stored: list[tuple[object, ...]] = field(default_factory=list)
    context: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.context = ssl.create_default_context(cafile=str(self.pki / "ca" / "root.pem"))
        # The municipality's client certificate with its intermediate: the
        # gateway trusts the root only.
        client = self.pki / "gemeente-voorbeeld"
        chain = self.log.parent / "client-chain.pem"
        chain.write_bytes(
            (client / "tls-client.pem").read_bytes()
            + (self.pki / "ca" / "intermediate.pem").read_bytes()
        )
        self.context.load_cert_chain(chain, client / "tls-client.key")

    # -- talking to it --

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context.wrap_socket(raw, server_hostname="localhost")

    def exchange(self, request: Raw, timeout: float = 5.0) -> Answer:
        """Send ``request``, then read the answer (or hang up / wait, as the request says)."""
        start = time.monotonic()
        sock = self.connect()
        sent_all = True
        early = b""
        try:
            sock.sendall(request.head)
            for chunk in request.body:
                early = _early_answer(sock)
                if early:
                    sent_all = False  # the server answered early: stop, as a client would
                    break
                try:
                    sock.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    sent_all = False
                    break
            if request.then == "close":
                return Answer(None, {}, b"", time.monotonic() - start, sent_all)
            sock.settimeout(timeout)
            data = _read_response(sock, early)
        finally:
            sock.close()
        status, headers, body = _parse_response(data)
        return Answer(status, headers, body, time.monotonic() - start, sent_all)

    # -- watching it --

    def log_mark(self) -> int:
        return self.log.stat().st_size

    def log_since(self, mark: int) -> str:
        with self.log.open("rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, mark: int, pattern: str, timeout: float = FAST) -> str:
        """The first new log line matching ``pattern`` (polled: the log is written async)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_since(mark).splitlines():
                if re.search(pattern, line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no log line matching {pattern!r}; new lines:\n{self.log_since(mark)}"
                )
            time.sleep(0.02)

    def memory(self, key: str = "VmHWM") -> int:
        """The process's peak (VmHWM) or current (VmRSS) resident size in bytes."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None
        return int(match.group(1)) * 1024

    def reset_peak(self) -> int:
        """Start a new peak at the current resident size (Linux: clear_refs 5); returns it."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self.memory("VmRSS")

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(f"{self.store.as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def snapshot(self) -> list[tuple[object, ...]]:
        """Every stored message and payload, as rows: what no attack may change."""
        return self.rows(
            "SELECT m.message_id, m.direction, m.status, m.fingerprint, a.content_id, a.sha256 "
            "FROM ebms_message m LEFT JOIN ebms_attachment a ON a.message_pk = m.id "
            "ORDER BY m.id, a.order_nr"
        )


def _early_answer(sock: ssl.SSLSocket) -> bytes:
    """Whatever answer the server has sent already (b"" when none), without blocking.

    The socket being readable is not enough: with TLS 1.3 the server's session
    tickets arrive after the handshake and carry no application data.
    """
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready and not sock.pending():
        return b""
    sock.setblocking(False)
    try:
        return sock.recv(65536) or b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return b""
    except (ConnectionResetError, ssl.SSLError):
        return b""
    finally:
        sock.setblocking(True)


def _read_response(sock: ssl.SSLSocket, data: bytes = b"") -> bytes:
    """Read one response: up to Content-Length when given, else until the server hangs up."""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and head.startswith(b"HTTP/1.1 1"):  # 100 Continue: the real answer follows
            data = body
            continue
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
        if sep and match and len(body) >= int(match.group(1)):
            return data
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError, ssl.SSLError):
            return data
        if not chunk:
            return data
        data += chunk


def _parse_response(data: bytes) -> tuple[int | None, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if match is None:
        return None, {}, data
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return int(match.group(1)), headers, body


@pytest.fixture(scope="module")
def target(
    pki: Path, make_spec: SpecFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    base = tmp_path_factory.mktemp("hardening")
    port = free_port()
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
node_id = "hardening"

[http]
listen = "127.0.0.1:{port}"
path = "/ebms"
max_request_bytes = {MAX_REQUEST}
idle_timeout = {IDLE_TIMEOUT}

{tls_toml(pki, "ggk-rinis-test")}""",
        encoding="utf-8",
    )
    log = base / "gateway.log"
    process = start_serve(config, log)
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.setblocking(False)
    gw = Target(process, port, pki, store, log, trap)
    try:
        _warm_up(gw)
        yield gw
    finally:
        trap.close()
        stop_serve(process)


def _warm_up(gw: Target) -> None:
    """Store one message with payloads, and take every refusal path once before measuring."""
    cids = ("stored-1@hardening", "stored-2@hardening")
    content_type, chunks, _ = build_swa(
        render("EbMSMessageWithAttachments", cpa_id=CPA_ID, cids=cids),
        [OutgoingPart(c, "application/octet-stream", bytes(range(256)) * 64) for c in cids],
    )
    answer = gw.exchange(post(b"".join(chunks), content_type))
    assert answer.status == 200, answer
    assert b"Acknowledgment" in answer.body
    for warm in (
        post(b"<x/>"),
        post(b"--b\r\n\r\n", 'multipart/related; boundary="b"'),
        post(envelope(), "text/plain"),
        post(b"a" * (MAX_ENVELOPE_BYTES + 1)),
    ):
        gw.exchange(warm)
    gw.stored = gw.snapshot()
    received = [row for row in gw.stored if row[1] == "in"]
    assert [row[4] for row in received] == list(cids), gw.stored


# -- building requests ---------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A request as bytes: the head, then body chunks; then read the answer or hang up."""

    head: bytes
    body: tuple[bytes, ...] = ()
    then: str = "read"  # or "close": hang up right after sending


def request_head(
    method: str = "POST",
    path: str = "/ebms",
    headers: tuple[tuple[str, str], ...] = (),
    *,
    length: int | None = None,
    extra: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n" + extra + b"\r\n"


def post(
    body: bytes,
    content_type: str | None = "text/xml; charset=UTF-8",
    *,
    soap_action: str = '"ebXML"',
    method: str = "POST",
    path: str = "/ebms",
) -> Raw:
    headers = [("SOAPAction", soap_action)]
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    head = request_head(method, path, tuple(headers), length=len(body))
    return Raw(head, tuple(body[i : i + 65536] for i in range(0, len(body), 65536)))


def chunked(chunks: tuple[bytes, ...], content_type: str, *, terminate: bool = True) -> Raw:
    head = request_head(
        headers=(
            ("SOAPAction", '"ebXML"'),
            ("Content-Type", content_type),
            ("Transfer-Encoding", "chunked"),
        )
    )
    body = tuple(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    return Raw(head, (*body, b"0\r\n\r\n") if terminate else body)


def envelope(**values: str) -> bytes:
    return render("EbMSMessage", cpa_id=CPA_ID, **values)


def ping() -> bytes:
    return render("EbMSPing", cpa_id=CPA_ID)


def with_doctype(doctype: str, *, action: str = "Ping") -> bytes:
    """A Ping whose prolog carries ``doctype`` and whose Action reads ``action``."""
    xml = ping().replace(b"<soap:Envelope", doctype.encode() + b"\n<soap:Envelope", 1)
    return xml.replace(b"<eb:Action>Ping</eb:Action>", f"<eb:Action>{action}</eb:Action>".encode())


def nested(depth: int, *, where: str) -> bytes:
    """A Ping with ``depth`` nested elements in its SOAP Body or in a header block."""
    deep = b"<d>" * depth + b"</d>" * depth
    xml = ping()
    if where == "body":
        assert b"<soap:Body/>" in xml
        return xml.replace(b"<soap:Body/>", b"<soap:Body>" + deep + b"</soap:Body>", 1)
    assert b"</soap:Header>" in xml
    block = b'<x:Deep xmlns:x="urn:x">' + deep + b"</x:Deep>"
    return xml.replace(b"</soap:Header>", block + b"</soap:Header>", 1)


BOUNDARY = "MIMEBoundary_hardening"
MULTIPART = f'multipart/related; type="text/xml"; boundary="{BOUNDARY}"; start="<root@h>"'


def mime(*parts: bytes, close: bool = True, boundary: str = BOUNDARY) -> bytes:
    """A multipart body from header+content byte strings (the root part first)."""
    dash = b"--" + boundary.encode()
    body = b"".join(dash + b"\r\n" + p + b"\r\n" for p in parts)
    return body + (dash + b"--\r\n" if close else b"")


def root_part(xml: bytes | None = None, cid: str = "root@h") -> bytes:
    content = ping() if xml is None else xml
    return (
        f"Content-Type: text/xml; charset=UTF-8\r\nContent-ID: <{cid}>\r\n\r\n".encode() + content
    )


def payload(cid: str, content: bytes = b"<a/>", *headers: str) -> bytes:
    lines = [f"Content-ID: <{cid}>", "Content-Type: application/xml", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def billion_laughs() -> bytes:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    )
    return with_doctype(f"<!DOCTYPE soap:Envelope [{entities}]>", action="&lol9;")


def parameter_entities(gw: Target) -> bytes:
    url = f"http://127.0.0.1:{gw.trap.getsockname()[1]}/evil.dtd"
    return with_doctype(
        f'<!DOCTYPE soap:Envelope [<!ENTITY % remote SYSTEM "{url}"> %remote;'
        "<!ENTITY % inner \"<!ENTITY x 'y'>\"> %inner;]>",
        action="&x;",
    )


def soap12() -> bytes:
    xml = ping().replace(
        b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope"
    )
    assert b"http://schemas.xmlsoap.org/soap/envelope/" not in xml
    return xml


# -- the matrix ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile request and what must come of it."""

    id: str
    build: Callable[[Target], Raw]
    status: int | None  # None: no answer, the connection is closed (or was closed by us)
    log: str  # regex a new log line must match
    memory: bool = False  # also check the process's peak memory
    within: float = FAST


def xml_case(id: str, xml: Callable[[Target], bytes], reason: str, *, memory: bool = False) -> Case:
    """The SOAP part is refused by the safe parser or the schema: a bare HTTP 500."""
    return Case(
        id,
        lambda gw: post(xml(gw)),
        500,
        rf"status=500 outcome=bad-envelope reason=.*{reason}",
        memory,
    )


def mime_case(
    id: str,
    body: Callable[[Target], bytes],
    reason: str,
    content_type: str | None = MULTIPART,
    *,
    memory: bool = False,
) -> Case:
    """The MIME package cannot be parsed or is not SOAP with Attachments: HTTP 400."""
    return Case(
        id,
        lambda gw: post(body(gw), content_type),
        400,
        rf"status=400 outcome=bad-mime reason=.*{reason}",
        memory,
    )


def _file_xxe(gw: Target) -> bytes:
    return with_doctype(
        '<!DOCTYPE soap:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>', action="&x;"
    )


def _http_xxe(gw: Target) -> bytes:
    url = f"http://127.0.0.1:{gw.trap.getsockname()[1]}/x"
    return with_doctype(f'<!DOCTYPE soap:Envelope [<!ENTITY x SYSTEM "{url}">]>', action="&x;")


def _form_data(size: int) -> bytes:
    field = b'Content-Disposition: form-data; name="f"\r\n\r\n' + b"v" * 1000
    return mime(*(field,) * (size // 1100))


def _oversized_declared(gw: Target) -> Raw:
    head = request_head(
        headers=(("SOAPAction", '"ebXML"'), ("Content-Type", MULTIPART)), length=1 << 30
    )
    return Raw(head, (b"x" * 65536,) * 16)


def _oversized_chunked(gw: Target) -> Raw:
    # A valid start, then one payload that never ends: no length up front.
    start = mime(root_part(), close=False) + b"--" + BOUNDARY.encode() + b"\r\n"
    start += payload("big@h")[:-4]
    return chunked((start, *(b"\0" * 65536,) * ((MAX_REQUEST >> 16) + 32)), MULTIPART)


def _big_root(gw: Target) -> bytes:
    padding = b"<!--" + b"p" * (MAX_ENVELOPE_BYTES * 5) + b"-->"
    return mime(root_part(ping() + padding))


def _stall_after_head(gw: Target) -> Raw:
    head = request_head(
        headers=(("SOAPAction", '"ebXML"'), ("Content-Type", MULTIPART)), length=4096
    )
    return Raw(head)


def _stall_in_head(gw: Target) -> Raw:
    return Raw(b"POST /ebms HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n")


def _truncated_then_close(gw: Target) -> Raw:
    body = envelope()
    head = request_head(
        headers=(("SOAPAction", '"ebXML"'), ("Content-Type", "text/xml")), length=len(body) + 1000
    )
    return Raw(head, (body,), then="close")


def _chunked_unterminated(then: str) -> Callable[[Target], Raw]:
    def build(gw: Target) -> Raw:
        raw = chunked((envelope(),), "text/xml", terminate=False)
        return replace(raw, then=then)

    return build


def _header_line(size: int) -> Callable[[Target], Raw]:
    return lambda gw: Raw(request_head(length=0, extra=b"X-Big: " + b"a" * size + b"\r\n"))


def _many_headers(count: int) -> Callable[[Target], Raw]:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(count))
    return lambda gw: Raw(request_head(length=0, extra=extra))


def _method(name: str) -> Callable[[Target], Raw]:
    return lambda gw: post(ping(), method=name)


def _path(path: str) -> Callable[[Target], Raw]:
    return lambda gw: post(ping(), path=path)


CASES = [
    # -- XML: DTDs and entities never reach a parser that would use them --
    xml_case("billion-laughs", lambda gw: billion_laughs(), "DOCTYPE", memory=True),
    xml_case("xxe-file", _file_xxe, "DOCTYPE"),
    xml_case("xxe-http", _http_xxe, "DOCTYPE"),
    xml_case("parameter-entities", parameter_entities, "DOCTYPE"),
    xml_case("doctype-plain", lambda gw: with_doctype("<!DOCTYPE soap:Envelope>"), "DOCTYPE"),
    xml_case(
        "doctype-utf7",
        lambda gw: (
            b'<?xml version="1.0" encoding="UTF-7"?>'
            + '<!DOCTYPE x [<!ENTITY e "v">]><x>&e;</x>'.encode("utf-7")
        ),
        "UTF-8",
    ),
    xml_case("deep-body", lambda gw: nested(100_000, where="body"), "depth", memory=True),
    xml_case("deep-header", lambda gw: nested(100_000, where="header"), "depth", memory=True),
    # -- XML: encodings, bytes, not SOAP 1.1 --
    xml_case("utf16-bom", lambda gw: ping().decode().encode("utf-16"), "UTF-8"),
    xml_case("utf16-no-bom", lambda gw: ping().decode().encode("utf-16-le"), "UTF-8"),
    xml_case(
        "latin1-declared",
        lambda gw: b'<?xml version="1.0" encoding="ISO-8859-1"?>\n' + ping(),
        "UTF-8",
    ),
    xml_case(
        "invalid-utf8",
        lambda gw: ping().replace(b"Ping</eb:Action>", b"P\xff\xfeng</eb:Action>"),
        "not well-formed",
    ),
    xml_case(
        "nul-byte",
        lambda gw: ping().replace(b"Ping</eb:Action>", b"Pi\0ng</eb:Action>"),
        "not well-formed",
    ),
    xml_case(
        "not-soap", lambda gw: b'<?xml version="1.0"?><order><id>1</id></order>', "not a SOAP 1.1"
    ),
    xml_case("soap12", lambda gw: soap12(), "not a SOAP 1.1"),
    xml_case("empty-body", lambda gw: b"", "not well-formed"),
    xml_case(
        "log-line-forging",
        lambda gw: b'<x:Order xmlns:x="urn:a&#10;2026-01-01 00:00:00,000 INFO dkgw.http FORGED"/>',
        "FORGED",  # on the reason's own line: the newline did not survive
    ),
    xml_case(
        "envelope-over-limit",
        lambda gw: ping() + b"<!--" + b"p" * (MAX_ENVELOPE_BYTES * 6) + b"-->",
        "over the limit",
        memory=True,
    ),
    Case(
        "envelope-over-limit-in-mime",
        lambda gw: post(_big_root(gw), MULTIPART),
        500,
        r"status=500 outcome=bad-envelope reason=.*over the limit",
        memory=True,
    ),
    Case(
        "doctype-in-mime-root",
        lambda gw: post(mime(root_part(billion_laughs())), MULTIPART),
        500,
        r"status=500 outcome=bad-envelope reason=.*DOCTYPE",
    ),
    # -- Content-Type --
    mime_case("text-plain", lambda gw: ping(), "unsupported Content-Type", "text/plain"),
    mime_case(
        "soap12-media-type",
        lambda gw: ping(),
        "unsupported Content-Type",
        "application/soap+xml; charset=utf-8",
    ),
    mime_case(
        "form-data",
        lambda gw: mime(root_part()),
        "unsupported Content-Type",
        f'multipart/form-data; boundary="{BOUNDARY}"',
    ),
    mime_case(
        "form-data-7mb",
        lambda gw: _form_data(7 << 20),
        "unsupported Content-Type",
        f"multipart/form-data; boundary={BOUNDARY}",
        memory=True,
    ),
    mime_case(
        "urlencoded-7mb",
        lambda gw: b"a=b&" * (7 << 18),
        "unsupported Content-Type",
        "application/x-www-form-urlencoded",
        memory=True,
    ),
    mime_case("no-content-type", lambda gw: ping(), "", None),
    mime_case(
        "no-boundary",
        lambda gw: mime(root_part()),
        "boundary",
        'multipart/related; type="text/xml"',
    ),
    mime_case(
        "wrong-boundary",
        lambda gw: mime(root_part(), boundary="other"),
        "boundary",
    ),
    mime_case(
        "no-closing-delimiter", lambda gw: mime(root_part(), close=False), "closing boundary"
    ),
    mime_case(
        "start-names-missing-part",
        lambda gw: mime(root_part(cid="other@h")),
        "start parameter",
    ),
    mime_case(
        "duplicate-content-id",
        lambda gw: mime(root_part(), payload("a@h"), payload("a@h")),
        "Content-ID",
    ),
    mime_case(
        "10000-parts",
        lambda gw: mime(root_part(), *(payload(f"p{i}@h") for i in range(10_000))),
        "MIME parts",
        memory=True,
    ),
    mime_case(
        "10000-part-headers",
        lambda gw: mime(
            root_part(), payload("a@h", b"<a/>", *(f"X-H{i}: v" for i in range(10_000)))
        ),
        "part headers over",
        memory=True,
    ),
    mime_case(
        "1mb-part-header-line",
        lambda gw: mime(root_part(), payload("a@h", b"<a/>", "X-Big: " + "a" * (1 << 20))),
        "part headers over",
        memory=True,
    ),
    mime_case(
        "base64-garbage",
        lambda gw: mime(
            root_part(),
            payload("a@h", b"!!not base64 at all!!", "Content-Transfer-Encoding: base64"),
        ),
        "base64",
    ),
    mime_case(
        "unknown-transfer-encoding",
        lambda gw: mime(
            root_part(), payload("a@h", b"begin 644 x", "Content-Transfer-Encoding: x-uuencode")
        ),
        "Content-Transfer-Encoding",
    ),
    # -- size --
    Case(
        "body-over-max-declared",
        _oversized_declared,
        413,
        r"refused: request body over",
        memory=True,
    ),
    Case(
        "attachment-over-max-chunked",
        _oversized_chunked,
        413,
        r"refused: request body over",
        memory=True,
    ),
    # -- HTTP framing --
    Case(
        "1mb-http-header",
        _header_line(1 << 20),
        400,
        r"refused: malformed HTTP request",
        memory=True,
    ),
    Case(
        "1000-http-headers",
        _many_headers(1000),
        400,
        r"refused: malformed HTTP request",
        memory=True,
    ),
    Case(
        "bad-chunk-size",
        lambda gw: replace(chunked((ping(),), "text/xml"), body=(b"zz\r\nabc\r\n",)),
        400,
        r"refused: malformed HTTP request",
    ),
    Case(
        "content-length-not-a-number",
        lambda gw: Raw(request_head(headers=(("Content-Length", "-1"),))),
        400,
        r"refused: malformed HTTP request",
    ),
    Case(
        "truncated-then-close",
        _truncated_then_close,
        None,
        r"refused: connection closed .*request",
    ),
    Case(
        "chunked-unterminated-then-close",
        _chunked_unterminated("close"),
        None,
        r"refused: connection closed .*request",
    ),
    Case(
        "chunked-unterminated-then-stall",
        _chunked_unterminated("read"),
        None,
        r"refused: idle",
        within=IDLE_TIMEOUT + FAST,
    ),
    Case(
        "hang-up-before-answer",
        lambda gw: replace(post(billion_laughs()), then="close"),
        None,
        r"status=500 outcome=bad-envelope",
    ),
    Case("stall-after-head", _stall_after_head, None, r"refused: idle", within=IDLE_TIMEOUT + FAST),
    Case("stall-in-head", _stall_in_head, None, r"refused: idle", within=IDLE_TIMEOUT + FAST),
    # -- method and path --
    *(
        Case(f"method-{m}", _method(m), 405, rf"refused: method {m}")
        for m in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "FOO")
    ),
    Case("path-other", _path("/other"), 404, r"refused: no resource at /other"),
    Case("path-below", _path("/ebms/x"), 404, r"refused: no resource at /ebms/x"),
    Case("path-root", _path("/"), 404, r"refused: no resource at /"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_request_is_refused(target: Target, case: Case) -> None:
    before = target.snapshot()
    resident = target.reset_peak() if case.memory else 0
    mark = target.log_mark()
    answer = target.exchange(case.build(target), timeout=case.within + 3)
    assert answer.status == case.status, answer
    assert answer.elapsed < case.within, answer
    assert not LEAK.search(answer.body), answer.body[:500]
    assert answer.body == b"", answer.body[:300]  # refusals carry no body at all
    target.wait_log(mark, case.log)
    assert "Traceback" not in target.log_since(mark)
    assert target.process.poll() is None, "the gateway died"
    after = target.snapshot()
    assert after == before, "the store changed"
    assert set(target.stored) <= set(after), "the stored message was touched"
    with pytest.raises(BlockingIOError):
        target.trap.accept()  # no entity, DTD or schema was ever fetched
    if case.memory:
        grown = target.memory() - resident
        assert grown < MEMORY_BOUND, f"peak memory grew by {grown / 2**20:.1f} MiB"


def test_the_endpoint_with_a_trailing_slash_is_still_the_endpoint(target: Target) -> None:
    answer = target.exchange(post(ping(), path="/ebms/"))
    assert answer.status == 200, answer
    assert b"Pong" in answer.body


# -- unit tests next to the fixes ----------------------------------------------------------


@pytest.mark.parametrize(
    "declaration",
    ['encoding="UTF-7"', "encoding='ISO-8859-1'", 'encoding = "windows-1252"', 'encoding=""'],
)
def test_xml_declaring_another_encoding_is_refused_before_parsing(declaration: str) -> None:
    # In UTF-7 a DOCTYPE hides from the byte-level prolog check.
    body = '<!DOCTYPE x [<!ENTITY e "v">]><x>&e;</x>'.encode("utf-7")
    with pytest.raises(UnsafeXmlError, match="only UTF-8"):
        parse_xml(f'<?xml version="1.0" {declaration}?>'.encode() + body)


@pytest.mark.parametrize("encoding", ["UTF-8", "utf-8", "utf8", "US-ASCII"])
def test_xml_declaring_utf8_or_ascii_is_parsed(encoding: str) -> None:
    tree = parse_xml(f'\ufeff<?xml version="1.0" encoding="{encoding}"?><x>y</x>'.encode())
    assert tree.getroot().text == "y"


def test_xml_errors_are_one_line() -> None:
    with pytest.raises(UnsafeXmlError) as info:
        parse_xml(b'<x:a xmlns:x="urn:a&#10;FORGED"/>')
    assert "\n" not in str(info.value) and "FORGED" in str(info.value)
    with pytest.raises(UnsafeXmlError) as info:
        parse_xml(b"<a>\x00</a>")
    assert "\n" not in str(info.value)


def test_envelope_schema_errors_are_one_line() -> None:
    # libxml2 quotes an invalid element value as it came, newline and all.
    xml = re.sub(rb"(<eb:Timestamp>)[^<]*", rb"\1x&#10;FORGED", render("EbMSPing"), count=1)
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(xml)
    assert "\n" not in str(info.value) and "FORGED" in str(info.value)


class _Unread(io.BytesIO):
    """A request body that records whether anyone read it."""

    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


def test_text_xml_over_the_envelope_limit_is_refused_unread() -> None:
    body = _Unread(b" " * (MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(SoapPartTooLarge):
        split_package("text/xml; charset=UTF-8", body, MimeLimits())
    assert body.reads == 0


def test_soap_part_over_the_envelope_limit_in_mime_is_refused() -> None:
    body = io.BytesIO(mime(root_part(b" " * (MAX_ENVELOPE_BYTES + 1)), payload("a@h")))
    with pytest.raises(SoapPartTooLarge):
        split_package(MULTIPART, body, MimeLimits())
    at_limit = io.BytesIO(mime(root_part(b" " * MAX_ENVELOPE_BYTES), payload("a@h")))
    soap, attachments = split_package(MULTIPART, at_limit, MimeLimits())
    assert len(soap) == MAX_ENVELOPE_BYTES and len(attachments) == 1


@pytest.mark.parametrize("media", ["application/soap+xml", "application/xml", "text/plain", ""])
def test_only_text_xml_is_a_single_part_message(media: str) -> None:
    with pytest.raises(MimeError, match="unsupported Content-Type"):
        split_package(media, io.BytesIO(ping()), MimeLimits())


def _huge(xml: bytes, element: str, value: bytes) -> bytes:
    changed, count = re.subn(
        rb"<eb:" + element.encode() + rb">[^<]*</eb:" + element.encode() + rb">",
        b"<eb:" + element.encode() + b">" + value + b"</eb:" + element.encode() + b">",
        xml,
        count=1,
    )
    assert count == 1
    return changed


@pytest.mark.parametrize(
    ("element", "status", "answer"),
    [("MessageId", 500, b"Fault"), ("Action", 200, b"OtherXml")],
)
def test_a_600_kb_identifier_gives_bounded_log_lines_and_answer(
    target: Target, element: str, status: int, answer: bytes
) -> None:
    """Regression: a 600 KB MessageId made a 600 KB log line and a 1.2 MB acknowledgment."""
    xml = _huge(envelope(), element, b"x" * 600_000 + (b"@h" if element == "MessageId" else b""))
    mark = target.log_mark()
    reply = target.exchange(post(xml))
    assert reply.status == status, reply
    assert answer in reply.body and len(reply.body) < 4096, reply.body[:300]
    assert not LEAK.search(reply.body.replace(b"MessageError", b""))
    target.wait_log(mark, rf"event=inbound status={status} ")
    logged = target.log_since(mark)
    assert "Traceback" not in logged
    assert max(len(line) for line in logged.splitlines()) < 4096
    # Nothing with the oversized value is kept.
    assert target.rows("SELECT count(*) FROM ebms_message WHERE length(message_id) > 256") == [(0,)]
    assert target.rows("SELECT count(*) FROM ebms_message WHERE length(action) > 256") == [(0,)]
