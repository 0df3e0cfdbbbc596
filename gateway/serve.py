"""One gateway process: the HTTPS endpoint, the delivery worker and the store.

Startup order matters.  Every XML Schema is compiled first, in the main
thread, before any other thread exists (xmlsafe/schemas.py: libxml2's
lazily built schema types are not thread-safe).  Then, for "persist before
acting", the store (and its migrations); then :func:`build` makes every part
and adds each service to one :class:`~gateway.services.ordered.OrderedServices`
in the order they start: the worker first, so tasks left by a previous run are
picked up, then the listeners, then the loops that feed work in.  Shutdown is
the exact reverse, one service after the other: stop taking work (loops, then
listeners), let the requests and attempts in flight finish, close the client's
connections; then the thread pool and the store close.

The jobs around that live in :mod:`gateway.services`: the listeners' TLS
(``tls_listeners``), SIGHUP reloads (``reload``), readiness (``readiness``)
and the event fan-out (``events``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from adapters.api.auth import UsersFile
from gateway.compose import Material, Parts, build
from gateway.config import GatewayConfig
from gateway.material.load import load_material
from gateway.monitor.heartbeat import Heartbeats
from gateway.monitor.status import Snapshot, snapshot
from gateway.msh.service import Queued, send_message, send_ping
from gateway.services.events import Events, Listener
from gateway.services.ordered import OrderedServices
from gateway.services.readiness import readiness
from gateway.services.reload import reload as reload_material
from gateway.services.store import open_store
from gateway.services.tls_listeners import TlsContexts
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.timeutil import utcnow
from xmlsafe import schemas as xmlschemas

log = logging.getLogger("dkgw.serve")

#: The modules that register the gateway's XML Schemas when imported.
SCHEMA_MODULES = (
    "cpa.parse",
    "gateway.ebms.envelope",
    "adapters.api.soap",
    "adapters.stuf.schemas",
)


def compile_schemas() -> list[str]:
    """Compile every schema the gateway uses, now, in the calling (main) thread.

    Importing the modules that own them registers them: the CPA, the ebMS
    envelope, the SOAP services' WSDLs and the StUF relay's XSDs.  Raises
    :class:`~xmlsafe.schemas.SchemaCompileError`.
    """
    for module in SCHEMA_MODULES:
        importlib.import_module(module)
    return xmlschemas.compile_all()


def _part(name: str, doc: str) -> Any:
    """A read-only attribute of the built :class:`Parts`; None before :meth:`Gateway.start`."""
    return property(lambda self: getattr(self.parts, name) if self.parts else None, doc=doc)


def _bound(name: str, doc: str) -> Any:
    """The TCP port a listener of :class:`Parts` bound; 0 before it listens or when off."""
    return property(
        lambda self: (
            getattr(self.parts, name).bound_port if self.parts and getattr(self.parts, name) else 0
        ),
        doc=doc,
    )


class Gateway:
    """A running gateway; :meth:`start` and :meth:`stop` it."""

    def __init__(self, config: GatewayConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.db: Database | None = None
        self.parts: Parts | None = None
        self.services = OrderedServices()
        self.heartbeats = Heartbeats()
        self.events = Events()
        self.listener_tls = TlsContexts(
            reactor,
            on_refused=lambda name, reason: (
                None if self.metrics is None else self.metrics.on_tls_failure(name, reason)
            ),
        )
        # SQLite serialises writers anyway; a few threads keep reads and the
        # TLS-free parts of processing flowing while one commits.
        self.pool = ThreadPool(minthreads=1, maxthreads=8, name="dkgw-store")
        # Daemon threads: a process that dies without stop() must still exit.  A
        # transaction cut off that way is rolled back by the database; stop()
        # itself joins the threads after their work is done.
        self.pool.threadFactory = functools.partial(threading.Thread, daemon=True)

    registry = _part("registry", "The CPA registry.")
    security = _part("security", "Message security (signing, encryption, trust).")
    client = _part("client", "The delivery client (mutual TLS to partners).")
    worker = _part("worker", "The delivery worker.")
    metrics = _part("metrics", "The Prometheus metrics.")
    backoffice = _part("backoffice", "The back-office APIs' service.")
    purger = _part("purger", "The retention loop.")
    pinger = _part("pinger", "The Ping schedule, None when off.")
    webhooks = _part("webhooks", "The webhook dispatcher, None without webhooks.")
    stuf = _part("stuf", "The StUF relay's loop, None when off.")
    filedrops = _part("filedrops", "The file-drop exchanges.")
    crl_refresher = _part("crl_refresher", "The CRL refresh, None without CRL URLs.")
    listening_port = _bound("ebms", "The ebMS endpoint's TCP port (useful when the config says 0).")
    api_listening_port = _bound("api", "The back-office API listener's TCP port, 0 when off.")
    admin_listening_port = _bound("admin", "The admin listener's TCP port, 0 when it is off.")

    @property
    def port(self) -> Any:
        """The ebMS endpoint's listening port (an ``IListeningPort``), None before it listens."""
        return self.parts.ebms.port if self.parts else None

    def run_in_thread(self, fn: Any, *args: Any) -> Deferred[Any]:
        """Run blocking work (store, parsing) off the reactor thread."""
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def start(self) -> None:
        """Open the store, build the parts, start their services (the listeners among them).

        Raises :class:`~gateway.errors.StartupError` (a port in use, a data
        directory that is a file) or the store's and TLS loaders' errors; the
        caller then calls :meth:`stop`, which closes whatever was opened.
        """
        config = self.config
        compile_schemas()  # before the store, the pool and the listeners start any thread
        self.db = open_store(config)
        registry = CpaRegistry(self.db)
        self.pool.start()

        material = load_material(config)
        self.listener_tls.use_trust(material.security.trust)
        loaded = Material(
            registry,
            material.security,
            self.listener_tls.client(material.tls),
            self.listener_tls.ebms(material.tls),
            material.tls.client.certificate.public_bytes(Encoding.DER),
        )
        self.parts = build(self, self.db, loaded)
        self.services.startService()
        log.info(
            "event=started node=%s listen=%s:%d path=%s store=%s",
            config.node_id,
            config.http.host,
            self.listening_port,
            config.http.path,
            self.db.dialect,
        )

    def readiness(self) -> Deferred[list[str]]:
        """Why this gateway cannot do its work now, empty when it can (``/ready``)."""
        config = self.config
        return readiness(
            config.admin,
            config.data_dir,
            self.heartbeats,
            self.db,
            self.run_in_thread,
            self.reactor,
        )

    def reload(self) -> None:
        """Reload what can be reloaded (SIGHUP); see :mod:`gateway.services.reload`."""
        trust = self.security.trust if self.security is not None else None
        reload_material(
            self.config,
            self.listener_tls,
            client=self.client,
            trust=trust,
            check_users_file=UsersFile,
        )

    async def send_message(self, **kwargs: Any) -> Queued:
        """Queue a business message (see :func:`~gateway.msh.service.send_message`)."""
        assert self.db is not None and self.registry is not None
        kwargs.setdefault("security", self.security)
        queued: Queued = await self.run_in_thread(
            lambda: send_message(self.db, self.registry, **kwargs)
        )
        self.wake()
        return queued

    async def send_ping(self, **kwargs: Any) -> Queued:
        """Queue a Ping (see :func:`~gateway.msh.service.send_ping`)."""
        assert self.db is not None and self.registry is not None
        queued: Queued = await self.run_in_thread(
            lambda: send_ping(self.db, self.registry, **kwargs)
        )
        self.wake()
        return queued

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with the fields of every inbound request and delivery attempt.

        See :mod:`gateway.services.events`; listeners must not block.
        """
        self.events.add(listener)

    def snapshot(self) -> Snapshot:
        """Links, CPAs, certificates and queue figures from the store (blocking)."""
        assert self.db is not None and self.registry is not None
        with self.db.transaction() as cur:
            return snapshot(cur, self.registry, utcnow())

    def wake(self) -> None:
        """Have the delivery worker look for due tasks now."""
        if self.worker is not None:
            self.worker.wake()

    async def _stop(self) -> None:
        try:
            # In the reverse of the start order, each service after the next (see build).
            await self.services.stopService()
        finally:
            # Whatever failed above, the threads and the store must not outlive us.
            self.pool.stop()
            if self.db is not None:
                self.db.close()
        log.info("event=stopped node=%s", self.config.node_id)

    def stop(self) -> Deferred[None]:
        """Stop the services in the reverse of their start, then close the pool and the store."""
        return defer.ensureDeferred(self._stop())
