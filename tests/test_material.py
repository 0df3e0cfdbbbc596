"""The one loader of key and TLS material (gateway/material/load.py), on the example PKI.

``serve`` loads through it at start and at a reload, ``send`` and ``upload`` their
message security; ``serve --check`` reads the same pairs (:func:`our_pairs`).
No store, no sockets.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.api.config import ApiConfig
from gateway.material.inspect import our_pairs
from gateway.material.load import (
    load_listener_tls,
    load_material,
    load_message_security,
    load_tls,
)
from tests.conftest import load_cert
from tests.gateways import gateway_config, security_config

GEMEENTE = "gemeente-voorbeeld"


def _der(path: Path) -> bytes:
    return load_cert(path).public_bytes(Encoding.DER)


def test_the_material_of_a_config_is_what_its_files_hold(pki: Path, tmp_path: Path) -> None:
    config = gateway_config(
        pki,
        GEMEENTE,
        tmp_path,
        "sqlite:///unused",
        security=security_config(pki, GEMEENTE),
    )
    material = load_material(config)
    party = pki / GEMEENTE
    assert material.tls.server.certificate.public_bytes(Encoding.DER) == _der(
        party / "tls-server.pem"
    )
    assert material.tls.client.certificate.public_bytes(Encoding.DER) == _der(
        party / "tls-client.pem"
    )
    # [tls] chain is sent with both identities.
    chain = _der(pki / "ca" / "intermediate.pem")
    assert [c.public_bytes(Encoding.DER) for c in material.tls.server.chain] == [chain]
    assert [a.public_bytes(Encoding.DER) for a in material.tls.anchors] == [
        _der(pki / "ca" / "root.pem")
    ]
    security = material.security
    assert security.signing_key is not None and security.encryption_key is not None
    # The trust store falls back to [tls] trust_anchors and chain.
    assert security.trust is not None
    assert [a.public_bytes(Encoding.DER) for a in security.trust.anchors] == [
        _der(pki / "ca" / "root.pem")
    ]
    assert [c.public_bytes(Encoding.DER) for c in security.trust.intermediates] == [chain]


def test_the_trust_store_alone_leaves_the_keys_unread(pki: Path, tmp_path: Path) -> None:
    broken = tmp_path / "signing.key"
    broken.write_text("not a key", encoding="utf-8")
    security = dataclasses.replace(security_config(pki, GEMEENTE), signing_key=broken)
    config = gateway_config(pki, GEMEENTE, tmp_path, "sqlite:///unused", security=security)
    assert load_message_security(config, keys=False).signing_key is None
    with pytest.raises(ValueError, match=r"\[security\] signing key/certificate"):
        load_message_security(config)


def test_a_key_that_is_not_the_certificates_is_refused_naming_both(
    pki: Path, tmp_path: Path
) -> None:
    config = gateway_config(pki, GEMEENTE, tmp_path, "sqlite:///unused")
    wrong = dataclasses.replace(config.tls, key=pki / GEMEENTE / "tls-client.key")
    with pytest.raises(ValueError, match="does not belong to the certificate") as caught:
        load_tls(wrong)
    assert "tls-client.key" in str(caught.value) and "tls-server.pem" in str(caught.value)


def test_a_listener_speaks_https_only_with_certificate_and_key(pki: Path, tmp_path: Path) -> None:
    party = pki / GEMEENTE
    assert load_listener_tls(ApiConfig(port=0)) is None
    plain = load_listener_tls(
        ApiConfig(port=0, certificate=party / "tls-server.pem", key=party / "tls-server.key")
    )
    assert plain is not None and plain.client_anchors == ()
    mutual = load_listener_tls(
        ApiConfig(
            port=0,
            certificate=party / "tls-server.pem",
            key=party / "tls-server.key",
            client_ca=pki / "ca" / "root.pem",
        )
    )
    assert mutual is not None and len(mutual.client_anchors) == 1


def test_a_reload_reads_the_files_as_they_are_now(pki: Path, tmp_path: Path) -> None:
    # The serve reload calls load_tls again; a rotated certificate is picked up.
    own = tmp_path / "own"
    shutil.copytree(pki / GEMEENTE, own)
    config = gateway_config(pki, GEMEENTE, tmp_path, "sqlite:///unused")
    tls = dataclasses.replace(
        config.tls, certificate=own / "tls-server.pem", key=own / "tls-server.key"
    )
    before = load_tls(tls).server.certificate
    shutil.copy(own / "tls-client.pem", own / "tls-server.pem")
    shutil.copy(own / "tls-client.key", own / "tls-server.key")
    after = load_tls(tls).server.certificate
    assert before != after and after == load_cert(own / "tls-client.pem")


def test_serve_check_reads_the_pairs_the_loader_loads(pki: Path, tmp_path: Path) -> None:
    party = pki / GEMEENTE
    api = ApiConfig(port=0, certificate=party / "tls-server.pem", key=party / "tls-server.key")
    config = gateway_config(
        pki,
        GEMEENTE,
        tmp_path,
        "sqlite:///unused",
        security=security_config(pki, GEMEENTE),
        api=api,
    )
    assert [(p.subject, p.purpose, p.checked_against_trust) for p in our_pairs(config)] == [
        ("[tls] certificate", "tls-server", True),
        ("[tls] client_certificate", "tls-client", True),
        ("[security] signing_certificate", "signing", True),
        ("[security] encryption_certificate", "encryption", True),
        ("[api] certificate", "tls-server", False),
    ]
