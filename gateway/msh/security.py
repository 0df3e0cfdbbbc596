"""Message-level security of the MSH: sign and encrypt outbound, decrypt and verify inbound.

The "-s" profiles sign every business message, the "-e" profiles sign it and
then encrypt its payloads (Koppelvlakstandaard ebMS2; docs/security.md).  The order is
ebms-core's: the signature covers the *plaintext* payloads, so the sender
signs first and encrypts after, and the receiver decrypts first and verifies
after.  The cryptography itself lives in :mod:`gateway.ebms.xmldsig` and
:mod:`gateway.ebms.xmlenc`, the certificate decisions in :mod:`gateway.trust`;
this module decides *when* and *with which key*, from the CPA route:

* signing key: ours, from ``[security]``; algorithms: the sending channel's
  ``SenderNonRepudiation``;
* encryption certificate: the receiver's ``EncryptionCertificateRef`` in the
  CPA after certificate mapping, algorithm: its ``EncryptionAlgorithm``, key
  transport: RSA-OAEP [DK ENC004];
* verification certificate: the From party's ``SigningCertificateRef`` in the
  CPA after certificate mapping (never the message's KeyInfo), checked against
  the trust store at the message Timestamp.

Every inbound failure becomes a ``SecurityFailure`` MessageError; outbound
problems (no key configured, a certificate missing from the CPA, an algorithm
that is not allowed) raise :class:`SecurityUnavailable` before anything is
stored.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cpa.model import MSH_SERVICE, Certificate, Cpa, NonRepudiation, PartyId, Service
from cpa.resolve import ResolutionError, Route, resolve
from gateway.config import SecurityConfig
from gateway.ebms.checks import CheckFailed
from gateway.ebms.envelope import Envelope, EnvelopeError, parse_envelope
from gateway.ebms.model import EbmsError, ErrorCode, SignalAction
from gateway.ebms.xmldsig import (
    C14N_EXCLUSIVE,
    RSA_SHA1,
    SHA1,
    SHA224,
    PartOpener,
    SignatureError,
    SignaturePolicy,
    SigningKey,
    check_ack_references,
    digest_stream,
    read_references,
    sign_envelope,
    verify_envelope,
)
from gateway.ebms.xmlenc import (
    DATA_ALGORITHMS,
    DEFAULT_MAX_ENCRYPTED_BYTES,
    ENCRYPTED_CONTENT_TYPE,
    SNIFF_BYTES,
    DecryptionError,
    EncryptionError,
    data_algorithm_for,
    decrypt_part,
    encrypt_part,
    looks_encrypted,
)
from gateway.store.certmap import resolve_certificate
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor
from gateway.store.messages import AttachmentRecord, StoredMessage, fingerprint
from gateway.trust import CertificateRejected, TrustStore

log = logging.getLogger("dkgw.security")

__all__ = [
    "AckVerifier",
    "MessageSecurity",
    "SecurityUnavailable",
    "decrypted_fingerprint",
    "open_inbound",
    "protect_outbound",
    "sign_acknowledgment",
]

#: Algorithms only the legacy switch admits [DK SIGN001-004]; each use is logged.
LEGACY_SIGNING = frozenset({SHA1, SHA224, RSA_SHA1})
_LOC_SIGNATURE = "//Header/Signature"


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


def _cpa_certificate(cur: Cursor, cert: Certificate | None, cpa_id: str) -> x509.Certificate:
    """A certificate the CPA names, after the operator's certificate mapping."""
    if cert is None or cert.der is None:
        raise LookupError("the CPA names no such certificate")
    return x509.load_der_x509_certificate(resolve_certificate(cur, cert.der, cpa_id))


def _signing_certificates(
    cur: Cursor, cert: Certificate | None, cpa_id: str
) -> list[x509.Certificate]:
    """The certificates a partner's signature may verify against: the mapped one first.

    During a rollover (docs/operations.md, "Certificate rotation") the operator
    maps the CPA's signing certificate to the partner's new one; messages signed
    with the old key are still on their way, so the CPA's certificate is
    accepted beside its successor until the mapping and the CPA are replaced.
    """
    if cert is None or cert.der is None:
        raise LookupError("the CPA names no such certificate")
    mapped = resolve_certificate(cur, cert.der, cpa_id)
    ders = [mapped] if mapped == bytes(cert.der) else [mapped, bytes(cert.der)]
    return [x509.load_der_x509_certificate(der) for der in ders]


def _verify_with_any(
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


def _signal_route(cpa: Cpa, from_ids: Sequence[PartyId], to_ids: Sequence[PartyId]) -> Route:
    return resolve(
        cpa,
        from_ids=tuple(from_ids),
        from_role=None,
        to_ids=tuple(to_ids),
        to_role=None,
        service=Service(MSH_SERVICE),
        action=SignalAction.ACKNOWLEDGMENT.value,
    )


# -- outbound -------------------------------------------------------------------------


def protect_outbound(
    cur: Cursor,
    route: Route,
    envelope: bytes,
    parts: Sequence[AttachmentRecord],
    security: MessageSecurity | None,
    *,
    now: datetime,
) -> tuple[bytes, tuple[AttachmentRecord, ...]]:
    """The envelope and parts to store and send: signed, then encrypted, as the route says.

    Unsigned routes get their input back.  Raises :class:`SecurityUnavailable`.
    """
    if route.signing is None and route.encryption is None:
        return envelope, tuple(parts)
    if security is None:
        raise SecurityUnavailable(f"profile {route.profile} needs a [security] configuration")
    cpa_id = route.cpa.cpa_id
    if route.signing is not None:
        if security.signing_key is None:
            raise SecurityUnavailable(
                f"profile {route.profile} signs, but [security] has no signing_key"
            )
        policy = security.policy(route.signing, f"signing in CPA {cpa_id}")
        try:
            # ebMS 2.0 §4.1.4.1: one reference per payload, over the plaintext octets.
            digests = [(p.content_id, digest_stream(policy.digest_method, p.open())) for p in parts]
            envelope = sign_envelope(
                envelope, digests, security.signing_key, policy, c14n=security.c14n
            )
        except ValueError as exc:
            raise SecurityUnavailable(f"cannot sign under CPA {cpa_id}: {exc}") from None
    if route.encryption is not None:
        parts = _encrypt(cur, route, parts, security, now)
    return envelope, tuple(parts)


def _encrypt(
    cur: Cursor,
    route: Route,
    parts: Sequence[AttachmentRecord],
    security: MessageSecurity,
    now: datetime,
) -> list[AttachmentRecord]:
    envelope = route.encryption
    assert envelope is not None
    cpa_id = route.cpa.cpa_id
    try:
        recipient = _cpa_certificate(cur, route.encryption_certificate, cpa_id)
    except (LookupError, ValueError):
        raise SecurityUnavailable(
            f"CPA {cpa_id} gives {route.to_party.party_name!r} no usable encryption certificate"
        ) from None
    if security.trust is not None:
        try:
            security.trust.check_certificate(recipient, purpose="encryption", at=now)
        except CertificateRejected as exc:
            raise SecurityUnavailable(f"encryption certificate refused: {exc.reason}") from None
    try:
        algorithm = data_algorithm_for(envelope, legacy=security.legacy)
    except EncryptionError as exc:
        raise SecurityUnavailable(f"cannot encrypt under CPA {cpa_id}: {exc}") from None
    if DATA_ALGORITHMS[algorithm].legacy:
        log.warning("legacy algorithm %s used for encryption in CPA %s", algorithm, cpa_id)
    out = []
    for part in parts:
        try:
            body = encrypt_part(
                part.open(),
                content_id=part.content_id,
                mime_type=part.content_type,
                recipient_cert=recipient,
                data_algorithm=algorithm,
                legacy=security.legacy,
                minimum_strength=envelope.minimum_strength,
            )
        except EncryptionError as exc:
            raise SecurityUnavailable(f"cannot encrypt {part.content_id}: {exc}") from None
        # docs/security.md: same Content-ID, Content-Type application/xml.
        out.append(replace(part, content_type=ENCRYPTED_CONTENT_TYPE, content=body))
    return out


def sign_acknowledgment(
    ack_envelope: bytes, ack_route: Route | None, fallback: Route, security: MessageSecurity | None
) -> bytes:
    """Sign an acknowledgment that the sender asked to be signed (ebMS 2.0 §6.3.2.5).

    The algorithms are those of our MSH channel (``ack_route``), else of the
    business channel the message came on; the ack has no payload references.
    Raises :class:`SecurityUnavailable` without a signing key.
    """
    if security is None or security.signing_key is None:
        raise SecurityUnavailable("a signed acknowledgment needs [security] signing_key")
    non_repudiation = (ack_route.signing if ack_route else None) or fallback.signing
    if non_repudiation is None:
        raise SecurityUnavailable("the CPA names no signature algorithms for acknowledgments")
    policy = security.policy(non_repudiation, "a signed acknowledgment")
    try:
        return sign_envelope(ack_envelope, [], security.signing_key, policy, c14n=security.c14n)
    except ValueError as exc:
        raise SecurityUnavailable(f"cannot sign the acknowledgment: {exc}") from None


# -- inbound --------------------------------------------------------------------------


def _failure(description: str, location: str) -> CheckFailed:
    return CheckFailed(EbmsError(ErrorCode.SECURITY_FAILURE, location, description))


def _decrypt(
    payloads: Sequence[AttachmentRecord], security: MessageSecurity | None, cpa_id: str
) -> list[AttachmentRecord]:
    out = []
    for part in payloads:
        location = f"cid:{part.content_id}"
        if not looks_encrypted(part.content_type, part.head(SNIFF_BYTES)):
            # docs/security.md: a part that should be encrypted and is not.
            raise _failure("payload is not encrypted", location)
        if security is None or security.encryption_key is None:
            raise _failure("this gateway has no key to decrypt with", location)
        if part.size > DEFAULT_MAX_ENCRYPTED_BYTES:
            # decrypt_part's own answer, before an oversized spooled part is read.
            raise _failure(
                f"encrypted part is {part.size} bytes, the limit is {DEFAULT_MAX_ENCRYPTED_BYTES}",
                location,
            )
        try:
            plain = decrypt_part(
                # Encrypted parts are capped (above), so this is the one place a
                # received payload is read whole.
                part.data(),
                private_key=security.encryption_key,
                legacy=security.legacy,
                on_legacy=lambda uri: log.warning(
                    "legacy algorithm %s used for decryption in CPA %s", uri, cpa_id
                ),
            )
        except DecryptionError as exc:
            raise _failure(exc.description, location) from None
        content_type = plain.mime_type or "application/octet-stream"
        out.append(replace(part, content_type=content_type, content=plain.content))
    return out


def open_inbound(
    cur: Cursor,
    route: Route,
    env: Envelope,
    envelope: bytes,
    payloads: Sequence[AttachmentRecord],
    security: MessageSecurity | None,
) -> tuple[AttachmentRecord, ...]:
    """Decrypt and verify a received business message; returns the plaintext payloads.

    Raises :class:`~gateway.ebms.checks.CheckFailed` with a ``SecurityFailure``.
    Unsigned, unencrypted routes get their payloads back untouched.
    """
    cpa_id = route.cpa.cpa_id
    if route.encryption is not None:
        payloads = _decrypt(payloads, security, cpa_id)
    if route.signing is None:
        return tuple(payloads)
    if security is None or security.trust is None:
        raise _failure("this gateway cannot verify signatures", _LOC_SIGNATURE)
    try:
        candidates = _signing_certificates(cur, route.signing_certificate, cpa_id)
    except (LookupError, ValueError):
        raise _failure("the CPA names no usable signing certificate", _LOC_SIGNATURE) from None
    policy = security.policy(route.signing, f"verifying in CPA {cpa_id}")
    parts = {p.content_id: p.open for p in payloads}
    try:
        certificate = _verify_with_any(envelope, parts, candidates, policy)
    except SignatureError as exc:
        raise CheckFailed(exc.to_error()) from None
    try:
        # ebms-core judges the signing certificate at the message Timestamp (§5.3).
        security.trust.check_certificate(certificate, purpose="signing", at=env.header.timestamp)
    except CertificateRejected as exc:
        raise _failure(exc.reason, _LOC_SIGNATURE) from None
    return tuple(payloads)


def decrypted_fingerprint(
    envelope: bytes, attachments: Sequence[AttachmentRecord], security: MessageSecurity | None
) -> str | None:
    """The store fingerprint of a resent encrypted message (it stores plaintext).

    None when a part does not decrypt or nothing was encrypted.
    """
    if security is None or security.encryption_key is None:
        return None
    if not any(looks_encrypted(a.content_type, a.head(SNIFF_BYTES)) for a in attachments):
        return None
    try:
        plain = _decrypt(
            [a for a in attachments if looks_encrypted(a.content_type, a.head(SNIFF_BYTES))],
            security,
            "",
        )
    except CheckFailed:
        return None
    by_id = {p.content_id: p for p in plain}
    return fingerprint(envelope, [by_id.get(a.content_id, a) for a in attachments])


# -- signed acknowledgments, on the sending side -----------------------------------------


class AckVerifier:
    """Decides whether an acknowledgment of one of our messages may settle it.

    Only messages that asked for a signed acknowledgment are checked (ebMS 2.0
    §6.3.2.5): the ack's signature must verify with the
    acking party's signing certificate from the CPA, that certificate must be
    trusted at the ack's Timestamp, and its ``ds:Reference`` elements must be
    those of the signature we sent.
    """

    def __init__(self, registry: CpaRegistry, security: MessageSecurity | None) -> None:
        self.registry = registry
        self.security = security

    def __call__(self, cur: Cursor, ours: StoredMessage, ack: Envelope, body: bytes) -> str | None:
        """None when the ack is acceptable, else why it is not."""
        try:
            sent, _ = parse_envelope(ours.envelope)
        except EnvelopeError:
            return "our stored message is unreadable"
        if sent.ack_requested is None or not sent.ack_requested.signed:
            return None
        if self.security is None or self.security.trust is None:
            return "a signed acknowledgment was asked for, but [security] is not configured"
        try:
            cpa = self.registry.get_cpa(ours.cpa_id, cur)
            route = _signal_route(cpa, ack.header.from_ids, ack.header.to_ids)
        except (LookupError, ResolutionError) as exc:
            return f"no CPA channel for the acknowledgment: {exc}"
        if route.signing is None:
            return "the CPA names no signing certificate for the acknowledging party"
        try:
            candidates = _signing_certificates(cur, route.signing_certificate, ours.cpa_id)
        except (LookupError, ValueError):
            return "the CPA names no usable signing certificate for the acknowledging party"
        policy = self.security.policy(route.signing, f"a signed acknowledgment in CPA {cpa.cpa_id}")
        try:
            certificate = _verify_with_any(body, {}, candidates, policy)
            check_ack_references(body, read_references(ours.envelope))
            self.security.trust.check_certificate(
                certificate, purpose="signing", at=ack.header.timestamp.astimezone(UTC)
            )
        except SignatureError as exc:
            return f"{exc.description} at {exc.location}"
        except CertificateRejected as exc:
            return f"signing certificate refused: {exc.reason}"
        return None
