"""Structure-aware mutation fuzzing of a running gateway, over mutual TLS.

Two gateways run as ``dkgw serve`` processes: the municipality (A) and the
node (B), sharing an osb-rm-s CPA (signed messages, asynchronous signed-ack
replies go from B to A).  This process plays the municipality's MSH on the
wire: it builds a valid signed ebMS message, mutates it at one layer (HTTP
framing and headers, MIME structure, XML, the signature) and sends the raw
bytes to B over TLS with A's client certificate.

After every request: the gateway answered it with a well-formed HTTP response,
unless the mutation itself hangs up (a truncated body, a Content-Length larger
than what follows) or a limit says to close.  After every batch: B's process
is alive, no traceback, ``CRITICAL`` or "Unhandled Error" appeared in either
gateway's log (:data:`tests.fuzz.known.KNOWN_WIRE` lists the accepted ones),
B's store passes ``PRAGMA integrity_check``, a valid message is still
accepted, and B's RSS and open file descriptors are recorded.

    python -m tests.fuzz.wire --mutations 20000 [--seed N] [--workers 4] [--report FILE]

``make fuzz-wire`` runs the long version; ``tests/test_fuzz_wire.py`` a short
one.  Every mutation that breaks a rule is written to ``--work``/findings as
the raw request bytes, so it can be replayed (``--replay FILE``).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import random
import re
import shutil
import socket
import sqlite3
import ssl
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.commands.demo import MUNICIPALITY, NODE
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.fuzz import known, material
from tests.gateways import free_port, start_serve, stop_serve

Expect = Literal["answer", "hangup"]
#: How long one exchange may take before it counts as unanswered.
EXCHANGE_TIMEOUT = 60.0
#: B's request size limit in this rig: small, so that "over the limit" is cheap to send.
MAX_REQUEST_BYTES = 2 * 1024 * 1024
#: B's idle timeout: a request left half-sent is closed after this long.
IDLE_TIMEOUT = 10.0


# -- the two gateways ------------------------------------------------------------------


def _toml(
    pki: Path, slug: str, data: Path, port: int, party: str, idle: float = IDLE_TIMEOUT
) -> str:
    p, ca = pki / slug, pki / "ca"
    return f"""[gateway]
data_dir = "{data}"
store = "sqlite:///{data / "gateway.sqlite3"}"
node_id = "wire-{slug}"
party_ids = ["{party}"]

[http]
listen = "127.0.0.1:{port}"
path = "/ebms"
max_request_bytes = {MAX_REQUEST_BYTES}
idle_timeout = {idle}

[tls]
certificate = "{p / "tls-server.pem"}"
key = "{p / "tls-server.key"}"
chain = "{ca / "intermediate.pem"}"
client_certificate = "{p / "tls-client.pem"}"
client_key = "{p / "tls-client.key"}"
trust_anchors = "{ca / "root.pem"}"

[security]
signing_certificate = "{p / "signing.pem"}"
signing_key = "{p / "signing.key"}"
encryption_certificate = "{p / "encryption.pem"}"
encryption_key = "{p / "encryption.key"}"

[delivery]
poll_interval = 0.5
connect_timeout = 5.0
read_timeout = 10.0

[monitoring]
pings = false

[logging]
format = "json"
"""


@dataclass
class Rig:
    """Gateways A and B running, and how to reach and watch B."""

    work: Path
    a_port: int
    b_port: int
    processes: dict[str, object] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    log_offsets: dict[str, int] = field(default_factory=dict)

    @property
    def b_pid(self) -> int:
        return int(self.processes["b"].pid)  # type: ignore[attr-defined]

    @property
    def b_store(self) -> Path:
        return self.work / "b" / "gateway.sqlite3"

    @classmethod
    def start(cls, work: Path) -> Rig:
        pki = material.pki()
        rig = cls(work, free_port(), free_port())
        cpa = material.cpa_bytes(
            a_endpoint=f"https://127.0.0.1:{rig.a_port}/ebms",
            b_endpoint=f"https://127.0.0.1:{rig.b_port}/ebms",
        )
        for side, slug, port, party in (
            ("a", MUNICIPALITY[0], rig.a_port, material.GEMEENTE.key()),
            ("b", NODE[0], rig.b_port, material.NODE_PARTY.key()),
        ):
            data = work / side
            data.mkdir(parents=True, exist_ok=True)
            db = Database.sqlite(data / "gateway.sqlite3")
            try:
                apply_migrations(db)
                CpaRegistry(db).insert(cpa, overwrite=True)
            finally:
                db.close()
            config = work / f"{side}.toml"
            config.write_text(_toml(pki, slug, data, port, party), encoding="utf-8")
            rig.logs[side] = work / f"{side}.log"
            try:
                rig.processes[side] = start_serve(config, rig.logs[side], timeout=60.0)
            except BaseException:
                rig.stop()
                raise
            rig.log_offsets[side] = 0
        return rig

    def stop(self) -> None:
        for process in self.processes.values():
            stop_serve(process)  # type: ignore[arg-type]
        self.processes.clear()

    # -- watching B ---------------------------------------------------------------------

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes.values())  # type: ignore[attr-defined]

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.b_pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def fds(self) -> int:
        return len(list(Path(f"/proc/{self.b_pid}/fd").iterdir()))

    def integrity(self) -> str:
        with sqlite3.connect(f"file:{self.b_store}?mode=ro", uri=True, timeout=30) as con:
            return str(con.execute("PRAGMA integrity_check").fetchone()[0])

    def new_log_problems(self) -> list[tuple[str, str]]:
        """(gateway, record) for every new log record that is a problem."""
        problems = []
        for side, path in self.logs.items():
            with path.open("rb") as log:
                log.seek(self.log_offsets[side])
                data = log.read()
            # Only whole lines; a line being written is read next time.
            end = data.rfind(b"\n") + 1
            self.log_offsets[side] += end
            for record in _records(data[:end].decode("utf-8", "replace")):
                if _is_problem(record):
                    problems.append((side, record))
        return problems


def _records(text: str) -> list[str]:
    """Log records: one JSON line each; other lines (stray output) grouped in blocks."""
    records: list[str] = []
    stray: list[str] = []
    for line in text.splitlines():
        if line.startswith("{"):
            if stray:
                records.append("\n".join(stray))
                stray = []
            records.append(line)
        elif line.strip():
            stray.append(line)
    if stray:
        records.append("\n".join(stray))
    return records


def _is_problem(record: str) -> bool:
    if not record.startswith("{"):
        return bool(re.search(r"Traceback|Unhandled Error|CRITICAL|Error:", record))
    try:
        entry = json.loads(record)
    except ValueError:
        return True
    text = json.dumps(entry)
    return entry.get("level") == "critical" or bool(re.search(r"Traceback|Unhandled Error", text))


# -- talking to B -------------------------------------------------------------------------


def client_context() -> ssl.SSLContext:
    """TLS as the municipality's MSH: its client certificate, the example root."""
    pki = material.pki()
    party = pki / MUNICIPALITY[0]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki / "ca" / "root.pem")
    # The leaf and the intermediate: the gateway trusts the root only.
    chain = Path(tempfile.mkdtemp(prefix="fuzz-wire-tls-")) / "client-chain.pem"
    chain.write_bytes(
        (party / "tls-client.pem").read_bytes() + (pki / "ca" / "intermediate.pem").read_bytes()
    )
    context.load_cert_chain(chain, party / "tls-client.key")
    shutil.rmtree(chain.parent)
    context.check_hostname = False  # 127.0.0.1; the chain is still verified
    return context


@dataclass
class Exchange:
    """What came back for one mutation."""

    statuses: list[int]
    closed: bool
    error: str | None = None


def _read_response(sock: ssl.SSLSocket, buffer: bytearray) -> int | None:
    """Read one HTTP response from ``sock``; its status, or None at a clean close."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            if buffer:
                raise ValueError(
                    f"connection closed inside a response head: {bytes(buffer[:80])!r}"
                )
            return None
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] ([1-5]\d\d)(?: .*)?", lines[0])
    if match is None:
        raise ValueError(f"not an HTTP status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"malformed response header: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    del buffer[:]
    buffer += rest
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ValueError("connection closed inside a chunked response")
                buffer += chunk
            size_line, _, _ = bytes(buffer).partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            needed = len(size_line) + 2 + size + 2
            while len(buffer) < needed:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ValueError("connection closed inside a chunk")
                buffer += chunk
            del buffer[:needed]
            if size == 0:
                break
    else:
        length = int(headers.get("content-length", "0"))
        while len(buffer) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break  # a body cut short by a close: still an answer
            buffer += chunk
        del buffer[:length]
    return int(match.group(1))


def exchange(
    port: int, context: ssl.SSLContext, mutation: Mutation, timeout: float = EXCHANGE_TIMEOUT
) -> Exchange:
    """Send one mutation on a new connection and read what comes back."""
    statuses: list[int] = []
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
            context.wrap_socket(raw) as sock,
        ):
            for n, segment in enumerate(mutation.segments):
                if n:
                    time.sleep(mutation.pause)
                sock.sendall(segment)
            if mutation.expect == "hangup":
                return Exchange(statuses, closed=True)
            buffer = bytearray()
            while len(statuses) < mutation.responses:
                status = _read_response(sock, buffer)
                if status is None:
                    return Exchange(statuses, closed=True)
                statuses.append(status)
            return Exchange(statuses, closed=False)
    except (OSError, ValueError) as exc:
        return Exchange(statuses, closed=True, error=f"{type(exc).__name__}: {exc}")


# -- mutations ------------------------------------------------------------------------------


@dataclass
class Mutation:
    """Raw bytes to send (in segments) and what must come back."""

    name: str
    segments: list[bytes]
    expect: Expect = "answer"
    responses: int = 1
    pause: float = 0.05

    @property
    def raw(self) -> bytes:
        return b"".join(self.segments)


@dataclass
class Parts:
    """A valid message taken apart: what the mutators change."""

    envelope: bytes
    payload: bytes
    boundary: str
    start: str
    soap_action: str = '"ebXML"'
    path: str = "/ebms"
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def body(self) -> bytes:
        b = self.boundary.encode()
        return (
            b"--"
            + b
            + b"\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-ID: <"
            + self.start.encode()
            + b">\r\n\r\n"
            + self.envelope
            + b"\r\n--"
            + b
            + b"\r\nContent-Type: application/xml\r\nContent-Transfer-Encoding: binary\r\n"
            + b"Content-ID: <"
            + material.PAYLOAD_CID.encode()
            + b">\r\n\r\n"
            + self.payload
            + b"\r\n--"
            + b
            + b"--\r\n"
        )

    def content_type(self) -> str:
        return (
            f'multipart/related; type="text/xml"; boundary="{self.boundary}"; '
            f'start="<{self.start}>"'
        )


def fresh(rng: random.Random) -> Parts:
    """A valid signed message with a new MessageId and the current time."""
    boundary = f"MIMEBoundary_{uuid.UUID(int=rng.getrandbits(128)).hex}"
    m = material.signed_message(boundary=boundary)
    start = re.search(r'start="<([^>]*)>"', m.content_type)
    assert start is not None
    return Parts(m.envelope, material.PAYLOAD, boundary, start.group(1))


def request(
    parts: Parts,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    method: str = "POST",
    version: str = "HTTP/1.1",
    length: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """The raw HTTP request (Content-Length from the body unless ``length`` says otherwise)."""
    body = parts.body() if body is None else body
    lines = [f"{method} {parts.path} {version}", "Host: 127.0.0.1"]
    if (
        content_type is not None
        or headers is None
        or not any(h[0].lower() == "content-type" for h in headers)
    ):
        lines.append(f"Content-Type: {content_type or parts.content_type()}")
    if parts.soap_action is not None:
        lines.append(f"SOAPAction: {parts.soap_action}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    elif not any(h[0].lower() in ("content-length", "transfer-encoding") for h in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or [])]
    lines += [f"{k}: {v}" for k, v in parts.extra_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _m(name: str, raw: bytes, expect: Expect = "answer", responses: int = 1) -> Mutation:
    return Mutation(name, [raw], expect, responses)


def _chunked(body: bytes, rng: random.Random, ext: str = "") -> bytes:
    out = bytearray()
    at = 0
    while at < len(body):
        n = rng.randint(1, 4096)
        piece = body[at : at + n]
        out += f"{len(piece):x}{ext}\r\n".encode() + piece + b"\r\n"
        at += n
    return bytes(out) + b"0\r\n\r\n"


# HTTP framing ------------------------------------------------------------------------------


def m_valid(rng: random.Random, p: Parts) -> Mutation:
    return _m("valid", request(p))


def m_content_length(rng: random.Random, p: Parts) -> Mutation:
    body = p.body()
    choice = rng.choice(
        ["smaller", "larger", "negative", "text", "plus", "zeros", "huge", "two", "space", "hex"]
    )
    if choice == "smaller":
        return _m("cl-smaller", request(p, length=str(rng.randint(0, len(body) - 1))))
    if choice == "larger":
        # The body never completes: this client hangs up, as a broken peer would.
        return _m("cl-larger", request(p, length=str(len(body) + rng.randint(1, 5000))), "hangup")
    value = {
        "negative": "-1",
        "text": "abc",
        "plus": f"+{len(body)}",
        "zeros": f"000{len(body)}",
        "huge": "9" * rng.randint(12, 40),
        "two": f"{len(body)}, {len(body)}",
        "space": f" {len(body)} ",
        "hex": f"0x{len(body):x}",
    }[choice]
    return _m(f"cl-{choice}", request(p, length=value))


def m_content_length_empty(rng: random.Random, p: Parts) -> Mutation:
    return _m("cl-empty", request(p, length=""))


def m_duplicate_content_length(rng: random.Random, p: Parts) -> Mutation:
    # RFC 9112 §6.3: differing Content-Length values are an unrecoverable framing error.
    n = len(p.body())
    other = str(n + rng.choice([0, 7, -7]))
    return _m("cl-duplicate", request(p, length=str(n), headers=[("Content-Length", other)]))


def m_chunked(rng: random.Random, p: Parts) -> Mutation:
    body = p.body()
    choice = rng.choice(
        ["plain", "ext", "upper", "bad-hex", "overflow", "no-end", "te-cl", "trailer"]
    )
    te = [("Transfer-Encoding", "chunked")]
    if choice == "plain":
        return _m("chunked", request(p, body=_chunked(body, rng), headers=te))
    if choice == "ext":
        return _m("chunked-ext", request(p, body=_chunked(body, rng, ';name="v"'), headers=te))
    if choice == "upper":
        chunked = re.sub(
            rb"^([0-9a-f]+)\r\n", lambda m: m.group(1).upper() + b"\r\n", _chunked(body, rng)
        )
        return _m("chunked-upper", request(p, body=chunked, headers=te))
    if choice == "bad-hex":
        return _m(
            "chunked-bad-hex", request(p, body=b"zz\r\n" + body + b"\r\n0\r\n\r\n", headers=te)
        )
    if choice == "overflow":
        big = "f" * rng.randint(17, 40)
        # The announced chunk never completes: this client hangs up.
        raw = request(p, body=f"{big}\r\n".encode() + body, headers=te)
        return _m("chunked-overflow", raw, "hangup")
    if choice == "no-end":
        return _m("chunked-no-end", request(p, body=_chunked(body, rng)[:-5], headers=te), "hangup")
    if choice == "te-cl":
        # RFC 9112 §6.3: with both, Transfer-Encoding wins (or the request is refused).
        headers = [*te, ("Content-Length", str(len(body)))]
        return _m("chunked-and-length", request(p, body=_chunked(body, rng), headers=headers))
    chunked = _chunked(body, rng)[:-2] + b"X-Trailer: 1\r\n\r\n"
    return _m("chunked-trailer", request(p, body=chunked, headers=te))


def m_transfer_encoding_odd(rng: random.Random, p: Parts) -> Mutation:
    value = rng.choice(["gzip, chunked", "chunked, gzip", "identity", "Chunked", "chunked;x=1", ""])
    body = _chunked(p.body(), rng) if "chunked" in value.lower() else p.body()
    return _m(
        f"te-{value or 'empty'}", request(p, body=body, headers=[("Transfer-Encoding", value)])
    )


def m_huge_header(rng: random.Random, p: Parts) -> Mutation:
    size = rng.choice([8000, 17000, 70000])
    return _m(f"huge-header-{size}", request(p, headers=[("X-Fuzz", "a" * size)]))


def m_many_headers(rng: random.Random, p: Parts) -> Mutation:
    n = rng.choice([100, 499, 600])
    return _m(f"headers-{n}", request(p, headers=[(f"X-F{i}", "v") for i in range(n)]))


def m_request_line(rng: random.Random, p: Parts) -> Mutation:
    choice = rng.choice(
        ["1.0", "2.0", "0.9", "lower", "brew", "get", "abs", "dotdot", "query", "junk"]
    )
    if choice == "1.0":
        return _m("http-1.0", request(p, version="HTTP/1.0"))
    if choice == "2.0":
        return _m("http-2.0", request(p, version="HTTP/2.0"))
    if choice == "0.9":
        return _m("http-0.9", request(p, version="HTTP/0.9"))
    if choice == "lower":
        return _m("method-lower", request(p, method="post"))
    if choice == "brew":
        return _m("method-unknown", request(p, method="BREW"))
    if choice == "get":
        return _m("method-get", request(p, method="GET", body=b""))
    if choice == "junk":
        return _m("request-line-junk", b"\x16\x03\x01 garbage\r\n\r\n")
    p.path = {"abs": "https://127.0.0.1/ebms", "dotdot": "/ebms/../ebms", "query": "/ebms?a=b"}[
        choice
    ]
    return _m(f"path-{choice}", request(p))


def m_pipelined(rng: random.Random, p: Parts) -> Mutation:
    second = fresh(rng)
    count = rng.choice([2, 3])
    raw = request(p) + request(second)
    if count == 3:
        raw += request(fresh(rng))
    return _m(f"pipelined-{count}", raw, responses=count)


def m_soap_action(rng: random.Random, p: Parts) -> Mutation:
    p.soap_action = rng.choice(["ebXML", '"other"', '""', '"ebXML', '"ebXML" x', '"ebXML"'])
    extra = [("SOAPAction", '"ebXML"')] if rng.random() < 0.3 else []
    return _m("soap-action", request(p, headers=extra))


def m_truncated(rng: random.Random, p: Parts) -> Mutation:
    body = p.body()
    cut = body[: rng.randint(0, len(body) - 1)]
    if rng.random() < 0.5:
        return _m("truncated", request(p, body=cut))  # an honest length: an error answer
    return Mutation(
        "truncated-slow", [request(p)[: len(request(p)) - len(body) + len(cut)]], "hangup"
    )


def m_over_limit(rng: random.Random, p: Parts) -> Mutation:
    big = p.payload + b"<!--" + b"x" * (MAX_REQUEST_BYTES + 1000) + b"-->"
    return _m("over-limit", request(p, body=Parts(p.envelope, big, p.boundary, p.start).body()))


# Content-Type and MIME ------------------------------------------------------------------------


def m_content_type(rng: random.Random, p: Parts) -> Mutation:
    b, s = p.boundary, p.start
    value = rng.choice(
        [
            f"multipart/related; boundary={b}; start=<{s}>",
            f'multipart/related; boundary="{b}"',
            f'multipart/related; type="text/xml"; start="<{s}>"',
            f'multipart/related; boundary="{b} "; start="<{s}>"',
            f'multipart/related; boundary="{b}"; boundary="{b}x"',
            f'MULTIPART/RELATED; BOUNDARY="{b}"; START="<{s}>"',
            f"multipart/related; boundary*=utf-8''{b}",
            f'multipart/related; boundary="{b}" (comment)',
            f'multipart/related; boundary="{b}"; start="<nope@x>"',
            f'multipart/related; boundary="{b}"; start="{s}"',
            f'multipart/related; boundary="{b}";;; start="<{s}>"',
            f'multipart/related; boundary="{b}"; charset="\xff"',
            f'multipart/mixed; boundary="{b}"',
            "text/xml; charset=UTF-8",
            "application/soap+xml",
            "",
            'multipart/related; boundary=""',
            "multipart/related; boundary=" + "b" * 200,
        ]
    )
    return _m("content-type", request(p, content_type=value))


def m_two_content_types(rng: random.Random, p: Parts) -> Mutation:
    return _m(
        "content-type-twice",
        request(p, headers=[("Content-Type", "text/xml"), ("Content-Type", p.content_type())]),
    )


def m_mime_body(rng: random.Random, p: Parts) -> Mutation:
    body = p.body()
    b = p.boundary.encode()
    choice = rng.choice(
        [
            "preamble",
            "epilogue",
            "no-close",
            "lf",
            "padding",
            "fake-boundary",
            "prefix",
            "no-cid",
            "dup-cid",
            "cid-bare",
            "continuation",
            "base64",
            "bad-base64",
            "qp",
            "unknown-cte",
            "no-colon",
            "huge-part-header",
            "many-parts",
            "empty-part",
        ]
    )
    if choice == "preamble":
        body = b"preamble --" + b + b"x\r\n" + body
    elif choice == "epilogue":
        body += b"epilogue\r\n--" + b + b"\r\nContent-ID: <z>\r\n\r\nz"
    elif choice == "no-close":
        body = body[: body.rfind(b"--" + b + b"--")]
    elif choice == "lf":
        body = body.replace(b"\r\n", b"\n")
    elif choice == "padding":
        body = body.replace(b"--" + b + b"\r\n", b"--" + b + b"   \t\r\n")
    elif choice == "fake-boundary":
        p.payload = p.payload + b"\r\n--" + b + b"x"
        body = p.body()
    elif choice == "prefix":
        body = body.replace(b"\r\n--" + b + b"\r\n", b"\r\n--" + b[:-1] + b"\r\n", 1)
    elif choice == "no-cid":
        body = body.replace(b"Content-ID: <" + material.PAYLOAD_CID.encode() + b">\r\n", b"")
    elif choice == "dup-cid":
        body = body.replace(material.PAYLOAD_CID.encode(), p.start.encode())
    elif choice == "cid-bare":
        body = body.replace(
            b"<" + material.PAYLOAD_CID.encode() + b">", material.PAYLOAD_CID.encode()
        )
    elif choice == "continuation":
        body = body.replace(
            b"Content-Type: application/xml", b"Content-Type:\r\n application/xml", 1
        )
    elif choice in ("base64", "bad-base64"):
        encoded = base64.encodebytes(p.payload) if choice == "base64" else b"!!not base64!!"
        body = body.replace(b"Transfer-Encoding: binary", b"Transfer-Encoding: base64").replace(
            p.payload, encoded
        )
    elif choice == "qp":
        body = body.replace(b"Transfer-Encoding: binary", b"Transfer-Encoding: quoted-printable")
    elif choice == "unknown-cte":
        body = body.replace(b"Transfer-Encoding: binary", b"Transfer-Encoding: x-gzip")
    elif choice == "no-colon":
        body = body.replace(
            b"Content-Transfer-Encoding: binary", b"Content-Transfer-Encoding binary"
        )
    elif choice == "huge-part-header":
        body = body.replace(
            b"Content-Type: application/xml", b"Content-Type: application/xml; x=" + b"a" * 20000, 1
        )
    elif choice == "many-parts":
        extra = b"".join(
            b"--" + b + f"\r\nContent-ID: <p{i}@x>\r\n\r\nx\r\n".encode() for i in range(80)
        )
        body = body.replace(b"--" + b + b"--", extra + b"--" + b + b"--")
    elif choice == "empty-part":
        body = body.replace(b"--" + b + b"--", b"--" + b + b"\r\n\r\n\r\n--" + b + b"--")
    return _m(f"mime-{choice}", request(p, body=body))


# XML -------------------------------------------------------------------------------------


def _xml_decl_split(envelope: bytes) -> tuple[bytes, bytes]:
    if envelope.startswith(b"<?xml"):
        end = envelope.index(b"?>") + 2
        return envelope[:end], envelope[end:]
    return b"", envelope


def m_dtd(rng: random.Random, p: Parts) -> Mutation:
    decl, rest = _xml_decl_split(p.envelope)
    choice = rng.choice(["internal", "external", "laughs", "param"])
    dtd = {
        "internal": b'<!DOCTYPE x [<!ENTITY e "v">]>',
        "external": b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
        "laughs": b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>',
        "param": b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x"> %p;]>',
    }[choice]
    envelope = decl + dtd + rest.replace(b"<eb:CPAId>", b"<eb:CPAId>&e;", 1)
    p.envelope = envelope
    return _m(f"dtd-{choice}", request(p))


def m_namespaces(rng: random.Random, p: Parts) -> Mutation:
    e = p.envelope
    eb = b"http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
    choice = rng.choice(["rebind", "default", "unused", "relative", "soap12", "prefix-swap"])
    if choice == "rebind":
        e = e.replace(b"<eb:Action>", b'<eb:Action xmlns:eb="urn:other">', 1)
    elif choice == "default":
        e = e.replace(b"<eb:MessageData>", b'<MessageData xmlns="' + eb + b'">', 1).replace(
            b"</eb:MessageData>", b"</MessageData>", 1
        )
    elif choice == "unused":
        e = e.replace(b"<eb:MessageHeader ", b'<eb:MessageHeader xmlns:u="urn:unused" ', 1)
    elif choice == "relative":
        e = e.replace(b"<eb:MessageHeader ", b'<eb:MessageHeader xmlns:r="relative" ', 1)
    elif choice == "soap12":
        e = e.replace(
            b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope"
        )
    else:
        e = e.replace(b"SOAP:", b"S:").replace(b"xmlns:SOAP=", b"xmlns:S=")
    p.envelope = e
    return _m(f"ns-{choice}", request(p))


def m_duplicate_element(rng: random.Random, p: Parts) -> Mutation:
    e = p.envelope
    tag = rng.choice(
        [
            b"eb:MessageId",
            b"eb:CPAId",
            b"eb:MessageHeader",
            b"eb:AckRequested",
            b"ds:Signature",
            b"eb:Manifest",
            b"eb:From",
            b"eb:Action",
            b"eb:Timestamp",
        ]
    )
    match = re.search(rb"<" + tag + rb"[ >].*?</" + tag + rb">|<" + tag + rb"[^>]*/>", e, re.S)
    if match is not None:
        e = e[: match.end()] + match.group(0) + e[match.end() :]
    p.envelope = e
    return _m(f"dup-{tag.decode()}", request(p))


def m_values(rng: random.Random, p: Parts) -> Mutation:
    e = p.envelope
    choice = rng.choice(
        ["long-id", "ts-extreme", "ts-garbage", "ttl-past", "unicode", "control", "empty-id"]
    )
    if choice == "long-id":
        e = re.sub(
            rb"<eb:MessageId>",
            b"<eb:MessageId>" + b"x" * rng.choice([300, 5000, 60000]),
            e,
            count=1,
        )
    elif choice == "ts-extreme":
        value = rng.choice(
            [b"0001-01-01T00:00:00+14:00", b"9999-12-31T23:59:59-14:00", b"2026-13-45T99:99:99Z"]
        )
        e = re.sub(rb"<eb:Timestamp>[^<]*", b"<eb:Timestamp>" + value, e, count=1)
    elif choice == "ts-garbage":
        e = re.sub(rb"<eb:Timestamp>[^<]*", b"<eb:Timestamp>yesterday", e, count=1)
    elif choice == "ttl-past":
        e = re.sub(rb"<eb:TimeToLive>[^<]*", b"<eb:TimeToLive>2000-01-01T00:00:00Z", e, count=1)
    elif choice == "unicode":
        e = e.replace(b"<eb:Action>WMO301", "<eb:Action>WMO301\u202e\U0001f600".encode(), 1)
    elif choice == "control":
        e = e.replace(b"<eb:Action>WMO301", b"<eb:Action>WMO\x01301", 1)
    else:
        e = re.sub(rb"<eb:MessageId>[^<]*", b"<eb:MessageId>", e, count=1)
    p.envelope = e
    return _m(f"value-{choice}", request(p))


# Signature ---------------------------------------------------------------------------------


def m_signature(rng: random.Random, p: Parts) -> Mutation:
    e = p.envelope
    choice = rng.choice(
        [
            "move-ref",
            "dup-ref",
            "wrap",
            "keyinfo-drop",
            "keyinfo-garbage",
            "keyinfo-other",
            "sigvalue",
            "digest",
            "no-transforms",
            "xpath",
            "in-body",
            "two-signatures",
            "c14n-inclusive",
        ]
    )
    refs = re.findall(rb"<ds:Reference .*?</ds:Reference>", e, re.S)
    if choice == "move-ref" and len(refs) == 2:
        e = e.replace(refs[0], b"\x00").replace(refs[1], refs[0]).replace(b"\x00", refs[1])
    elif choice == "dup-ref" and refs:
        e = e.replace(refs[-1], refs[-1] + refs[-1])
    elif choice == "wrap":
        # XML signature wrapping: the signed header moved aside, a forged one in its place.
        header = re.search(rb"<eb:MessageHeader .*?</eb:MessageHeader>", e, re.S)
        assert header is not None
        forged = header.group(0).replace(b"WMO301", b"WMO302")
        e = e.replace(header.group(0), forged + b"<Wrapper>" + header.group(0) + b"</Wrapper>")
    elif choice == "keyinfo-drop":
        e = re.sub(rb"<ds:KeyInfo>.*?</ds:KeyInfo>", b"", e, flags=re.S)
    elif choice == "keyinfo-garbage":
        e = re.sub(rb"<ds:X509Certificate>[^<]*", b"<ds:X509Certificate>MIIBAAAA", e)
    elif choice == "keyinfo-other":
        other = material.load_cert(material.pki() / NODE[0] / "signing.pem")
        from cryptography.hazmat.primitives.serialization import Encoding

        der = base64.b64encode(other.public_bytes(Encoding.DER))
        e = re.sub(rb"<ds:X509Certificate>[^<]*", b"<ds:X509Certificate>" + der, e)
    elif choice == "sigvalue":
        e = re.sub(
            rb"<ds:SignatureValue>(.)",
            lambda m: b"<ds:SignatureValue>" + (b"A" if m.group(1) != b"A" else b"B"),
            e,
        )
    elif choice == "digest":
        e = re.sub(
            rb"<ds:DigestValue>(.)",
            lambda m: b"<ds:DigestValue>" + (b"A" if m.group(1) != b"A" else b"B"),
            e,
            count=1,
        )
    elif choice == "no-transforms":
        e = re.sub(rb"<ds:Transforms>.*?</ds:Transforms>", b"", e, flags=re.S)
    elif choice == "xpath":
        e = re.sub(rb"<ds:XPath>[^<]*", b"<ds:XPath>true()", e)
    elif choice == "in-body":
        sig = re.search(rb"<ds:Signature>.*</ds:Signature>", e, re.S)
        assert sig is not None
        e = e.replace(sig.group(0), b"")
        e = re.sub(rb"(<SOAP:Body[^>]*>)", lambda m: m.group(1) + sig.group(0), e)  # type: ignore[union-attr]
    elif choice == "two-signatures":
        sig = re.search(rb"<ds:Signature>.*</ds:Signature>", e, re.S)
        assert sig is not None
        e = e.replace(sig.group(0), sig.group(0) * 2)
    else:
        e = e.replace(
            b"http://www.w3.org/2001/10/xml-exc-c14n#",
            b"http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
            1,
        )
    p.envelope = e
    return _m(f"sig-{choice}", request(p))


def m_byte_flip(rng: random.Random, p: Parts) -> Mutation:
    """A few random bytes of the body changed: the unstructured baseline."""
    body = bytearray(p.body())
    for _ in range(rng.randint(1, 8)):
        body[rng.randrange(len(body))] = rng.randrange(256)
    return _m("byte-flip", request(p, body=bytes(body)))


MUTATORS: list[tuple[Callable[[random.Random, Parts], Mutation], int]] = [
    (m_valid, 3),
    (m_content_length, 6),
    (m_content_length_empty, 1),
    (m_duplicate_content_length, 2),
    (m_chunked, 6),
    (m_transfer_encoding_odd, 3),
    (m_huge_header, 2),
    (m_many_headers, 2),
    (m_request_line, 4),
    (m_pipelined, 3),
    (m_soap_action, 2),
    (m_truncated, 4),
    (m_over_limit, 1),
    (m_content_type, 6),
    (m_two_content_types, 1),
    (m_mime_body, 10),
    (m_dtd, 3),
    (m_namespaces, 5),
    (m_duplicate_element, 6),
    (m_values, 6),
    (m_signature, 10),
    (m_byte_flip, 6),
]


def mutations(seed: int, count: int) -> list[Callable[[], Mutation]]:
    """``count`` mutations, each built when called (fresh timestamps), reproducible by seed."""
    rng = random.Random(seed)  # noqa: S311 - reproducible mutations, not secrets
    funcs = [f for f, _ in MUTATORS]
    weights = [w for _, w in MUTATORS]
    chosen = rng.choices(funcs, weights, k=count)
    out = []
    for n, func in enumerate(chosen):
        sub = seed * 1_000_003 + n

        def build(
            func: Callable[[random.Random, Parts], Mutation] = func, sub: int = sub
        ) -> Mutation:
            r = random.Random(sub)  # noqa: S311 - reproducible mutations, not secrets
            return func(r, fresh(r))

        out.append(build)
    return out


# -- the run -----------------------------------------------------------------------------


@dataclass
class Sample:
    """B's footprint after a batch."""

    done: int
    rss_kb: int
    fds: int
    seconds: float


@dataclass
class Report:
    """What a run found and measured."""

    mutations: int = 0
    by_name: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    known: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"mutations sent: {self.mutations}", "B's RSS and open fds (after each batch):"]
        for s in self.samples:
            lines.append(
                f"  {s.done:>6} done  {s.rss_kb / 1024:7.1f} MiB  {s.fds:4} fds  {s.seconds:7.1f} s"
            )
        lines.append(
            "responses: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.statuses.items()))
        )
        lines.append(
            "mutations: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.by_name.items()))
        )
        lines.append(f"integrity_check: {sorted(set(self.integrity))}")
        lines.append(
            "known findings seen: "
            + (", ".join(f"{k} x{v}" for k, v in self.known.items()) or "none")
        )
        lines.append(f"findings: {len(self.findings)}")
        lines += [f"  {f}" for f in self.findings[:50]]
        return "\n".join(lines)


def _judge(mutation: Mutation, result: Exchange) -> str | None:
    """Why this exchange breaks the rules, or None."""
    if mutation.expect == "hangup":
        return None
    if len(result.statuses) < 1:
        return f"no HTTP answer ({result.error or 'connection closed'})"
    # A pipelined request after one the server refused and closed on is not owed an answer.
    short = len(result.statuses) < mutation.responses
    if short and not any(s >= 400 for s in result.statuses):
        return f"{len(result.statuses)} of {mutation.responses} pipelined answers"
    if mutation.name == "valid" and result.statuses[0] not in (200, 204):
        return f"a valid message was answered {result.statuses[0]}"
    return None


def run(
    *,
    mutations_total: int,
    seed: int,
    workers: int,
    batch: int,
    work: Path,
    deadline: float | None = None,
    progress: Callable[[str], None] = lambda text: None,
) -> Report:
    """Start the gateways, send the mutations in batches, check after each batch."""
    findings_dir = work / "findings"
    findings_dir.mkdir(parents=True, exist_ok=True)
    report = Report()
    rig = Rig.start(work)
    started = time.monotonic()
    try:
        context = client_context()
        control = random.Random(seed ^ 0x5EED)  # noqa: S311 - reproducible mutations, not secrets
        report.samples.append(Sample(0, rig.rss_kb(), rig.fds(), 0.0))
        builders = mutations(seed, mutations_total)
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(builders), batch):
                if deadline is not None and time.monotonic() > deadline:
                    progress("time budget reached")
                    break
                chunk = builders[start : start + batch]

                def one(build: Callable[[], Mutation]) -> tuple[Mutation, Exchange]:
                    mutation = build()
                    return mutation, exchange(rig.b_port, context, mutation)

                for mutation, result in pool.map(one, chunk):
                    report.mutations += 1
                    report.by_name[mutation.name.split("-")[0]] += 1
                    for status in result.statuses:
                        report.statuses[str(status)] += 1
                    if result.closed and not result.statuses:
                        report.statuses["closed"] += 1
                    why = _judge(mutation, result)
                    if why is not None:
                        path = findings_dir / f"{mutation.name}-{report.mutations}.http"
                        path.write_bytes(mutation.raw)
                        report.findings.append(f"{mutation.name}: {why} ({path})")
                _check_batch(rig, report, context, control, findings_dir)
                if not rig.alive():
                    report.findings.append(f"a gateway process died by mutation {report.mutations}")
                    break
                sample = Sample(
                    report.mutations, rig.rss_kb(), rig.fds(), time.monotonic() - started
                )
                report.samples.append(sample)
                progress(
                    f"{sample.done} mutations, RSS {sample.rss_kb / 1024:.1f} MiB, "
                    f"{sample.fds} fds, {len(report.findings)} findings, {sample.seconds:.0f} s"
                )
        # Let the asynchronous acks settle, then look at the logs and the store once more.
        time.sleep(2)
        _check_batch(rig, report, context, control, findings_dir)
    finally:
        rig.stop()
    for side, problem in rig.new_log_problems():
        _classify(report, side, problem)
    return report


def _classify(report: Report, side: str, record: str) -> None:
    entry = known.accepted_log(record)
    if entry is not None:
        report.known[entry.what] += 1
    else:
        report.findings.append(f"gateway {side} log: {record[:1500]}")


def _check_batch(
    rig: Rig, report: Report, context: ssl.SSLContext, control: random.Random, findings_dir: Path
) -> None:
    if rig.alive():
        valid = Mutation("valid", [request(fresh(control))])
        why = _judge(valid, exchange(rig.b_port, context, valid))
        if why is not None:
            report.findings.append(f"control message after batch {report.mutations}: {why}")
    for side, problem in rig.new_log_problems():
        _classify(report, side, problem)
    result = rig.integrity()
    report.integrity.append(result)
    if result != "ok":
        report.findings.append(f"PRAGMA integrity_check after {report.mutations}: {result}")


def replay(path: Path, port: int) -> Exchange:
    """Send one saved request to a gateway listening on ``port`` (the rig's B)."""
    return exchange(port, client_context(), Mutation(path.name, [path.read_bytes()]))


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.wire", description=__doc__)
    parser.add_argument("--mutations", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--work", help="gateways' data, logs and findings (default: temporary)")
    parser.add_argument("--report", help="also write the report to this file")
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="send saved requests")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fuzz-wire-"))
    if args.replay:
        rig = Rig.start(work)
        try:
            for name in args.replay:
                result = replay(Path(name), rig.b_port)
                print(f"{name}: {result.statuses or 'no answer'} {result.error or ''}", flush=True)
            time.sleep(1)
            for side, problem in rig.new_log_problems():
                print(f"gateway {side} log: {problem}", flush=True)
        finally:
            rig.stop()
        return 0
    print(f"work directory {work}", file=sys.stderr, flush=True)
    report = run(
        mutations_total=args.mutations,
        seed=args.seed,
        workers=args.workers,
        batch=args.batch,
        work=work,
        deadline=time.monotonic() + args.seconds if args.seconds else None,
        progress=lambda text: print(
            f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True
        ),
    )
    text = report.summary()
    print(text, flush=True)
    if args.report:
        Path(args.report).write_text(text + "\n", encoding="utf-8")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
