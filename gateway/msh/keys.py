"""Our keys and trust store for message-level security, and the signature check they serve.

:class:`MessageSecurity` is the ``[security]`` section loaded once (the
signing and encryption keys and the trust store, docs/security.md); the
functions of :mod:`gateway.msh.security` and :mod:`gateway.msh.ack_check` take
it with the certificates already resolved from the CPA and the certificate
mappings, never a cursor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cpa.model import NonRepudiation
from gateway.ebms.xmldsig import (
    C14N_EXCLUSIVE,
    RSA_SHA1,
    SHA1,
    SHA224,
    PartOpener,
    SignatureError,
    SignaturePolicy,
    SigningKey,
    verify_envelope,
)
from gateway.settings.security import SecurityConfig
from gateway.trust import TrustStore

log = logging.getLogger("dkgw.security")

__all__ = ["LEGACY_SIGNING", "MessageSecurity", "SecurityUnavailable", "verify_with_any"]

#: Algorithms only the legacy switch admits [DK SIGN001-004]; each use is logged.
LEGACY_SIGNING = frozenset({SHA1, SHA224, RSA_SHA1})


class SecurityUnavailable(ValueError):
    """A message cannot be signed or encrypted as its CPA demands; the text says why."""


@dataclass(frozen=True)
class MessageSecurity:
    """Our keys and trust decisions for message-level security (``[security]``)."""

    signing_key: SigningKey | None = None
    encryption_key: rsa.RSAPrivateKey | None = None
    trust: TrustStore | None = None
    legacy: bool = False
    c14n: str = C14N_EXCLUSIVE
    """Sending choice; receivers accept both (docs/security.md)."""

    @classmethod
    def load(
        cls,
        config: SecurityConfig,
        *,
        default_anchors: Sequence[Path],
        default_intermediates: Sequence[Path] = (),
    ) -> MessageSecurity:
        """Read the keys and build the trust store; raises ValueError naming what is wrong.

        ``default_anchors`` and ``default_intermediates`` (the TLS trust anchors
        and chain) apply when ``[security]`` names none.  A key must belong to
        its certificate: a mismatch found at start beats a partner refusing
        every message.
        """
        signing = None
        if config.signing_certificate is not None and config.signing_key is not None:
            try:
                signing = SigningKey.from_pem(
                    config.signing_key.read_bytes(), config.signing_certificate.read_bytes()
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"[security] signing key/certificate: {exc}") from None
        encryption = None
        if config.encryption_certificate is not None and config.encryption_key is not None:
            encryption = _load_encryption_key(config.encryption_key, config.encryption_certificate)
        settings = config.trust
        if not settings.intermediates and default_intermediates:
            settings = replace(settings, intermediates=tuple(default_intermediates))
        trust = TrustStore.from_settings(settings, default_anchors=default_anchors)
        return cls(signing, encryption, trust, legacy=config.legacy_crypto)

    # -- helpers ------------------------------------------------------------------------

    def policy(self, non_repudiation: NonRepudiation, what: str) -> SignaturePolicy:
        """The signature policy of a channel; logs a warning when it is a legacy one."""
        policy = SignaturePolicy.from_cpa(non_repudiation, legacy=self.legacy)
        legacy = {policy.signature_method, policy.digest_method} & LEGACY_SIGNING
        if legacy and self.legacy:
            log.warning("legacy algorithm %s used for %s", ", ".join(sorted(legacy)), what)
        return policy


def _load_encryption_key(key_path: Path, cert_path: Path) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"[security] encryption key/certificate: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("[security] encryption_key: the profile encrypts with RSA keys only")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ValueError("[security] encryption_key does not belong to encryption_certificate")
    return key


def verify_with_any(
    envelope: bytes,
    parts: Mapping[str, PartOpener],
    certificates: Sequence[x509.Certificate],
    policy: SignaturePolicy,
) -> x509.Certificate:
    """The first certificate the signature verifies with; else the first one's error."""
    first: SignatureError | None = None
    for certificate in certificates:
        try:
            verify_envelope(envelope, parts, certificate, policy)
        except SignatureError as exc:
            first = first or exc
            continue
        return certificate
    assert first is not None
    raise first
