#!/usr/bin/env python3
"""Soak: two ``dkgw serve`` processes under steady, mixed and hostile traffic for a set time.

Not a test (pytest never collects it).  See bench/README.md, "Soak".  What it does:

1. makes the example TEST PKI and an osb-rm CPA between Gemeente Voorbeeld (a)
   and the GGk/RINIS test node (b), imported into two fresh SQLite stores, and
   starts both gateways as ``dkgw serve --config ...`` on 127.0.0.1 (mutual TLS
   between them, plain-HTTP ``[api]`` and ``[admin]`` on loopback);
2. for ``--minutes`` runs, each in its own thread:

   - business traffic both ways through each side's REST API (``sendMessage``,
     ebms-core's ``ebms_adapter_client``): ``--rate`` messages a second per
     direction, a 4 KiB payload, every ``--big-every``-th one 1 MiB; sending
     pauses while more than ``--max-backlog`` are not yet DELIVERED;
   - pings both ways through the REST API (a synchronous Ping -> Pong), one a
     second;
   - hostile traffic against both ebMS endpoints, about two a second: mutated
     and garbage ebMS requests over mutual TLS, a body over ``[http]
     max_request_bytes``, clients without or with an untrusted certificate,
     plain HTTP on the TLS port, and up to three slow clients at a time that
     send a header byte every two seconds;

3. samples both processes' RSS and open file descriptors every 5 s and prints one
   line a minute: throughput, DELIVERED, errors, RSS, fds and store size;
4. stops the traffic, gives the queues ``--drain`` seconds, stops both gateways
   (SIGTERM, then SIGKILL) and prints the summary: every message sent must be
   DELIVERED, no traffic error, no ERROR line in the logs, and memory flat
   after warm-up (the least-squares RSS slope of the last third of the run
   under ``--flat-mb-per-min``; the first third's slope is shown next to it).

Exit status: 0 when all of that holds, 2 when something does not (the run
directory is kept), 1 on an error.  It stops by itself after ``--minutes`` plus
at most ``--drain`` and about a minute of shutdown, and on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api_bench import GatewayProcess  # the benchmarks next to this one (run as bench/soak.py)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ebms_adapter_client import (
    DataSource,
    EbmsAdapterClient,
    EbmsAdapterClientConfig,
    MessageRequest,
    MessageRequestProperties,
)
from msh_bench import cpu_model, free_port, git_revision, say

from cpa.generate import ActionSpec, CpaSpec, make_cpa
from gateway.commands.demo import MUNICIPALITY, NODE, SERVICE, example_party
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations

REPO = Path(__file__).resolve().parent.parent
MAKE_PKI = REPO / "certs-example" / "make-pki"
CPA_ID = "soak"
SERVICE_KEY = f"urn:osb:services:{SERVICE}"
PARTY = {"a": f"urn:osb:oin:{MUNICIPALITY[2]}", "b": f"urn:osb:oin:{NODE[2]}"}
ROLE = {"a": MUNICIPALITY[3], "b": NODE[3]}
ACTION = {"a": "WMO301", "b": "WMO302"}
SMALL = b'<?xml version="1.0" encoding="UTF-8"?><Bericht>' + b"x" * 4000 + b"</Bericht>"
BIG = b'<?xml version="1.0" encoding="UTF-8"?><Bericht>' + b"y" * (1 << 20) + b"</Bericht>"
#: [http] max_request_bytes of both gateways; the oversized body goes past it.
MAX_REQUEST = 8 * 1024 * 1024
IDLE_TIMEOUT = 10.0
SAMPLE_EVERY = 5.0
IO_TIMEOUT = 30.0
pc = time.monotonic

PING_ENVELOPE = """<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:eb="http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd">
 <soap:Header>
  <eb:MessageHeader eb:version="2.0" soap:mustUnderstand="1">
   <eb:From><eb:PartyId eb:type="urn:osb:oin">{frm}</eb:PartyId></eb:From>
   <eb:To><eb:PartyId eb:type="urn:osb:oin">{to}</eb:PartyId></eb:To>
   <eb:CPAId>{cpa}</eb:CPAId>
   <eb:ConversationId>{uid}</eb:ConversationId>
   <eb:Service>urn:oasis:names:tc:ebxml-msg:service</eb:Service>
   <eb:Action>Ping</eb:Action>
   <eb:MessageData><eb:MessageId>{uid}@soak</eb:MessageId>
    <eb:Timestamp>{ts}</eb:Timestamp></eb:MessageData>
  </eb:MessageHeader>
 </soap:Header>
 <soap:Body/>
</soap:Envelope>"""


# -- the run's files and processes ------------------------------------------------------


@dataclass
class Side:
    """One gateway: its ports, files and process."""

    name: str
    slug: str
    oin: str
    work: Path
    ebms: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)
    process: GatewayProcess | None = None

    @property
    def store(self) -> Path:
        return self.work / f"{self.name}.sqlite3"

    @property
    def config(self) -> Path:
        return self.work / f"{self.name}.toml"

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}.log"

    def write_config(self, pki: Path, args: argparse.Namespace) -> None:
        party, ca = pki / self.slug, pki / "ca"
        self.config.write_text(
            f"""# gateway {self.name} of bench/soak.py (example TEST PKI)
[gateway]
data_dir = "{self.work / f"{self.name}-data"}"
store = "sqlite:///{self.store}"
node_id = "soak-{self.name}"
party_ids = ["urn:osb:oin:{self.oin}"]

[http]
listen = "127.0.0.1:{self.ebms}"
path = "/ebms"
max_request_bytes = {MAX_REQUEST}
idle_timeout = {IDLE_TIMEOUT}

[api]
listen = "127.0.0.1:{self.api}"

[admin]
listen = "127.0.0.1:{self.admin}"

[tls]
certificate = "{party}/tls-server.pem"
key = "{party}/tls-server.key"
client_certificate = "{party}/tls-client.pem"
client_key = "{party}/tls-client.key"
chain = "{ca}/intermediate.pem"
trust_anchors = "{ca}/root.pem"

[delivery]
poll_interval = 0.1
concurrency = 8
connect_timeout = 10.0
read_timeout = 60.0

[monitoring]
pings = false
""",
            encoding="utf-8",
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


def import_cpa(sides: dict[str, Side], pki: Path) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    a, b = sides["a"], sides["b"]
    spec = CpaSpec(
        a=example_party(pki, *MUNICIPALITY[:4], f"https://127.0.0.1:{a.ebms}/ebms"),
        b=example_party(pki, *NODE[:4], f"https://127.0.0.1:{b.ebms}/ebms"),
        service=SERVICE,
        actions=(ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b")),
        profile="osb-rm",
        start=start,
        end=start + timedelta(days=30),
        cpa_id=CPA_ID,
    )
    xml = make_cpa(spec)
    for side in sides.values():
        db = Database.from_url(f"sqlite:///{side.store}")
        try:
            apply_migrations(db)
            CpaRegistry(db).insert(xml, overwrite=True)
        finally:
            db.close()


def untrusted_identity(work: Path) -> tuple[Path, Path]:
    """A self-signed client certificate no gateway trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "soak intruder")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = work / "intruder.pem", work / "intruder.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# -- measurements -----------------------------------------------------------------------


def proc_status_kb(pid: int, field_name: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def store_mb(path: Path) -> float:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            total += candidate.stat().st_size
    return total / 1e6


def delivered(path: Path) -> int:
    """Outgoing messages DELIVERED in a store (read-only connection)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
        row = db.execute(
            "SELECT COUNT(*) FROM ebms_message WHERE direction = 'out' AND status = 'DELIVERED'"
            " AND action NOT IN ('Ping', 'Pong', 'Acknowledgment', 'MessageError')"
        ).fetchone()
    return int(row[0])


def slope_mb_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, kB) points, in MB per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return float("nan")
    cov = sum((t - mx) * (v - my) for t, v in points)
    return cov / var * 60 / 1024


class Tally:
    """Counters shared by the traffic threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def error(self, what: str) -> None:
        with self.lock:
            self.counts["errors"] += 1
            if len(self.errors) < 50:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {what}")

    def snapshot(self) -> Counter[str]:
        with self.lock:
            return Counter(self.counts)


# -- traffic ----------------------------------------------------------------------------


def api_client(side: Side) -> EbmsAdapterClient:
    config = EbmsAdapterClientConfig(base_url=f"http://127.0.0.1:{side.api}", timeout=120)
    return EbmsAdapterClient(config)


def business(
    frm: str,
    sides: dict[str, Side],
    args: argparse.Namespace,
    stop: threading.Event,
    tally: Tally,
    backlog: Callable[[str], int],
) -> None:
    """``--rate`` messages a second from ``frm`` to the other side, through its REST API."""
    to = "b" if frm == "a" else "a"
    client = api_client(sides[frm])
    n = 0
    next_at = pc()
    try:
        while not stop.is_set():
            next_at += 1 / args.rate
            stop.wait(max(0.0, next_at - pc()))
            if stop.is_set():
                break
            if backlog(frm) > args.max_backlog:
                tally.add(f"throttled {frm}")
                continue
            n += 1
            big = args.big_every > 0 and n % args.big_every == 0
            request = MessageRequest(
                MessageRequestProperties(
                    cpa_id=CPA_ID,
                    from_party_id=PARTY[frm],
                    from_role=ROLE[frm],
                    to_party_id=PARTY[to],
                    to_role=ROLE[to],
                    service=SERVICE_KEY,
                    action=ACTION[frm],
                ),
                [DataSource("application/xml", BIG if big else SMALL, name=f"bericht-{n}.xml")],
            )
            try:
                client.send_message(request)
            except Exception as exc:
                tally.error(f"sendMessage {frm}->{to}: {type(exc).__name__}: {exc}"[:300])
                continue
            tally.add(f"sent {frm}")
            if big:
                tally.add(f"sent big {frm}")
            if pc() > next_at + 5:  # far behind: do not burst to catch up
                next_at = pc()
    finally:
        client.close()


def pings(sides: dict[str, Side], stop: threading.Event, tally: Tally) -> None:
    """A synchronous REST ping a second, alternating the direction."""
    clients = {name: api_client(side) for name, side in sides.items()}
    try:
        turn = 0
        while not stop.wait(1.0):
            frm = "ab"[turn % 2]
            to = "b" if frm == "a" else "a"
            turn += 1
            try:
                clients[frm].ping(CPA_ID, PARTY[frm], PARTY[to])
                tally.add("pings ok")
            except Exception as exc:
                tally.error(f"ping {frm}->{to}: {type(exc).__name__}: {exc}"[:300])
    finally:
        for client in clients.values():
            client.close()


class Hostile:
    """Requests no partner should send, against both ebMS endpoints over TLS."""

    def __init__(self, pki: Path, work: Path, sides: dict[str, Side], tally: Tally) -> None:
        self.sides = sides
        self.tally = tally
        self.rng = random.Random(20261207)  # noqa: S311 - mutations, not secrets
        party, ca = pki / MUNICIPALITY[0], pki / "ca"
        chained = work / "client-chain.pem"
        chained.write_bytes(
            (party / "tls-client.pem").read_bytes() + (ca / "intermediate.pem").read_bytes()
        )
        self.good = self._context(chained, party / "tls-client.key")
        self.untrusted = self._context(*untrusted_identity(work))
        self.anonymous = self._context(None, None)
        self.slow = 0
        self.slow_lock = threading.Lock()
        self.slow_threads: list[threading.Thread] = []

    @staticmethod
    def _context(cert: Path | None, key: Path | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the gateway's certificate is not the point here
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return ctx

    def envelope(self) -> bytes:
        ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        uid = f"{self.rng.getrandbits(64):016x}"
        return PING_ENVELOPE.format(
            frm=MUNICIPALITY[2], to=NODE[2], cpa=CPA_ID, uid=uid, ts=ts
        ).encode()

    def mutated(self) -> bytes:
        data = bytearray(self.envelope())
        kind = self.rng.randrange(7)
        if kind == 0:  # flipped bytes
            for _ in range(self.rng.randint(1, 20)):
                data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        elif kind == 1:  # cut short
            del data[self.rng.randrange(len(data)) :]
        elif kind == 2:  # garbage
            return self.rng.randbytes(self.rng.randint(1, 20000))
        elif kind == 3:  # a DOCTYPE with an entity
            return b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]>' + bytes(data)
        elif kind == 4:  # nested deep
            depth = self.rng.randint(300, 5000)
            return b"<a>" * depth + b"</a>" * depth
        elif kind == 5:  # an unknown CPA
            return bytes(data).replace(CPA_ID.encode(), b"no-such-cpa")
        else:  # a huge text node
            return bytes(data).replace(
                b"<soap:Body/>", b"<soap:Body>" + b"z" * 2_000_000 + b"</soap:Body>"
            )
        return bytes(data)

    def request(self, ctx: ssl.SSLContext, port: int, head: bytes, body: bytes) -> str:
        """Send one request; the outcome: ``http NNN``, ``closed``, ``refused``, ``timeout``."""
        try:
            with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as raw:
                raw.settimeout(IO_TIMEOUT)
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(head + body)
                    answer = tls.recv(64)
        except ssl.SSLError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except (ConnectionError, OSError):
            return "closed"
        if answer.startswith(b"HTTP/1.1 "):
            return f"http {answer[9:12].decode(errors='replace')}"
        return "closed" if not answer else "other"

    @staticmethod
    def head(length: int, content_type: bytes = b"text/xml; charset=utf-8") -> bytes:
        return (
            b"POST /ebms HTTP/1.1\r\nHost: 127.0.0.1\r\nSOAPAction: ebXML\r\n"
            b"Content-Type: " + content_type + b"\r\n"
            b"Content-Length: " + str(length).encode() + b"\r\nConnection: close\r\n\r\n"
        )

    def one(self) -> None:
        side = self.sides[self.rng.choice("ab")]
        kind = self.rng.choices(
            ["mutated", "oversized", "untrusted", "anonymous", "plain", "slow"],
            weights=[12, 1, 2, 2, 1, 1],
        )[0]
        if kind == "slow":
            with self.slow_lock:
                if self.slow >= 3:
                    kind = "mutated"
                else:
                    self.slow += 1
        if kind == "mutated":
            body = self.mutated()
            outcome = self.request(self.good, side.ebms, self.head(len(body)), body)
        elif kind == "oversized":
            outcome = self.oversized(side.ebms)
        elif kind in ("untrusted", "anonymous"):
            body = self.envelope()
            ctx = self.untrusted if kind == "untrusted" else self.anonymous
            outcome = self.request(ctx, side.ebms, self.head(len(body)), body)
        elif kind == "plain":
            outcome = self.plain(side.ebms)
        else:
            # A byte every 2 s stays under the idle timeout (the header deadline cuts it);
            # every 15 s goes past it.
            pause = self.rng.choice((2.0, 15.0))
            thread = threading.Thread(target=self.slow_client, args=(side.ebms, pause))
            thread.start()
            self.slow_threads.append(thread)
            return
        self.tally.add(f"hostile {kind}: {outcome}")
        if outcome in ("timeout", "other") or (kind != "mutated" and outcome.startswith("http 2")):
            self.tally.error(f"hostile {kind} to {side.name}: {outcome}")

    def oversized(self, port: int) -> str:
        """A declared and sent body over the limit: refused before the end, or cut off."""
        length = MAX_REQUEST + 1024 * 1024
        chunk = b"<" * 65536
        try:
            with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as raw:
                raw.settimeout(IO_TIMEOUT)
                with self.good.wrap_socket(raw) as tls:
                    tls.sendall(self.head(length))
                    sent = 0
                    while sent < length:
                        tls.sendall(chunk)
                        sent += len(chunk)
                    answer = tls.recv(64)
        except TimeoutError:
            return "timeout"
        except (ssl.SSLError, ConnectionError, OSError):
            return "closed"
        return f"http {answer[9:12].decode(errors='replace')}" if answer else "closed"

    def plain(self, port: int) -> str:
        """Plain HTTP on the TLS port."""
        try:
            with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as raw:
                raw.settimeout(IO_TIMEOUT)
                raw.sendall(self.head(2) + b"<a")
                answer = raw.recv(64)
        except TimeoutError:
            return "timeout"
        except OSError:
            return "closed"
        return "closed" if not answer or not answer.startswith(b"HTTP/1.1 2") else "http 2xx"

    def slow_client(self, port: int, pause: float) -> None:
        """A header byte every ``pause`` seconds until the gateway hangs up (at most 90 s).

        Past ``[http] idle_timeout`` the gateway must hang up, and a client that
        keeps trickling under it must be cut at ``[http] header_timeout`` (20 s
        by default, docs/operations.md "Slow clients"): being held is an error.
        """
        started = pc()
        outcome = "held 90 s"
        try:
            with socket.create_connection(("127.0.0.1", port), IO_TIMEOUT) as raw:
                raw.settimeout(IO_TIMEOUT)
                with self.good.wrap_socket(raw) as tls:
                    tls.sendall(b"POST /ebms HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    while pc() - started < 90:
                        time.sleep(pause)
                        tls.sendall(b"a")
                        if pause > IDLE_TIMEOUT:
                            # The gateway has hung up by now: this read sees the close.
                            tls.settimeout(2.0)
                            if tls.recv(1) == b"":
                                raise ConnectionResetError
        except TimeoutError:
            outcome = "held 90 s"
        except (ssl.SSLError, OSError):
            outcome = f"closed after {pc() - started:.0f} s"
        finally:
            with self.slow_lock:
                self.slow -= 1
        kind = "stalled" if pause > IDLE_TIMEOUT else "trickling"
        self.tally.add(f"hostile {kind}: {'held 90 s' if outcome == 'held 90 s' else 'closed'}")
        if outcome == "held 90 s":
            self.tally.error(f"a client sending a byte every {pause:g} s was not cut off")

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            try:
                self.one()
            except Exception as exc:
                self.tally.error(f"hostile client: {type(exc).__name__}: {exc}"[:300])


# -- the run ----------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    rss_kb: dict[str, float]
    fds: dict[str, int]


def error_lines(log: Path, offset: int) -> tuple[int, int]:
    """ERROR/CRITICAL lines in ``log`` after byte ``offset``; (count, new offset)."""
    with log.open("rb") as f:
        f.seek(offset)
        data = f.read()
    count = sum(b" ERROR " in line or b" CRITICAL " in line for line in data.splitlines())
    return count, offset + len(data)


def run(args: argparse.Namespace, work: Path) -> int:
    pki = work / "pki"
    subprocess.run([sys.executable, str(MAKE_PKI), "--out", str(pki), "--quiet"], check=True)
    sides = {
        "a": Side("a", MUNICIPALITY[0], MUNICIPALITY[2], work),
        "b": Side("b", NODE[0], NODE[2], work),
    }
    for side in sides.values():
        side.write_config(pki, args)
    import_cpa(sides, pki)
    try:
        for side in sides.values():
            side.process = GatewayProcess(side.name, side.config, side.log)
        for side in sides.values():
            assert side.process is not None
            side.process.wait_for_ports((side.ebms, side.api, side.admin), timeout=120)
        a, b = sides["a"], sides["b"]
        say(f"a: ebMS {a.ebms}, API {a.api}; b: ebMS {b.ebms}, API {b.api}")
        return traffic(args, pki, work, sides)
    finally:
        for side in sides.values():
            if side.process is not None:
                side.process.stop()


def traffic(args: argparse.Namespace, pki: Path, work: Path, sides: dict[str, Side]) -> int:
    tally = Tally()
    stop = threading.Event()
    done = {name: 0 for name in sides}
    done_lock = threading.Lock()

    def backlog(frm: str) -> int:
        with done_lock:
            return tally.snapshot()[f"sent {frm}"] - done[frm]

    hostile = Hostile(pki, work, sides, tally)
    threads = [
        threading.Thread(target=business, args=(n, sides, args, stop, tally, backlog))
        for n in sides
    ]
    threads.append(threading.Thread(target=pings, args=(sides, stop, tally)))
    threads.append(threading.Thread(target=hostile.run, args=(stop,)))
    started = pc()
    for thread in threads:
        thread.start()
    samples: list[Sample] = []
    offsets = {name: 0 for name in sides}
    log_errors = 0
    lines: list[str] = []
    header = (
        "| min | sent a→b / b→a | delivered (msgs/s) | delivered total | pings | hostile "
        "| errors | RSS a / b (MB) | fds a / b | store a / b (MB) |"
    )
    print(header + "\n|" + " --- |" * 10, flush=True)
    previous = Counter[str]()
    previous_done = 0
    minute = 0
    end = started + args.minutes * 60
    try:
        while pc() < end:
            next_sample = min(end, pc() + SAMPLE_EVERY)
            interrupted.wait(max(0.0, next_sample - pc()))
            if interrupted.is_set():
                say("interrupted: stopping")
                break
            for side in sides.values():
                if side.process is not None and side.process.proc.poll() is not None:
                    raise RuntimeError(f"gateway {side.name} exited:\n{side.process.tail()}")
            with done_lock:
                for name, side in sides.items():
                    done[name] = delivered(side.store)
            samples.append(
                Sample(
                    pc() - started,
                    {n: proc_status_kb(s.pid, "VmRSS") for n, s in sides.items()},
                    {n: fd_count(s.pid) for n, s in sides.items()},
                )
            )
            if pc() - started >= (minute + 1) * 60 or pc() >= end:
                minute += 1
                counts = tally.snapshot()
                new_log_errors = 0
                for name, side in sides.items():
                    count, offsets[name] = error_lines(side.log, offsets[name])
                    new_log_errors += count
                log_errors += new_log_errors
                total_done = sum(done.values())
                hostile_now = sum(v for k, v in counts.items() if k.startswith("hostile "))
                hostile_before = sum(v for k, v in previous.items() if k.startswith("hostile "))
                last = samples[-1]
                line = (
                    f"| {minute} | {counts['sent a'] - previous['sent a']} / "
                    f"{counts['sent b'] - previous['sent b']} | {total_done - previous_done} "
                    f"({(total_done - previous_done) / 60:.1f}) | {total_done} | "
                    f"{counts['pings ok'] - previous['pings ok']} | {hostile_now - hostile_before} "
                    f"| {counts['errors'] - previous['errors'] + new_log_errors} | "
                    f"{last.rss_kb['a'] / 1024:.1f} / {last.rss_kb['b'] / 1024:.1f} | "
                    f"{last.fds['a']} / {last.fds['b']} | "
                    f"{store_mb(sides['a'].store):.0f} / {store_mb(sides['b'].store):.0f} |"
                )
                print(line, flush=True)
                lines.append(line)
                previous, previous_done = counts, total_done
    finally:
        stop.set()
        for thread in threads + hostile.slow_threads:
            thread.join(timeout=150)
    counts = tally.snapshot()
    sent = {n: counts[f"sent {n}"] for n in sides}
    say(f"traffic stopped; draining (at most {args.drain:g} s)")
    drain_end = pc() + args.drain
    while pc() < drain_end and not interrupted.is_set():
        if all(delivered(s.store) >= sent[n] for n, s in sides.items()):
            break
        time.sleep(1)
    final = {n: delivered(s.store) for n, s in sides.items()}
    for name, side in sides.items():
        count, offsets[name] = error_lines(side.log, offsets[name])
        log_errors += count
    return summary(args, samples, counts, sent, final, log_errors, tally, pc() - started)


def summary(
    args: argparse.Namespace,
    samples: list[Sample],
    counts: Counter[str],
    sent: dict[str, int],
    final: dict[str, int],
    log_errors: int,
    tally: Tally,
    wall: float,
) -> int:
    span = samples[-1].at if samples else 0.0
    out = [
        "",
        f"wall time {wall / 60:.1f} min; sent a→b {sent['a']} "
        f"({counts['sent big a']} of 1 MiB), b→a {sent['b']} ({counts['sent big b']} of 1 MiB); "
        f"DELIVERED a→b {final['a']}, b→a {final['b']}; pings answered {counts['pings ok']}",
    ]
    throttled = counts["throttled a"] + counts["throttled b"]
    if throttled:
        out.append(f"sending paused {throttled} times for the backlog (--max-backlog)")
    hostile = sorted((k, v) for k, v in counts.items() if k.startswith("hostile "))
    out.append("hostile outcomes: " + ", ".join(f"{k[8:]} × {v}" for k, v in hostile))
    ok = True
    flat_lines = []
    for name in ("a", "b"):
        points = [(s.at, s.rss_kb[name]) for s in samples]
        first = [p for p in points if p[0] <= span / 3]
        last = [p for p in points if p[0] >= span * 2 / 3]
        s_first, s_last = slope_mb_per_min(first), slope_mb_per_min(last)
        flat = s_last < args.flat_mb_per_min
        ok = ok and flat
        fds = [s.fds[name] for s in samples]
        peak = max(v for _, v in points)
        flat_lines.append(
            f"gateway {name}: RSS {points[0][1] / 1024:.1f} -> max {peak / 1024:.1f} -> "
            f"{points[-1][1] / 1024:.1f} MB; slope first third {s_first:+.2f} MB/min, "
            f"last third {s_last:+.2f} MB/min: {'flat' if flat else 'NOT FLAT'}; "
            f"fds {min(fds)}..{max(fds)}"
        )
    out.extend(flat_lines)
    lost = {n: sent[n] - final[n] for n in sent}
    if any(lost.values()):
        ok = False
        out.append(f"NOT DELIVERED after the drain: a→b {lost['a']}, b→a {lost['b']}")
    if counts["errors"] or log_errors:
        ok = False
        out.append(f"errors: {counts['errors']} in traffic, {log_errors} ERROR lines in the logs")
        out.extend(f"  {e}" for e in tally.errors[:20])
    out.append("verdict: " + ("ok" if ok else "NOT OK"))
    print("\n".join(out), flush=True)
    return 0 if ok else 2


interrupted = threading.Event()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Soak two dkgw gateways under mixed traffic.")
    p.add_argument("--minutes", type=float, default=10.0, help="traffic time (default 10)")
    p.add_argument("--rate", type=float, default=4.0, help="messages/s per direction (4)")
    p.add_argument("--big-every", type=int, default=25, help="every Nth message is 1 MiB (25)")
    p.add_argument("--max-backlog", type=int, default=300, help="pause above this many undelivered")
    p.add_argument("--drain", type=float, default=120.0, help="seconds to let the queues empty")
    p.add_argument(
        "--flat-mb-per-min", type=float, default=1.0, help="RSS slope limit, last third (1.0)"
    )
    p.add_argument("--dir", type=Path, default=None, help="where the run directory goes")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        p.error("--minutes and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: interrupted.set())
    base = args.dir.resolve() if args.dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=base))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"git {git_revision()}; {cpu_model()}, {os.cpu_count()} cores; load {load} at start")
    print(f"run directory {work}\n", flush=True)
    code = 1
    try:
        code = run(args, work)
    finally:
        if code == 0 and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept {work}")
    return code


if __name__ == "__main__":
    sys.exit(main())
