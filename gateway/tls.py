"""TLS for the ebMS endpoint (server) and the delivery client: mutual, TLS 1.2+, AEAD only.

Digikoppeling requires two-way TLS on every exchange [DK TLS001/TLS002], TLS 1.2
at least with 1.3 recommended, nothing older [TLS003/TLS004], and only cipher
suites the NCSC rates "good" or "sufficient" [TLSCIPH001] (Digikoppeling Beveiligingsstandaarden).
This module turns our identities and trust anchors (read by
gateway/material/identity.py) into pyOpenSSL contexts that say exactly that, for
both directions:

* :func:`server_context_factory` for ``reactor.listenSSL`` / ``SSL4ServerEndpoint``:
  a client certificate is *required* and its chain is checked against the
  configured trust anchors by OpenSSL during the handshake.  Whether that
  certificate belongs to the sending party of the CPA is the MSH's business
  (:func:`peer_certificate`, docs/security.md).
* :class:`ClientTlsPolicy` for ``twisted.web.client.Agent``: presents our client
  certificate, trusts the configured anchors only (never the system store), checks
  the host name or IP address with ``service_identity``, and can pin the server's
  leaf certificate to the one in the CPA (:meth:`ClientTlsPolicy.with_pin`).

The contexts are built here rather than through Twisted's ``CertificateOptions``
because that class cannot set ``OP_NO_RENEGOTIATION``, the TLS 1.3 suites or the
store flags, and because a pin has to run in the same verify callback as the host
name check (one callback per connection; a second ``set_verify`` replaces the
first).  Only cryptography key and certificate objects are handed to pyOpenSSL
(pyOpenSSL 26 deprecates its own X509/PKey there); the exceptions are
``X509Store.add_cert``, which takes nothing else, and the verify callback,
which receives pyOpenSSL X509 objects.

A server context reports every handshake it refuses through
gateway/tls_watch.py.  Revocation (CRLs, [PKI002-PKI004]) is not checked here yet.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Sequence

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS

# zope.interface ships no type information; ``implementer`` only registers interfaces.
from zope.interface import implementer  # type: ignore[import-untyped]

from gateway.material.identity import (
    SIGNING_KEYS,
    TlsIdentity,
    fingerprint,
    load_trust_anchors,
)
from gateway.tls_watch import HandshakeFailure, HandshakeWatch, x509_error

__all__ = [
    "ACCEPTABLE_CIPHERS",
    "TLS13_CIPHERSUITES",
    "ClientTlsPolicy",
    "HandshakeFailure",
    "HandshakeWatch",
    "ServerTlsOptions",
    "TlsIdentity",
    "TlsVerificationError",
    "api_server_context_factory",
    "load_trust_anchors",
    "peer_certificate",
    "server_context_factory",
]

#: TLS 1.2 cipher suites: ECDHE key exchange (forward secrecy, no static RSA) with
#: AES-GCM or ChaCha20-Poly1305, the AEAD suites NCSC rates "good" (NCSC TLS
#: guidelines 2025, table 4).  The "sufficient" ECDHE-CBC and DHE suites are left
#: out: every Digikoppeling peer that does TLS 1.2 offers one of these.  Listed in
#: order of preference; the server's order wins (``OP_CIPHER_SERVER_PREFERENCE``).
ACCEPTABLE_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
)

#: TLS 1.3 cipher suites.  All TLS 1.3 suites are AEAD with ephemeral key
#: exchange; these three are OpenSSL's default set and all rate "good".  They are
#: set explicitly so that a changed OpenSSL default cannot widen them.
TLS13_CIPHERSUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"

#: Most intermediates accepted between a peer's leaf and the trust anchor
#: (OpenSSL's verify depth).  PKIoverheid has two (domain CA, TSP CA) under the
#: root; two spare.
_VERIFY_DEPTH = 4

#: Session resumption is off in both directions (no session cache, no stateless
#: tickets): every connection is a full handshake with a fresh client-certificate
#: check, so a certificate that stops being trusted stops working at the next
#: connection, and ``peer_certificate`` never depends on a cached session.
#: Digikoppeling traffic is a few connections per partner, kept alive by the HTTP
#: pool, so the cost is negligible.  (A TLS 1.3 server still sends stateful
#: tickets, which pyOpenSSL cannot switch off; with the cache off they never
#: resume - checked with ``openssl s_client -sess_out/-sess_in``.)  No TLS
#: compression (CRIME) and no renegotiation (TLS 1.3 has none; in TLS 1.2 it
#: is only attack surface here).
_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_NO_RENEGOTIATION
    | SSL.OP_NO_TICKET
    | SSL.OP_CIPHER_SERVER_PREFERENCE
)


class TlsVerificationError(Exception):
    """The server's certificate was refused by the client (chain, name or pin).

    Reported as the reason of the failed connection, so the delivery worker can
    tell a partner's certificate problem from a network problem.
    """


def _context(
    identity: TlsIdentity,
    trust_anchors: Sequence[x509.Certificate],
    *,
    verify_peer: bool = True,
) -> SSL.Context:
    """The settings both directions share; the caller adds the verify mode."""
    if verify_peer and not trust_anchors:
        raise ValueError("at least one trust anchor is needed to verify the peer")
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)  # [TLS003]: no SSLv3, TLS 1.0, 1.1
    ctx.set_options(_OPTIONS)
    ctx.set_cipher_list(ACCEPTABLE_CIPHERS.encode("ascii"))
    ctx.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)

    key = identity.private_key
    assert isinstance(key, SIGNING_KEYS)  # checked by TlsIdentity.__post_init__
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(key)
    for cert in identity.chain:
        ctx.add_extra_chain_cert(cert)
    ctx.check_privatekey()

    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always gives a context a store
        raise RuntimeError("OpenSSL context without a certificate store")
    for anchor in trust_anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    # Every configured certificate is a trust anchor, also an intermediate: an
    # operator may trust one TSP CA (PKIoverheid Private Services) without the
    # whole root.  Only the configured certificates are trusted, never the
    # system store.
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    ctx.set_verify_depth(_VERIFY_DEPTH)
    return ctx


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerTlsOptions:
    """Connection creator for the ebMS endpoint; made by :func:`server_context_factory`.

    Also an ``IOpenSSLContextFactory``, the type ``reactor.listenSSL`` declares.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        """The shared, fully configured context."""
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A new server-side connection."""
        return SSL.Connection(self._context, None)

    def replace(self, other: ServerTlsOptions) -> None:
        """Use ``other``'s context from the next connection on (a reload).

        Connections already open keep the context they were made with.
        """
        self._context = other._context


def server_context_factory(
    identity: TlsIdentity,
    trust_anchors: Sequence[x509.Certificate],
    *,
    watch: HandshakeWatch | None = None,
) -> ServerTlsOptions:
    """TLS for the inbound ebMS endpoint: our server certificate, client certificates required.

    A client without a certificate, or whose certificate does not chain to one of
    ``trust_anchors`` (or has expired, or is not valid for client authentication),
    fails the handshake.  With TLS 1.3 the client only notices that when it reads
    (the server's alert arrives after the client's Finished).  The client may send
    its intermediates; they are used to build the chain but never trusted.
    """
    ctx = _context(identity, trust_anchors)
    mode = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    if watch is not None:
        watch.install(ctx, mode)  # with ``watch``, every refused handshake is reported
    else:
        ctx.set_verify(mode)
    # Needed by OpenSSL whenever a server verifies clients, even with resumption off.
    ctx.set_session_id(b"dkgw-ebms")
    # Announce the anchors in the CertificateRequest so that a client holding
    # several certificates picks the right one.
    for anchor in trust_anchors:
        ctx.add_client_ca(anchor)
    return ServerTlsOptions(ctx)


def api_server_context_factory(
    identity: TlsIdentity,
    client_anchors: Sequence[x509.Certificate] = (),
    *,
    watch: HandshakeWatch | None = None,
) -> ServerTlsOptions:
    """TLS for the back-office API: client certificates required only with ``client_anchors``.

    The same protocol versions and suites as the ebMS endpoint: the API carries
    the same data.
    """
    if client_anchors:
        return server_context_factory(identity, client_anchors, watch=watch)
    ctx = _context(identity, (), verify_peer=False)
    if watch is not None:
        watch.install(ctx, SSL.VERIFY_NONE)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ServerTlsOptions(ctx)


def peer_certificate(source: object) -> x509.Certificate | None:
    """The peer's certificate on a TLS connection, or None when there is none.

    ``source`` is a ``twisted.web`` request (its ``channel.transport`` or
    ``transport`` is used) or a TLS transport.  On connections made with this
    module the certificate has passed chain verification during the handshake.
    """
    candidates = [source, getattr(getattr(source, "channel", None), "transport", None)]
    candidates.append(getattr(source, "transport", None))
    for candidate in candidates:
        get = getattr(candidate, "getPeerCertificate", None)
        if get is None:
            continue
        cert = get()
        if cert is None:
            return None
        if isinstance(cert, x509.Certificate):
            return cert
        if isinstance(cert, crypto.X509):
            return cert.to_cryptography()
        raise TypeError(f"unexpected peer certificate type {type(cert).__name__}")
    return None


@implementer(IOpenSSLClientConnectionCreator)
class _ClientConnectionCreator:
    """One host name's connections: SNI, host name check and optional pin per connection."""

    def __init__(
        self,
        context: SSL.Context,
        host: str,
        pin: frozenset[bytes] | None,
        leaf_check: Callable[[x509.Certificate], object] | None = None,
    ) -> None:
        self._context = context
        self._pin = pin
        self._leaf_check = leaf_check
        try:
            self._ip: str | None = str(ipaddress.ip_address(host))
        except ValueError:
            self._ip = None
        self._host = host

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """A new client-side connection that verifies the server."""
        conn = SSL.Connection(self._context, None)
        if self._ip is None:
            conn.set_tlsext_host_name(self._host.encode("ascii"))  # SNI: names only, RFC 6066
        conn.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return conn

    def _verify(
        self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        # OpenSSL calls this once per chain certificate, root first, with its own
        # verdict in ``ok``.  Its chain verdict stands; the leaf (depth 0)
        # additionally has to carry our host name and, when pinned, be the
        # CPA's certificate.
        try:
            if not ok:
                subject = cert.to_cryptography().subject.rfc4514_string()
                raise TlsVerificationError(
                    f"server certificate chain for {self._host} refused at depth {depth} "
                    f"({subject}): {x509_error(errno)}"
                )
            if depth != 0:
                return True
            leaf = cert.to_cryptography()
            if self._ip is not None:
                verify_certificate_ip_address(leaf, self._ip)
            else:
                verify_certificate_hostname(leaf, self._host)
            if self._pin is not None and fingerprint(leaf) not in self._pin:
                expected = " or ".join(sorted(p.hex() for p in self._pin))
                raise TlsVerificationError(
                    f"server certificate for {self._host} is not the one in the CPA "
                    f"(SHA-256 {fingerprint(leaf).hex()}, expected {expected})"
                )
            if self._leaf_check is not None:
                # Revocation and key usage: OpenSSL has no CRLs here (docs/security.md).
                self._leaf_check(leaf)
        except Exception as exc:
            # Our refusal, service_identity's VerificationError / CertificateError,
            # or anything unexpected: nothing may escape an OpenSSL callback.  As
            # in Twisted's own verify callback, the exception becomes the reason
            # the connection was lost, rather than a bare "certificate verify failed".
            _fail_verification(conn, exc)
            return False
        return True


def _fail_verification(conn: SSL.Connection, exc: Exception) -> None:
    protocol = conn.get_app_data()
    if isinstance(protocol, TLSMemoryBIOProtocol):
        # Both are untyped in Twisted; failVerification aborts the connection.
        protocol.failVerification(Failure(exc))  # type: ignore[no-untyped-call]


@implementer(IPolicyForHTTPS)
class ClientTlsPolicy:
    """TLS policy for ``twisted.web.client.Agent``: mutual TLS to Digikoppeling partners.

    Presents ``identity`` (with its chain), trusts ``trust_anchors`` only and
    checks the URL's host name or IP address against the server certificate's
    subjectAltName (service_identity).
    """

    def __init__(
        self,
        identity: TlsIdentity,
        trust_anchors: Sequence[x509.Certificate],
        *,
        leaf_check: Callable[[x509.Certificate], object] | None = None,
    ) -> None:
        self._context = _context(identity, trust_anchors)
        self._pin: frozenset[bytes] | None = None
        #: Called with the server's leaf certificate after the chain, host name and pin
        #: checks; raising refuses the connection (the CRL check of the trust store).
        self._leaf_check = leaf_check

    def with_pin(
        self, server_certificate: x509.Certificate, *also: x509.Certificate
    ) -> ClientTlsPolicy:
        """The same policy, requiring also that the server's leaf is exactly this certificate.

        ``also`` are accepted as well: the successor a certificate mapping names
        while the partner rolls its server certificate over (docs/operations.md).

        The certificate is the CPA's ServerCertificateRef of the partner's
        endpoint ("expected peer server cert", CPPA 2.0 §8.4); compared by
        SHA-256 of the DER.  Chain and host name checks still apply.  A pin
        replaces any earlier one; this policy itself is not changed.
        """
        pinned = copy.copy(self)  # the context is shared: it is immutable once used
        pinned._pin = frozenset(fingerprint(c) for c in (server_certificate, *also))
        return pinned

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        """Connection creator for one ``host:port`` from a URL."""
        # Agent gives the URL's host as IDNA bytes, an IPv6 literal maybe in brackets.
        host = hostname.decode("ascii").strip("[]")
        # Calling the interface checks at run time that the creator provides it,
        # and gives mypy (which does not read zope declarations) the right type.
        return IOpenSSLClientConnectionCreator(
            _ClientConnectionCreator(self._context, host, self._pin, self._leaf_check)
        )
