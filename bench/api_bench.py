#!/usr/bin/env python3
"""Back-office API benchmark: REST sendMessage and the StUF relay, two real gateways.

Not a test (pytest never collects it).  See bench/README.md.  What it does:

1. makes the example TEST PKI, generates two osb-rm CPAs between Gemeente
   Voorbeeld and the GGk/RINIS test node (the same spec, two ids: ``bench-rest``
   for plain REST, ``bench-stuf`` for the relay) and imports both into two fresh
   SQLite stores;
2. starts both gateways as ``dkgw serve --config ...`` processes on 127.0.0.1
   with mutual TLS: the gemeente with ``[api]`` and ``[stuf] role = "gemeente"``,
   the node with ``[stuf] role = "node"`` and a provider outbox folder;
3. REST sendMessage: ``--count`` messages, one 4 KiB data source each, posted with
   ``ebms_adapter_client`` (``EbmsAdapterClient.send_message``) from
   ``--concurrency`` threads to the gemeente's API, until all are RECEIVED at the
   node (its store, polled read-only);
4. StUF relay: ``--count`` bare WMO301 messages (the iWmo 3.2 sample, each with its
   own BerichtIdentificatie) posted to ``POST /service/rest/v19/stuf/messages``,
   until all are written to the node's ``provider_outbox/42420001/``;
5. reads both gateways' peak RSS (VmHWM), stops them (SIGTERM, wait) and removes
   the run directory.

Exit status: 0 when every message arrived, 2 when some did not, 1 on error.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from ebms_adapter_client import (
    DataSource,
    EbmsAdapterClient,
    EbmsAdapterClientConfig,
    MessageRequest,
    MessageRequestProperties,
)
from msh_bench import (  # the benchmark next to this one (run as bench/api_bench.py)
    cpu_model,
    cpu_seconds,
    fmt,
    free_port,
    git_revision,
    percentile,
    say,
)

from cpa.generate import ActionSpec, CpaSpec, make_cpa
from gateway.commands.demo import AGB, GEMEENTECODE, MUNICIPALITY, NODE, SERVICE, example_party
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations

REPO = Path(__file__).resolve().parent.parent
MAKE_PKI = REPO / "certs-example" / "make-pki"
WMO301 = REPO / "tests" / "fixtures" / "stuf" / "iwmo" / "3.2" / "WMO301.xml"
SAMPLE_ID = b"<iwmo:Identificatie>123456789012</iwmo:Identificatie>"
CPA_REST = "bench-rest"
CPA_STUF = "bench-stuf"
GEMEENTE = f"urn:osb:oin:{MUNICIPALITY[2]}"
NODE_PARTY = f"urn:osb:oin:{NODE[2]}"
SERVICE_KEY = f"urn:osb:services:{SERVICE}"
DATA_BYTES = 4096
#: One 4 KiB XML document, the data source of every REST message.
DATA = (b'<?xml version="1.0" encoding="UTF-8"?><Bericht>' + b"x" * DATA_BYTES)[
    : DATA_BYTES - len(b"</Bericht>")
] + b"</Bericht>"
STUF_PATH = "/service/rest/v19/stuf/messages"
pc = time.perf_counter


# -- measurements ----------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The peak resident set (VmHWM) of a running process, in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return math.nan


@dataclass
class Phase:
    """One phase: POST timings, arrival times, CPU use."""

    name: str
    count: int
    posted_at: dict[str, float] = field(default_factory=dict)  # key -> wall time of POST start
    post_latencies: list[float] = field(default_factory=list)
    arrived_at: dict[str, float] = field(default_factory=dict)  # key -> wall time of arrival
    first_post: float = math.nan
    last_post_done: float = math.nan
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used during the phase

    @property
    def accept_rate(self) -> float:
        return len(self.post_latencies) / (self.last_post_done - self.first_post)

    @property
    def arrived(self) -> int:
        return len(set(self.arrived_at) & set(self.posted_at))

    @property
    def e2e_wall(self) -> float:
        ends = [self.arrived_at[k] for k in self.posted_at if k in self.arrived_at]
        return (max(ends) - self.first_post) if ends else math.nan

    @property
    def throughput(self) -> float:
        return self.arrived / self.e2e_wall if self.arrived else math.nan

    @property
    def e2e_latencies(self) -> list[float]:
        return [self.arrived_at[k] - t for k, t in self.posted_at.items() if k in self.arrived_at]


# -- processes ------------------------------------------------------------------------


class GatewayProcess:
    """One ``dkgw serve --config`` subprocess; stopped with SIGTERM."""

    def __init__(self, label: str, config: Path, log: Path) -> None:
        self.label = label
        self.log = log
        dkgw = Path(sys.executable).with_name("dkgw")
        argv = [str(dkgw)] if dkgw.exists() else [sys.executable, "-m", "gateway.cli"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*argv, "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_for_ports(self, ports: tuple[int, ...], timeout: float = 30.0) -> None:
        deadline = pc() + timeout
        for port in ports:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"the {self.label} gateway exited with {self.proc.returncode}:\n"
                        f"{self.tail()}"
                    )
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), 0.5),
                ):
                    break
                if pc() > deadline:
                    raise RuntimeError(
                        f"the {self.label} gateway does not listen on {port}:\n{self.tail()}"
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"the {self.label} gateway did not stop within {timeout} s: SIGKILL")
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def errors_logged(self) -> int:
        with self.log.open(errors="replace") as f:
            return sum(" ERROR " in line or "level=error" in line for line in f)


# -- setup ----------------------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    gemeente_port: int = field(default_factory=free_port)
    node_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)

    @property
    def pki(self) -> Path:
        return self.work / "pki"

    def store(self, label: str) -> Path:
        return self.work / f"{label}.sqlite3"

    @property
    def provider_folder(self) -> Path:
        return self.work / "aanbieders-out" / AGB


def write_config(setup: Setup, label: str, slug: str, oin: str, port: int, extra: str,
                 args: argparse.Namespace) -> Path:  # fmt: skip
    party = setup.pki / slug
    ca = setup.pki / "ca"
    config = setup.work / f"{label}.toml"
    config.write_text(
        f"""# {label} gateway of bench/api_bench.py (example TEST PKI)
[gateway]
data_dir = "{setup.work / f"{label}-data"}"
store = "sqlite:///{setup.store(label)}"
node_id = "bench-{label}"
party_ids = ["urn:osb:oin:{oin}"]

[http]
listen = "127.0.0.1:{port}"
path = "/ebms"

[tls]
certificate = "{party}/tls-server.pem"
key = "{party}/tls-server.key"
client_certificate = "{party}/tls-client.pem"
client_key = "{party}/tls-client.key"
chain = "{ca}/intermediate.pem"
trust_anchors = "{ca}/root.pem"

[delivery]
poll_interval = {args.poll_interval}
concurrency = {args.delivery_concurrency}
connect_timeout = 10.0
read_timeout = 30.0

[monitoring]
pings = false

{extra}
""",
        encoding="utf-8",
    )
    return config


def make_configs(setup: Setup, args: argparse.Namespace) -> tuple[Path, Path]:
    services = f'services = {{ iwmo = "{SERVICE_KEY}", ijw = "{SERVICE_KEY}" }}'
    gemeente = f"""[api]
listen = "127.0.0.1:{setup.api_port}"

[stuf]
role = "gemeente"
cpa_id = "{CPA_STUF}"
gemeentecodes = ["{GEMEENTECODE}"]
{services}
outbox = "{setup.work / "stuf-out"}"
inbox = "{setup.work / "stuf-in"}"
poll_interval = {args.poll_interval}
"""
    node = f"""[stuf]
role = "node"
{services}
provider_outbox = "{setup.work / "aanbieders-out"}"
provider_inbox = "{setup.work / "aanbieders-in"}"
poll_interval = {args.poll_interval}

[[stuf.gemeente]]
cpa_id = "{CPA_STUF}"
gemeentecodes = ["{GEMEENTECODE}"]
"""
    return (
        write_config(setup, "gemeente", MUNICIPALITY[0], MUNICIPALITY[2],
                     setup.gemeente_port, gemeente, args),
        write_config(setup, "node", NODE[0], NODE[2], setup.node_port, node, args),
    )  # fmt: skip


def import_cpas(setup: Setup) -> None:
    """Both CPAs (same spec, two ids) into both stores, before the gateways start."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    for label in ("gemeente", "node"):
        db = Database.from_url(f"sqlite:///{setup.store(label)}")
        try:
            apply_migrations(db)
            for cpa_id in (CPA_REST, CPA_STUF):
                spec = CpaSpec(
                    a=example_party(
                        setup.pki,
                        *MUNICIPALITY[:4],
                        f"https://127.0.0.1:{setup.gemeente_port}/ebms",
                    ),
                    b=example_party(
                        setup.pki, *NODE[:4], f"https://127.0.0.1:{setup.node_port}/ebms"
                    ),
                    service=SERVICE,
                    actions=(
                        ActionSpec("WMO301", "a"),
                        ActionSpec("JW301", "a"),
                        ActionSpec("WMO302", "b"),
                        ActionSpec("JW302", "b"),
                        ActionSpec("Fo01", "both"),
                    ),
                    profile="osb-rm",
                    start=start,
                    end=start + timedelta(days=365),
                    cpa_id=cpa_id,
                )
                CpaRegistry(db).insert(make_cpa(spec), overwrite=True)
        finally:
            db.close()


# -- the node's store and folder, read-only -------------------------------------------


def store_ts(value: str) -> float:
    """A store timestamp (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) as a POSIX time."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class NodeStore:
    """The node's SQLite store, opened read-only (``mode=ro``)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 5000")

    def received(self, cpa_id: str) -> dict[str, float]:
        """message_id -> when it was stored, of the messages RECEIVED under ``cpa_id``."""
        rows = self.conn.execute(
            "SELECT message_id, created_at FROM ebms_message WHERE direction = 'in' "
            "AND status = 'RECEIVED' AND cpa_id = ? AND action = 'WMO301'",
            (cpa_id,),
        ).fetchall()
        return {str(mid): store_ts(str(at)) for mid, at in rows}

    def close(self) -> None:
        self.conn.close()


def provider_files(folder: Path) -> dict[str, float]:
    """File name -> when it was put in place (ctime: set by the final rename)."""
    found: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as it:
        for entry in it:
            if entry.name.endswith(".xml") and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    found[entry.name] = entry.stat().st_ctime
    return found


# -- the phases -----------------------------------------------------------------------


def run_posts(
    phase: Phase,
    concurrency: int,
    make_client: Callable[[], object],
    post: Callable[[object, int], str],
    arrivals: Callable[[], dict[str, float]],
    timeout: float,
    pids: dict[str, int],
) -> Phase:
    """POST ``phase.count`` times from ``concurrency`` threads; poll until all arrived.

    ``post(client, n)`` returns the key the arrival is found under.
    """
    local = threading.local()
    clients: list[object] = []
    lock = threading.Lock()

    def one(n: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = make_client()
            with lock:
                clients.append(client)
        wall, started = time.time(), pc()
        try:
            key = post(client, n)
        except Exception as exc:  # counted and reported
            with lock:
                phase.errors.append(f"POST {n}: {type(exc).__name__}: {exc}"[:300])
            return
        elapsed = pc() - started
        with lock:
            phase.posted_at[key] = wall
            phase.post_latencies.append(elapsed)

    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = pc()
    phase.first_post = time.time()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="post")
    futures = [pool.submit(one, n) for n in range(phase.count)]
    deadline = None
    try:
        while True:
            time.sleep(0.05)
            posting = not all(f.done() for f in futures)
            if not posting and math.isnan(phase.last_post_done):
                phase.last_post_done = time.time()
                deadline = pc() + timeout
            phase.arrived_at = arrivals()
            if not posting and phase.arrived >= len(phase.posted_at):
                break
            if deadline is not None and pc() > deadline:
                say(f"{phase.name}: timeout, {phase.arrived} of {len(phase.posted_at)} arrived")
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            client.close()  # type: ignore[attr-defined]
    wall = pc() - t0
    phase.cpu = {name: (cpu_seconds(pid) - cpu_before[name]) / wall for name, pid in pids.items()}
    return phase


def rest_phase(setup: Setup, args: argparse.Namespace, count: int, name: str,
               store: NodeStore, pids: dict[str, int]) -> Phase:  # fmt: skip
    base = f"http://127.0.0.1:{setup.api_port}"

    def make_client() -> EbmsAdapterClient:
        return EbmsAdapterClient(EbmsAdapterClientConfig(base_url=base, timeout=60))

    def post(client: object, n: int) -> str:
        assert isinstance(client, EbmsAdapterClient)
        request = MessageRequest(
            MessageRequestProperties(
                cpa_id=CPA_REST,
                from_party_id=GEMEENTE,
                from_role="Gemeente",
                to_party_id=NODE_PARTY,
                to_role="GGk",
                service=SERVICE_KEY,
                action="WMO301",
            ),
            [DataSource("application/xml", DATA, name=f"bericht-{n}.xml")],
        )
        return client.send_message(request).strip()

    phase = run_posts(
        Phase(name, count),
        args.concurrency,
        make_client,
        post,
        lambda: store.received(CPA_REST),
        args.timeout,
        pids,
    )
    say(f"{name}: {fmt(phase.throughput)} msgs/s end to end, {phase.arrived}/{count} RECEIVED")
    return phase


def stuf_phase(setup: Setup, args: argparse.Namespace, count: int, name: str, prefix: str,
               pids: dict[str, int]) -> Phase:  # fmt: skip
    sample = WMO301.read_bytes()
    if sample.count(SAMPLE_ID) != 1:
        raise RuntimeError(f"{WMO301} does not have the expected Identificatie")
    url = f"http://127.0.0.1:{setup.api_port}{STUF_PATH}"

    def make_client() -> httpx.Client:
        return httpx.Client(timeout=60)

    def post(client: object, n: int) -> str:
        assert isinstance(client, httpx.Client)
        ident = f"{prefix}B{n:010d}"  # 12 characters, unique within the run
        body = sample.replace(
            SAMPLE_ID, f"<iwmo:Identificatie>{ident}</iwmo:Identificatie>".encode()
        )
        answer = client.post(url, content=body, headers={"Content-Type": "application/xml"})
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code} {answer.text[:200]}")
        return str(answer.json()["referentienummer"])

    def arrivals() -> dict[str, float]:
        # Files are named <zender>-<referentienummer>.xml: key them by referentienummer.
        return {
            fname.removesuffix(".xml").split("-", 1)[-1]: at
            for fname, at in provider_files(setup.provider_folder).items()
        }

    phase = run_posts(
        Phase(name, count), args.concurrency, make_client, post, arrivals, args.timeout, pids
    )
    say(f"{name}: {fmt(phase.throughput)} msgs/s end to end, {phase.arrived}/{count} written")
    return phase


# -- the report -----------------------------------------------------------------------


def report(args: argparse.Namespace, setup: Setup, phases: list[Phase], rss: dict[str, float],
           errors: dict[str, int], load: str, started: float) -> list[str]:  # fmt: skip
    out = ["=" * 96, "API benchmark (bench/api_bench.py)"]
    out.append(
        f"command : cd {shlex.quote(os.getcwd())} && {shlex.join([sys.executable, *sys.argv])}"
    )
    out.append(f"date    : {datetime.now(UTC).isoformat(timespec='seconds')}  git {git_revision()}")
    out.append(
        f"machine : {os.cpu_count()} cores ({cpu_model()}), load avg {load} at start, "
        f"Python {platform.python_version()}; nothing pinned"
    )
    out.append(
        f"setup   : 2 x dkgw serve, osb-rm CPA, mutual TLS, SQLite stores in {setup.work}; "
        f"{args.count} messages per phase from {args.concurrency} client threads; delivery "
        f"concurrency {args.delivery_concurrency}, poll_interval {args.poll_interval} s"
    )
    out.append("")
    head = (
        f"  {'':24} {'accept/s':>9} {'POST p50':>9} {'POST p95':>9} {'e2e msg/s':>10} "
        f"{'e2e p50':>9} {'e2e p95':>9} {'arrived':>9} {'cpu gem':>8} {'cpu node':>8} "
        f"{'cpu bench':>9}"
    )
    out.append(head)
    for p in phases:
        out.append(
            f"  {p.name:24} {fmt(p.accept_rate):>9} "
            f"{fmt(percentile(p.post_latencies, 50) * 1000, 1):>7}ms "
            f"{fmt(percentile(p.post_latencies, 95) * 1000, 1):>7}ms "
            f"{fmt(p.throughput):>10} "
            f"{fmt(percentile(p.e2e_latencies, 50) * 1000, 0):>7}ms "
            f"{fmt(percentile(p.e2e_latencies, 95) * 1000, 0):>7}ms "
            f"{p.arrived:>5}/{p.count:<4}"
            f"{fmt(p.cpu['gemeente'], 2):>8} {fmt(p.cpu['node'], 2):>8} "
            f"{fmt(p.cpu['bench'], 2):>9}"
        )
    rest, stuf = phases
    out.append(
        f"  ratio relay / plain REST (same run): e2e throughput "
        f"{stuf.throughput / rest.throughput:.2f}x, accept rate "
        f"{stuf.accept_rate / rest.accept_rate:.2f}x, e2e p50 "
        f"{percentile(stuf.e2e_latencies, 50) / percentile(rest.e2e_latencies, 50):.2f}x"
    )
    out.append(
        "  (accept: POST answered; e2e: first POST -> last arrival (REST: RECEIVED in the "
        "node's store, created_at;"
    )
    out.append(
        "   relay: file in provider_outbox/42420001/, ctime); latencies: POST start -> "
        "arrival; cpu: cores used)"
    )
    out.append("")
    out.append(
        f"peak RSS (VmHWM at the end): gemeente {fmt(rss['gemeente'], 1)} MB, "
        f"node {fmt(rss['node'], 1)} MB"
    )
    out.append(f"ERROR lines logged: gemeente {errors['gemeente']}, node {errors['node']}")
    for p in phases:
        if p.errors:
            out.append(f"{p.name}: {len(p.errors)} POSTs failed, first: {p.errors[0]}")
        if p.arrived != p.count:
            out.append(f"{p.name}: ONLY {p.arrived} of {p.count} arrived")
    out.append(f"total wall time {pc() - started:.1f} s")
    out.append("=" * 96)
    return out


# -- main -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="REST sendMessage and StUF relay throughput between two dkgw gateways."
    )
    p.add_argument("--count", type=int, default=500, help="messages per phase (default 500)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    p.add_argument(
        "--delivery-concurrency", type=int, default=8, help="[delivery] concurrency, both sides"
    )
    p.add_argument(
        "--poll-interval", type=float, default=0.05, help="[delivery] and [stuf] poll, both sides"
    )
    p.add_argument("--warmup", type=int, default=20, help="unmeasured messages before each phase")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait after the last POST"
    )
    p.add_argument(
        "--store-dir", type=Path, default=None, help="where the run directory goes (default: tmp)"
    )
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    args = p.parse_args(argv)
    if min(args.count, args.concurrency, args.delivery_concurrency) < 1 or args.warmup < 0:
        p.error("counts must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = pc()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    base = args.store_dir.resolve() if args.store_dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    setup = Setup(Path(tempfile.mkdtemp(prefix="api-bench-", dir=base)))
    gateways: dict[str, GatewayProcess] = {}
    keep = args.keep
    code = 0
    try:
        say(f"run directory {setup.work}")
        subprocess.run(
            [sys.executable, str(MAKE_PKI), "--out", str(setup.pki), "--quiet"], check=True
        )
        gemeente_toml, node_toml = make_configs(setup, args)
        import_cpas(setup)
        gateways["node"] = GatewayProcess("node", node_toml, setup.work / "node.log")
        gateways["gemeente"] = GatewayProcess(
            "gemeente", gemeente_toml, setup.work / "gemeente.log"
        )
        gateways["node"].wait_for_ports((setup.node_port,))
        gateways["gemeente"].wait_for_ports((setup.gemeente_port, setup.api_port))
        say(
            f"gemeente on 127.0.0.1:{setup.gemeente_port} (API {setup.api_port}), "
            f"node on 127.0.0.1:{setup.node_port}"
        )
        pids = {name: gw.pid for name, gw in gateways.items()} | {"bench": os.getpid()}
        store = NodeStore(setup.store("node"))
        try:
            if args.warmup:
                say(f"warming up ({args.warmup} messages per phase)")
                rest_phase(setup, args, args.warmup, "warm-up REST", store, pids)
                stuf_phase(setup, args, args.warmup, "warm-up relay", "W", pids)
            phases = [
                rest_phase(setup, args, args.count, "REST sendMessage", store, pids),
                stuf_phase(setup, args, args.count, "StUF relay (WMO301)", "M", pids),
            ]
        finally:
            store.close()
        rss = {name: peak_rss_mb(gw.pid) for name, gw in gateways.items()}
        for name in ("gemeente", "node"):
            returned = gateways[name].stop()
            if returned not in (0, -signal.SIGTERM):
                say(f"the {name} gateway exited with {returned}:\n{gateways[name].tail()}")
        errors = {name: gw.errors_logged() for name, gw in gateways.items()}
        print("\n".join(report(args, setup, phases, rss, errors, load, started)))
        if any(p.arrived != p.count or p.errors for p in phases):
            code, keep = 2, True
    except BaseException:
        keep = True
        raise
    finally:
        for gw in gateways.values():
            gw.stop()
        if keep:
            say(f"kept {setup.work}")
        else:
            shutil.rmtree(setup.work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
