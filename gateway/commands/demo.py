"""``dkgw demo``: two gateways on loopback doing a real Digikoppeling exchange.

What it does, each step printed with the command an operator would type:

1. makes the example TEST PKI (``certs-example/make-pki``);
2. generates an osb-rm CPA for Gemeente Voorbeeld and the GGk/RINIS test node
   and imports it into two fresh stores;
3. starts both gateways as ``dkgw serve --config ...`` processes on
   127.0.0.1 with mutual TLS;
4. pings both ways (``dkgw ping``: Ping out, Pong back);
5. sends a business message with a 2 KiB and a 1 MiB attachment under
   reliable messaging (``dkgw send``), waits until the node acknowledged it and
   shows it DELIVERED at the municipality and RECEIVED at the node, with the
   log lines both gateways wrote about it;
6. shows the link monitoring (scheduled Pings, ``/metrics``, a Nagios check);
7. relays iWmo/iJw: the municipality's back office hands over a bare WMO301
   (REST) and JW301 (outbox folder); the node routes them to the care
   provider's folder; the provider's WMO302/JW302 retour messages travel back
   and land, unwrapped, in the municipality's inbox; then an upload with a
   broken file, its processing report, and both message logs;
8. stops both gateways (SIGTERM, graceful).

Everything lives in ``<data dir>/demo``; a rerun starts from empty stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cpa.generate import ActionSpec, CpaSpec, PartySpec, make_cpa
from gateway.commands.common import default_data_dir, load_party
from gateway.msh.states import InboundStatus, OutboundStatus
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations

REPO = Path(__file__).resolve().parents[2]
PKI_SCRIPT = REPO / "certs-example" / "make-pki"
SAMPLES = REPO / "tests" / "fixtures" / "stuf"
GEMEENTECODE = "0384"  # the gemeente of the iStandaarden samples
AGB = "42420001"  # the care provider of the samples

MUNICIPALITY = (
    "gemeente-voorbeeld",
    "Gemeente Voorbeeld",
    "00000001001234567000",
    "Gemeente",
    "https://localhost:18443/ebms",
)
NODE = (
    "ggk-rinis-test",
    "GGk/RINIS test",
    "00000001007654321000",
    "GGk",
    "https://localhost:18444/ebms",
)
SERVICE = "GGK:iWmo:3.2"
CPA_ID = "GGK_iWmo_3_2_00000001001234567000_00000001007654321000_demo"
PREFERRED_PORTS = (18443, 18444)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the top-level parser."""
    p = sub.add_parser("demo", help="run two gateways on loopback and exchange messages")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave both gateways running at the end (stop them with Ctrl-C)",
    )
    p.set_defaults(handler=cmd_demo)


def example_party(pki: Path, slug: str, name: str, oin: str, role: str, endpoint: str) -> PartySpec:
    """A party of the example PKI (``MUNICIPALITY`` or ``NODE``) for the CPA generator."""
    return load_party(pki / slug, name=name, party_id=oin, role=role, endpoint=endpoint)


def _free(port: int) -> bool:
    with socket.socket() as s:
        # As a listener would: connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports() -> tuple[int, int]:
    """18443 and 18444 when free (the README's numbers), else any two free ports."""
    if all(_free(p) for p in PREFERRED_PORTS):
        return PREFERRED_PORTS
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
    return ports[0], ports[1]


@dataclass
class DemoGateway:
    """One side of the demo: its files and, once started, its process."""

    label: str
    slug: str
    oin: str
    port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None
    admin_port: int = 0
    """The /metrics and /status listener; 0 leaves it off."""
    log_format: str = "text"
    api_port: int = 0
    stuf: str = ""
    """The ``[stuf]`` section (TOML text)."""
    pki: Path | None = None
    """The example PKI the configuration points at (set by :meth:`write_config`)."""

    @property
    def config(self) -> Path:
        return self.base / f"{self.label}.toml"

    @property
    def store(self) -> str:
        return f"sqlite:///{(self.base / f'{self.label}.sqlite3').resolve()}"

    @property
    def log(self) -> Path:
        return self.base / f"{self.label}.log"

    def write_config(self, pki: Path) -> None:
        self.pki = pki
        party = (pki / self.slug).resolve()
        ca = (pki / "ca").resolve()
        self.config.write_text(
            f"""# {self.label} gateway of `dkgw demo` (example TEST PKI; never for production)
[gateway]
data_dir = "{self.label}-data"
store = "{self.store}"
node_id = "demo-{self.label}"
party_ids = ["urn:osb:oin:{self.oin}"]

[http]
listen = "127.0.0.1:{self.port}"
path = "/ebms"

[tls]
certificate = "{party}/tls-server.pem"
key = "{party}/tls-server.key"
client_certificate = "{party}/tls-client.pem"
client_key = "{party}/tls-client.key"
chain = "{ca}/intermediate.pem"
trust_anchors = "{ca}/root.pem"

[delivery]
poll_interval = 0.2

[monitoring]
# Scheduled Pings every 2 s so the demo shows a verdict (production: 300 s).
ping_interval = 2.0

[admin]
listen = "{f"127.0.0.1:{self.admin_port}" if self.admin_port else ""}"

[logging]
format = "{self.log_format}"

[api]
listen = "{f"127.0.0.1:{self.api_port}" if self.api_port else ""}"

{self.stuf}
""",
            encoding="utf-8",
        )

    def start(self) -> None:
        out = self.log.open("wb")
        self.process = subprocess.Popen(
            [*_dkgw(), "serve", "--config", str(self.config), "--log-format", self.log_format],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Wait until the ebMS listener accepts connections.

        The admin and API ports are any free ports, picked before the gateway binds
        them, so another program may take one in between.  Then the gateway exits
        saying so, and it is started again on newly picked ports (up to three times).
        """
        deadline = time.monotonic() + timeout
        retries = 3
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                if retries and self._lost_a_side_port():
                    retries -= 1
                    self.start()
                    continue
                raise RuntimeError(
                    f"the {self.label} gateway exited ({self._last_line()}); see {self.log}"
                )
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the {self.label} gateway did not start listening; see {self.log}")

    def _last_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def _lost_a_side_port(self) -> bool:
        """True (and new ports picked) when the start failed on the admin or API port."""
        taken = [
            port
            for port in (self.admin_port, self.api_port)
            if port and self.log_lines(f"cannot listen on 127.0.0.1:{port}:")
        ]
        if not taken or self.pki is None:
            return False
        if self.admin_port:
            self.admin_port = _any_port()
        if self.api_port:
            self.api_port = _any_port()
        self.write_config(self.pki)
        return True

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_lines(self, needle: str) -> list[str]:
        return [
            line for line in self.log.read_text(errors="replace").splitlines() if needle in line
        ]


def _any_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _show_monitoring(gw: DemoGateway) -> bool:
    """Step 6: the scheduled Pings' verdict, as Nagios and Prometheus see it."""
    print("6. link monitoring: scheduled Pings (every 2 s here), /metrics and a Nagios check")
    deadline = time.monotonic() + 15
    code = 3
    while time.monotonic() < deadline:
        done = subprocess.run(
            [*_dkgw(), "--store", gw.store, "check", "ping", "--all"],
            capture_output=True,
            text=True,
            check=False,
        )
        code = done.returncode
        if code != 3:  # UNKNOWN until the first Ping is settled
            break
        time.sleep(0.3)
    _run(
        ["--store", gw.store, "check", "ping", "--all", "--warn-rtt", "200", "--crit-rtt", "1000"],
        show=f"--store {Path(gw.store).name} check ping --all --warn-rtt 200 --crit-rtt 1000",
    )
    url = f"http://127.0.0.1:{gw.admin_port}/metrics"
    print(f"   $ curl -s {url} | grep ^ebms_ping")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        print(f"     cannot scrape: {exc}")
        return False
    for line in text.splitlines():
        if line.startswith(("ebms_ping_up", "ebms_ping_rtt_seconds_count")):
            print(f"     {line}")
    return code == 0


def _wait_for(check: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def _finished(folder: Path, pattern: str) -> list[Path]:
    """Files in ``folder``, leaving out the hidden ones still being written (``.tmp-``)."""
    return sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))


def _wmo302() -> bytes:
    """The WMO302 retour of the samples' WMO301: the JW302 sample in iWmo dress.

    (The iWmo 3.2 retour XSDs are not among the fixtures; the relay notes that
    it cannot validate this payload against its XSD and sends it on.)
    """
    jw302 = (SAMPLES / "ijw" / "3.2" / "JW302.xml").read_bytes()
    return (
        jw302.replace(b"ijw/3_2/jw302", b"iwmo/3_2/wmo302")
        .replace(b"ijw/3_2/basisschema", b"iwmo/3_2/basisschema")
        .replace(b"jw302:", b"wmo302:")
        .replace(b"xmlns:jw302", b"xmlns:wmo302")
        .replace(b"ijw:", b"iwmo:")
        .replace(b"xmlns:ijw", b"xmlns:iwmo")
        .replace(b">437<", b">415<")
    )


def _show_relay(gemeente: DemoGateway, node: DemoGateway, base: Path) -> bool:
    """Step 7: iWmo/iJw through the StUF-GGk envelope, both ways."""
    print("7. the iWmo/iJw relay (StUF-GGk envelope ggk0210): gemeente -> node -> aanbieder")
    wmo301 = SAMPLES / "iwmo" / "3.2" / "WMO301.xml"
    url = f"http://127.0.0.1:{gemeente.api_port}/service/rest/v19/stuf/messages"
    print(f"   $ curl -s --data-binary @{wmo301.name} {url}")
    request = urllib.request.Request(
        url, data=wmo301.read_bytes(), headers={"Content-Type": "application/xml"}
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:  # noqa: S310 (http URL we built)
            sent = json.loads(answer.read())
    except OSError as exc:
        print(f"     refused: {exc}")
        return False
    print(f"     {json.dumps(sent)}")
    outbox = base / "stuf-out"
    _wait_for(outbox.is_dir)
    jw301 = (SAMPLES / "ijw" / "3.2" / "JW301.xml").read_bytes()
    (outbox / "JW301.xml.part").write_bytes(jw301)
    (outbox / "JW301.xml.part").rename(outbox / "JW301.xml")
    print(
        "   $ cp JW301.xml stuf-out/JW301.xml.part && mv stuf-out/JW301.xml.part stuf-out/JW301.xml"
    )
    provider = base / "aanbieders-out" / AGB
    arrived = _wait_for(lambda: len(_finished(provider, "*.xml")) >= 2)
    print(f"   the node routed both to the aanbieder's folder aanbieders-out/{AGB}/:")
    for f in _finished(provider, "*.xml"):
        print(f"     {f.name} ({f.stat().st_size} bytes, a Di01 envelope)")
    inbox = base / "aanbieders-in"
    _wait_for(inbox.is_dir)
    retours = {
        "WMO302.xml": _wmo302(),
        "JW302.xml": (SAMPLES / "ijw" / "3.2" / "JW302.xml").read_bytes(),
    }
    print("   the aanbieder answers with WMO302 and JW302 in aanbieders-in/")
    for name, data in retours.items():
        (inbox / f".{name}").write_bytes(data)
        (inbox / f".{name}").rename(inbox / name)
    gemeente_in = base / "stuf-in"
    returned = _wait_for(lambda: len(_finished(gemeente_in, "*.json")) >= 2)
    print("   the gemeente's back office finds them unwrapped in stuf-in/, each with a sidecar:")
    for sidecar in _finished(gemeente_in, "*.json"):
        meta = json.loads(sidecar.read_text())
        print(
            f"     {meta['payload']['file']}: {meta['functie']} in a {meta['berichtcode']}, "
            f"crossRefnummer {meta['crossRefnummer']}"
        )
    upload = base / "upload" / "aanlevering.zip"
    upload.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(upload, "w") as z:
        z.writestr(
            "toewijzing-1.xml", wmo301.read_bytes().replace(b"123456789012", b"UPLOAD000001")
        )
        z.writestr("toewijzing-2.xml", jw301.replace(b"123456789012", b"UPLOAD000002"))
        z.writestr("verkeerd.xml", (SAMPLES / "ijw" / "3.2" / "JW315.xml").read_bytes())
    code, _ = _run(
        ["upload", str(upload), "--config", str(gemeente.config)],
        show=f"upload {upload.name} --config {gemeente.config.name}",
    )
    for gw in (node, gemeente):
        _run(
            ["log", "--since", "1h", "--config", str(gw.config)],
            show=f"log --since 1h --config {gw.config.name}",
        )
    return arrived and returned and code == 1


def _dkgw() -> list[str]:
    """How to run this very dkgw in a subprocess."""
    return [sys.executable, "-m", "gateway.cli"]


def _run(args: Sequence[str], *, show: str) -> tuple[int, str]:
    """Run a dkgw command, print it the way an operator would type it, and its output."""
    print(f"   $ dkgw {show}")
    done = subprocess.run([*_dkgw(), *args], capture_output=True, text=True, check=False)
    for line in (done.stdout + done.stderr).strip().splitlines():
        print(f"     {line}")
    return done.returncode, done.stdout.strip()


@contextmanager
def _running(gateways: Sequence[DemoGateway]) -> Iterator[None]:
    try:
        for gw in gateways:
            gw.start()
        for gw in gateways:
            gw.wait_listening()
        yield
    finally:
        for gw in gateways:
            code = gw.stop()
            if code is not None:
                print(f"   {gw.label} gateway stopped (exit {code}); its log: {gw.log}")


_SHOWN = ("event", "action", "status", "http_status", "outcome", "reply", "size", "parts", "ms")


def _summary(line: str) -> str:
    """The fields of a gateway log line worth showing here (the full line is in the log)."""
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    return " ".join(f"{k}={fields[k]}" for k in _SHOWN if k in fields)


def _message_status(gw: DemoGateway, message_id: str, direction: str) -> str | None:
    db = Database.from_url(gw.store)
    try:
        with db.transaction() as cur:
            row = cur.execute(
                "SELECT status FROM ebms_message WHERE message_id = ? AND direction = ?",
                (message_id, direction),
            ).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demonstration; 0 when every step worked."""
    if not PKI_SCRIPT.exists():
        print("dkgw demo runs from a source checkout (certs-example/ is missing)", file=sys.stderr)
        return 1
    started = time.monotonic()
    base = (Path(args.data_dir or default_data_dir()) / "demo").resolve()
    pki = base / "pki"
    print(f"1. example PKI (TEST only) in {pki}")
    subprocess.run([sys.executable, str(PKI_SCRIPT), "--out", str(pki), "--quiet"], check=True)

    port_a, port_b = _pick_ports()
    gemeente = DemoGateway(
        "gemeente", MUNICIPALITY[0], MUNICIPALITY[2], port_a, base, admin_port=_any_port()
    )
    node = DemoGateway("node", NODE[0], NODE[2], port_b, base)
    services = (
        f'services = {{ iwmo = "urn:osb:services:{SERVICE}", ijw = "urn:osb:services:{SERVICE}" }}'
    )
    gemeente.api_port = _any_port()
    gemeente.stuf = f"""[stuf]
role = "gemeente"
cpa_id = "{CPA_ID}"
gemeentecodes = ["{GEMEENTECODE}"]
{services}
outbox = "stuf-out"
inbox = "stuf-in"
poll_interval = 0.2
"""
    node.stuf = f"""[stuf]
role = "node"
{services}
provider_outbox = "aanbieders-out"
provider_inbox = "aanbieders-in"
poll_interval = 0.2

[[stuf.gemeente]]
cpa_id = "{CPA_ID}"
gemeentecodes = ["{GEMEENTECODE}"]
"""
    for gw in (gemeente, node):
        for leftover in base.glob(f"{gw.label}.sqlite3*"):
            leftover.unlink()
        shutil.rmtree(base / f"{gw.label}-data", ignore_errors=True)
    for folder in ("stuf-out", "stuf-in", "aanbieders-out", "aanbieders-in", "upload"):
        shutil.rmtree(base / folder, ignore_errors=True)

    start = datetime.now(UTC).replace(microsecond=0)
    spec = CpaSpec(
        a=example_party(pki, *MUNICIPALITY[:4], f"https://localhost:{port_a}/ebms"),
        b=example_party(pki, *NODE[:4], f"https://localhost:{port_b}/ebms"),
        service=SERVICE,
        actions=(
            ActionSpec("WMO301", "a"),
            ActionSpec("JW301", "a"),
            ActionSpec("WMO302", "b"),
            ActionSpec("JW302", "b"),
            ActionSpec("Fo01", "both"),
            ActionSpec("Bijlagen", "a"),
        ),
        profile="osb-rm",
        start=start - timedelta(minutes=5),
        end=start + timedelta(days=365),
        cpa_id=CPA_ID,
        # Short enough to show a retry within the demo if a side is slow to start.
        retries=5,
        retry_interval=timedelta(seconds=10),
        persist_duration=timedelta(hours=1),
    )
    cpa_file = base / "cpa.xml"
    cpa_file.write_bytes(make_cpa(spec))
    print(f"2. generated CPA {CPA_ID} (osb-rm) in {cpa_file}")
    for gw in (gemeente, node):
        gw.write_config(pki)
        db = Database.from_url(gw.store)
        apply_migrations(db)
        row, _, report = CpaRegistry(db).insert(cpa_file.read_bytes(), overwrite=True)
        db.close()
        print(
            f"   $ dkgw --store {gw.store} cpa import {cpa_file.name}\n"
            f"     imported {row.cpa_id} into the {gw.label} store, valid until "
            f"{row.end:%Y-%m-%d}, {len(report.warnings)} warnings"
        )

    print(
        f"3. starting both gateways: gemeente on https://localhost:{port_a}/ebms, "
        f"node on https://localhost:{port_b}/ebms (mutual TLS)"
    )
    ok = True
    with _running((gemeente, node)):
        print(f"   $ dkgw serve --config {gemeente.config}   (and the same for {node.config.name})")
        print("4. Ping/Pong both ways")
        for sender, me, peer in (
            (gemeente, gemeente.oin, node.oin),
            (node, node.oin, gemeente.oin),
        ):
            code, _ = _run(
                ["--store", sender.store, "ping", CPA_ID, "--from", me, "--to", peer],
                show=f"--store {Path(sender.store).name} ping {CPA_ID} --from {me} --to {peer}",
            )
            ok = ok and code == 0

        print("5. a reliable (osb-rm) ebMS message with a 2 KiB and a 1 MiB attachment")
        small, large = base / "bijlage-2k.xml", base / "bijlage-1m.bin"
        small.write_bytes(b"<demo>" + b"x" * (2048 - 13) + b"</demo>")
        large.write_bytes(os.urandom(1024 * 1024))
        send = [
            "send", CPA_ID, "--from", gemeente.oin, "--from-role", "Gemeente",
            "--to", node.oin, "--to-role", "GGk", "--service", f"urn:osb:services:{SERVICE}",
            "--action", "Bijlagen", "--file", str(small), "--file", str(large),
            "--content-type", "application/octet-stream",
        ]  # fmt: skip
        code, message_id = _run(
            ["--store", gemeente.store, *send],
            show=" ".join(["--store", Path(gemeente.store).name, *send]).replace(
                str(base) + "/", ""
            ),
        )
        if code != 0 or not message_id:
            return 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if _message_status(gemeente, message_id, "out") != OutboundStatus.CREATED:
                break
            time.sleep(0.1)
        out_status = _message_status(gemeente, message_id, "out")
        in_status = _message_status(node, message_id, "in")
        print(f"   gemeente (sender):  {message_id} {out_status}")
        print(f"   node (receiver):    {message_id} {in_status}")
        _run(
            ["--store", node.store, "message", message_id],
            show=f"--store {Path(node.store).name} message {message_id}",
        )
        print("   what the gateways logged about it (ids, parties, sizes, outcome; no content):")
        for gw in (gemeente, node):
            for line in gw.log_lines(message_id)[:4]:
                print(f"     {gw.label:8} {_summary(line)}")
        ok = ok and out_status == OutboundStatus.DELIVERED and in_status == InboundStatus.RECEIVED
        ok = _show_monitoring(gemeente) and ok
        ok = _show_relay(gemeente, node, base) and ok
        if args.keep_running:
            print("   both gateways keep running; Ctrl-C stops them")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        print("8. stopping both gateways")
    print(f"demo {'finished' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1
