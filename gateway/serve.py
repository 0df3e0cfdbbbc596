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
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from gateway.compose import Material, Parts, build
from gateway.config import AdminConfig, ApiConfig, GatewayConfig
from gateway.errors import StartupError, describe
from gateway.material.load import load_listener_tls, load_material, load_tls
from gateway.monitor.heartbeat import Heartbeats
from gateway.monitor.pinger import TickReport
from gateway.monitor.status import Snapshot, snapshot
from gateway.msh.service import Queued, send_message, send_ping
from gateway.services.listener import ListenerService
from gateway.services.ordered import OrderedServices
from gateway.services.readiness import readiness
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import utcnow
from gateway.tls import (
    ClientTlsPolicy,
    HandshakeFailure,
    HandshakeWatch,
    ServerTlsOptions,
    api_server_context_factory,
    server_context_factory,
)
from xmlsafe import schemas as xmlschemas

log = logging.getLogger("dkgw.serve")


def _listener_name(listener: AdminConfig | ApiConfig) -> str:
    return "admin" if isinstance(listener, AdminConfig) else "api"


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


class Gateway:
    """A running gateway; :meth:`start` and :meth:`stop` it."""

    def __init__(self, config: GatewayConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.db: Database | None = None
        self.parts: Parts | None = None
        self.services = OrderedServices()
        self.heartbeats = Heartbeats()
        self._listeners: list[Callable[[dict[str, str]], None]] = []
        self._tls: dict[str, ServerTlsOptions] = {}  # listener name -> its TLS, for reloads
        self._leaf_check: Callable[[x509.Certificate], object] | None = None
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
        # Before the store, the pool and the listeners start any thread.
        compile_schemas()
        try:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(
                f"cannot use data_dir {config.data_dir}: {exc.strerror or exc}"
            ) from exc
        self.db = Database.from_url(config.store)
        apply_migrations(self.db)
        registry = CpaRegistry(self.db)
        self.pool.start()

        material = load_material(config)
        anchors, server_identity, client_identity = (
            material.tls.anchors,
            material.tls.server,
            material.tls.client,
        )
        security = material.security
        store = security.trust

        def server_certificate_check(leaf: x509.Certificate) -> object:
            # The partner's server certificate: key usage and the CRLs, now.
            assert store is not None
            return store.check_certificate(leaf, purpose="tls-server", at=utcnow())

        self._leaf_check = server_certificate_check if store is not None else None
        ebms_tls = server_context_factory(server_identity, anchors, watch=self._watch("ebms"))
        self._tls["ebms"] = ebms_tls
        loaded = Material(
            registry,
            security,
            ClientTlsPolicy(client_identity, anchors, leaf_check=self._leaf_check),
            ebms_tls,
            client_identity.certificate.public_bytes(Encoding.DER),
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

    def _http_listener(
        self, listener: AdminConfig | ApiConfig, site: Any, **kwargs: Any
    ) -> ListenerService:
        """The admin or API listener: HTTPS (mutual TLS with ``client_ca``) or HTTP."""
        port = listener.port
        assert port is not None
        if listener.certificate is None or listener.key is None:
            return ListenerService(
                listener.host,
                port,
                lambda: self.reactor.listenTCP(port, site, interface=listener.host),
                **kwargs,
            )
        factory = self._listener_tls(listener)
        self._tls[_listener_name(listener)] = factory
        return ListenerService(
            listener.host,
            port,
            lambda: self.reactor.listenSSL(port, site, factory, interface=listener.host),
            **kwargs,
        )

    def _listener_tls(self, listener: AdminConfig | ApiConfig) -> ServerTlsOptions:
        """The TLS of the admin or API listener, from its files as they are now."""
        material = load_listener_tls(listener)
        assert material is not None  # the caller checked certificate and key
        watch = self._watch(_listener_name(listener))
        return api_server_context_factory(material.identity, material.client_anchors, watch=watch)

    def _watch(self, listener: str) -> HandshakeWatch:
        return HandshakeWatch(lambda failure: self._tls_refused(listener, failure))

    def _tls_refused(self, listener: str, failure: HandshakeFailure) -> None:
        # One line per refused handshake; the peer's address and certificate subject
        # are the operator's to see, nothing of the (never sent) content.
        log.warning(
            "event=tls-refused listener=%s peer=%s reason=%s subject=%s detail=%s",
            listener,
            failure.peer,
            failure.reason,
            failure.subject or "-",
            failure.text,
        )
        if self.metrics is not None:
            self.metrics.on_tls_failure(listener, failure.reason)

    # -- readiness and reloads -------------------------------------------------------

    def readiness(self) -> Deferred[list[str]]:
        """Why this gateway cannot do its work now; an empty list when it can (``/ready``).

        See :mod:`gateway.services.readiness`.
        """
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
        """Reload what can be reloaded (SIGHUP): TLS material, CRLs, users files.

        New TLS connections, on every listener and to partners, use the new
        certificates; open connections are left alone.  Everything is read and
        checked first: a reload that fails keeps all the old material and says so
        in one line.
        """
        config, tls = self.config, self.config.tls
        reloaded: list[str] = []
        try:
            fresh_tls = load_tls(tls)
            anchors, server_identity, client_identity = (
                fresh_tls.anchors,
                fresh_tls.server,
                fresh_tls.client,
            )
            fresh = {
                "ebms": server_context_factory(server_identity, anchors, watch=self._watch("ebms"))
            }
            for listener in (config.api, config.admin):
                if _listener_name(listener) in self._tls:
                    fresh[_listener_name(listener)] = self._listener_tls(listener)
            policy = ClientTlsPolicy(client_identity, anchors, leaf_check=self._leaf_check)
            users = [f for f in (config.api.users_file, config.admin.users_file) if f]
            from adapters.api.auth import UsersFile

            for path in users:
                UsersFile(path)  # read and checked; the listeners re-read it when it changes
        except (OSError, ValueError) as exc:
            log.error(
                "event=reload-failed reason=%s; the old TLS material stays in use",
                describe(exc) or str(exc),
            )
            return
        for name, options in fresh.items():
            if name in self._tls:
                self._tls[name].replace(options)
                reloaded.append(f"tls-{name}")
        if self.client is not None:
            self.client.use_policy(policy)
            reloaded.append("tls-client")
        if users:
            reloaded.append("users-files")
        trust = config.security.trust
        store = self.security.trust if self.security is not None else None
        if store is not None and trust.crl_dir is not None and trust.crl_mode != "off":
            try:
                store.crls.load_directory(trust.crl_dir)
                reloaded.append("crls")
            except (OSError, ValueError) as exc:
                log.error("event=reload-failed what=crls reason=%s", describe(exc) or str(exc))
        log.info("event=reloaded what=%s", ",".join(reloaded))

    # -- in-process sending (the back-office APIs and the tests use these) -------------

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

    def add_listener(self, listener: Callable[[dict[str, str]], None]) -> None:
        """Call ``listener`` with the fields of every inbound request and delivery attempt.

        The fields are the ones logged (ids, parties, service/action, outcome,
        sizes; never content); listeners run on the reactor thread and must not
        block.  Monitoring and the back-office APIs build on this.
        """
        self._listeners.append(listener)

    def _emit(self, fields: dict[str, str]) -> None:
        if self.webhooks is not None:
            self.webhooks.wake()  # a request or attempt may have added an event
        if self.stuf is not None and fields.get("event") == "inbound":
            self.stuf.wake()  # a StUF message may have arrived
        for listener in list(self._listeners):
            try:
                listener(fields)
            except Exception:
                log.exception("event listener failed")

    def snapshot(self) -> Snapshot:
        """Links, CPAs, certificates and queue figures from the store (blocking)."""
        assert self.db is not None and self.registry is not None
        with self.db.transaction() as cur:
            return snapshot(cur, self.registry, utcnow())

    def _on_pings(self, report: TickReport) -> None:
        if self.metrics is not None:
            self.metrics.on_pings(report)
        if report.queued:
            self.wake()

    def wake(self) -> None:
        """Have the delivery worker look for due tasks now."""
        if self.worker is not None:
            self.worker.wake()

    @property
    def port(self) -> Any:
        """The ebMS endpoint's listening port (an ``IListeningPort``), None before it listens."""
        return self.parts.ebms.port if self.parts else None

    @property
    def listening_port(self) -> int:
        """The TCP port actually bound (useful when the config says 0)."""
        return self.parts.ebms.bound_port if self.parts else 0

    @property
    def api_listening_port(self) -> int:
        """The back-office API listener's TCP port, 0 when it is off."""
        return self.parts.api.bound_port if self.parts and self.parts.api else 0

    @property
    def admin_listening_port(self) -> int:
        """The admin listener's TCP port, 0 when it is off."""
        return self.parts.admin.bound_port if self.parts and self.parts.admin else 0

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
