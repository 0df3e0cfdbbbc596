"""The TLS of the gateway's listeners and of its client, kept for reloads.

One :class:`TlsContexts` holds each listener's server TLS (the ebMS endpoint,
the admin and API listeners when they speak HTTPS) and the check applied to a
partner's server certificate; it watches every handshake and logs each one it
refuses, with the peer and the reason, never any content.  A reload
(:mod:`gateway.services.reload`) builds fresh contexts with :meth:`fresh` and
swaps them in with :meth:`replace`: new connections use them, open ones keep
theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from gateway.config import AdminConfig, ApiConfig, GatewayConfig
from gateway.material.load import TlsMaterial, load_listener_tls, load_tls
from gateway.services.listener import ListenerService
from gateway.store.timeutil import utcnow
from gateway.tls import (
    ClientTlsPolicy,
    HandshakeFailure,
    HandshakeWatch,
    ServerTlsOptions,
    api_server_context_factory,
    server_context_factory,
)
from gateway.trust import TrustStore

__all__ = ["FreshTls", "TlsContexts", "listener_name"]

log = logging.getLogger("dkgw.serve")


def listener_name(listener: AdminConfig | ApiConfig) -> str:
    """The name an admin or API listener goes by in logs, metrics and reloads."""
    return "admin" if isinstance(listener, AdminConfig) else "api"


@dataclass(frozen=True)
class FreshTls:
    """TLS material read and checked by :meth:`TlsContexts.fresh`, not yet in use."""

    servers: dict[str, ServerTlsOptions]
    client: ClientTlsPolicy


class TlsContexts:
    """The server TLS per listener name, the handshake watch and the partner check.

    ``on_refused(listener, reason)`` counts a refused handshake (the metrics).
    """

    def __init__(self, reactor: Any, on_refused: Callable[[str, str], object]) -> None:
        self.reactor = reactor
        self.on_refused = on_refused
        self.servers: dict[str, ServerTlsOptions] = {}
        self.leaf_check: Callable[[x509.Certificate], object] | None = None

    def use_trust(self, store: TrustStore | None) -> None:
        """Check partners' server certificates against ``store`` (key usage, CRLs), if any."""

        def server_certificate_check(leaf: x509.Certificate) -> object:
            # The partner's server certificate: key usage and the CRLs, now.
            assert store is not None
            return store.check_certificate(leaf, purpose="tls-server", at=utcnow())

        self.leaf_check = server_certificate_check if store is not None else None

    def ebms(self, material: TlsMaterial) -> ServerTlsOptions:
        """The ebMS endpoint's TLS from ``material``; kept for reloads."""
        options = self._ebms(material)
        self.servers["ebms"] = options
        return options

    def client(self, material: TlsMaterial) -> ClientTlsPolicy:
        """The client's TLS policy (mutual TLS to partners) from ``material``."""
        return ClientTlsPolicy(material.client, material.anchors, leaf_check=self.leaf_check)

    def http_listener(
        self, listener: AdminConfig | ApiConfig, site: Any, **kwargs: Any
    ) -> ListenerService:
        """The admin or API listener: HTTPS (mutual TLS with ``client_ca``) or HTTP."""
        port = listener.port
        assert port is not None
        reactor = self.reactor
        if listener.certificate is None or listener.key is None:
            return ListenerService(
                listener.host,
                port,
                lambda: reactor.listenTCP(port, site, interface=listener.host),
                **kwargs,
            )
        factory = self._listener(listener)
        self.servers[listener_name(listener)] = factory
        return ListenerService(
            listener.host,
            port,
            lambda: reactor.listenSSL(port, site, factory, interface=listener.host),
            **kwargs,
        )

    def fresh(self, config: GatewayConfig) -> FreshTls:
        """Every context in use, made anew from the files as they are now.

        Raises ``OSError`` or ``ValueError`` (via the loaders) and changes nothing.
        """
        material = load_tls(config.tls)
        servers = {"ebms": self._ebms(material)}
        for listener in (config.api, config.admin):
            if listener_name(listener) in self.servers:
                servers[listener_name(listener)] = self._listener(listener)
        return FreshTls(servers, self.client(material))

    def replace(self, fresh: FreshTls) -> list[str]:
        """Use ``fresh``'s server contexts from the next connection on; the names replaced."""
        replaced = []
        for name, options in fresh.servers.items():
            if name in self.servers:
                self.servers[name].replace(options)
                replaced.append(f"tls-{name}")
        return replaced

    def _ebms(self, material: TlsMaterial) -> ServerTlsOptions:
        return server_context_factory(material.server, material.anchors, watch=self._watch("ebms"))

    def _listener(self, listener: AdminConfig | ApiConfig) -> ServerTlsOptions:
        """The TLS of the admin or API listener, from its files as they are now."""
        material = load_listener_tls(listener)
        assert material is not None  # the caller checked certificate and key
        watch = self._watch(listener_name(listener))
        return api_server_context_factory(material.identity, material.client_anchors, watch=watch)

    def _watch(self, listener: str) -> HandshakeWatch:
        return HandshakeWatch(lambda failure: self._refused(listener, failure))

    def _refused(self, listener: str, failure: HandshakeFailure) -> None:
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
        self.on_refused(listener, failure.reason)
