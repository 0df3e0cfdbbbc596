"""Mutual TLS for the ebMS endpoint and the delivery client, on real sockets (127.0.0.1).

The server is a twisted.web Site answering with the OIN of the verified client
certificate; clients are treq over an Agent with ClientTlsPolicy, and
``openssl s_client`` for the protocol and cipher policy (Digikoppeling Beveiligingsstandaarden).
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from cpa.certificates import oin_of
from gateway.tls import (
    ACCEPTABLE_CIPHERS,
    ClientTlsPolicy,
    TlsIdentity,
    TlsVerificationError,
    load_trust_anchors,
    peer_certificate,
    server_context_factory,
)
from tests.conftest import GEMEENTE_OIN, NODE_OIN, load_cert

GGK = "ggk-rinis-test"
GEMEENTE = "gemeente-voorbeeld"
TIMEOUT = 5.0
OPENSSL = shutil.which("openssl")


# -- material ---------------------------------------------------------------------------


def identity(pki: Path, party: str, kind: str, *, chain: bool = True) -> TlsIdentity:
    """A leaf of the example PKI with its key, optionally with the intermediate as chain."""
    return TlsIdentity.from_files(
        pki / party / f"{kind}.pem",
        pki / party / f"{kind}.key",
        pki / "ca" / "intermediate.pem" if chain else None,
    )


def negative(pki: Path, name: str) -> TlsIdentity:
    """One of the negative client certificates (no chain: they fail anyway)."""
    return TlsIdentity.from_files(
        pki / "negative" / f"{name}.pem", pki / "negative" / f"{name}.key"
    )


def root(pki: Path) -> tuple[x509.Certificate, ...]:
    return (load_cert(pki / "ca" / "root.pem"),)


def root_and_intermediate(pki: Path) -> tuple[x509.Certificate, ...]:
    return load_trust_anchors(pki / "ca" / "chain.pem")


def foreign_server(pki: Path) -> TlsIdentity:
    """A server certificate for localhost/127.0.0.1 from the foreign CA: only the CA is wrong."""
    ca = load_cert(pki / "negative" / "foreign-ca.pem")
    ca_key = serialization.load_pem_private_key(
        (pki / "negative" / "foreign-ca.key").read_bytes(), None
    )
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsIdentity(cert, key)


# -- server -------------------------------------------------------------------------------


class OinResource(Resource):
    """Answers every request with the OIN of the client certificate, and remembers it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str | None] = []

    def render_GET(self, request: Request) -> bytes:
        cert = peer_certificate(request)
        oin = oin_of(cert) if cert is not None else None
        self.seen.append(oin)
        return (oin or "no certificate").encode()

    render_POST = render_GET


class Server:
    """A listening endpoint and its resource."""

    def __init__(self, port: IListeningPort, resource: OinResource, host: str) -> None:
        self.port = port
        self.resource = resource
        self.host = host

    @property
    def number(self) -> int:
        return int(self.port.getHost().port)

    def url(self, host: str | None = None) -> str:
        return f"https://{host or self.host}:{self.number}/ebms"


Serve = Callable[..., Server]


@pytest_twisted.async_yield_fixture
async def serve(pki: Path) -> AsyncIterator[Serve]:
    """Start TLS servers (gemeente's tls-server by default); all stop after the test."""
    ports: list[IListeningPort] = []

    def start(
        server_identity: TlsIdentity | None = None,
        anchors: tuple[x509.Certificate, ...] | None = None,
        interface: str = "127.0.0.1",
    ) -> Server:
        options = server_context_factory(
            server_identity or identity(pki, GEMEENTE, "tls-server"),
            anchors if anchors is not None else root_and_intermediate(pki),
        )
        resource = OinResource()
        port = reactor.listenSSL(0, Site(resource), options, interface=interface)
        ports.append(port)
        return Server(port, resource, interface)

    yield start
    for port in ports:
        await defer.maybeDeferred(port.stopListening)


# -- client -------------------------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class Loopback:
    """Connect every URL to 127.0.0.1, keeping the URL's host name for TLS (SNI, name check)."""

    def __init__(self, policy: IPolicyForHTTPS) -> None:
        self.policy = policy

    def endpointForURI(self, uri):
        tcp = TCP4ClientEndpoint(reactor, "127.0.0.1", uri.port)
        return wrapClientTLS(self.policy.creatorForNetloc(uri.host, uri.port), tcp)


async def get(policy: IPolicyForHTTPS, url: str, *, loopback: bool = False) -> tuple[int, str]:
    """GET ``url``; the status and the body."""
    agent = (
        Agent.usingEndpointFactory(reactor, Loopback(policy))
        if loopback
        else Agent(reactor, contextFactory=policy)
    )
    request = HTTPClient(agent).get(url)
    request.addTimeout(TIMEOUT, reactor)
    response = await request
    return response.code, await response.text()


async def refused(policy: IPolicyForHTTPS, url: str, *, loopback: bool = False) -> str:
    """Expect the request to fail; the text of every reason, nested ones included."""
    try:
        code, body = await get(policy, url, loopback=loopback)
    except defer.TimeoutError:
        pytest.fail(f"{url}: timed out instead of being refused")
    except Exception as exc:
        return describe(exc)
    pytest.fail(f"{url}: expected a refusal, got {code} {body!r}")


def describe(exc: BaseException) -> str:
    """``exc`` with the reasons twisted.web nests in ResponseFailed and friends."""
    parts = [f"{type(exc).__name__}: {exc}"]
    for failure in getattr(exc, "reasons", []) or []:
        parts.append(describe(failure.value))
    return "\n".join(parts)


@implementer(IPolicyForHTTPS)
class Anonymous:
    """A client without a certificate (ClientTlsPolicy always presents one): Twisted's own."""

    def __init__(self, pki: Path) -> None:
        self.trust = Certificate.loadPEM((pki / "ca" / "root.pem").read_bytes())

    def creatorForNetloc(self, hostname: bytes, port: int):
        return optionsForClientTLS(hostname.decode(), trustRoot=self.trust)


def node_client(pki: Path, anchors: tuple[x509.Certificate, ...] | None = None) -> ClientTlsPolicy:
    """The node's delivery client: GGk's tls-client with the intermediate."""
    return ClientTlsPolicy(
        identity(pki, GGK, "tls-client"),
        anchors if anchors is not None else root_and_intermediate(pki),
    )


# -- mutual TLS ---------------------------------------------------------------------------


def test_example_oins() -> None:
    assert NODE_OIN == "00000001007654321000"
    assert GEMEENTE_OIN == "00000001001234567000"


@pytest_twisted.ensureDeferred
async def test_node_client_is_accepted_and_identified(pki: Path, serve: Serve) -> None:
    server = serve()
    code, body = await get(node_client(pki), server.url())
    assert (code, body) == (200, NODE_OIN)
    assert server.resource.seen == [NODE_OIN]


@pytest_twisted.ensureDeferred
async def test_client_without_certificate_is_refused(pki: Path, serve: Serve) -> None:
    server = serve()
    reasons = await refused(Anonymous(pki), server.url())
    # TLS 1.3: the handshake "succeeds" for the client and the server's alert
    # arrives on the first read.
    assert "certificate required" in reasons or "handshake failure" in reasons, reasons
    assert server.resource.seen == []


@pytest.mark.parametrize(
    ("name", "alert"),
    [("foreign-client", "unknown ca"), ("expired", "certificate expired")],
)
@pytest_twisted.ensureDeferred
async def test_bad_client_certificate_is_refused(
    pki: Path, serve: Serve, name: str, alert: str
) -> None:
    server = serve()
    policy = ClientTlsPolicy(negative(pki, name), root_and_intermediate(pki))
    reasons = await refused(policy, server.url())
    assert alert in reasons, reasons
    assert server.resource.seen == []


@pytest_twisted.ensureDeferred
async def test_chains_are_sent_by_both_sides(pki: Path, serve: Serve) -> None:
    # Both sides trust the root only, so each must send the intermediate.
    server = serve(anchors=root(pki))
    code, body = await get(node_client(pki, root(pki)), server.url())
    assert (code, body) == (200, NODE_OIN)

    without_chain = ClientTlsPolicy(identity(pki, GGK, "tls-client", chain=False), root(pki))
    reasons = await refused(without_chain, server.url())
    assert "unknown ca" in reasons, reasons

    bare_server = serve(identity(pki, GEMEENTE, "tls-server", chain=False), root(pki))
    reasons = await refused(node_client(pki, root(pki)), bare_server.url())
    assert TlsVerificationError.__name__ in reasons, reasons
    assert "unable to get local issuer certificate" in reasons, reasons
    assert server.resource.seen == [NODE_OIN]
    assert bare_server.resource.seen == []


@pytest_twisted.ensureDeferred
async def test_an_intermediate_alone_can_be_the_trust_anchor(pki: Path, serve: Serve) -> None:
    intermediate = (load_cert(pki / "ca" / "intermediate.pem"),)
    server = serve(anchors=intermediate)
    code, body = await get(node_client(pki, intermediate), server.url())
    assert (code, body) == (200, NODE_OIN)
    policy = ClientTlsPolicy(negative(pki, "foreign-client"), intermediate)
    assert "unknown ca" in await refused(policy, server.url())


# -- server verification by the client -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pinned_server_certificate(pki: Path, serve: Serve) -> None:
    server = serve()
    policy = node_client(pki)
    gemeente_server = load_cert(pki / GEMEENTE / "tls-server.pem")
    code, body = await get(policy.with_pin(gemeente_server), server.url())
    assert (code, body) == (200, NODE_OIN)

    ggk_server = load_cert(pki / GGK / "tls-server.pem")
    reasons = await refused(policy.with_pin(ggk_server), server.url())
    assert TlsVerificationError.__name__ in reasons, reasons
    assert "not the one in the CPA" in reasons, reasons
    # A rollover: the CPA's certificate or its successor, whichever the server has.
    code, body = await get(policy.with_pin(ggk_server, gemeente_server), server.url())
    assert (code, body) == (200, NODE_OIN)
    # with_pin leaves the original policy alone.
    assert await get(policy, server.url()) == (200, NODE_OIN)
    assert server.resource.seen == [NODE_OIN, NODE_OIN, NODE_OIN]


@pytest_twisted.ensureDeferred
async def test_server_from_unknown_ca_is_refused(pki: Path, serve: Serve) -> None:
    server = serve(foreign_server(pki))
    reasons = await refused(node_client(pki), server.url())
    assert TlsVerificationError.__name__ in reasons, reasons
    assert "refused at depth" in reasons, reasons
    assert server.resource.seen == []


@pytest_twisted.ensureDeferred
async def test_server_name_is_checked(pki: Path, serve: Serve) -> None:
    server = serve()
    policy = node_client(pki)
    assert await get(policy, server.url("localhost"), loopback=True) == (200, NODE_OIN)
    reasons = await refused(policy, server.url("partner.example"), loopback=True)
    assert VerificationError.__name__ in reasons and "DNSMismatch" in reasons, reasons
    assert server.resource.seen == [NODE_OIN]


@pytest_twisted.ensureDeferred
async def test_server_ip_address_is_checked(pki: Path, serve: Serve) -> None:
    policy = node_client(pki)
    server = serve()
    assert await get(policy, server.url()) == (200, NODE_OIN)  # 127.0.0.1 is in the SAN
    other = serve(interface="127.0.0.2")  # Linux routes all of 127/8 to loopback
    reasons = await refused(policy, other.url())
    assert "IPAddressMismatch" in reasons, reasons
    assert other.resource.seen == []


# -- protocol and cipher policy, seen by openssl s_client ------------------------------------


async def s_client(pki: Path, server: Server, *args: str, request: bool = False) -> tuple[str, str]:
    """Run ``openssl s_client`` as the node against ``server``; the command line and output.

    The node's client certificate (with chain) is always offered, so a refusal
    cannot be the server missing a client certificate.  With ``request`` an HTTP
    request is sent and s_client waits for the server to close.
    """
    if OPENSSL is None:  # pragma: no cover
        pytest.skip("openssl CLI not installed: independent TLS client oracle absent")
    command = [
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{server.number}", *args,
        "-cert", str(pki / GGK / "tls-client.pem"),
        "-key", str(pki / GGK / "tls-client.key"),
        "-cert_chain", str(pki / "ca" / "intermediate.pem"),
        "-CAfile", str(pki / "ca" / "root.pem"),
        "-verify_return_error",
        "-servername", "localhost",
    ]  # fmt: skip
    if request:
        command += ["-brief", "-ign_eof"]
    stdin = b"GET /ebms HTTP/1.0\r\nHost: localhost\r\n\r\n" if request else b""
    done = await deferToThread(
        subprocess.run, command, input=stdin, capture_output=True, timeout=TIMEOUT
    )
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    return " ".join(command), f"exit {done.returncode}\n{output}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-tls1", "-cipher", "DEFAULT@SECLEVEL=0"), "alert protocol version"),
        (("-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"), "alert protocol version"),
        (("-tls1_2", "-cipher", "AES256-SHA@SECLEVEL=0"), "alert handshake failure"),
        (("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"), "alert handshake failure"),
        (("-tls1_2", "-cipher", "DHE-RSA-AES256-GCM-SHA384"), "alert handshake failure"),
    ],
    ids=["tls1.0", "tls1.1", "static-rsa-cbc", "ecdhe-cbc", "dhe-gcm"],
)
@pytest_twisted.ensureDeferred
async def test_openssl_refused(
    pki: Path, serve: Serve, args: tuple[str, ...], expected: str
) -> None:
    server = serve()
    command, output = await s_client(pki, server, *args)
    # The alert comes from the server (a client-side refusal reads "no protocols
    # available" or "no cipher match"), in answer to the ClientHello: it never
    # sent its certificate, so nothing was negotiated.
    assert expected in output, f"{command}\n{output}"
    assert "no peer certificate available" in output, f"{command}\n{output}"
    assert "Cipher is (NONE)" in output, f"{command}\n{output}"
    assert not output.startswith("exit 0"), f"{command}\n{output}"
    assert server.resource.seen == []


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
@pytest_twisted.ensureDeferred
async def test_openssl_accepted(pki: Path, serve: Serve, version: str) -> None:
    server = serve()
    command, output = await s_client(pki, server, version, request=True)
    protocol = re.search(r"Protocol version: (\S+)", output)
    cipher = re.search(r"Ciphersuite: (\S+)", output)
    assert protocol and cipher, f"{command}\n{output}"
    assert protocol.group(1) == {"-tls1_2": "TLSv1.2", "-tls1_3": "TLSv1.3"}[version]
    assert "GCM" in cipher.group(1) or "CHACHA20" in cipher.group(1), f"{command}\n{output}"
    if version == "-tls1_2":
        assert cipher.group(1) in ACCEPTABLE_CIPHERS.split(":"), f"{command}\n{output}"
    assert "200 OK" in output and NODE_OIN in output, f"{command}\n{output}"
    assert server.resource.seen == [NODE_OIN]


# -- loading ------------------------------------------------------------------------------


def test_identity_refuses_a_key_of_another_certificate(pki: Path) -> None:
    with pytest.raises(ValueError, match="does not belong to the certificate") as info:
        TlsIdentity.from_files(pki / GGK / "tls-client.pem", pki / GEMEENTE / "tls-client.key")
    assert "tls-client.key" in str(info.value)


def test_identity_refuses_a_key_unusable_for_tls(pki: Path) -> None:
    with pytest.raises(ValueError, match="not usable for TLS"):
        TlsIdentity(load_cert(pki / GGK / "tls-client.pem"), x25519.X25519PrivateKey.generate())


def test_identity_refuses_an_encrypted_key(pki: Path, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key((pki / GGK / "tls-client.key").read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="encrypted"):
        TlsIdentity.from_files(pki / GGK / "tls-client.pem", encrypted)


def test_identity_chain_from_the_certificate_file(pki: Path, tmp_path: Path) -> None:
    full = tmp_path / "fullchain.pem"
    full.write_bytes(
        (pki / GGK / "tls-client.pem").read_bytes() + (pki / "ca" / "intermediate.pem").read_bytes()
    )
    loaded = TlsIdentity.from_files(full, pki / GGK / "tls-client.key")
    assert loaded.certificate == load_cert(pki / GGK / "tls-client.pem")
    assert loaded.chain == (load_cert(pki / "ca" / "intermediate.pem"),)
    assert identity(pki, GGK, "tls-client", chain=False).chain == ()


def test_trust_anchors_from_a_file_and_a_directory(pki: Path, tmp_path: Path) -> None:
    root_cert = load_cert(pki / "ca" / "root.pem")
    intermediate = load_cert(pki / "ca" / "intermediate.pem")
    assert load_trust_anchors(pki / "ca" / "chain.pem") == (intermediate, root_cert)
    # ca/ also holds chain.pem (duplicates) and intermediate.crl.pem (no certificate).
    assert set(load_trust_anchors(pki / "ca")) == {root_cert, intermediate}
    assert len(load_trust_anchors(pki / "ca")) == 2

    with pytest.raises(ValueError, match="no trust anchor"):
        load_trust_anchors(tmp_path)
    with pytest.raises(ValueError, match="no PEM certificate"):
        load_trust_anchors(pki / "ca" / "intermediate.crl.pem")


def test_peer_certificate_without_tls() -> None:
    assert peer_certificate(object()) is None


def _crl_revoking(pki: Path, revoked: x509.Certificate) -> bytes:
    """A newer CRL of the example intermediate that also lists ``revoked``."""
    ca = load_cert(pki / "ca" / "intermediate.pem")
    key = serialization.load_pem_private_key(
        (pki / "ca" / "intermediate.key").read_bytes(), password=None
    )
    now = datetime.now(UTC)
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(revoked.serial_number)
        .revocation_date(now - timedelta(minutes=1))
        .build()
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(entry)
        .add_extension(x509.CRLNumber(1000), critical=False)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return crl.public_bytes(serialization.Encoding.PEM)


@pytest_twisted.ensureDeferred
async def test_revoked_server_certificate_is_refused_by_the_leaf_check(
    pki: Path, serve: Serve
) -> None:
    from gateway.trust import TrustStore

    server = serve()
    trust = TrustStore.from_files(pki / "ca" / "root.pem", [pki / "ca" / "intermediate.pem"])
    trust.crls.load((pki / "ca" / "intermediate.crl.pem").read_bytes(), source="pki")
    checked: list[str] = []

    def leaf_check(leaf: x509.Certificate) -> object:
        checked.append(leaf.subject.rfc4514_string())
        return trust.check_certificate(leaf, purpose="tls-server", at=datetime.now(UTC))

    policy = ClientTlsPolicy(identity(pki, GGK, "tls-client"), root_and_intermediate(pki),
                             leaf_check=leaf_check)  # fmt: skip
    assert await get(policy, server.url()) == (200, NODE_OIN)
    assert len(checked) == 1

    trust.crls.load(_crl_revoking(pki, load_cert(pki / GEMEENTE / "tls-server.pem")), source="t")
    reasons = await refused(policy, server.url())
    assert "revoked" in reasons.lower(), reasons
    assert server.resource.seen == [NODE_OIN]
