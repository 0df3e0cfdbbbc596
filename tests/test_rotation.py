"""Rolling our TLS certificates over without a new CPA: two real gateways on 127.0.0.1.

The municipality (``a``) renews its TLS client and server certificates (a new
certificate for the same key, from the test CA).  The node (``b``) maps the
CPA's old certificates to the new ones (``certificate_mapping``) before the
swap, so during the overlap it accepts either: messages sent before, during
and after the swap, both ways, are all delivered and none is refused
(docs/operations.md, "Certificate rotation").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.store.certmap import set_mapping
from tests.conftest import DIALECTS, load_cert
from tests.gateways import Pair, Side, gateway_config, security_config, store_url, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def renew(pki: Path, old: Path, new: Path, *, key: Path | None = None) -> x509.Certificate:
    """Issue a new certificate like ``old`` (same subject and extensions).

    For the key of ``old``, or with ``key`` for a new RSA key written there.
    """
    ca_cert = load_cert(pki / "ca" / "intermediate.pem")
    ca_key: Any = serialization.load_pem_private_key(
        (pki / "ca" / "intermediate.key").read_bytes(), None
    )
    cert = load_cert(old)
    public_key: Any = cert.public_key()
    if key is not None:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key.chmod(0o600)
        public_key = private.public_key()
    now = datetime.now(UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
    )
    for ext in cert.extensions:
        if ext.oid == x509.ExtensionOID.AUTHORITY_KEY_IDENTIFIER:
            continue
        if key is not None and ext.oid == x509.ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key), ext.critical
            )
            continue
        builder = builder.add_extension(ext.value, ext.critical)
    renewed = builder.sign(ca_key, hashes.SHA256())
    new.write_bytes(renewed.public_bytes(serialization.Encoding.PEM))
    return renewed


@pytest_twisted.async_yield_fixture
async def pair(pki: Path, make_spec, tmp_path: Path, dialect: str) -> AsyncIterator[Pair]:
    a = Side(
        "a",
        gateway_config(
            pki, "gemeente-voorbeeld", tmp_path / "a", store_url(dialect, tmp_path, "a")
        ),
    )
    b = Side(
        "b",
        gateway_config(pki, "ggk-rinis-test", tmp_path / "b", store_url(dialect, tmp_path, "b")),
    )
    a.start()
    b.start()
    pair = Pair(a, b, "rotation-cpa", make_spec, {"profile": "osb-be"})
    pair.import_cpa()
    yield pair
    await pair.stop()


async def delivered_both_ways(pair: Pair) -> None:
    sent = [await pair.send(), await pair.send(from_a=False)]
    for q, side in zip(sent, (pair.a, pair.b), strict=True):
        assert await wait_until(
            lambda q=q, side=side: side.status(q.message_id, "out") == "DELIVERED"
        )


@pytest_twisted.ensureDeferred
async def test_our_tls_certificates_roll_over_without_a_new_cpa(
    pair: Pair, pki: Path, tmp_path: Path
) -> None:
    der = serialization.Encoding.DER
    party = pki / "gemeente-voorbeeld"
    new_client = renew(pki, party / "tls-client.pem", tmp_path / "new-tls-client.pem")
    new_server = renew(pki, party / "tls-server.pem", tmp_path / "new-tls-server.pem")

    await delivered_both_ways(pair)  # before

    # The partner maps the CPA's certificates to the new ones ahead of the swap.
    with pair.b.db.transaction() as cur:
        for old, new in (("tls-client.pem", new_client), ("tls-server.pem", new_server)):
            set_mapping(
                cur, load_cert(party / old).public_bytes(der), new.public_bytes(der), pair.cpa_id
            )
    await delivered_both_ways(pair)  # during the overlap, the old certificates still in use

    # The swap: the municipality restarts with its new certificates.
    await pair.a.stop()
    tls = replace(
        pair.a.config.tls,
        certificate=tmp_path / "new-tls-server.pem",
        client_certificate=tmp_path / "new-tls-client.pem",
    )
    pair.a.config = replace(pair.a.config, tls=tls)
    pair.a.start()
    await delivered_both_ways(pair)  # after

    refused = pair.b.rows(
        "SELECT count(*) FROM delivery_attempt WHERE outcome <> 'done'"
    ) + pair.a.rows("SELECT count(*) FROM delivery_attempt WHERE outcome <> 'done'")
    assert refused == [(0,), (0,)]


@pytest_twisted.ensureDeferred
async def test_a_new_signing_key_rolls_over_without_a_new_cpa(
    pki: Path, make_spec, tmp_path: Path, dialect: str
) -> None:
    """The municipality signs with a new key; the node maps the CPA's signing
    certificate to the new one first and accepts both during the overlap."""
    sides = {}
    for name, slug in (("a", "gemeente-voorbeeld"), ("b", "ggk-rinis-test")):
        config = gateway_config(
            pki, slug, tmp_path / name, store_url(dialect, tmp_path, name),
            security=security_config(pki, slug),
        )  # fmt: skip
        sides[name] = Side(name, config)
        sides[name].start()
    pair = Pair(sides["a"], sides["b"], "signing-rotation", make_spec, {"profile": "osb-be-s"})
    pair.import_cpa()
    try:
        party = pki / "gemeente-voorbeeld"
        new_key = tmp_path / "new-signing.key"
        new = renew(pki, party / "signing.pem", tmp_path / "new-signing.pem", key=new_key)
        der = serialization.Encoding.DER

        await delivered_both_ways(pair)  # before
        with pair.b.db.transaction() as cur:
            set_mapping(
                cur, load_cert(party / "signing.pem").public_bytes(der), new.public_bytes(der),
                pair.cpa_id,
            )  # fmt: skip
        await delivered_both_ways(pair)  # during: still signed with the old key

        await pair.a.stop()
        security = replace(
            pair.a.config.security,
            signing_certificate=tmp_path / "new-signing.pem",
            signing_key=new_key,
        )
        pair.a.config = replace(pair.a.config, security=security)
        pair.a.start()
        await delivered_both_ways(pair)  # after: signed with the new key

        refused = pair.b.rows(
            "SELECT count(*) FROM delivery_attempt WHERE outcome <> 'done'"
        ) + pair.a.rows("SELECT count(*) FROM delivery_attempt WHERE outcome <> 'done'")
        assert refused == [(0,), (0,)]
        received = pair.b.rows(
            "SELECT count(*) FROM ebms_message WHERE direction = 'in' AND status = 'RECEIVED'"
        )
        assert received == [(3,)]
    finally:
        await pair.stop()
