"""One gateway process: the HTTPS endpoint, the delivery worker and the store.

Startup order matters.  Every XML Schema is compiled first, in the main
thread, before any other thread exists (xmlsafe/schemas.py: libxml2's
lazily built schema types are not thread-safe).  Then, for "persist before
acting", the store (and its migrations), then the worker, so tasks left by
a previous run are picked up, then the listener.  Shutdown is the reverse: stop accepting, let
the requests and attempts in flight finish, close the store.
"""

from __future__ import annotations

import functools
import importlib
import logging
import shutil
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from adapters.api.service import BackOffice
from adapters.api.site import api_site
from adapters.filedrop import FileDrop
from adapters.stuf.relay import Relay
from adapters.stuf.service import RelayService
from adapters.webhooks import WebhookDispatcher
from gateway.config import AdminConfig, ApiConfig, GatewayConfig
from gateway.crl import CrlRefresher
from gateway.delivery import DeliveryWorker
from gateway.errors import StartupError, describe
from gateway.http.admin import admin_site
from gateway.http.client import EbmsClient, server_pin
from gateway.http.connections import TrackingSite
from gateway.http.deadlines import Deadlines
from gateway.http.server import ebms_site
from gateway.material.load import load_listener_tls, load_material, load_tls
from gateway.monitor.heartbeat import Heartbeats
from gateway.monitor.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.monitor.pinger import PingScheduler, PingSettings, TickReport
from gateway.monitor.purger import PurgeScheduler
from gateway.monitor.status import Snapshot, snapshot, status_document
from gateway.msh.inbound import InboundProcessor
from gateway.msh.security import AckVerifier, MessageSecurity
from gateway.msh.service import Queued, send_message, send_ping
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor, Database
from gateway.store.messages import StoredMessage
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


_MIB = 1024 * 1024


def _listener_name(listener: AdminConfig | ApiConfig) -> str:
    return "admin" if isinstance(listener, AdminConfig) else "api"


def _listening(host: str, port: int, listen: Callable[[], Any]) -> Any:
    """``listen()``, with a port that cannot be bound as one plain sentence."""
    try:
        return listen()
    except CannotListenError as exc:
        cause = exc.socketError
        reason = getattr(cause, "strerror", None) or str(cause)
        raise StartupError(f"cannot listen on {host}:{port}: {reason.lower()}") from exc


#: A pass of the webhooks, a file drop or the relay may move many files or
#: events; readiness allows it this long per interval before calling it stuck.
MIN_PASS_INTERVAL = 10.0


def _pass_interval(poll_interval: float) -> float:
    """The interval a loop's heartbeat is judged by (three of them make it stale)."""
    return max(poll_interval, MIN_PASS_INTERVAL)


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


class Gateway:
    """A running gateway; :meth:`start` and :meth:`stop` it."""

    def __init__(self, config: GatewayConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.db: Database | None = None
        self.port: IListeningPort | None = None
        self.worker: DeliveryWorker | None = None
        self.client: EbmsClient | None = None
        self.registry: CpaRegistry | None = None
        self.metrics: GatewayMetrics | None = None
        self.pinger: PingScheduler | None = None
        self.purger: PurgeScheduler | None = None
        self.security: MessageSecurity | None = None
        self.crl_refresher: CrlRefresher | None = None
        self.admin_port: IListeningPort | None = None
        self.api_port: IListeningPort | None = None
        self.backoffice: BackOffice | None = None
        self.webhooks: WebhookDispatcher | None = None
        self.filedrops: list[FileDrop] = []
        self.stuf: RelayService | None = None
        self._api_site: object | None = None
        self._site: object | None = None
        self._listeners: list[Callable[[dict[str, str]], None]] = []
        self.heartbeats = Heartbeats()
        self._tls: dict[str, ServerTlsOptions] = {}  # listener name -> its TLS, for reloads
        self._leaf_check: Callable[[x509.Certificate], object] | None = None
        # SQLite serialises writers anyway; a few threads keep reads and the
        # TLS-free parts of processing flowing while one commits.
        self.pool = ThreadPool(minthreads=1, maxthreads=8, name="dkgw-store")
        # Daemon threads: a process that dies without stop() must still exit.  A
        # transaction cut off that way is rolled back by the database; stop()
        # itself joins the threads after their work is done.
        self.pool.threadFactory = functools.partial(threading.Thread, daemon=True)

    def run_in_thread(self, fn: Any, *args: Any) -> Deferred[Any]:
        """Run blocking work (store, parsing) off the reactor thread."""
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def start(self) -> None:
        """Open the store, start the worker, then listen.

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
        self.security = security = material.security
        trust = config.security.trust
        if trust.crl_urls and security.trust is not None and trust.crl_mode != "off":
            # PKIoverheid CRLs are refreshed at least every 4 hours [PKI002].
            self.crl_refresher = CrlRefresher(
                security.trust.crls,
                self.reactor,
                urls=trust.crl_urls,
                directory=trust.crl_dir,
                interval=trust.crl_refresh,
            )
            self.crl_refresher.start()
        verify_ack = AckVerifier(registry, security)
        store = security.trust

        def server_certificate_check(leaf: x509.Certificate) -> object:
            # The partner's server certificate: key usage and the CRLs, now.
            assert store is not None
            return store.check_certificate(leaf, purpose="tls-server", at=utcnow())

        self._leaf_check = server_certificate_check if store is not None else None
        self.client = EbmsClient(
            self.reactor,
            ClientTlsPolicy(client_identity, anchors, leaf_check=self._leaf_check),
            connect_timeout=config.delivery.connect_timeout,
            read_timeout=config.delivery.read_timeout,
            max_persistent=config.delivery.concurrency,
        )

        def pin(cur: Cursor, message: StoredMessage, url: str) -> Any:
            return server_pin(registry, cur, message, url)

        self.worker = DeliveryWorker(
            reactor=self.reactor,
            db=self.db,
            run_in_thread=self.run_in_thread,
            post=self.client.post,
            node_id=config.node_id,
            poll_interval=config.delivery.poll_interval,
            concurrency=config.delivery.concurrency,
            lease=timedelta(seconds=config.delivery.lease_seconds),
            pin_lookup=pin,
            on_event=self._emit,
            verify_ack=verify_ack,
        )
        self.worker.heartbeat = self.heartbeats.beater("delivery", config.delivery.poll_interval)
        self.worker.start()

        self.registry = registry
        self.metrics = GatewayMetrics(self.snapshot)
        self._listeners.append(self.metrics.on_event)
        monitoring = config.monitoring
        if monitoring.pings:
            self.pinger = PingScheduler(
                reactor=self.reactor,
                db=self.db,
                registry=registry,
                run_in_thread=self.run_in_thread,
                settings=PingSettings(
                    interval=monitoring.ping_interval,
                    timeout=monitoring.ping_timeout,
                    jitter=monitoring.ping_jitter,
                    history_days=monitoring.ping_history_days,
                ),
                node=config.node_id,
                own_ids=config.party_ids,
                client_cert_der=client_identity.certificate.public_bytes(Encoding.DER),
                on_report=self._on_pings,
            )
            self.pinger.heartbeat = self.heartbeats.beater("pings", self.pinger.settings.tick)
            self.pinger.start()
        processor = InboundProcessor(
            self.db, registry, own_parties=config.party_ids, security=security
        )
        site = ebms_site(
            processor,
            self.run_in_thread,
            path=config.http.path,
            max_request_bytes=config.http.max_request_bytes,
            idle_timeout=config.http.idle_timeout,
            on_queued=self.worker.wake,
            on_event=self._emit,
            deadlines=Deadlines(
                header_timeout=config.http.header_timeout,
                min_body_rate=config.http.min_body_rate,
                body_rate_window=config.http.body_rate_window,
                max_connections=config.http.max_connections,
            ),
        )
        self._site = site
        ebms_tls = server_context_factory(server_identity, anchors, watch=self._watch("ebms"))
        self._tls["ebms"] = ebms_tls
        self.port = _listening(
            config.http.host,
            config.http.port,
            lambda: self.reactor.listenSSL(
                config.http.port, site, ebms_tls, interface=config.http.host
            ),
        )
        if config.admin.port is not None:
            metrics = self.metrics
            admin = config.admin
            site = admin_site(
                self.run_in_thread,
                metrics=metrics.exposition,
                metrics_content_type=CONTENT_TYPE,
                status=lambda: status_document(self.snapshot(), node=config.node_id),
                users_file=admin.users_file,
                ready=self.readiness,
                broken=xmlschemas.engine_broken,
                idle_timeout=config.http.idle_timeout,
                # The admin listener takes GETs only; the body rate is [http]'s.
                deadlines=Deadlines(
                    header_timeout=admin.header_timeout,
                    min_body_rate=config.http.min_body_rate,
                    body_rate_window=config.http.body_rate_window,
                    max_connections=admin.max_connections,
                ),
                on_event=self._emit,
            )
            self.admin_port = self._listen_http(admin, admin.port, site)
            log.info(
                "event=admin-listening listen=%s:%d", config.admin.host, self.admin_listening_port
            )
        self.backoffice = BackOffice(
            self.db,
            registry,
            security=security,
            # Called from the store's threads: the worker lives on the reactor.
            wake=lambda: self.reactor.callFromThread(self.wake),
            wait_timeout=config.api.wait_timeout,
        )
        if config.webhooks:
            self.webhooks = WebhookDispatcher(
                self.reactor,
                self.db,
                self.run_in_thread,
                config.webhooks,
                node_id=config.node_id,
            )
            self.webhooks.heartbeat = self.heartbeats.beater(
                "webhooks", _pass_interval(self.webhooks.poll_interval)
            )
            self.webhooks.start()
        for exchange in config.filedrops:
            drop = FileDrop(
                self.reactor,
                self.db,
                registry,
                self.run_in_thread,
                exchange,
                node_id=config.node_id,
                security=security,
                wake=self.wake,
            )
            drop.heartbeat = self.heartbeats.beater(
                f"filedrop {exchange.name}", _pass_interval(exchange.poll_interval)
            )
            drop.start()
            self.filedrops.append(drop)
        if config.stuf.role:
            relay = Relay(
                self.db,
                registry,
                config.stuf,
                security=security,
                own_parties=config.party_ids,
                node_id=config.node_id,
            )
            self.backoffice.relay = relay
            self.stuf = RelayService(
                self.reactor,
                self.db,
                self.run_in_thread,
                relay,
                node_id=config.node_id,
                wake_delivery=self.wake,
            )
            self.stuf.heartbeat = self.heartbeats.beater(
                "stuf-relay", _pass_interval(config.stuf.poll_interval)
            )
            self.stuf.start()
        if config.api.port is not None:
            self._start_api()
        # Retention of citizens' data (gateway/store/retention.py).
        self.purger = PurgeScheduler(
            self.reactor, self.db, self.run_in_thread, config.retention, node=config.node_id
        )
        self.purger.start()
        log.info(
            "event=started node=%s listen=%s:%d path=%s store=%s",
            config.node_id,
            config.http.host,
            self.listening_port,
            config.http.path,
            self.db.dialect,
        )

    def _listen_http(self, listener: AdminConfig | ApiConfig, port: int, site: Any) -> Any:
        """Listen for the admin or API site: HTTPS (mutual TLS with ``client_ca``) or HTTP."""
        if listener.certificate is None or listener.key is None:
            return _listening(
                listener.host,
                port,
                lambda: self.reactor.listenTCP(port, site, interface=listener.host),
            )
        factory = self._listener_tls(listener)
        self._tls[_listener_name(listener)] = factory
        return _listening(
            listener.host,
            port,
            lambda: self.reactor.listenSSL(port, site, factory, interface=listener.host),
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

        The store must answer within ``[admin] ready_store_timeout``, every loop
        must have ticked within three of its intervals, ``data_dir`` must have
        ``[admin] ready_min_free_mb`` free and no XML Schema may have failed to
        compile.
        """
        admin = self.config.admin
        reasons = xmlschemas.problems() + self.heartbeats.stale()
        data_dir = self.config.data_dir
        try:
            free = shutil.disk_usage(data_dir).free
        except OSError as exc:
            reasons.append(f"disk: cannot read the free space of {data_dir}: {exc.strerror}")
        else:
            if free < admin.ready_min_free_mb * _MIB:
                reasons.append(
                    f"disk: {free // _MIB} MiB free in {data_dir}, "
                    f"below {admin.ready_min_free_mb} MiB"
                )
        d = self.run_in_thread(self._store_answers)
        d.addTimeout(admin.ready_store_timeout, self.reactor)

        def answered(_: object) -> list[str]:
            return reasons

        def failed(failure: Failure) -> list[str]:
            if failure.check(defer.TimeoutError):
                reasons.append(f"store: no answer within {admin.ready_store_timeout:g} s")
            else:
                reasons.append(f"store: {describe(failure.value) or failure.getErrorMessage()}")
            return reasons

        d.addCallbacks(answered, failed)
        return d

    def _store_answers(self) -> None:
        assert self.db is not None
        with self.db.transaction() as cur:
            cur.execute("SELECT 1").fetchone()

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

    def _start_api(self) -> None:
        api = self.config.api
        assert self.backoffice is not None and api.port is not None
        site = api_site(
            self.backoffice,
            self.run_in_thread,
            self.reactor,
            api,
            idle_timeout=self.config.http.idle_timeout,
            deadlines=Deadlines(
                header_timeout=api.header_timeout,
                min_body_rate=api.min_body_rate,
                body_rate_window=self.config.http.body_rate_window,
                max_connections=api.max_connections,
            ),
            on_event=self._emit,
        )
        self._api_site = site
        self.api_port = self._listen_http(api, api.port, site)
        auth = [
            name
            for name, on in (("mtls", api.client_ca), ("basic", api.users_file))
            if on is not None
        ]
        log.info(
            "event=api-listening listen=%s:%d scheme=%s auth=%s",
            api.host,
            self.api_listening_port,
            "https" if api.tls else "http",
            ",".join(auth) or "none",
        )

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
    def listening_port(self) -> int:
        """The TCP port actually bound (useful when the config says 0)."""
        return int(self.port.getHost().port) if self.port is not None else 0

    @property
    def api_listening_port(self) -> int:
        """The back-office API listener's TCP port, 0 when it is off."""
        return int(self.api_port.getHost().port) if self.api_port is not None else 0

    @property
    def admin_listening_port(self) -> int:
        """The admin listener's TCP port, 0 when it is off."""
        return int(self.admin_port.getHost().port) if self.admin_port is not None else 0

    async def _stop(self) -> None:
        try:
            if self.purger is not None:
                self.purger.stop()
            if self.pinger is not None:
                self.pinger.stop()
            if self.crl_refresher is not None:
                self.crl_refresher.stop()
            for drop in self.filedrops:
                await drop.stop()
            if self.stuf is not None:
                await self.stuf.stop()
            if self.api_port is not None:
                stopped_api = self.api_port.stopListening()
                if stopped_api is not None:
                    await stopped_api
            if isinstance(self._api_site, TrackingSite):
                self._api_site.close_connections()
            if self.webhooks is not None:
                await self.webhooks.stop()
            if self.admin_port is not None:
                stopped_admin = self.admin_port.stopListening()
                if stopped_admin is not None:
                    await stopped_admin
            if self.port is not None:
                stopped = self.port.stopListening()
                if stopped is not None:
                    await stopped
            if self.worker is not None:
                await self.worker.stop()
            if isinstance(self._site, TrackingSite):
                # Kept-alive connections would otherwise outlive the store they need.
                self._site.close_connections()
            if self.client is not None:
                await self.client.close()
        finally:
            # Whatever failed above, the threads and the store must not outlive us.
            self.pool.stop()
            if self.db is not None:
                self.db.close()
        log.info("event=stopped node=%s", self.config.node_id)

    def stop(self) -> Deferred[None]:
        """Stop listening, finish what is in flight, close the store."""
        return defer.ensureDeferred(self._stop())
