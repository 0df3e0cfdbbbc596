"""The one loader of key and TLS material: ``serve``, ``send`` and ``upload`` use it.

What a configuration names, read into objects: our TLS server and client
identities with their chain, the trust anchors for partners' TLS certificates,
the back-office API's and admin listener's certificates and client CAs, and the
message-level security (our signing and encryption keys and the trust store,
whose anchors and intermediates default to ``[tls]``'s).  ``dkgw serve`` loads
it once at start (:func:`load_material`, and :func:`load_listener_tls` as each
listener starts) and again, all or nothing, at a reload (SIGHUP); ``dkgw send``
and ``dkgw upload`` need only the message security
(:func:`load_message_security`).

Errors are those of the readers (:meth:`gateway.material.identity.TlsIdentity.from_files`,
:func:`gateway.material.identity.load_trust_anchors`,
:meth:`gateway.msh.security.MessageSecurity.load`): ValueError naming the file
and what is wrong with it, or OSError when a file cannot be read.
``dkgw serve --check`` reads the same pairs as findings
(:mod:`gateway.material.inspect`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509

from gateway.material.identity import TlsIdentity, load_trust_anchors
from gateway.msh.security import MessageSecurity
from gateway.settings.sections import AdminConfig, TlsConfig
from gateway.settings.security import SecurityConfig

if TYPE_CHECKING:
    from adapters.api.config import ApiConfig
    from gateway.config import GatewayConfig


@dataclass(frozen=True)
class TlsMaterial:
    """``[tls]``: our identities towards partners and the anchors we trust theirs to."""

    anchors: tuple[x509.Certificate, ...]
    server: TlsIdentity
    """Presented by the ebMS endpoint."""
    client: TlsIdentity
    """Presented when we deliver; the certificate the CPA names for our TLS client."""


@dataclass(frozen=True)
class ListenerTls:
    """The certificate of the API or admin listener and, for mutual TLS, its client CAs."""

    identity: TlsIdentity
    client_anchors: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class Material:
    """What :func:`load_material` read for one gateway: ``[tls]`` and ``[security]``.

    The API and admin listeners' material is read as each listener starts
    (:func:`load_listener_tls`).
    """

    tls: TlsMaterial
    security: MessageSecurity


def load_tls(tls: TlsConfig) -> TlsMaterial:
    """Read ``[tls]``: the trust anchors, and the server and client identities with the chain."""
    return TlsMaterial(
        anchors=load_trust_anchors(tls.trust_anchors),
        server=TlsIdentity.from_files(tls.certificate, tls.key, tls.chain),
        client=TlsIdentity.from_files(tls.client_certificate, tls.client_key, tls.chain),
    )


def load_listener_tls(listener: ApiConfig | AdminConfig) -> ListenerTls | None:
    """The HTTPS material of the API or admin listener; None when it speaks plain HTTP."""
    if listener.certificate is None or listener.key is None:
        return None
    identity = TlsIdentity.from_files(listener.certificate, listener.key, None)
    if listener.client_ca is None:
        return ListenerTls(identity)
    return ListenerTls(identity, load_trust_anchors(listener.client_ca))


def load_message_security(config: GatewayConfig, *, keys: bool = True) -> MessageSecurity:
    """``[security]``: our signing and encryption keys and the trust store.

    The trust store's anchors and intermediates default to ``[tls]
    trust_anchors`` and ``chain``.  Without ``keys`` only the trust store is
    built (``serve --check`` reads the keys itself, as findings).
    """
    security = config.security if keys else SecurityConfig(trust=config.security.trust)
    tls = config.tls
    return MessageSecurity.load(
        security,
        default_anchors=(tls.trust_anchors,),
        default_intermediates=(tls.chain,) if tls.chain else (),
    )


def load_material(config: GatewayConfig) -> Material:
    """Read the gateway's ``[tls]`` and ``[security]`` material; raises at the first problem."""
    return Material(load_tls(config.tls), load_message_security(config))
