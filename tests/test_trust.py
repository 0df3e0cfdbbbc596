"""Certificate trust decisions (gateway.trust) and CRLs (gateway.crl).

The example TEST PKI (certs-example/make-pki) supplies the certificates; the main
verdicts are cross-checked with ``openssl verify``.  Odd chains (path length, an
issuer that is no CA, unknown critical extensions) are made here with small EC keys.
The CRL refresher is tested against a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.crl import CrlError, CrlStore
from gateway.crl_refresh import CrlRefresher
from gateway.trust import (
    CertificateRejected,
    RejectReason,
    TrustSettings,
    TrustStore,
    load_certificates,
)
from tests.conftest import GEMEENTE_OIN, NODE_OIN, load_cert
from tests.test_pki import openssl_verify

PARTIES = {"gemeente-voorbeeld": GEMEENTE_OIN, "ggk-rinis-test": NODE_OIN}
KINDS = ("tls-server", "tls-client", "signing", "encryption")
NOW = datetime.now(UTC)


# -- helpers ------------------------------------------------------------------------------


def store(pki: Path, *, crl: bool = True, mode: str = "best-effort") -> TrustStore:
    trust = TrustStore.from_files(pki / "ca/root.pem", pki / "ca/intermediate.pem", crl_mode=mode)
    if crl:
        trust.crls.load((pki / "ca/intermediate.crl.pem").read_bytes(), source="intermediate.crl")
    return trust


def key_of(pki: Path, name: str) -> Any:
    return load_pem_private_key((pki / name).read_bytes(), None)


def make_crl(
    issuer: x509.Certificate,
    key: object,
    *,
    revoked: tuple[int, ...] = (),
    number: int = 1,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
) -> bytes:
    """A PEM CRL with ``issuer``'s name, signed by ``key``."""
    this_update = this_update or NOW - timedelta(minutes=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(next_update or NOW + timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    crl = builder.sign(key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def rejected(trust: TrustStore, cert: x509.Certificate, **kw: object) -> CertificateRejected:
    kw.setdefault("purpose", "signing")
    kw.setdefault("at", NOW)
    with pytest.raises(CertificateRejected) as info:
        trust.check_certificate(cert, **kw)
    return info.value


# -- chains per purpose -------------------------------------------------------------------


@pytest.mark.parametrize("slug", PARTIES)
@pytest.mark.parametrize("kind", KINDS)
def test_party_leaf_is_accepted_for_its_purpose(pki: Path, slug: str, kind: str) -> None:
    trust = store(pki)
    cert = load_cert(pki / slug / f"{kind}.pem")
    checked = trust.check_certificate(cert, purpose=kind, at=NOW)
    assert checked.oin == PARTIES[slug]
    assert checked.facts.serial_number == cert.serial_number
    assert [c.subject for c in checked.chain] == [
        cert.subject,
        load_cert(pki / "ca/intermediate.pem").subject,
        load_cert(pki / "ca/root.pem").subject,
    ]
    # The intermediate CRL covers the leaf; nobody publishes a CRL of the root here.
    assert len(checked.warnings) == 1 and "no CRL of CN=TEST Staat" in checked.warnings[0]
    assert openssl_verify(pki, pki / slug / f"{kind}.pem")


@pytest.mark.parametrize(
    ("kind", "purpose", "why"),
    [
        ("signing", "encryption", "keyUsage lacks keyEncipherment"),
        ("encryption", "signing", "neither digitalSignature nor nonRepudiation"),
        ("encryption", "tls-client", "keyUsage lacks digitalSignature"),
        ("tls-server", "tls-client", "extendedKeyUsage lacks clientAuth"),
        ("tls-client", "tls-server", "extendedKeyUsage lacks serverAuth"),
        ("signing", "tls-server", "no extendedKeyUsage"),
    ],
)
def test_wrong_purpose_is_refused(pki: Path, kind: str, purpose: str, why: str) -> None:
    cert = load_cert(pki / "gemeente-voorbeeld" / f"{kind}.pem")
    error = rejected(store(pki), cert, purpose=purpose)
    assert error.code is RejectReason.WRONG_USAGE
    assert f"is not for {purpose}: " in error.reason and why in error.reason
    assert "Gemeente Voorbeeld" in str(error)


def test_openssl_agrees_on_tls_purposes(pki: Path) -> None:
    server = pki / "gemeente-voorbeeld/tls-server.pem"
    client = pki / "gemeente-voorbeeld/tls-client.pem"
    assert openssl_verify(pki, server, "-purpose", "sslserver")
    assert not openssl_verify(pki, server, "-purpose", "sslclient")
    assert openssl_verify(pki, client, "-purpose", "sslclient")
    assert not openssl_verify(pki, client, "-purpose", "sslserver")


def test_foreign_ca_is_refused_and_trusted_when_configured(pki: Path) -> None:
    impostor = load_cert(pki / "negative/foreign-client.pem")
    error = rejected(store(pki), impostor, purpose="tls-client")
    assert error.code is RejectReason.UNTRUSTED
    assert "issuer 'CN=TEST Foreign Root CA" in error.reason
    assert "neither a trust anchor nor a known intermediate" in error.reason
    assert not openssl_verify(pki, pki / "negative/foreign-client.pem")

    foreign = TrustStore.from_files(pki / "negative/foreign-ca.pem", crl_mode="off")
    assert foreign.check_certificate(impostor, purpose="tls-client", at=NOW).oin == GEMEENTE_OIN


def test_forged_signature_is_refused(pki: Path) -> None:
    """Right issuer name, wrong key: only the signature tells."""
    genuine = load_cert(pki / "gemeente-voorbeeld/signing.pem")
    forged = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(genuine.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
        .sign(key_of(pki, "negative/foreign-ca.key"), hashes.SHA256())
    )
    error = rejected(store(pki), forged)
    assert error.code is RejectReason.UNTRUSTED
    assert "signature does not verify with the key of any certificate named" in error.reason


def test_intermediate_from_the_message_builds_the_chain(pki: Path) -> None:
    trust = TrustStore.from_files(pki / "ca/root.pem")
    cert = load_cert(pki / "ggk-rinis-test/signing.pem")
    error = rejected(trust, cert)
    assert "issuer 'CN=TEST Staat der Nederlanden Private Services CA - G1," in error.reason
    intermediate = load_cert(pki / "ca/intermediate.pem")
    checked = trust.check_certificate(
        cert, purpose="signing", at=NOW, extra_intermediates=[intermediate]
    )
    assert checked.oin == NODE_OIN and len(checked.chain) == 3


def test_intermediate_as_trust_anchor(pki: Path) -> None:
    """An operator may trust one CA below the root (as gateway.tls does)."""
    trust = TrustStore.from_files(pki / "ca/intermediate.pem", crl_mode="off")
    checked = trust.check_certificate(
        load_cert(pki / "gemeente-voorbeeld/encryption.pem"), purpose="encryption", at=NOW
    )
    assert len(checked.chain) == 2


def test_leaf_as_trust_anchor_is_refused_at_load(pki: Path) -> None:
    with pytest.raises(ValueError, match="is not a CA certificate"):
        TrustStore.from_files(pki / "gemeente-voorbeeld/tls-server.pem")


# -- validity -----------------------------------------------------------------------------


def test_expired_is_refused_now_and_accepted_inside_its_validity(pki: Path) -> None:
    path = pki / "negative/expired-signing.pem"
    cert = load_cert(path)
    trust = store(pki, crl=False, mode="off")
    error = rejected(trust, cert)
    assert error.code is RejectReason.EXPIRED
    assert f"expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z" in error.reason
    assert not openssl_verify(pki, path)

    # A message signed while the certificate was valid: checked at its Timestamp.
    inside = cert.not_valid_after_utc - timedelta(minutes=30)
    checked = trust.check_certificate(cert, purpose="signing", at=inside)
    assert checked.checked_at == inside and checked.oin == GEMEENTE_OIN
    assert openssl_verify(pki, path, "-attime", str(int(inside.timestamp())))

    # Before the chain existed it was not valid either (openssl agrees).
    early = load_cert(pki / "ca/intermediate.pem").not_valid_before_utc - timedelta(seconds=1)
    assert rejected(trust, cert, at=early).code is RejectReason.NOT_YET_VALID
    assert not openssl_verify(pki, path, "-attime", str(int(early.timestamp())))


def test_not_yet_valid_leaf(pki: Path) -> None:
    cert = load_cert(pki / "gemeente-voorbeeld/signing.pem")
    error = rejected(store(pki), cert, at=cert.not_valid_before_utc - timedelta(minutes=1))
    assert error.code is RejectReason.NOT_YET_VALID
    assert error.reason.startswith("certificate 'CN=Gemeente Voorbeeld signing")


def test_naive_time_is_a_programming_error(pki: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store(pki).check_certificate(
            load_cert(pki / "gemeente-voorbeeld/signing.pem"),
            purpose="signing",
            at=datetime.now(),
        )


# -- revocation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "purpose"), [("revoked-signing", "signing"), ("revoked", "tls-client")]
)
def test_revoked_is_refused_with_crl(pki: Path, name: str, purpose: str) -> None:
    cert = load_cert(pki / f"negative/{name}.pem")
    error = rejected(store(pki), cert, purpose=purpose)
    assert error.code is RejectReason.REVOKED
    assert "revoked on" in error.reason and "(keyCompromise)" in error.reason
    assert "according to the CRL of CN=TEST Staat der Nederlanden Private Services" in error.reason
    crl_args = ("-crl_check", "-CRLfile", str(pki / "ca/intermediate.crl.pem"))
    assert not openssl_verify(pki, pki / f"negative/{name}.pem", *crl_args)
    assert openssl_verify(pki, pki / f"negative/{name}.pem")

    # Also at a Timestamp before the revocation: a compromise is noticed afterwards.
    assert rejected(store(pki), cert, purpose=purpose, at=NOW - timedelta(hours=2)).code == (
        RejectReason.REVOKED
    )


def test_revoked_is_accepted_when_crl_mode_is_off(pki: Path) -> None:
    trust = store(pki, mode="off")
    checked = trust.check_certificate(
        load_cert(pki / "negative/revoked-signing.pem"), purpose="signing", at=NOW
    )
    assert checked.warnings == ()


def test_best_effort_without_crl_accepts_and_warns_once(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trust = store(pki, crl=False)
    cert = load_cert(pki / "negative/revoked-signing.pem")
    with caplog.at_level(logging.WARNING, logger="dkgw.crl"):
        checked = trust.check_certificate(cert, purpose="signing", at=NOW)
        trust.check_certificate(cert, purpose="signing", at=NOW)
    assert len(checked.warnings) == 2  # leaf (intermediate's CRL) and intermediate (root's)
    assert "no CRL of CN=TEST Staat der Nederlanden Private Services" in checked.warnings[0]
    # One warning per CA, not one per check: a TLS handshake per message would flood the log.
    assert len([r for r in caplog.records if "best-effort" in r.getMessage()]) == 2


def test_require_mode(pki: Path) -> None:
    good = load_cert(pki / "gemeente-voorbeeld/signing.pem")
    trust = store(pki, mode="require")
    error = rejected(trust, good)
    assert error.code is RejectReason.REVOCATION_UNKNOWN
    assert "(crl_mode require): no CRL of CN=TEST Staat der Nederlanden Private Root" in str(error)

    root = load_cert(pki / "ca/root.pem")
    trust.crls.load(make_crl(root, key_of(pki, "ca/root.key")), source="root.crl")
    checked = trust.check_certificate(good, purpose="signing", at=NOW)
    assert checked.warnings == ()
    revoked = load_cert(pki / "negative/revoked-signing.pem")
    assert rejected(trust, revoked).code is RejectReason.REVOKED


def test_revoked_intermediate_is_refused(pki: Path) -> None:
    root = load_cert(pki / "ca/root.pem")
    intermediate = load_cert(pki / "ca/intermediate.pem")
    trust = store(pki)
    root_crl = make_crl(root, key_of(pki, "ca/root.key"), revoked=(intermediate.serial_number,))
    trust.crls.load(root_crl, source="root.crl")
    error = rejected(trust, load_cert(pki / "gemeente-voorbeeld/signing.pem"))
    assert error.code is RejectReason.REVOKED
    assert error.reason.startswith("CA certificate in the chain of 'CN=Gemeente Voorbeeld signing")


def test_stale_crl_require_versus_best_effort(pki: Path) -> None:
    crl = x509.load_pem_x509_crl((pki / "ca/intermediate.crl.pem").read_bytes())
    assert crl.next_update_utc is not None
    later = crl.next_update_utc + timedelta(hours=1)
    good = load_cert(pki / "ggk-rinis-test/signing.pem")
    root = load_cert(pki / "ca/root.pem")
    root_crl = make_crl(root, key_of(pki, "ca/root.key"), next_update=later + timedelta(days=1))

    strict = store(pki, mode="require")
    strict.crls.load(root_crl, source="root.crl")
    error = rejected(strict, good, now=later)
    assert error.code is RejectReason.REVOCATION_UNKNOWN
    assert f"expired at {crl.next_update_utc:%Y-%m-%d %H:%M:%S}Z (nextUpdate" in error.reason
    assert strict.check_certificate(good, purpose="signing", at=NOW, now=NOW).warnings == ()

    lenient = store(pki)
    lenient.crls.load(root_crl, source="root.crl")
    checked = lenient.check_certificate(good, purpose="signing", at=NOW, now=later)
    assert len(checked.warnings) == 1 and "expired at" in checked.warnings[0]
    # A stale CRL still proves a revocation.
    revoked = load_cert(pki / "negative/revoked-signing.pem")
    assert rejected(lenient, revoked, now=later).code is RejectReason.REVOKED


def test_crl_signed_by_another_ca_is_refused(pki: Path) -> None:
    intermediate = load_cert(pki / "ca/intermediate.pem")
    good = load_cert(pki / "gemeente-voorbeeld/signing.pem")
    trust = store(pki, crl=False)
    # The intermediate's name, the foreign CA's key: would "revoke" a good certificate.
    forged = make_crl(
        intermediate, key_of(pki, "negative/foreign-ca.key"), revoked=(good.serial_number,)
    )
    with pytest.raises(CrlError, match=r"signature of the CRL of CN=TEST Staat .* does not verify"):
        trust.crls.load(forged, source="forged.crl")
    # The foreign CA's own CRL: not a CA this gateway knows.
    foreign = load_cert(pki / "negative/foreign-ca.pem")
    with pytest.raises(
        CrlError,
        match=r"foreign\.crl: CRL issued by .*Foreign Root CA.*, which is not a configured CA",
    ):
        trust.crls.load(
            make_crl(foreign, key_of(pki, "negative/foreign-ca.key")), source="foreign.crl"
        )
    assert trust.crls.records() == []
    assert trust.check_certificate(good, purpose="signing", at=NOW).oin == GEMEENTE_OIN


def test_newest_crl_per_issuer_wins(pki: Path, tmp_path: Path) -> None:
    intermediate = load_cert(pki / "ca/intermediate.pem")
    key = key_of(pki, "ca/intermediate.key")
    trust = store(pki, crl=False)
    revoked = load_cert(pki / "negative/revoked-signing.pem")
    newer = make_crl(intermediate, key, revoked=(revoked.serial_number,), number=5)
    older = make_crl(intermediate, key, number=4, this_update=NOW)  # later date, lower number
    assert [r.number for r in trust.crls.load(newer, source="5")] == [5]
    assert trust.crls.load(older, source="4") == []  # a replayed old CRL cannot unrevoke
    assert trust.crls.is_revoked(revoked) is not None
    assert trust.crls.is_revoked(revoked, intermediate) is not None
    assert trust.crls.is_revoked(load_cert(pki / "gemeente-voorbeeld/signing.pem")) is None

    # A directory with the newest as DER, the oldest as PEM and a certificate on the side.
    der = x509.load_pem_x509_crl(make_crl(intermediate, key, number=6)).public_bytes(
        serialization.Encoding.DER
    )
    (tmp_path / "latest.crl").write_bytes(der)
    (tmp_path / "old.pem").write_bytes(older)
    (tmp_path / "root.pem").write_bytes((pki / "ca/root.pem").read_bytes())
    (tmp_path / "junk.crl").write_bytes(b"not a CRL")
    kept = trust.crls.load_directory(tmp_path)
    assert [r.number for r in kept] == [6]
    assert trust.crls.is_revoked(revoked) is None  # CRL 6 no longer lists it


def test_crls_that_are_not_complete_are_refused(pki: Path) -> None:
    intermediate = load_cert(pki / "ca/intermediate.pem")
    key = key_of(pki, "ca/intermediate.key")
    base = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=1))
    )
    crls = store(pki, crl=False).crls
    delta = base.add_extension(x509.DeltaCRLIndicator(1), critical=True).sign(key, hashes.SHA256())
    with pytest.raises(CrlError, match="delta CRLs are not supported"):
        crls.load(delta.public_bytes(serialization.Encoding.DER), source="x")
    some_reasons = x509.IssuingDistributionPoint(
        full_name=None,
        relative_name=None,
        only_contains_user_certs=True,
        only_contains_ca_certs=False,
        only_some_reasons=frozenset({x509.ReasonFlags.key_compromise}),
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    partial = base.add_extension(some_reasons, critical=True).sign(key, hashes.SHA256())
    with pytest.raises(CrlError, match="limited to some revocation reasons"):
        crls.load(partial.public_bytes(serialization.Encoding.PEM), source="x")
    assert crls.records() == []


def test_crl_of_ca_certificates_only_does_not_cover_leaves(pki: Path) -> None:
    intermediate = load_cert(pki / "ca/intermediate.pem")
    revoked = load_cert(pki / "negative/revoked-signing.pem")
    ca_only = x509.IssuingDistributionPoint(
        full_name=None,
        relative_name=None,
        only_contains_user_certs=False,
        only_contains_ca_certs=True,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(revoked.serial_number)
            .revocation_date(NOW)
            .build()
        )
        .add_extension(ca_only, critical=True)
        .sign(key_of(pki, "ca/intermediate.key"), hashes.SHA256())
    )
    trust = store(pki, crl=False, mode="require")
    trust.crls.load(crl.public_bytes(serialization.Encoding.PEM), source="ca-only.crl")
    assert trust.crls.is_revoked(revoked) is None
    error = rejected(trust, revoked)
    assert error.code is RejectReason.REVOCATION_UNKNOWN  # no CRL speaks for the leaf


# -- cross-check with openssl -------------------------------------------------------------

CASES = [
    *((f"{slug}/{kind}.pem", kind, True) for slug in PARTIES for kind in KINDS),
    ("negative/expired.pem", "tls-client", False),
    ("negative/expired-signing.pem", "signing", False),
    ("negative/revoked.pem", "tls-client", False),
    ("negative/revoked-signing.pem", "signing", False),
    ("negative/foreign-client.pem", "tls-client", False),
]


def test_verdicts_match_openssl(pki: Path) -> None:
    trust = store(pki)
    crl_args = ("-crl_check", "-CRLfile", str(pki / "ca/intermediate.crl.pem"))
    for relative, purpose, expected in CASES:
        try:
            trust.check_certificate(load_cert(pki / relative), purpose=purpose, at=NOW)
            ours = True
        except CertificateRejected:
            ours = False
        assert ours is expected, relative
        assert openssl_verify(pki, pki / relative, *crl_args) is expected, relative


# -- odd chains ---------------------------------------------------------------------------


@dataclass
class Node:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def node(
    cn: str,
    issuer: Node | None,
    *,
    ca: bool = True,
    path_length: int | None = None,
    basic: bool = True,
    usage: x509.KeyUsage | None = None,
    extra: tuple[x509.ExtensionType, ...] = (),
    not_after: datetime | None = None,
) -> Node:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=30))
    )
    if basic:
        builder = builder.add_extension(x509.BasicConstraints(ca, path_length), critical=True)
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    for ext in extra:
        builder = builder.add_extension(ext, critical=True)
    return Node(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def usage(**bits: bool) -> x509.KeyUsage:
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{n: bits.get(n, False) for n in names})


@pytest.fixture(scope="module")
def odd_root() -> Node:
    return node("Odd Root", None, usage=usage(key_cert_sign=True, crl_sign=True))


def odd_check(root: Node, leaf: Node, *chain: Node) -> CertificateRejected:
    trust = TrustStore([root.cert], [c.cert for c in chain], crl_mode="off")
    return rejected(trust, leaf.cert)


def test_path_length_is_enforced(odd_root: Node) -> None:
    ca_usage = usage(key_cert_sign=True, crl_sign=True)
    first = node("First CA", odd_root, path_length=0, usage=ca_usage)
    second = node("Second CA", first, usage=ca_usage)
    leaf = node("Leaf", second, ca=False, usage=usage(digital_signature=True))
    error = odd_check(odd_root, leaf, first, second)
    assert error.code is RejectReason.INVALID_CHAIN
    assert "'CN=First CA'" in error.reason and "allows 0 intermediate CA(s)" in error.reason


def test_issuer_must_be_a_ca_with_key_cert_sign(odd_root: Node) -> None:
    not_ca = node("Not a CA", odd_root, ca=False, usage=usage(digital_signature=True))
    leaf = node("Leaf", not_ca, ca=False)
    error = odd_check(odd_root, leaf, not_ca)
    assert "'CN=Not a CA'" in error.reason and "is not a CA" in error.reason
    no_sign = node("No keyCertSign", odd_root, usage=usage(crl_sign=True))
    error = odd_check(odd_root, node("Leaf", no_sign, ca=False), no_sign)
    assert "keyUsage without keyCertSign" in error.reason


def test_unknown_critical_extension_and_ca_leaf(odd_root: Node) -> None:
    constrained = x509.NameConstraints([x509.DNSName("example.nl")], None)
    leaf = node("Leaf", odd_root, ca=False, extra=(constrained,))
    error = odd_check(odd_root, leaf)
    assert "critical extension this gateway does not process (nameConstraints" in error.reason
    ca_leaf = node("Some CA", odd_root, usage=usage(key_cert_sign=True))
    assert "is a CA certificate, not one of a party" in odd_check(odd_root, ca_leaf).reason


def test_expired_intermediate_fails_a_valid_leaf(odd_root: Node) -> None:
    old = node("Old CA", odd_root, not_after=NOW - timedelta(hours=1))
    leaf = node("Leaf", old, ca=False)
    error = odd_check(odd_root, leaf, old)
    assert error.code is RejectReason.EXPIRED
    assert (
        "CA certificate in the chain of 'CN=Leaf'" in error.reason and "'CN=Old CA'" in error.reason
    )


def test_leaf_without_key_usage_extensions(odd_root: Node) -> None:
    """RFC 5280: no keyUsage allows every use; tls-server still wants serverAuth."""
    leaf = node("Plain", odd_root, basic=False)
    trust = TrustStore([odd_root.cert], crl_mode="off")
    for purpose in ("signing", "encryption", "tls-client"):
        trust.check_certificate(leaf.cert, purpose=purpose, at=NOW)
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    server = node("Server", odd_root, ca=False, extra=(eku,))
    trust.check_certificate(server.cert, purpose="tls-server", at=NOW)


# -- settings -----------------------------------------------------------------------------


def test_settings_from_table(tmp_path: Path) -> None:
    settings = TrustSettings.from_table(
        {
            "trust_anchors": ["root.pem", "/etc/dkgw/extra"],
            "intermediates": "chain.pem",
            "crl_dir": "crl",
            "crl_urls": ["http://crl.example.nl/ca.crl"],
            "crl_refresh": 3600,
            "crl_mode": "require",
            "legacy_crypto": True,
        },
        base_dir=tmp_path,
    )
    assert settings.trust_anchors == (tmp_path / "root.pem", Path("/etc/dkgw/extra"))
    assert settings.intermediates == (tmp_path / "chain.pem",)
    assert settings.crl_dir == tmp_path / "crl"
    assert settings.crl_refresh == 3600.0 and settings.crl_mode == "require"
    assert settings.legacy_crypto is True
    defaults = TrustSettings.from_table({})
    assert defaults == TrustSettings()
    assert defaults.crl_mode == "best-effort" and defaults.crl_refresh == 4 * 3600


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"crl_mod": "off"}, "unknown option(s) 'crl_mod' in [security]"),
        ({"crl_mode": "strict"}, "crl_mode must be one of 'require', 'best-effort', 'off'"),
        ({"crl_refresh": 86400}, "PKIoverheid: refresh CRLs at least every 4 hours"),
        ({"crl_refresh": 5}, "between 60 and 14400"),
        ({"crl_refresh": "4h"}, "crl_refresh must be a number of seconds"),
        ({"crl_urls": ["ldap://x/y"]}, "not an http(s) URL: 'ldap://x/y'"),
        ({"crl_urls": "http://x/y"}, "crl_urls must be a list"),
        ({"legacy_crypto": "yes"}, "legacy_crypto must be true or false"),
        ({"trust_anchors": [""]}, "trust_anchors must be a path"),
        ({"crl_dir": 3}, "crl_dir must be a path"),
    ],
)
def test_settings_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        TrustSettings.from_table(table)
    assert message in str(info.value)


def test_store_from_settings_loads_the_crl_directory(pki: Path, tmp_path: Path) -> None:
    crl_dir = tmp_path / "crl"
    crl_dir.mkdir()
    (crl_dir / "intermediate.pem").write_bytes((pki / "ca/intermediate.crl.pem").read_bytes())
    settings = TrustSettings.from_table(
        {"intermediates": "ca/chain.pem", "crl_dir": str(crl_dir)}, base_dir=pki
    )
    trust = TrustStore.from_settings(settings, default_anchors=[pki / "ca/root.pem"])
    assert len(trust.anchors) == 1 and len(trust.intermediates) == 1  # root not repeated
    assert [r.number for r in trust.crls.records()] == [1]
    assert rejected(trust, load_cert(pki / "negative/revoked-signing.pem")).code == (
        RejectReason.REVOKED
    )
    assert len(load_certificates(pki / "ca")) == 4  # root, intermediate, chain (2), CRL skipped


# -- refreshing over HTTP -----------------------------------------------------------------


class CrlResource(Resource):
    """Serves whatever the test puts in ``body`` with status ``code``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b""
        self.code = 200
        self.hits = 0

    chunked = False
    """Send the body without Content-Length (chunked), as a streaming server would."""

    def render_GET(self, request: Request) -> bytes | int:
        self.hits += 1
        request.setResponseCode(self.code)
        if not self.chunked:
            return self.body
        request.write(self.body)
        request.finish()
        return NOT_DONE_YET


@pytest.fixture
def crl_server() -> Iterator[tuple[CrlResource, str]]:
    resource = CrlResource()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        yield resource, f"http://127.0.0.1:{port.getHost().port}/intermediate.crl"
    finally:
        port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refresher_fetches_and_keeps_the_last_good_crl(
    pki: Path, crl_server: tuple[CrlResource, str], caplog: pytest.LogCaptureFixture
) -> None:
    resource, url = crl_server
    intermediate = load_cert(pki / "ca/intermediate.pem")
    key = key_of(pki, "ca/intermediate.key")
    revoked = load_cert(pki / "negative/revoked-signing.pem")
    trust = store(pki, crl=False)
    refresher = CrlRefresher(trust.crls, reactor, urls=[url], timeout=5)

    resource.body = make_crl(intermediate, key, revoked=(revoked.serial_number,), number=7)
    await refresher.refresh()
    assert [r.number for r in trust.crls.records()] == [7]
    assert trust.crls.records()[0].source == url and refresher.failures == {}
    assert rejected(trust, revoked).code is RejectReason.REVOKED

    with caplog.at_level(logging.ERROR, logger="dkgw.crl"):
        resource.code = 500
        await refresher.refresh()
        assert "HTTP 500" in refresher.failures[url]
        resource.code, resource.body = 200, b"<html>captive portal</html>"
        await refresher.refresh()
        assert "not a PEM or DER CRL" in refresher.failures[url]
        resource.body = make_crl(intermediate, key_of(pki, "negative/foreign-ca.key"), number=8)
        await refresher.refresh()
        assert "does not verify" in refresher.failures[url]
    assert [r.number for r in trust.crls.records()] == [7]  # the last good one stays
    assert rejected(trust, revoked).code is RejectReason.REVOKED
    assert len([r for r in caplog.records if "keeping the CRL held before" in r.getMessage()]) == 3

    resource.body = make_crl(intermediate, key, number=9)
    await refresher.refresh()
    assert [r.number for r in trust.crls.records()] == [9] and refresher.failures == {}
    assert resource.hits == 5


@pytest_twisted.ensureDeferred
async def test_refresher_size_cap_and_unreachable_server(
    pki: Path, crl_server: tuple[CrlResource, str]
) -> None:
    resource, url = crl_server
    resource.body = b"x" * 5000
    crls = CrlStore(issuers=[load_cert(pki / "ca/intermediate.pem")])
    # A port nobody listens on: bind one and close it again.
    spare = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    dead = f"http://127.0.0.1:{spare.getHost().port}/x.crl"
    await spare.stopListening()
    refresher = CrlRefresher(crls, reactor, urls=[url, dead], timeout=5, max_bytes=1000)
    await refresher.refresh()
    assert "5000 bytes, more than 1000 allowed" in refresher.failures[url]
    resource.chunked = True  # no Content-Length: the cap applies while reading
    await refresher.refresh()
    assert "more than the 1000 bytes allowed" in refresher.failures[url]
    assert "refused" in refresher.failures[dead].lower()
    assert crls.records() == []


@pytest_twisted.ensureDeferred
async def test_refresher_start_runs_a_first_round_then_repeats(
    pki: Path, crl_server: tuple[CrlResource, str], tmp_path: Path
) -> None:
    resource, url = crl_server
    intermediate = load_cert(pki / "ca/intermediate.pem")
    resource.body = make_crl(intermediate, key_of(pki, "ca/intermediate.key"), number=3)
    root = load_cert(pki / "ca/root.pem")
    (tmp_path / "root.crl").write_bytes(make_crl(root, key_of(pki, "ca/root.key")))
    crls = CrlStore(issuers=[root, intermediate])
    refresher = CrlRefresher(crls, reactor, urls=[url], directory=tmp_path, interval=0.05)
    try:
        await refresher.start()
        assert sorted(r.number or 0 for r in crls.records()) == [1, 3]
        for _ in range(100):
            if resource.hits >= 3:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        assert resource.hits >= 3
    finally:
        refresher.stop()
