"""Two ``dkgw serve`` processes, their back offices over REST, and the exactly-once check.

Everything here drives real processes on 127.0.0.1 with real TLS and real stores;
nothing is mocked.  ``DKGW_FAULTS_SCALE`` (default 1) multiplies the message and
kill counts for ``make faults``.  Every test prints one line::

    accepted=N delivered=N duplicates_eliminated=N lost=0 kills=K
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cpa.generate import make_cpa
from gateway.config import load_config
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import GEMEENTE_OIN, NODE_OIN, SpecFactory
from tests.gateways import free_port

SCALE = max(1.0, float(os.environ.get("DKGW_FAULTS_SCALE", "1") or "1"))
SERVICE = "urn:osb:services:GGK:iWmo:3.2"
FROM_PARTY = f"urn:osb:oin:{GEMEENTE_OIN}"
TO_PARTY = f"urn:osb:oin:{NODE_OIN}"
REST = "/service/rest/v19"
#: How long a drain may take before "stuck" is the verdict (generous: a loaded machine).
DRAIN_SECONDS = 150.0


def scaled(n: int) -> int:
    """``n`` times DKGW_FAULTS_SCALE."""
    return max(1, round(n * SCALE))


def seeded(name: str) -> random.Random:
    """A seeded RNG; the seed is printed so a failing run can be replayed (DKGW_FAULTS_SEED)."""
    seed = int(os.environ.get("DKGW_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n{name}: seed={seed} (DKGW_FAULTS_SEED={seed} replays it)")
    return random.Random(seed)  # noqa: S311 - a replayable fault schedule, not a secret


def fork(rng: random.Random) -> random.Random:
    """An RNG of its own for another thread, derived from ``rng`` (so still replayable)."""
    return random.Random(rng.random())  # noqa: S311 - as above


# -- configuration -------------------------------------------------------------------------


def _toml(value: object) -> str:
    return json.dumps(str(value)) if isinstance(value, str | Path) else str(value).lower()


def write_config(
    base: Path,
    pki: Path,
    slug: str,
    *,
    port: int,
    api_port: int,
    store: str,
    read_timeout: float = 10.0,
    lease_seconds: float = 300.0,
) -> Path:
    """A complete ``dkgw serve`` config for one party of the example PKI."""
    party, ca = pki / slug, pki / "ca"
    base.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, object]] = {
        "gateway": {"data_dir": base / "data", "store": store, "node_id": slug},
        "http": {"listen": f"127.0.0.1:{port}", "path": "/ebms"},
        "tls": {
            "certificate": party / "tls-server.pem",
            "key": party / "tls-server.key",
            "client_certificate": party / "tls-client.pem",
            "client_key": party / "tls-client.key",
            "chain": ca / "intermediate.pem",
            "trust_anchors": ca / "root.pem",
        },
        "delivery": {
            "poll_interval": 0.2,
            "concurrency": 8,
            "connect_timeout": 5.0,
            "read_timeout": read_timeout,
            "lease_seconds": lease_seconds,
        },
        "monitoring": {"pings": False},
        "api": {"listen": f"127.0.0.1:{api_port}"},
    }
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
        for name, values in sections.items()
    )
    path = base / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    load_config(path)  # a typo fails here, not as a silent gateway exit
    return path


def install_cpa(
    make_spec: SpecFactory,
    stores: list[str],
    *,
    cpa_id: str,
    port_a: int,
    port_b: int,
    sync: bool,
    retries: int = 60,
    retry_interval: float = 1.0,
) -> None:
    """An osb-rm CPA with the real ports, imported into every store (migrated first)."""
    spec = make_spec(
        profile="osb-rm",
        sync_reply=sync,
        cpa_id=cpa_id,
        retries=retries,
        retry_interval=timedelta(seconds=retry_interval),
        persist_duration=timedelta(hours=1),
    )
    spec = replace(
        spec,
        a=replace(spec.a, endpoint=f"https://127.0.0.1:{port_a}/ebms"),
        b=replace(spec.b, endpoint=f"https://localhost:{port_b}/ebms"),
    )
    xml = make_cpa(spec)
    for url in stores:
        db = Database.from_url(url)
        try:
            apply_migrations(db)
            CpaRegistry(db).insert(xml, overwrite=True)
        finally:
            db.close()


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows from a store, on a connection of the test's own."""
    db = Database.from_url(url)
    try:
        with db.transaction() as cur:
            return cur.execute(sql, params).fetchall()
    finally:
        db.close()


# -- processes -------------------------------------------------------------------------------


@dataclass
class Gateway:
    """``dkgw serve`` as a child process: started, killed and restarted by the test."""

    name: str
    config: Path
    log: Path
    api_port: int
    store: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    exits: list[int] = field(default_factory=list)

    def spawn(self) -> None:
        """Start the process without waiting for it to be up."""
        self._before = self.log_count("event=started") if self.log.exists() else 0
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} ---\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait for ``event=started``."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while self.log_count("event=started") <= self._before:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not start:\n{self.tail()}")
            time.sleep(0.05)

    _before: int = 0

    def kill(self) -> bool:
        """SIGKILL, whatever it is doing; True when it had not finished starting up."""
        if self.process is None:
            return False
        starting = self.log_count("event=started") <= self._before
        self.process.send_signal(signal.SIGKILL)
        self.exits.append(self.process.wait(timeout=30))
        self.process = None
        self.kills += 1
        return starting

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exits.append(self.process.wait(timeout=30))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exits.append(self.process.wait())
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def assert_alive(self) -> None:
        assert self.alive(), f"{self.name} died:\n{self.tail()}"

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def fds(self) -> int:
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_count(self, needle: str) -> int:
        return self.log.read_text(errors="replace").count(needle)


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    """Every gateway a test makes is killed afterwards, whatever the test did."""
    made: list[Gateway] = []
    yield made
    for gw in made:
        if gw.process is not None:
            gw.process.kill()
            gw.process.wait()


def make_gateway(
    made: list[Gateway],
    tmp_path: Path,
    pki: Path,
    name: str,
    slug: str,
    *,
    port: int,
    store: str,
    **delivery: float,
) -> Gateway:
    api_port = free_port()
    config = write_config(
        tmp_path / name, pki, slug, port=port, api_port=api_port, store=store, **delivery
    )
    gw = Gateway(name, config, tmp_path / name / "gateway.log", api_port, store)
    made.append(gw)
    return gw


# -- back offices over REST ----------------------------------------------------------------


def rest(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 15.0
) -> tuple[int, bytes]:
    """One REST call; OSError when the gateway is not there (killed, starting)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, REST + path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except http.client.HTTPException as exc:
        raise OSError(str(exc)) from exc
    finally:
        conn.close()


def payload(n: int, rng: random.Random) -> bytes:
    """A small XML document, distinct per message."""
    filler = base64.b64encode(rng.randbytes(rng.randrange(200, 3000))).decode()
    return f"<Bericht nr='{n}'><inhoud>{filler}</inhoud></Bericht>".encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Sender:
    """The sending back office: submits with client-chosen MessageIds, retrying until answered.

    A 200 is "accepted"; a 400 saying the id already exists is the answer to a
    request whose first answer was lost (the gateway was killed after its commit),
    so it is "accepted earlier".  Any other answer fails the test.
    """

    gw: Gateway
    cpa_id: str
    accepted: dict[str, str] = field(default_factory=dict)  # message id -> payload digest
    answered_twice: int = 0
    retries: int = 0

    def submit(self, n: int, data: bytes, deadline: float) -> None:
        message_id = f"{uuid.uuid4().hex}@faults.dkgw.test"
        body = json.dumps(
            {
                "properties": {
                    "cpaId": self.cpa_id,
                    "fromPartyId": FROM_PARTY,
                    "toPartyId": TO_PARTY,
                    "service": SERVICE,
                    "action": "WMO301",
                    "messageId": message_id,
                },
                "dataSources": [
                    {
                        "name": f"bericht-{n}.xml",
                        "contentType": "application/xml",
                        "content": base64.b64encode(data).decode(),
                    }
                ],
            }
        ).encode()
        attempts = 0
        while True:
            attempts += 1
            try:
                status, answer = rest(self.gw.api_port, "POST", "/ebms/messages", body)
            except OSError:
                status, answer = 0, b""
            if status == 200:
                assert answer.decode() == message_id
                break
            if status == 400 and b"already exists" in answer and attempts > 1:
                self.answered_twice += 1
                break
            assert status in (0, 500, 502, 503), (status, answer[:300])
            assert time.monotonic() < deadline, f"{message_id} never answered: {status}"
            self.retries += 1
            time.sleep(0.2)
        self.accepted[message_id] = digest(data)


class Submitter(threading.Thread):
    """The sending back office in a thread of its own; an assertion is kept for the test."""

    def __init__(self, sender: Sender, count: int, rng: random.Random, deadline: float) -> None:
        super().__init__(name="sender-back-office", daemon=True)
        self.sender, self.count, self.rng, self.deadline = sender, count, rng, deadline
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.count):
                self.sender.submit(n, payload(n, self.rng), self.deadline)
                time.sleep(self.rng.uniform(0.05, 0.3))
        except BaseException as exc:  # re-raised in the test
            self.failure = exc


@dataclass
class Receiver:
    """The receiving back office: polls for unprocessed messages, takes each, processes it.

    Runs in a thread; a gateway that is down is polled again later.  A message is
    taken (``got``: id -> payload digest) when fetched, and then processed; when the
    gateway dies before the processing is answered, the message is offered again
    and taken again, as by any back office that polls (``refetched``): the same id
    must then carry the same content.
    """

    gw: Gateway
    got: dict[str, str] = field(default_factory=dict)
    refetched: int = 0
    stop_event: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    errors: list[str] = field(default_factory=list)

    def poll_once(self) -> int:
        status, body = rest(self.gw.api_port, "GET", "/ebms/messages/unprocessed?maxNr=200")
        if status != 200:
            return 0
        ids = json.loads(body)
        for message_id in ids:
            status, body = rest(self.gw.api_port, "GET", f"/ebms/messages/{message_id}")
            if status != 200:
                continue
            message = json.loads(body)
            [source] = message["dataSources"]
            taken = digest(base64.b64decode(source["content"]))
            if message_id in self.got:
                self.refetched += 1
                if self.got[message_id] != taken:
                    self.errors.append(f"{message_id} came again with other content")
            self.got[message_id] = taken
            rest(self.gw.api_port, "PATCH", f"/ebms/messages/{message_id}")
        return len(ids)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                if self.poll_once():
                    continue
            except OSError:
                pass
            except Exception as exc:  # reported by the test
                self.errors.append(repr(exc))
            self.stop_event.wait(0.3)

    def __enter__(self) -> Receiver:
        self.thread = threading.Thread(target=self.run, name="receiver-back-office", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


# -- the verdict -----------------------------------------------------------------------------


def unfinished_tasks(store: str) -> list[tuple[Any, ...]]:
    return query(
        store,
        "SELECT m.message_id, m.action, t.state, t.attempts, t.last_error FROM delivery_task t "
        "JOIN ebms_message m ON m.id = t.message_pk WHERE t.state IN ('pending', 'sending')",
    )


def unprocessed(store: str) -> list[tuple[Any, ...]]:
    """Received business messages the back office has not processed yet."""
    return query(
        store,
        "SELECT message_id, status FROM ebms_message WHERE direction = 'in' "
        "AND action = 'WMO301' AND (status IS NULL OR status <> 'PROCESSED')",
    )


def drain(sender: Sender, receiver: Receiver, a: Gateway, b: Gateway, timeout: float) -> None:
    """Wait until every accepted message reached the back office and no task is left.

    Both gateways must stay up meanwhile (no crash loop).
    """
    deadline = time.monotonic() + timeout
    while True:
        a.assert_alive()
        b.assert_alive()
        delivered = set(receiver.got)
        left = unfinished_tasks(a.store) + unfinished_tasks(b.store)
        if set(sender.accepted) <= delivered and not left and not unprocessed(b.store):
            return
        if time.monotonic() > deadline:
            missing = set(sender.accepted) - delivered
            raise AssertionError(
                f"not drained in {timeout:.0f} s: {len(missing)} accepted messages not "
                f"delivered (e.g. {sorted(missing)[:3]}), unfinished tasks {left[:5]}"
            )
        time.sleep(0.5)


def verdict(
    label: str, sender: Sender, receiver: Receiver, a: Gateway, b: Gateway, kills: int
) -> str:
    """Exactly once, nothing lost or stuck; returns and prints the summary line."""
    time.sleep(1.0)  # a late duplicate would show up now
    with contextlib.suppress(OSError):
        receiver.poll_once()
    assert not receiver.errors, receiver.errors
    expected = set(sender.accepted.items())
    got = set(receiver.got.items())
    lost = expected - got
    extra = got - expected
    assert not extra, f"delivered but never accepted (or altered): {sorted(extra)[:5]}"
    # The sender's store holds exactly what its back office was told was accepted.
    stored_out = {
        r[0]
        for r in query(
            a.store, "SELECT message_id FROM ebms_message WHERE direction = 'out' "
            "AND action = 'WMO301'",
        )
    }  # fmt: skip
    assert stored_out == set(sender.accepted), (
        f"store/REST mismatch: {len(stored_out - set(sender.accepted))} stored but never "
        f"acknowledged, {len(set(sender.accepted) - stored_out)} acknowledged but not stored"
    )
    status = Counter(
        r[0]
        for r in query(
            a.store, "SELECT status FROM ebms_message WHERE direction = 'out' "
            "AND action = 'WMO301'",
        )
    )  # fmt: skip
    assert set(status) <= {"DELIVERED"}, status
    rows = query(
        b.store,
        "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM ebms_message "
        "WHERE direction = 'in' AND action = 'WMO301'",
    )
    assert rows == [(len(expected), len(expected))], rows  # stored once each
    assert not unprocessed(b.store)
    assert not unfinished_tasks(a.store) and not unfinished_tasks(b.store)
    duplicates = b.log_count("outcome=duplicate")
    line = (
        f"accepted={len(expected)} delivered={len(got)} duplicates_eliminated={duplicates} "
        f"lost={len(lost)} kills={kills}"
    )
    print(f"\n{label}: {line}")
    print(f"  back office: {receiver.refetched} offered again (a kill before processing answered)")
    assert not lost, f"{len(lost)} accepted messages lost: {sorted(lost)[:5]}"
    return line


@dataclass
class Footprint:
    """File descriptors and resident memory of a long-lived process, against a baseline."""

    gw: Gateway
    fds: int = 0
    rss: int = 0

    def baseline(self) -> None:
        self.fds, self.rss = self.gw.fds(), self.gw.rss_kib()

    def check(self) -> str:
        fds, rss = self.gw.fds(), self.gw.rss_kib()
        # Generous: connection pools, thread pools and caches grow to their working
        # size after the baseline; a leak per message or per failure grows past it.
        assert fds <= self.fds + 64, f"{self.gw.name}: {self.fds} -> {fds} file descriptors"
        assert rss <= self.rss * 2 + 64 * 1024, f"{self.gw.name}: RSS {self.rss} -> {rss} KiB"
        return f"{self.gw.name} fds {self.fds}->{fds} rss {self.rss // 1024}->{rss // 1024} MiB"
