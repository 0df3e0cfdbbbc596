"""The gateway's composition: every part made once, its services in their start order.

:func:`build` is called by :meth:`gateway.serve.Gateway.start` once the store
is open and the key and TLS material is loaded.  The order of the services is
the start order; the stop order is its reverse
(:class:`~gateway.services.ordered.OrderedServices`):

1. the client's connections: closed last on stop, attempts in flight need them;
2. the endpoint's kept-alive connections: closed once the worker is done (they
   would otherwise outlive the store they need);
3. the CRL refresh: its first round at once (a stop does not wait for a fetch);
4. the delivery worker: picks up what a previous run left before anything new comes;
5. the ebMS listener, then the admin listener;
6. the webhooks: stopped after the API listener, before the other listeners;
7. the API listener (its kept-alive connections close as it stops);
8. the StUF relay and the file drops, which feed messages in;
9. the Ping schedule and retention: background upkeep, the first to stop.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from adapters.api.service import BackOffice
from adapters.api.site import api_site
from adapters.filedrop import FileDrop
from adapters.stuf.relay import Relay
from adapters.stuf.service import RelayService
from adapters.webhooks import WebhookDispatcher
from gateway.crl_refresh import CrlRefresher
from gateway.delivery import DeliveryWorker
from gateway.http.admin import admin_site
from gateway.http.client import EbmsClient, server_pin
from gateway.http.connections import TrackingSite
from gateway.http.deadlines import Deadlines
from gateway.http.server import ebms_site
from gateway.monitor.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.monitor.pinger import PingScheduler, PingSettings, TickReport
from gateway.monitor.purger import PurgeScheduler
from gateway.monitor.status import status_document
from gateway.msh.inbound import InboundProcessor
from gateway.msh.read import AckVerifier
from gateway.msh.security import MessageSecurity
from gateway.services.listener import ListenerService
from gateway.services.loop import LoopService
from gateway.services.ordered import OnStop
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor, Database
from gateway.store.messages import StoredMessage
from gateway.tls import ClientTlsPolicy, ServerTlsOptions
from xmlsafe import schemas as xmlschemas

if TYPE_CHECKING:
    from gateway.serve import Gateway

__all__ = ["Material", "Parts", "build"]

log = logging.getLogger("dkgw.serve")

#: A pass of the webhooks, a file drop or the relay may move many files or
#: events; readiness allows it this long per interval before calling it stuck.
MIN_PASS_INTERVAL = 10.0


def _pass_interval(poll_interval: float) -> float:
    """The interval a loop's heartbeat is judged by (three of them make it stale)."""
    return max(poll_interval, MIN_PASS_INTERVAL)


@dataclass(frozen=True)
class Material:
    """What :meth:`~gateway.serve.Gateway.start` loaded before the parts are made."""

    registry: CpaRegistry
    security: MessageSecurity
    client_tls: ClientTlsPolicy
    ebms_tls: ServerTlsOptions
    client_cert_der: bytes


@dataclass(frozen=True)
class Parts:
    """What :func:`build` made: the gateway's components, each made once."""

    registry: CpaRegistry
    security: MessageSecurity
    client: EbmsClient
    worker: DeliveryWorker
    metrics: GatewayMetrics
    backoffice: BackOffice
    purger: PurgeScheduler
    ebms: ListenerService
    admin: ListenerService | None = None
    api: ListenerService | None = None
    pinger: PingScheduler | None = None
    webhooks: WebhookDispatcher | None = None
    stuf: RelayService | None = None
    filedrops: tuple[FileDrop, ...] = ()
    crl_refresher: CrlRefresher | None = None


def _deadlines(header_timeout: float, min_body_rate: int, window: float, most: int) -> Deadlines:
    return Deadlines(
        header_timeout=header_timeout,
        min_body_rate=min_body_rate,
        body_rate_window=window,
        max_connections=most,
    )


def _on_pings(metrics: GatewayMetrics, wake: Callable[[], None], report: TickReport) -> None:
    """Count a Ping round; have the worker send the Pings it queued."""
    metrics.on_pings(report)
    if report.queued:
        wake()


def build(gateway: Gateway, db: Database, loaded: Material) -> Parts:
    """Make every part of ``gateway`` over ``db``; add its services in their start order.

    Nothing starts here and nothing listens: only files are read (the
    listeners' TLS material, webhook secrets), so a failure leaves nothing to
    undo but the store.
    """
    config, reactor, run = gateway.config, gateway.reactor, gateway.run_in_thread
    services, registry, security = gateway.services, loaded.registry, loaded.security
    trust = config.security.trust
    crl_refresher = None
    if trust.crl_urls and security.trust is not None and trust.crl_mode != "off":
        # PKIoverheid CRLs are refreshed at least every 4 hours [PKI002].
        crl_refresher = CrlRefresher(
            security.trust.crls,
            reactor,
            urls=trust.crl_urls,
            directory=trust.crl_dir,
            interval=trust.crl_refresh,
        )
    verify_ack = AckVerifier(registry, security)
    client = EbmsClient(
        reactor,
        loaded.client_tls,
        connect_timeout=config.delivery.connect_timeout,
        read_timeout=config.delivery.read_timeout,
        max_persistent=config.delivery.concurrency,
    )

    def pin(cur: Cursor, message: StoredMessage, url: str) -> Any:
        return server_pin(registry, cur, message, url)

    worker = DeliveryWorker(
        reactor=reactor,
        db=db,
        run_in_thread=run,
        post=client.post,
        node_id=config.node_id,
        poll_interval=config.delivery.poll_interval,
        concurrency=config.delivery.concurrency,
        lease=timedelta(seconds=config.delivery.lease_seconds),
        pin_lookup=pin,
        on_event=gateway.events.emit,
        verify_ack=verify_ack,
    )
    worker.heartbeat = gateway.heartbeats.beater("delivery", config.delivery.poll_interval)
    metrics = GatewayMetrics(gateway.snapshot)
    gateway.add_listener(metrics.on_event)

    http = config.http
    site = ebms_site(
        InboundProcessor(db, registry, own_parties=config.party_ids, security=security),
        run,
        path=http.path,
        max_request_bytes=http.max_request_bytes,
        idle_timeout=http.idle_timeout,
        on_queued=worker.wake,
        on_event=gateway.events.emit,
        deadlines=_deadlines(
            http.header_timeout, http.min_body_rate, http.body_rate_window, http.max_connections
        ),
    )
    ebms_tls = loaded.ebms_tls
    ebms = ListenerService(
        http.host,
        http.port,
        lambda: reactor.listenSSL(http.port, site, ebms_tls, interface=http.host),
    )
    # The client's connections close last; the endpoint's kept-alive ones once the
    # worker is done (they would otherwise outlive the store they need).
    services.add(OnStop(client.close))
    if isinstance(site, TrackingSite):
        services.add(OnStop(site.close_connections))
    if crl_refresher is not None:
        # A fetch in progress when the gateway stops completes on its own.
        services.add(
            LoopService(
                crl_refresher.refresh,
                reactor=reactor,
                interval=crl_refresher.interval,
                on_failure=lambda f: log.error("CRL refresh failed: %s", f.getErrorMessage()),
                wait_on_stop=False,
            )
        )
    services.add(worker)
    services.add(ebms)

    admin = None
    if config.admin.port is not None:
        admin_config = config.admin
        admin = gateway.listener_tls.http_listener(
            admin_config,
            admin_site(
                run,
                metrics=metrics.exposition,
                metrics_content_type=CONTENT_TYPE,
                status=lambda: status_document(gateway.snapshot(), node=config.node_id),
                users_file=admin_config.users_file,
                ready=gateway.readiness,
                broken=xmlschemas.engine_broken,
                idle_timeout=http.idle_timeout,
                # The admin listener takes GETs only; the body rate is [http]'s.
                deadlines=_deadlines(
                    admin_config.header_timeout,
                    http.min_body_rate,
                    http.body_rate_window,
                    admin_config.max_connections,
                ),
                on_event=gateway.events.emit,
            ),
            on_listening=lambda: log.info(
                "event=admin-listening listen=%s:%d",
                admin_config.host,
                gateway.admin_listening_port,
            ),
        )
        services.add(admin)
    backoffice = BackOffice(
        db,
        registry,
        security=security,
        # Called from the store's threads: the worker lives on the reactor.
        wake=lambda: reactor.callFromThread(gateway.wake),
        wait_timeout=config.api.wait_timeout,
    )
    webhooks = None
    if config.webhooks:
        webhooks = WebhookDispatcher(reactor, db, run, config.webhooks, node_id=config.node_id)
        webhooks.heartbeat = gateway.heartbeats.beater(
            "webhooks", _pass_interval(webhooks.poll_interval)
        )
        gateway.events.wake_on(webhooks.wake)  # a request or attempt may have added an event
        services.add(webhooks)
    api = None
    if config.api.port is not None:
        api = _api_listener(gateway, backoffice)
        services.add(api)
    stuf = None
    if config.stuf.role:
        relay = Relay(
            db,
            registry,
            config.stuf,
            security=security,
            own_parties=config.party_ids,
            node_id=config.node_id,
        )
        backoffice.relay = relay
        stuf = RelayService(
            reactor, db, run, relay, node_id=config.node_id, wake_delivery=gateway.wake
        )
        stuf.heartbeat = gateway.heartbeats.beater(
            "stuf-relay", _pass_interval(config.stuf.poll_interval)
        )
        gateway.events.wake_on(stuf.wake, event="inbound")  # a StUF message may have arrived
        services.add(stuf)
    filedrops = []
    for exchange in config.filedrops:
        drop = FileDrop(
            reactor,
            db,
            registry,
            run,
            exchange,
            node_id=config.node_id,
            security=security,
            wake=gateway.wake,
        )
        drop.heartbeat = gateway.heartbeats.beater(
            f"filedrop {exchange.name}", _pass_interval(exchange.poll_interval)
        )
        services.add(drop)
        filedrops.append(drop)
    pinger = None
    monitoring = config.monitoring
    if monitoring.pings:
        pinger = PingScheduler(
            reactor=reactor,
            db=db,
            registry=registry,
            run_in_thread=run,
            settings=PingSettings(
                interval=monitoring.ping_interval,
                timeout=monitoring.ping_timeout,
                jitter=monitoring.ping_jitter,
                history_days=monitoring.ping_history_days,
            ),
            node=config.node_id,
            own_ids=config.party_ids,
            client_cert_der=loaded.client_cert_der,
            on_report=functools.partial(_on_pings, metrics, gateway.wake),
        )
        pinger.heartbeat = gateway.heartbeats.beater("pings", pinger.settings.tick)
        services.add(pinger)
    # Retention of citizens' data (gateway/store/retention.py).
    purger = PurgeScheduler(reactor, db, run, config.retention, node=config.node_id)
    services.add(purger)
    return Parts(
        registry=registry,
        security=security,
        client=client,
        worker=worker,
        metrics=metrics,
        backoffice=backoffice,
        purger=purger,
        ebms=ebms,
        admin=admin,
        api=api,
        pinger=pinger,
        webhooks=webhooks,
        stuf=stuf,
        filedrops=tuple(filedrops),
        crl_refresher=crl_refresher,
    )


def _api_listener(gateway: Gateway, backoffice: BackOffice) -> ListenerService:
    """The back-office API listener; its kept-alive connections close once it stops."""
    api, http = gateway.config.api, gateway.config.http
    site = api_site(
        backoffice,
        gateway.run_in_thread,
        gateway.reactor,
        api,
        idle_timeout=http.idle_timeout,
        deadlines=_deadlines(
            api.header_timeout, api.min_body_rate, http.body_rate_window, api.max_connections
        ),
        on_event=gateway.events.emit,
    )
    auth = [
        name for name, on in (("mtls", api.client_ca), ("basic", api.users_file)) if on is not None
    ]
    return gateway.listener_tls.http_listener(
        api,
        site,
        on_listening=lambda: log.info(
            "event=api-listening listen=%s:%d scheme=%s auth=%s",
            api.host,
            gateway.api_listening_port,
            "https" if api.tls else "http",
            ",".join(auth) or "none",
        ),
        after_stop=site.close_connections if isinstance(site, TrackingSite) else None,
    )
