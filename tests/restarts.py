"""A ``dkgw serve`` process killed and started again, with deliveries due at every start.

The municipality's gateway (party a of an osb-rm CPA with synchronous
acknowledgments) runs as a ``dkgw serve`` subprocess on 127.0.0.1; before
every start a batch of business messages is queued in its SQLite store, so
its delivery worker claims them (parsing the CPA in a pool thread) while the
rest of the start runs.  The partner is either down (a port bound but not
listening: every attempt is refused) or up (the node, another ``dkgw serve``).

:meth:`Storm.start` returns only once that start is healthy: the process
runs, the API listener answers, ``/ready`` says 200, the delivery worker has
made an attempt (up: delivered a message) and the log holds neither
``claiming tasks failed`` nor a failed schema compilation.  Every listener
binds port 0; the ports are read from the log.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cpa.generate import ActionSpec, CpaSpec, make_cpa
from cpa.model import PartyId, Service
from gateway.commands.demo import MUNICIPALITY, NODE, example_party
from gateway.msh.outbound import Payload, send_message
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.gateways import tls_toml

GEMEENTE = PartyId(MUNICIPALITY[2], "urn:osb:oin")
NODE_PARTY = PartyId(NODE[2], "urn:osb:oin")
SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")
CPA_ID = "restart-storm"

#: What a broken start logs (gateway/delivery.py, xmlsafe/schemas.py).
BROKEN_SIGNS = ("claiming tasks failed", "event=xml-schema-failed", "Traceback")

_LISTENING = re.compile(r"event=(api|admin)-listening listen=127\.0\.0\.1:(\d+)")
_STARTED = re.compile(r"event=started node=\S+ listen=127\.0\.0\.1:(\d+)")


class BrokenStart(AssertionError):
    """One start did not come up healthy; the text says how, with the log's tail."""


def config_toml(pki: Path, slug: str, party: PartyId, data: Path, node_id: str) -> str:
    """A ``dkgw serve`` configuration with every listener on port 0."""
    return (
        f'[gateway]\ndata_dir = "{data}"\nstore = "sqlite:///{data / "gateway.sqlite3"}"\n'
        f'node_id = "{node_id}"\nparty_ids = ["{party.key()}"]\n'
        '[http]\nlisten = "127.0.0.1:0"\npath = "/ebms"\n'
        '[api]\nlisten = "127.0.0.1:0"\n'
        '[admin]\nlisten = "127.0.0.1:0"\n'
        "[monitoring]\npings = false\n"
        "[delivery]\npoll_interval = 0.2\nconcurrency = 4\n"
        "connect_timeout = 5.0\nread_timeout = 10.0\n" + tls_toml(pki, slug)
    )


def read_ports(log: Path) -> dict[str, int]:
    """The ports a started gateway logged: ``ebms``, ``api``, ``admin``."""
    text = log.read_text(errors="replace")
    ports = {name: int(port) for name, port in _LISTENING.findall(text)}
    started = _STARTED.search(text)
    if started:
        ports["ebms"] = int(started.group(1))
    return ports


def http_get(port: int, path: str, timeout: float = 10.0) -> int:
    """The status of a plain-HTTP GET on 127.0.0.1 (0 when nothing answered)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


#: A ping without its parties: the API must check it against the WSDL's schema
#: and answer a soap:Client fault naming the problem (adapters/api/soap_http.py).
INVALID_PING = (
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    b'<e:ping xmlns:e="http://www.ordina.nl/ebms/2.18"><cpaId>x</cpaId></e:ping>'
    b"</soap:Body></soap:Envelope>"
)


def api_validates(port: int, timeout: float = 10.0) -> bool:
    """Whether the SOAP API answers an invalid ping with the schema's refusal."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/service/ebms",
        data=INVALID_PING,
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except OSError:
        return False
    return b"soap:Client" in body and b"invalid ping request" in body


@dataclass
class Process:
    """One ``dkgw serve`` subprocess and its log."""

    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(config: Path, log: Path) -> Process:
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return Process(popen, log)


def wait_started(process: Process, timeout: float) -> dict[str, int]:
    """The ports once ``event=started`` is logged; raises :class:`BrokenStart`."""
    deadline = time.monotonic() + timeout
    while True:
        ports = read_ports(process.log)
        if "ebms" in ports:
            return ports
        if process.popen.poll() is not None:
            raise BrokenStart(f"exited with {process.popen.returncode}:\n{process.tail()}")
        if time.monotonic() > deadline:
            raise BrokenStart(f"not started within {timeout:g} s:\n{process.tail()}")
        time.sleep(0.05)


@dataclass
class Storm:
    """Gateway a, started again and again with deliveries due; the partner up or down."""

    pki: Path
    work: Path
    partner: str  # "up" or "down"
    batch: int = 20
    timeout: float = 60.0
    starts: int = 0
    delivered: int = 0
    _node: Process | None = None
    _refuser: socket.socket | None = None
    _current: Process | None = None
    _config: Path = field(init=False)
    _db: Database = field(init=False)

    def __post_init__(self) -> None:
        data = self.work / "a"
        data.mkdir(parents=True)
        self._config = self.work / "a.toml"
        self._config.write_text(config_toml(self.pki, MUNICIPALITY[0], GEMEENTE, data, "a"))
        if self.partner == "up":
            node_data = self.work / "b"
            node_data.mkdir()
            node_config = self.work / "b.toml"
            node_config.write_text(config_toml(self.pki, NODE[0], NODE_PARTY, node_data, "b"))
            self._node = spawn(node_config, self.work / "b.log")
            try:
                node_port = wait_started(self._node, self.timeout)["ebms"]
            except BaseException:
                self._node.terminate()
                raise
        else:
            # Bound, never listening: every connection is refused, and no other
            # test can take the port meanwhile.
            self._refuser = socket.socket()
            self._refuser.bind(("127.0.0.1", 0))
            node_port = self._refuser.getsockname()[1]
        cpa = self._cpa(node_port)
        self._db = Database.from_url(f"sqlite:///{data / 'gateway.sqlite3'}")
        apply_migrations(self._db)
        CpaRegistry(self._db).insert(cpa, overwrite=True)
        if self._node is not None:
            node_db = Database.from_url(f"sqlite:///{self.work / 'b' / 'gateway.sqlite3'}")
            try:
                CpaRegistry(node_db).insert(cpa, overwrite=True)
            finally:
                node_db.close()

    def _cpa(self, node_port: int) -> bytes:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        spec = CpaSpec(
            # Acknowledgments come back in the HTTP answer (mshSignalsOnly), so
            # a's own endpoint, a new port at every start, is never called.
            a=example_party(self.pki, *MUNICIPALITY[:4], "https://127.0.0.1:9/ebms"),
            b=example_party(self.pki, *NODE[:4], f"https://127.0.0.1:{node_port}/ebms"),
            service=SERVICE.value,
            actions=(ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b")),
            profile="osb-rm",
            start=start,
            end=start + timedelta(days=30),
            cpa_id=CPA_ID,
            sync_reply=True,
        )
        return make_cpa(spec)

    def queue(self, count: int) -> None:
        """Queue ``count`` messages a -> b in a's store (due now)."""
        for n in range(count):
            send_message(
                self._db,
                CpaRegistry(self._db),
                cpa_id=CPA_ID,
                from_party=GEMEENTE,
                from_role=MUNICIPALITY[3],
                to_party=NODE_PARTY,
                to_role=NODE[3],
                service=SERVICE,
                action="WMO301",
                payloads=(Payload(b"<Bericht>" + str(n).encode() + b"</Bericht>"),),
            )

    def delivered_count(self) -> int:
        with self._db.transaction() as cur:
            row = cur.execute(
                "SELECT COUNT(*) FROM ebms_message WHERE direction = 'out' AND status = 'DELIVERED'"
            ).fetchone()
        return int(row[0])

    def start(self) -> Process:
        """Queue a batch, start a, and return once this start is healthy."""
        assert self._current is None, "kill the running one first"
        self.queue(self.batch)
        before = self.delivered_count()
        self.starts += 1
        process = spawn(self._config, self.work / f"a-{self.starts}.log")
        self._current = process
        ports = wait_started(process, self.timeout)
        deadline = time.monotonic() + self.timeout

        def check(what: str, ok: bool) -> bool:
            if process.popen.poll() is not None:
                raise BrokenStart(f"start {self.starts}: exited while {what}:\n{process.tail()}")
            for sign in BROKEN_SIGNS:
                if sign in process.text():
                    raise BrokenStart(f"start {self.starts}: logged {sign!r}:\n{process.tail()}")
            if not ok and time.monotonic() > deadline:
                raise BrokenStart(f"start {self.starts}: not {what} in time:\n{process.tail()}")
            return ok

        if "api" not in ports or "admin" not in ports:
            raise BrokenStart(f"start {self.starts}: a listener is not open:\n{process.tail()}")
        # The API listener answers, and its WSDL schema is usable (a bad request is
        # validated against it and refused with a fault, not an "internal error").
        while not check("serving the API", api_validates(ports["api"])):
            time.sleep(0.1)
        while not check("ready", http_get(ports["admin"], "/ready") == 200):
            time.sleep(0.1)
        while not check("attempting deliveries", "event=delivery" in process.text()):
            time.sleep(0.1)
        if self.partner == "up":
            while not check("delivering", self.delivered_count() > before):
                time.sleep(0.1)
            self.delivered = self.delivered_count()
        check("healthy", True)
        return process

    def kill_during_start(self, after: float) -> None:
        """Queue a batch, start a and SIGKILL it ``after`` seconds later, unchecked."""
        assert self._current is None, "kill the running one first"
        self.queue(self.batch)
        self.starts += 1
        self._current = spawn(self._config, self.work / f"a-{self.starts}.log")
        time.sleep(after)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the running a (nothing is closed cleanly)."""
        if self._current is not None:
            self._current.kill()
            self._current = None

    def close(self) -> None:
        """Stop everything this storm started."""
        self.kill()
        if self._node is not None:
            self._node.terminate()
        if self._refuser is not None:
            self._refuser.close()
        self._db.close()
