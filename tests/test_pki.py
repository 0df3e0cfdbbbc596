"""The example TEST PKI (certs-example/make-pki), checked with cryptography and openssl."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509 import DNSName
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tests.conftest import GEMEENTE_OIN, MAKE_PKI, NODE_OIN

PARTIES = {"gemeente-voorbeeld": GEMEENTE_OIN, "ggk-rinis-test": NODE_OIN}
KINDS = ("tls-server", "tls-client", "signing", "encryption")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def run(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MAKE_PKI), "--out", str(out), *args], capture_output=True, text=True
    )


def openssl_verify(pki: Path, cert: Path, *extra: str) -> bool:
    done = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(pki / "ca/root.pem"),
            "-untrusted",
            str(pki / "ca/intermediate.pem"),
            *extra,
            str(cert),
        ],
        capture_output=True,
        text=True,
    )
    return done.returncode == 0


def test_layout_and_key_permissions(pki: Path) -> None:
    files = [
        "ca/root.pem",
        "ca/intermediate.pem",
        "ca/chain.pem",
        "ca/intermediate.crl.pem",
        "parties.json",
        "README.txt",
    ]
    files += [
        f"{slug}/{kind}.{ext}" for slug in PARTIES for kind in KINDS for ext in ("pem", "key")
    ]
    files += [
        f"negative/{n}.{ext}"
        for n in ("expired", "revoked", "foreign-ca", "foreign-client")
        for ext in ("pem", "key")
    ]
    for relative in files:
        assert (pki / relative).is_file(), relative
    for key in pki.rglob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    manifest = json.loads((pki / "parties.json").read_text())
    assert {p["slug"]: p["oin"] for p in manifest["parties"]} == PARTIES
    assert "TEST" in manifest["warning"]
    root = load(pki / "ca/root.pem")
    assert "TEST" in root.subject.rfc4514_string()


@pytest.mark.parametrize("slug", PARTIES)
def test_party_leaves_chain_to_the_root(pki: Path, slug: str) -> None:
    root, intermediate = load(pki / "ca/root.pem"), load(pki / "ca/intermediate.pem")
    builder = PolicyBuilder().store(Store([root]))
    server = load(pki / slug / "tls-server.pem")
    builder.build_server_verifier(DNSName("localhost")).verify(server, [intermediate])
    client = load(pki / slug / "tls-client.pem")
    builder.build_client_verifier().verify(client, [intermediate])
    for kind in KINDS:
        assert openssl_verify(pki, pki / slug / f"{kind}.pem"), kind


@pytest.mark.parametrize("slug", PARTIES)
def test_leaf_contents(pki: Path, slug: str) -> None:
    for kind in KINDS:
        cert = load(pki / slug / f"{kind}.pem")
        (serial,) = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
        assert serial.value == PARTIES[slug] and len(str(serial.value)) == 20
        key = load_pem_private_key((pki / slug / f"{kind}.key").read_bytes(), None)
        assert key.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        ) == cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = load(pki / slug / "tls-server.pem")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    client = load(pki / slug / "tls-client.pem")
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    signing = load(pki / slug / "signing.pem").extensions.get_extension_for_class(x509.KeyUsage)
    assert signing.value.digital_signature and signing.value.content_commitment
    assert not signing.value.key_encipherment
    enc = load(pki / slug / "encryption.pem").extensions.get_extension_for_class(x509.KeyUsage)
    assert enc.value.key_encipherment and not enc.value.digital_signature


def test_negative_material(pki: Path) -> None:
    now = datetime.now(UTC)
    root, intermediate = load(pki / "ca/root.pem"), load(pki / "ca/intermediate.pem")
    expired = load(pki / "negative/expired.pem")
    assert expired.not_valid_after_utc < now
    assert not openssl_verify(pki, pki / "negative/expired.pem")

    impostor = load(pki / "negative/foreign-client.pem")
    genuine = load(pki / "gemeente-voorbeeld/tls-client.pem")
    assert impostor.subject == genuine.subject
    with pytest.raises(VerificationError):
        PolicyBuilder().store(Store([root])).build_client_verifier().verify(
            impostor, [intermediate]
        )
    assert not openssl_verify(pki, pki / "negative/foreign-client.pem")

    revoked = load(pki / "negative/revoked.pem")
    crl = x509.load_pem_x509_crl((pki / "ca/intermediate.crl.pem").read_bytes())
    assert crl.is_signature_valid(intermediate.public_key())
    assert crl.get_revoked_certificate_by_serial_number(revoked.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(genuine.serial_number) is None
    crl_args = ("-crl_check", "-CRLfile", str(pki / "ca/intermediate.crl.pem"))
    assert openssl_verify(pki, pki / "negative/revoked.pem")  # valid without CRL checking
    assert not openssl_verify(pki, pki / "negative/revoked.pem", *crl_args)
    assert openssl_verify(pki, pki / "gemeente-voorbeeld/tls-client.pem", *crl_args)


def test_idempotent_and_force(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    assert run(out, "--quiet").returncode == 0
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    again = run(out)
    assert again.returncode == 0 and "up to date" in again.stdout
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert after == before
    root = (out / "ca/root.pem").read_bytes()
    assert run(out, "--force", "--quiet").returncode == 0
    assert (out / "ca/root.pem").read_bytes() != root
    (out / "ggk-rinis-test/signing.pem").unlink()  # an incomplete PKI is regenerated
    assert "written" in run(out).stdout
    assert (out / "ggk-rinis-test/signing.pem").is_file()
    assert not list(tmp_path.glob(".make-pki-*")) and not (tmp_path / "pki.old").exists()


def test_usage_error_exits_2(tmp_path: Path) -> None:
    assert run(tmp_path, "--no-such-option").returncode == 2
