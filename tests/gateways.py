"""Two real gateways on 127.0.0.1 for integration tests: mutual TLS, real stores.

The municipality (party a of the generated CPA) and the node (party b) each run
a :class:`~gateway.serve.Gateway` in this process, on the test reactor, with a
store of their own.  The gateways listen first (on port 0); the CPA is then
generated with their real ports and imported into both stores.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor, task

from cpa.generate import make_cpa
from cpa.model import PartyId, Service
from cpa.validate import ValidationOptions
from gateway.config import (
    AdminConfig,
    ApiConfig,
    DeliveryConfig,
    FileDropConfig,
    GatewayConfig,
    HttpConfig,
    MonitoringConfig,
    SecurityConfig,
    TlsConfig,
    WebhookConfig,
)
from gateway.msh.outbound import Payload, Queued
from gateway.serve import Gateway
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.trust import TrustSettings
from tests.conftest import GEMEENTE_OIN, NODE_OIN, PG_DSN, SpecFactory

GEMEENTE = PartyId(GEMEENTE_OIN, "urn:osb:oin")
NODE = PartyId(NODE_OIN, "urn:osb:oin")
SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")


def gateway_config(
    pki: Path,
    slug: str,
    data_dir: Path,
    store: str,
    *,
    port: int = 0,
    node_id: str = "",
    monitoring: MonitoringConfig | None = None,
    admin_port: int | None = None,
    security: SecurityConfig | None = None,
    api: ApiConfig | None = None,
    webhooks: tuple[WebhookConfig, ...] = (),
    filedrops: tuple[FileDropConfig, ...] = (),
) -> GatewayConfig:
    """Config for one side of the example PKI, listening on 127.0.0.1.

    Scheduled Pings are off unless ``monitoring`` turns them on: tests that count
    messages must not meet a Ping that happened to fall due.  ``api`` (e.g.
    ``ApiConfig(port=0)``) turns on the back-office API listener; its port is then
    ``side.gateway.api_listening_port``.
    """
    party = pki / slug
    return GatewayConfig(
        data_dir=data_dir,
        store=store,
        node_id=node_id or f"{slug}-{uuid.uuid4().hex[:6]}",
        http=HttpConfig(host="127.0.0.1", port=port, path="/ebms"),
        tls=TlsConfig(
            certificate=party / "tls-server.pem",
            key=party / "tls-server.key",
            client_certificate=party / "tls-client.pem",
            client_key=party / "tls-client.key",
            trust_anchors=pki / "ca" / "root.pem",
            chain=pki / "ca" / "intermediate.pem",
        ),
        delivery=DeliveryConfig(poll_interval=0.2, connect_timeout=5.0, read_timeout=10.0),
        monitoring=monitoring or MonitoringConfig(pings=False),
        admin=AdminConfig(host="127.0.0.1", port=admin_port),
        security=security or SecurityConfig(),
        api=api or ApiConfig(),
        webhooks=webhooks,
        filedrops=filedrops,
    )


def security_config(
    pki: Path, slug: str, *, keys_of: str | None = None, **trust: Any
) -> SecurityConfig:
    """``[security]`` with the signing and encryption keys of ``keys_of`` (default ``slug``).

    ``trust`` goes to :class:`TrustSettings` (``crl_dir=...``, ``legacy_crypto=True``);
    anchors and intermediates default to the TLS ones, as in a config file.
    """
    party = pki / (keys_of or slug)
    return SecurityConfig(
        trust=TrustSettings(**trust),
        signing_certificate=party / "signing.pem",
        signing_key=party / "signing.key",
        encryption_certificate=party / "encryption.pem",
        encryption_key=party / "encryption.key",
    )


def store_url(dialect: str, base: Path, name: str) -> str:
    """A fresh store: a SQLite file, or a PostgreSQL schema of its own."""
    if dialect == "sqlite":
        return f"sqlite:///{base / f'{name}.sqlite3'}"
    assert PG_DSN is not None
    import psycopg
    from psycopg import sql as pgsql
    from psycopg.conninfo import conninfo_to_dict

    schema = f"dkgw_it_{name}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(schema)))
    params = conninfo_to_dict(PG_DSN)
    params["options"] = f"-csearch_path={schema}"
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    return f"postgresql:///?{query}"


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, step: float = 0.05) -> Any:
    """A Deferred that fires with the condition's first truthy value (polled, off the reactor).

    The default timeout is generous: under pytest-xdist several gateways share the
    machine's two cores, and waiting longer only delays a failure.
    """

    async def poll() -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await task.deferLater(reactor, step, lambda: None)

    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(poll())


@dataclass
class Side:
    """One running gateway and how to (re)start it."""

    name: str
    config: GatewayConfig
    gateway: Gateway | None = None

    @property
    def db(self) -> Database:
        assert self.gateway is not None and self.gateway.db is not None
        return self.gateway.db

    @property
    def port(self) -> int:
        return self.config.http.port

    def start(self) -> None:
        self.gateway = Gateway(self.config, reactor)
        self.gateway.start()
        if self.config.http.port == 0:
            self.config = replace(
                self.config, http=replace(self.config.http, port=self.gateway.listening_port)
            )

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Query this side's store (its own connection: the gateway may be stopped)."""
        db = self.gateway.db if self.gateway and self.gateway.db else self._offline_db()
        with db.transaction() as cur:
            return cur.execute(sql, params).fetchall()

    _offline: Database | None = field(default=None, repr=False)

    def _offline_db(self) -> Database:
        if self._offline is None:
            self._offline = Database.from_url(self.config.store)
        return self._offline

    def status(self, message_id: str, direction: str) -> str | None:
        found = self.rows(
            "SELECT status FROM ebms_message WHERE message_id = ? AND direction = ?",
            message_id,
            direction,
        )
        return found[0][0] if found else None

    def close(self) -> None:
        if self._offline is not None:
            self._offline.close()


@dataclass
class Pair:
    """The municipality (``a``) and the node (``b``) sharing one CPA."""

    a: Side
    b: Side
    cpa_id: str
    make_spec: SpecFactory
    spec_overrides: dict[str, Any]

    def import_cpa(
        self, *, legacy_crypto: bool = False, b_endpoint: str | None = None, **overrides: Any
    ) -> bytes:
        """(Re)generate the CPA with the current ports and import it on both sides.

        ``legacy_crypto`` admits a CPA that names legacy algorithms (AES-CBC, SHA-1).
        ``b_endpoint`` puts another URL than the node's real one in the CPA (to test
        URL mappings).
        """
        self.spec_overrides.update(overrides)
        base = self.make_spec(cpa_id=self.cpa_id)
        spec = replace(
            base,
            a=replace(base.a, endpoint=f"https://127.0.0.1:{self.a.port}/ebms"),
            b=replace(base.b, endpoint=b_endpoint or f"https://localhost:{self.b.port}/ebms"),
            **self.spec_overrides,
        )
        xml = make_cpa(spec)
        for side in (self.a, self.b):
            db = side.gateway.db if side.gateway and side.gateway.db else side._offline_db()
            options = ValidationOptions(legacy_crypto=legacy_crypto)
            CpaRegistry(db, options).insert(xml, overwrite=True)
        return xml

    async def send(
        self, payloads: tuple[Payload, ...] = (), *, from_a: bool = True, **kwargs: Any
    ) -> Queued:
        """Queue a business message (WMO301 a→b, or WMO302 b→a)."""
        sender = self.a if from_a else self.b
        assert sender.gateway is not None
        return await sender.gateway.send_message(
            cpa_id=self.cpa_id,
            from_party=GEMEENTE if from_a else NODE,
            from_role="Gemeente" if from_a else "GGk",
            to_party=NODE if from_a else GEMEENTE,
            to_role="GGk" if from_a else "Gemeente",
            service=SERVICE,
            action="WMO301" if from_a else "WMO302",
            payloads=payloads,
            **kwargs,
        )

    async def stop(self) -> None:
        await self.a.stop()
        await self.b.stop()
        self.a.close()
        self.b.close()


#: Each pytest-xdist worker hands out ports from its own block below the kernel's
#: ephemeral range (32768 and up on Linux), so a port picked here is never picked by
#: another worker nor given by the kernel to an outgoing connection before the test
#: binds it.  Without a worker (one process) the first block serves.
_PORT_BLOCK = 1500
_PORT_BASE = 20000
# A random start in the block keeps two suites on one machine (two checkouts) apart too.
_next_port = itertools.count(random.randrange(_PORT_BLOCK))  # noqa: S311 - not a secret


def free_port() -> int:
    """A TCP port nobody listens on right now (for a receiver that is never up)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = _PORT_BASE + (int(worker) if worker.isdigit() else 0) % 8 * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        port = first + next(_next_port) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + _PORT_BLOCK - 1}")


def tls_toml(pki: Path, slug: str) -> str:
    """The ``[tls]`` section of a config file for one party of the example PKI."""
    party, ca = pki / slug, pki / "ca"
    return f"""[tls]
certificate = "{party / "tls-server.pem"}"
key = "{party / "tls-server.key"}"
client_certificate = "{party / "tls-client.pem"}"
client_key = "{party / "tls-client.key"}"
chain = "{ca / "intermediate.pem"}"
trust_anchors = "{ca / "root.pem"}"
"""


def start_serve(
    config: Path,
    log: Path,
    timeout: float = 30.0,
    *,
    command: Sequence[str] = (sys.executable, "-m", "gateway.cli"),
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``dkgw serve --config CONFIG`` in a subprocess, logging to ``log``; returns once started.

    ``command`` is how dkgw is run (default: this interpreter's ``gateway.cli``).
    """
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    deadline = time.monotonic() + timeout
    while "event=started" not in log.read_text(errors="replace"):
        if process.poll() is not None:
            raise AssertionError(log.read_text(errors="replace"))
        if time.monotonic() > deadline:
            stop_serve(process)
            raise AssertionError(f"the gateway did not start; see {log}")
        time.sleep(0.05)
    return process


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL when the gateway has not stopped within 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
