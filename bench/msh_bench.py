#!/usr/bin/env python3
"""MSH benchmark: two gateways over mutual TLS, next to a bare HTTPS baseline, in one run.

Not a test (pytest never collects it).  See bench/README.md.  What it does:

1. baseline: a bare twisted.web HTTPS server (the project's mutual-TLS contexts,
   the node's server certificate) in a subprocess answers every POST with 204;
   this process POSTs 2 KiB bodies with the gateway's own ``EbmsClient``, first one
   at a time (round trips/s, p50/p99), then ``--concurrency`` in flight (req/s).
2. ping: gateway A (the municipality) runs in this process, gateway B (the node)
   is ``dkgw serve --config b.toml`` in a subprocess; sequential Ping -> Pong round
   trips under an async and a sync (mshSignalsOnly) osb-rm CPA.
3. osb-rm: A sends ``--messages`` business messages with one 2 KiB payload each,
   at most ``--window`` not yet DELIVERED, and times first send to last DELIVERED,
   with async and with sync acknowledgments; both stores are checked afterwards.
4. the baseline runs again at the end (drift check on a shared machine); gateway
   figures are given as a ratio to the mean of both baseline runs.

This process is pinned to core 0, the subprocesses to core 1 (where possible).
Exit status: 0 when the stores agree with what was sent, 2 on a mismatch, 1 on error.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import math
import os
import platform
import pstats
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from cpa.generate import ActionSpec, CpaSpec, make_cpa
from cpa.model import PartyId, Service
from gateway.commands.demo import MUNICIPALITY, NODE, example_party
from gateway.config import DeliveryConfig, GatewayConfig, HttpConfig, TlsConfig
from gateway.http.client import EbmsClient
from gateway.msh.outbound import Payload
from gateway.serve import Gateway
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from gateway.tls import ClientTlsPolicy, TlsIdentity, load_trust_anchors, server_context_factory

REPO = Path(__file__).resolve().parent.parent
MAKE_PKI = REPO / "certs-example" / "make-pki"
pc = time.perf_counter

GEMEENTE = PartyId(MUNICIPALITY[2], "urn:osb:oin")
NODE_ID = PartyId(NODE[2], "urn:osb:oin")
SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")
CPA_ASYNC = "bench-osb-rm-async"
CPA_SYNC = "bench-osb-rm-sync"
BODY_BYTES = 2048
#: One 2 KiB XML document, the size of a typical iWmo message.
PAYLOAD = (b'<?xml version="1.0" encoding="UTF-8"?><Bericht>' + b"x" * BODY_BYTES)[
    : BODY_BYTES - len(b"</Bericht>")
] + b"</Bericht>"
TARGET_MSGS_PER_S = 300.0
TARGET_PING_P99_MS = 10.0
BENCH_CORE, PEER_CORE = 0, 1


def say(text: str) -> None:
    """Progress, on stderr (the report goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- measurements ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of unsorted ``values`` (seconds in, seconds out)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    """One measured figure: count operations in ``wall`` seconds, with latencies."""

    name: str
    count: int
    wall: float
    latencies: list[float] = field(default_factory=list)
    cpu_bench: float = math.nan  # cores used by this process during the phase
    cpu_peer: float = math.nan  # cores used by the subprocess
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.wall if self.wall > 0 else math.nan

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


class CpuMeter:
    """CPU use (in cores) of this process and of a peer process over one phase."""

    def __init__(self, peer_pid: int | None) -> None:
        self.peer_pid = peer_pid
        self._t = pc()
        self._own = cpu_seconds(os.getpid())
        self._peer = cpu_seconds(peer_pid) if peer_pid else math.nan

    def apply(self, result: Result) -> Result:
        wall = pc() - self._t
        result.cpu_bench = (cpu_seconds(os.getpid()) - self._own) / wall
        if self.peer_pid:
            result.cpu_peer = (cpu_seconds(self.peer_pid) - self._peer) / wall
        return result


async def closed_loop(
    count: int, in_flight: int, op: Callable[[], Awaitable[object]]
) -> tuple[float, list[float]]:
    """Run ``op`` ``count`` times with ``in_flight`` running at once; (wall, latencies)."""
    remaining = count
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = pc()
            await op()
            latencies.append(pc() - started)

    started = pc()
    workers = [defer.ensureDeferred(worker()) for _ in range(min(in_flight, count))]
    await defer.gatherResults(workers, consumeErrors=True)
    return pc() - started, latencies


# -- processes and machine ------------------------------------------------------------------


def pin(pid: int, core: int) -> bool:
    """Pin a process (0: this one) to one core; False where that is not possible."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    try:
        if core not in os.sched_getaffinity(0) and pid == 0:
            return False
        os.sched_setaffinity(pid, {core})
    except OSError:
        return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A subprocess pinned to the peer core; stopped with SIGTERM."""

    running: ClassVar[list[Child]] = []
    all_pinned: ClassVar[bool] = True

    def __init__(self, name: str, argv: list[str], log_file: Path) -> None:
        self.name = name
        self.log_file = log_file
        self._log = log_file.open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        # Right after the fork, before the interpreter starts any thread (threads
        # inherit the affinity of the thread that creates them).
        self.pinned = pin(self.proc.pid, PEER_CORE)
        Child.all_pinned = Child.all_pinned and self.pinned
        Child.running.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_file.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    async def wait_for_port(self, reactor: Any, port: int, timeout: float = 30.0) -> None:
        deadline = pc() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                return
            if pc() > deadline:
                raise RuntimeError(f"{self.name} does not listen on {port}:\n{self.tail()}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def stop(self, reactor: Any, timeout: float = 20.0) -> int:
        """SIGTERM, then wait (without blocking the reactor); SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = pc() + timeout
        while self.proc.poll() is None and pc() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        if self.proc.poll() is None:
            say(f"{self.name} did not stop within {timeout} s: SIGKILL")
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        if self in Child.running:
            Child.running.remove(self)
        return self.proc.returncode

    @classmethod
    def kill_all(cls) -> None:
        """Last resort at shutdown (an error or Ctrl-C): terminate what is still running."""
        for child in list(cls.running):
            if child.proc.poll() is None:
                child.proc.terminate()
                try:
                    child.proc.wait(10)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
            cls.running.remove(child)


def filesystem_of(path: Path) -> str:
    """The mount point and file system type ``path`` lives on (fsync cost differs a lot)."""
    best = ("?", "?")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        inside = resolved == parts[1] or resolved.startswith(parts[1].rstrip("/") + "/")
        if inside and (best[0] == "?" or len(parts[1]) >= len(best[0])):
            best = (parts[1], parts[2])
    return f"{best[1]} at {best[0]}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_revision() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        head = subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [git, "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


# -- the baseline server (runs in a subprocess: msh_bench.py --baseline-server PORT) -------


def serve_baseline(port: int, pki: Path) -> int:
    """A bare twisted.web HTTPS server: 204 to every POST, mutual TLS as the gateway does it."""
    pin(0, PEER_CORE)
    from twisted.internet import reactor
    from twisted.web import resource, server

    counts = {"connections": 0, "requests": 0}

    class NoContent(resource.Resource):
        isLeaf = True

        def render_POST(self, request: server.Request) -> bytes:
            if request.path == b"/stats":
                request.setHeader(b"Content-Type", b"application/json")
                return json.dumps(counts).encode()
            counts["requests"] += 1
            request.content.read()
            request.setResponseCode(204)
            return b""

    class CountingSite(server.Site):
        def buildProtocol(self, addr: Any) -> Any:
            counts["connections"] += 1
            return super().buildProtocol(addr)

    party = pki / NODE[0]
    identity = TlsIdentity.from_files(
        party / "tls-server.pem", party / "tls-server.key", pki / "ca" / "intermediate.pem"
    )
    anchors = load_trust_anchors(pki / "ca" / "root.pem")
    site = CountingSite(NoContent())
    site.log = lambda request: None  # type: ignore[method-assign]  # as the gateway does
    reactor.listenSSL(  # type: ignore[attr-defined]
        port, site, server_context_factory(identity, anchors), interface="127.0.0.1"
    )
    reactor.run()  # type: ignore[attr-defined]  # SIGTERM stops it
    return 0


# -- setup ------------------------------------------------------------------------------


@dataclass
class Setup:
    """The files of one run."""

    work: Path
    pki: Path
    anchors: tuple[Any, ...] = ()
    node_server_cert: Any = None

    def client(self, reactor: Any) -> EbmsClient:
        """The municipality's delivery client, exactly as Gateway.start builds it."""
        party = self.pki / MUNICIPALITY[0]
        identity = TlsIdentity.from_files(
            party / "tls-client.pem", party / "tls-client.key", self.pki / "ca" / "intermediate.pem"
        )
        return EbmsClient(
            reactor, ClientTlsPolicy(identity, self.anchors), connect_timeout=10, read_timeout=30
        )


def tls_config(pki: Path, slug: str) -> TlsConfig:
    party = pki / slug
    return TlsConfig(
        certificate=party / "tls-server.pem",
        key=party / "tls-server.key",
        client_certificate=party / "tls-client.pem",
        client_key=party / "tls-client.key",
        trust_anchors=pki / "ca" / "root.pem",
        chain=pki / "ca" / "intermediate.pem",
    )


def b_toml(setup: Setup, port: int, args: argparse.Namespace) -> Path:
    """Gateway B's configuration file (the format of gateway/config.py)."""
    tls = tls_config(setup.pki, NODE[0])
    data = setup.work / "b"
    text = f"""\
[gateway]
data_dir = "{data}"
store = "sqlite:///{data / "gateway.sqlite3"}"
node_id = "bench-b"
party_ids = ["{NODE_ID.key()}"]

[http]
listen = "127.0.0.1:{port}"
path = "/ebms"

[tls]
certificate = "{tls.certificate}"
key = "{tls.key}"
chain = "{tls.chain}"
client_certificate = "{tls.client_certificate}"
client_key = "{tls.client_key}"
trust_anchors = "{tls.trust_anchors}"

[delivery]
poll_interval = {args.poll_interval}
concurrency = {args.concurrency}
connect_timeout = 10.0
read_timeout = 30.0
"""
    path = setup.work / "b.toml"
    path.write_text(text, encoding="utf-8")
    return path


def cpa_xml(setup: Setup, cpa_id: str, a_port: int, b_port: int, *, sync: bool) -> bytes:
    """An osb-rm CPA between the example parties, with DK-BP reliability defaults."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    spec = CpaSpec(
        a=example_party(setup.pki, *MUNICIPALITY[:4], f"https://127.0.0.1:{a_port}/ebms"),
        b=example_party(setup.pki, *NODE[:4], f"https://127.0.0.1:{b_port}/ebms"),
        service=SERVICE.value,
        actions=(ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b")),
        profile="osb-rm",
        start=start,
        end=start + timedelta(days=365),
        cpa_id=cpa_id,
        sync_reply=sync,
    )
    return make_cpa(spec)


# -- events from gateway A ----------------------------------------------------------------


class Events:
    """Gateway A's listener: completes waits for Pongs and DELIVERED, counts anomalies."""

    def __init__(self) -> None:
        self.waiting: dict[str, Deferred[float]] = {}
        self.early: dict[str, float] = {}
        self.seen: Counter[str] = Counter()
        self.anomalies: list[dict[str, str]] = []

    def __call__(self, fields: dict[str, str]) -> None:
        now = pc()
        event, action = fields.get("event"), fields.get("action")
        outcome, reply = fields.get("outcome"), fields.get("reply")
        key = None
        if event == "inbound":
            self.seen[f"inbound {action} outcome={outcome} status={fields.get('status')}"] += 1
            if action == "Pong" or (action == "Acknowledgment" and outcome == "delivered"):
                key = fields.get("ref_to")
            if fields.get("status") not in ("200", "204"):
                self.anomalies.append(fields)
        elif event == "delivery":
            self.seen[f"delivery {action} outcome={outcome} reply={reply}"] += 1
            if reply in ("pong", "delivered"):
                key = fields.get("message_id")
            if "error" in fields or outcome in ("failed", "expired"):
                self.anomalies.append(fields)
        if key is None:
            return
        waiter = self.waiting.pop(key, None)
        if waiter is not None:
            waiter.callback(now)
        else:
            self.early.setdefault(key, now)

    def wait(self, reactor: Any, message_id: str, timeout: float) -> Deferred[float]:
        """Fires with the perf_counter time the answer for ``message_id`` arrived."""
        if message_id in self.early:
            return defer.succeed(self.early.pop(message_id))
        d: Deferred[float] = Deferred()
        self.waiting[message_id] = d
        d.addTimeout(timeout, reactor)
        return d


# -- profiling (optional: --profile) ---------------------------------------------------------


class Profiler:
    """cProfile on the reactor thread and on every store-pool thread of gateway A."""

    def __init__(self) -> None:
        self.enabled = False
        self.main = cProfile.Profile()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.pool: list[cProfile.Profile] = []

    def install(self, gateway: Gateway, reactor: Any) -> None:
        """Before ``gateway.start()``: route its thread work through a profiling wrapper."""

        def run_in_thread(fn: Any, *args: Any) -> Deferred[Any]:
            return deferToThreadPool(reactor, gateway.pool, self._run, fn, *args)

        gateway.run_in_thread = run_in_thread  # type: ignore[method-assign]

    def _run(self, fn: Any, *args: Any) -> Any:
        if not self.enabled:
            return fn(*args)
        prof = getattr(self._local, "prof", None)
        if prof is None:
            prof = self._local.prof = cProfile.Profile()
            with self._lock:
                self.pool.append(prof)
        prof.enable()
        try:
            return fn(*args)
        finally:
            prof.disable()

    def start(self) -> None:
        self.enabled = True
        self.main.enable()

    def stop(self) -> None:
        self.main.disable()
        self.enabled = False

    def report(self, out_dir: Path, top: int) -> list[str]:
        lines = []
        for label, profiles in (("reactor thread", [self.main]), ("store threads", self.pool)):
            if not profiles:
                continue
            stats = pstats.Stats(profiles[0])
            for extra in profiles[1:]:
                stats.add(extra)
            name = "reactor" if label.startswith("reactor") else "pool"
            stats.dump_stats(str(out_dir / f"a-{name}.pstats"))
            raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
            for order, column in (("cumulative", 3), ("own time", 2)):
                lines.append(f"  A {label}, top {top} by {order} (threads: {len(profiles)}):")
                lines.append(f"    {'cum s':>8} {'own s':>8} {'calls':>9}  function")
                rows = sorted(raw.items(), key=lambda kv: kv[1][column], reverse=True)[:top]
                for (file, line, func), (_, calls, own, cum, _) in rows:
                    where = func if file == "~" else f"{func} ({_short(file)}:{line})"
                    lines.append(f"    {cum:8.3f} {own:8.3f} {calls:9d}  {where}")
        return lines


def _short(file: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# -- the phases ---------------------------------------------------------------------------


async def run_baseline(
    reactor: Any, setup: Setup, args: argparse.Namespace, label: str
) -> list[Result]:
    """Start the bare HTTPS server, measure sequential and concurrent POSTs, stop it."""
    port = free_port()
    server = Child(
        "baseline server",
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--baseline-server",
            str(port),
            "--pki",
            str(setup.pki),
        ],
        setup.work / f"baseline-{label}.log",
    )
    results = []
    try:
        await server.wait_for_port(reactor, port)
        url = f"https://127.0.0.1:{port}/ebms"
        headers = {"Content-Type": "application/xml", "SOAPAction": '"ebXML"'}
        pin_cert = setup.node_server_cert

        async def stats(client: EbmsClient) -> dict[str, int]:
            got = await client.post(f"https://127.0.0.1:{port}/stats", headers, b"", pin_cert)
            return dict(json.loads(got.body))

        for n_in_flight, count, max_persistent in (
            (1, args.baseline_sequential, None),
            (args.concurrency, args.baseline_concurrent, None),
            (args.concurrency, args.baseline_concurrent, args.concurrency),
        ):
            client = setup.client(reactor)
            if max_persistent is not None:
                client.pool.maxPersistentPerHost = max_persistent

            async def post(client: EbmsClient = client) -> None:
                result = await client.post(url, headers, PAYLOAD, pin_cert)
                if result.status != 204:
                    raise RuntimeError(f"baseline server answered {result.status}")

            await closed_loop(min(50, count), n_in_flight, post)  # warm up, connect
            before = await stats(client)
            meter = CpuMeter(server.pid)
            wall, latencies = await closed_loop(count, n_in_flight, post)
            if n_in_flight == 1:
                name = "1 in flight (sequential, keep-alive)"
            elif max_persistent is None:
                name = f"{n_in_flight} in flight (EbmsClient as is)"
            else:
                name = f"{n_in_flight} in flight, maxPersistentPerHost={max_persistent}"
            result = meter.apply(Result(f"{label:5}: {name}", count, wall, latencies))
            after = await stats(client)
            result.note = f"new TLS connections: {after['connections'] - before['connections']}"
            results.append(result)
            await client.close()
            say(f"baseline {result.name}: {result.rate:.0f}/s p50 {result.p50_ms:.2f} ms")
    finally:
        code = await server.stop(reactor)
        if code not in (0, -signal.SIGTERM):
            say(f"baseline server exited with {code}:\n{server.tail()}")
    return results


@dataclass
class Run:
    """What the gateway phases share."""

    reactor: Any
    args: argparse.Namespace
    gateway: Gateway
    events: Events
    peer: Child
    profiler: Profiler | None = None
    pings: dict[str, list[str]] = field(default_factory=dict)
    messages: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    async def ping(self, cpa_id: str) -> float:
        """One Ping -> Pong round trip; returns its duration in seconds."""
        started = pc()
        queued = await self.gateway.send_ping(cpa_id=cpa_id, from_party=GEMEENTE, to_party=NODE_ID)
        self.pings.setdefault(cpa_id, []).append(queued.message_id)
        answered = await self.events.wait(self.reactor, queued.message_id, self.args.timeout)
        return answered - started

    async def ping_phase(self, cpa_id: str, count: int, label: str) -> Result:
        latencies = []
        meter = CpuMeter(self.peer.pid)
        started = pc()
        for _ in range(count):
            latencies.append(await self.ping(cpa_id))
        result = meter.apply(Result(label, count, pc() - started, latencies))
        say(f"{label}: {result.rate:.0f}/s p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms")
        return result

    async def message_phase(
        self, cpa_id: str, count: int, label: str, *, profile: bool = False
    ) -> Result:
        """``count`` osb-rm messages, at most ``--window`` not yet DELIVERED at a time."""
        window = defer.DeferredSemaphore(self.args.window)
        sent = self.messages.setdefault(cpa_id, [])
        payload = (Payload(PAYLOAD, "application/xml", "bericht.xml"),)
        latencies: list[float] = []
        done_at: list[float] = []

        async def one() -> None:
            started = pc()
            queued = await self.gateway.send_message(
                cpa_id=cpa_id,
                from_party=GEMEENTE,
                from_role="Gemeente",
                to_party=NODE_ID,
                to_role="GGk",
                service=SERVICE,
                action="WMO301",
                payloads=payload,
            )
            sent.append(queued.message_id)
            try:
                delivered = await self.events.wait(
                    self.reactor, queued.message_id, self.args.timeout
                )
            except defer.TimeoutError:
                self.failures.append(f"{label}: {queued.message_id} not DELIVERED in time")
                return
            latencies.append(delivered - started)
            done_at.append(delivered)

        def release(result: object) -> object:
            window.release()
            return result

        if profile and self.profiler is not None:
            self.profiler.start()
        meter = CpuMeter(self.peer.pid)
        started = pc()
        pending = []
        for _ in range(count):
            await window.acquire()
            d = defer.ensureDeferred(one())
            d.addBoth(release)
            pending.append(d)
        outcomes = await defer.DeferredList(pending, consumeErrors=True)
        if profile and self.profiler is not None:
            self.profiler.stop()
        for ok, value in outcomes:
            if not ok:
                self.failures.append(f"{label}: {value.getErrorMessage()}")
        end = max(done_at) if done_at else pc()
        result = meter.apply(Result(label, len(done_at), end - started, latencies))
        if len(done_at) != count:
            result.note = f"ONLY {len(done_at)} of {count} DELIVERED"
        say(f"{label}: {result.rate:.0f} msgs/s, p50 {result.p50_ms:.1f} ms send->DELIVERED")
        return result


async def run_gateways(
    reactor: Any, setup: Setup, args: argparse.Namespace, profiler: Profiler | None
) -> tuple[list[Result], Run, Path, Path]:
    """Start A here and B as ``dkgw serve``, run the ping and osb-rm phases, stop both."""
    a_store = setup.work / "a" / "gateway.sqlite3"
    b_store = setup.work / "b" / "gateway.sqlite3"
    delivery = DeliveryConfig(
        poll_interval=args.poll_interval,
        concurrency=args.concurrency,
        connect_timeout=10.0,
        read_timeout=30.0,
    )
    config = GatewayConfig(
        data_dir=setup.work / "a",
        store=f"sqlite:///{a_store}",
        node_id="bench-a",
        http=HttpConfig(host="127.0.0.1", port=0, path="/ebms"),
        tls=tls_config(setup.pki, MUNICIPALITY[0]),
        delivery=delivery,
        party_ids=(GEMEENTE,),
    )
    gateway = Gateway(config, reactor)
    if profiler is not None:
        profiler.install(gateway, reactor)
    events = Events()
    gateway.add_listener(events)
    gateway.start()
    b_port = free_port()
    peer: Child | None = None
    try:
        # CPAs with the real ports, into both stores; B's before it starts.
        b_db = Database.from_url(f"sqlite:///{b_store}")
        apply_migrations(b_db)
        assert gateway.db is not None
        for cpa_id, sync in ((CPA_ASYNC, False), (CPA_SYNC, True)):
            xml = cpa_xml(setup, cpa_id, gateway.listening_port, b_port, sync=sync)
            for db in (gateway.db, b_db):
                CpaRegistry(db).insert(xml, overwrite=True)
        b_db.close()
        dkgw = Path(sys.executable).with_name("dkgw")
        argv = [str(dkgw)] if dkgw.exists() else [sys.executable, "-m", "gateway.cli"]
        peer = Child(
            "gateway B",
            [*argv, "serve", "--config", str(b_toml(setup, b_port, args))],
            setup.work / "b.log",
        )
        await peer.wait_for_port(reactor, b_port)
        say(f"gateway A on 127.0.0.1:{gateway.listening_port}, B on 127.0.0.1:{b_port}")
        run = Run(reactor, args, gateway, events, peer, profiler)

        say("warming up")
        for cpa_id in (CPA_ASYNC, CPA_SYNC):
            for _ in range(args.warmup_pings):
                await run.ping(cpa_id)
            await run.message_phase(cpa_id, args.warmup_messages, f"warm-up {cpa_id}")

        results = [
            await run.ping_phase(CPA_ASYNC, args.pings, "ping, async Pong (own POST)"),
            await run.ping_phase(CPA_SYNC, args.pings, "ping, sync Pong (in the response)"),
            await run.message_phase(
                CPA_ASYNC,
                args.messages,
                "osb-rm, async acks",
                profile=args.profile == "async",
            ),
            await run.message_phase(
                CPA_SYNC,
                args.messages,
                "osb-rm, sync acks",
                profile=args.profile == "sync",
            ),
        ]
    finally:
        if peer is not None:
            code = await peer.stop(reactor)
            if code not in (0, -signal.SIGTERM):
                say(f"gateway B exited with {code}:\n{peer.tail()}")
        await gateway.stop()
    return results, run, a_store, b_store


# -- checking the stores ------------------------------------------------------------------


def rows(store: Path, sql: str) -> list[tuple[Any, ...]]:
    db = Database.from_url(f"sqlite:///{store}")
    try:
        with db.transaction() as cur:
            return cur.execute(sql).fetchall()
    finally:
        db.close()


def verify(run: Run, a_store: Path, b_store: Path) -> list[str]:
    """Every message DELIVERED on A and RECEIVED exactly once on B; every Ping answered."""
    problems = list(run.failures)
    sent = {m for ids in run.messages.values() for m in ids}
    a_status = dict(
        rows(
            a_store,
            "SELECT message_id, status FROM ebms_message "
            "WHERE direction = 'out' AND action = 'WMO301'",
        )
    )
    a_events = Counter(
        r[0]
        for r in rows(
            a_store, "SELECT message_id FROM message_event WHERE event_type = 'DELIVERED'"
        )
    )
    b_in = rows(
        b_store,
        "SELECT m.message_id, m.status, count(DISTINCT m.id), count(a.message_pk), "
        "coalesce(sum(length(a.content)), 0) FROM ebms_message m "
        "LEFT JOIN ebms_attachment a ON a.message_pk = m.id "
        "WHERE m.direction = 'in' AND m.action = 'WMO301' GROUP BY m.message_id, m.status",
    )
    b_events = Counter(
        r[0]
        for r in rows(b_store, "SELECT message_id FROM message_event WHERE event_type = 'RECEIVED'")
    )
    b_seen: Counter[str] = Counter()
    for message_id, status, copies, parts, size in b_in:
        b_seen[message_id] += copies
        if status != "RECEIVED":
            problems.append(f"B: {message_id} is {status}, not RECEIVED")
        if parts != copies or size != len(PAYLOAD) * copies:
            problems.append(f"B: {message_id} has {parts} parts, {size} bytes")
    for message_id in sorted(sent):
        if a_status.get(message_id) != "DELIVERED":
            problems.append(f"A: {message_id} is {a_status.get(message_id)}, not DELIVERED")
        if a_events[message_id] != 1:
            problems.append(f"A: {message_id} has {a_events[message_id]} DELIVERED events")
        if b_seen[message_id] != 1:
            problems.append(f"B: {message_id} received {b_seen[message_id]} times")
        if b_events[message_id] != 1:
            problems.append(f"B: {message_id} has {b_events[message_id]} RECEIVED events")
    for extra in sorted((set(a_status) | set(b_seen)) - sent):
        problems.append(f"{extra} is in a store but was never sent by this run")
    pongs = Counter(
        r[0]
        for r in rows(
            a_store,
            "SELECT ref_to_message_id FROM ebms_message WHERE direction = 'in' AND action = 'Pong'",
        )
    )
    for ping_id in (p for ids in run.pings.values() for p in ids):
        if pongs[ping_id] != 1:
            problems.append(f"A: Ping {ping_id} has {pongs[ping_id]} Pongs")
    return problems


# -- the report ---------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def mean(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return sum(clean) / len(clean) if clean else math.nan


def report(
    args: argparse.Namespace,
    setup: Setup,
    pinned: bool,
    baselines: list[list[Result]],
    gateways: list[Result],
    run: Run,
    problems: list[str],
    started: float,
) -> list[str]:
    out = []
    command = shlex.join([sys.executable, *sys.argv])
    out.append("=" * 100)
    out.append("MSH benchmark (bench/msh_bench.py)")
    out.append(f"command : cd {shlex.quote(os.getcwd())} && {command}")
    out.append(f"date    : {datetime.now(UTC).isoformat(timespec='seconds')}  git {git_revision()}")
    out.append(
        f"machine : {os.cpu_count()} cores ({cpu_model()}), load avg "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start, Python "
        f"{platform.python_version()}"
    )
    out.append(
        "pinning : "
        + (
            f"bench process (client, gateway A) on core {BENCH_CORE}, subprocesses "
            f"(baseline server, gateway B) on core {PEER_CORE}"
            if pinned and Child.all_pinned
            else "NOT pinned (sched_setaffinity unavailable or fewer than 2 cores)"
        )
    )
    out.append(
        f"stores  : SQLite (WAL, synchronous=FULL) in {setup.work} ({filesystem_of(setup.work)})"
    )
    out.append(
        f"settings: body/payload {len(PAYLOAD)} B, concurrency {args.concurrency} "
        f"(baseline in flight, delivery workers A and B), window {args.window} not yet "
        f"DELIVERED, poll_interval {args.poll_interval} s, messages {args.messages}, "
        f"pings {args.pings}" + (", QUICK smoke run" if args.quick else "")
    )
    if args.profile:
        out.append(
            f"PROFILED ({args.profile} osb-rm under cProfile): figures are NOT representative"
        )
    out.append("")

    out.append(
        "Baseline: bare twisted.web HTTPS server (subprocess), POST 2 KiB -> 204, EbmsClient"
    )
    cols = f"{'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu A':>6} {'cpu B':>6}"
    out.append(f"  {'':46} {cols}")
    for results in baselines:
        for r in results:
            out.append(
                f"  {r.name:46} {fmt(r.rate):>8} {fmt(r.p50_ms, 2):>8} {fmt(r.p99_ms, 2):>8} "
                f"{fmt(r.cpu_bench, 2):>6} {fmt(r.cpu_peer, 2):>6}  {r.note}"
            )
    seq = mean([b[0].rate for b in baselines])
    seq_p50 = mean([b[0].p50_ms for b in baselines])
    seq_p99 = mean([b[0].p99_ms for b in baselines])
    conc = mean([b[1].rate for b in baselines])
    if len(baselines) == 2:
        drift = (baselines[1][0].rate / baselines[0][0].rate - 1) * 100
        drift_c = (baselines[1][1].rate / baselines[0][1].rate - 1) * 100
        out.append(
            f"  drift start -> end: sequential {drift:+.0f} %, concurrent {drift_c:+.0f} % "
            "(ratios below: mean of both runs)"
        )
    out.append("")

    out.append("Gateways: A (this process) -> B (dkgw serve), osb-rm CPA, mutual TLS, SQLite")
    out.append(f"  {'':36} {cols}  vs baseline (same run)")
    for r in gateways:
        if r.name.startswith("ping"):
            versus = (
                f"rate {r.rate / seq:.3f}x of {fmt(seq)} rt/s (1 in flight); "
                f"p50 {r.p50_ms / seq_p50:.1f}x, p99 {r.p99_ms / seq_p99:.1f}x"
            )
        else:
            versus = (
                f"rate {r.rate / conc:.3f}x of {fmt(conc)} req/s ({args.concurrency} in flight)"
            )
        out.append(
            f"  {r.name:36} {fmt(r.rate):>8} {fmt(r.p50_ms, 2):>8} {fmt(r.p99_ms, 2):>8} "
            f"{fmt(r.cpu_bench, 2):>6} {fmt(r.cpu_peer, 2):>6}  {versus} {r.note}".rstrip()
        )
    out.append(
        "  (rate/s: ping round trips or osb-rm messages DELIVERED per second; osb-rm latency is "
        "send -> DELIVERED"
    )
    out.append(
        f"   with {args.window} in the window, so mostly queueing; an async ack costs a 2nd "
        "HTTPS POST, a sync ack none; cpu: cores used)"
    )
    out.append("")

    out.append("Targets (from the issue)")
    for r in gateways:
        if r.name.startswith("osb-rm"):
            ok = r.rate >= TARGET_MSGS_PER_S and not r.note
            out.append(
                f"  >= {TARGET_MSGS_PER_S:.0f} osb-rm msgs/s end to end, {r.name[8:]:<12}: "
                f"{fmt(r.rate):>6} msgs/s  {'met' if ok else 'not yet'}"
            )
    for r in gateways:
        if r.name.startswith("ping"):
            ok = r.p99_ms <= TARGET_PING_P99_MS
            out.append(
                f"  ping p99 <= {TARGET_PING_P99_MS:.0f} ms, {r.name[6:]:<28}: "
                f"{fmt(r.p99_ms, 2):>6} ms  {'met' if ok else 'not yet'}"
            )
    out.append("")

    out.append("Events gateway A reported (whole run, warm-up included)")
    for key, n in sorted(run.events.seen.items()):
        out.append(f"  {n:7d}  {key}")
    errors = {
        name: sum(" ERROR " in line for line in (setup.work / f"{name}.log").open(errors="replace"))
        for name in ("a", "b")
        if (setup.work / f"{name}.log").exists()
    }
    out.append(f"  ERROR lines logged: A {errors.get('a', '?')}, B {errors.get('b', '?')}")
    if run.events.anomalies:
        out.append(f"  ANOMALIES: {len(run.events.anomalies)}, first: {run.events.anomalies[:3]}")
    out.append("")
    if run.profiler is not None:
        out.append(
            f"Profile of gateway A during osb-rm {args.profile} (pstats files in {setup.work})"
        )
        out.extend(run.profiler.report(setup.work, args.profile_top))
        out.append("")
    total = sum(len(v) for v in run.messages.values())
    if problems:
        out.append("!" * 100)
        out.append(f"MISMATCH: {len(problems)} problem(s) in the stores")
        out.extend(f"  {p}" for p in problems[:50])
        out.append("!" * 100)
    else:
        out.append(
            f"stores checked: all {total} messages DELIVERED on A and RECEIVED exactly once "
            f"(one 2 KiB part) on B; all {sum(len(v) for v in run.pings.values())} Pings answered"
        )
    out.append(f"total wall time {pc() - started:.1f} s")
    out.append("=" * 100)
    return out


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Throughput and latency of two dkgw gateways next to a bare HTTPS baseline."
    )
    p.add_argument("--messages", type=int, default=1000, help="osb-rm messages per ack mode")
    p.add_argument("--pings", type=int, default=500, help="sequential pings per CPA")
    p.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="baseline requests in flight, and the delivery concurrency of both gateways",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="messages not yet DELIVERED (default 2x concurrency)",
    )
    p.add_argument("--poll-interval", type=float, default=0.05, help="delivery poll, A and B")
    p.add_argument(
        "--store-dir",
        type=Path,
        default=None,
        help="where the run's directory (stores, PKI, logs) is made (default: the system temp dir)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run's directory")
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run under 30 s")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer")
    p.add_argument(
        "--profile",
        choices=("async", "sync"),
        default=None,
        help="run that osb-rm phase of gateway A under cProfile (reactor and store threads)",
    )
    p.add_argument("--profile-top", type=int, default=15, help=argparse.SUPPRESS)
    p.add_argument("--baseline-server", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--pki", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 150)
        args.pings = min(args.pings, 50)
    args.baseline_sequential = 300 if args.quick else 2000
    args.baseline_concurrent = 600 if args.quick else 5000
    args.warmup_pings = 3 if args.quick else 20
    args.warmup_messages = 10 if args.quick else 50
    args.window = args.window or 2 * args.concurrency
    if min(args.messages, args.pings, args.concurrency, args.window) < 1:
        p.error("counts must be positive")
    return args


async def bench(reactor: Any, args: argparse.Namespace, pinned: bool) -> None:
    started = pc()
    reactor.addSystemEventTrigger("before", "shutdown", Child.kill_all)
    base = args.store_dir.resolve() if args.store_dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="msh-bench-", dir=base))
    setup = Setup(work, work / "pki")
    # Gateway A logs as `dkgw serve` does (INFO), to a file, like B.
    handler = logging.FileHandler(work / "a.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)
    keep = args.keep or args.profile is not None
    code = 0
    try:
        say(f"run directory {work}")
        subprocess.run(
            [sys.executable, str(MAKE_PKI), "--out", str(setup.pki), "--quiet"], check=True
        )
        setup.anchors = load_trust_anchors(setup.pki / "ca" / "root.pem")
        from cryptography import x509

        setup.node_server_cert = x509.load_pem_x509_certificate(
            (setup.pki / NODE[0] / "tls-server.pem").read_bytes()
        )
        baselines = [await run_baseline(reactor, setup, args, "start")]
        profiler = Profiler() if args.profile else None
        gateways, run, a_store, b_store = await run_gateways(reactor, setup, args, profiler)
        baselines.append(await run_baseline(reactor, setup, args, "end"))
        problems = verify(run, a_store, b_store)
        print("\n".join(report(args, setup, pinned, baselines, gateways, run, problems, started)))
        if problems:
            code = 2
            keep = True
    except BaseException:
        keep = True
        raise
    finally:
        Child.kill_all()
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if code:
        raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.baseline_server is not None:
        if args.pki is None:
            raise SystemExit("--baseline-server needs --pki")
        sys.exit(serve_baseline(args.baseline_server, args.pki))
    # Before the reactor or any thread exists: threads inherit the creator's affinity.
    pinned = (os.cpu_count() or 1) >= 2 and pin(0, BENCH_CORE)
    task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args, pinned)))


if __name__ == "__main__":
    main()
