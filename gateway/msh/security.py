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
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from cpa.resolve import Route
from gateway.ebms.checks import CheckFailed
from gateway.ebms.envelope import Envelope
from gateway.ebms.model import EbmsError, ErrorCode
from gateway.ebms.xmldsig import SignatureError, digest_stream, sign_envelope
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
from gateway.msh.facts import CertificateMap
from gateway.msh.keys import MessageSecurity, SecurityUnavailable, verify_with_any
from gateway.store.records import AttachmentRecord, fingerprint
from gateway.trust import CertificateRejected

log = logging.getLogger("dkgw.security")

__all__ = [
    "MessageSecurity",
    "SecurityUnavailable",
    "decrypted_fingerprint",
    "open_inbound",
    "protect",
    "sign_acknowledgment",
]

_LOC_SIGNATURE = "//Header/Signature"


# -- outbound -------------------------------------------------------------------------


def protect(
    route: Route,
    envelope: bytes,
    parts: Sequence[AttachmentRecord],
    security: MessageSecurity | None,
    certificates: CertificateMap,
    *,
    now: datetime,
) -> tuple[bytes, tuple[AttachmentRecord, ...]]:
    """The envelope and parts to store and send: signed, then encrypted, as the route says.

    Unsigned routes get their input back; the encryption certificate is the
    CPA's after ``certificates``.  Raises :class:`SecurityUnavailable`.
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
        parts = _encrypt(route, parts, security, certificates, now)
    return envelope, tuple(parts)


def _encrypt(
    route: Route,
    parts: Sequence[AttachmentRecord],
    security: MessageSecurity,
    certificates: CertificateMap,
    now: datetime,
) -> list[AttachmentRecord]:
    envelope = route.encryption
    assert envelope is not None
    cpa_id = route.cpa.cpa_id
    try:
        recipient = certificates.certificate(route.encryption_certificate)
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
    route: Route,
    env: Envelope,
    envelope: bytes,
    payloads: Sequence[AttachmentRecord],
    security: MessageSecurity | None,
    certificates: CertificateMap,
) -> tuple[AttachmentRecord, ...]:
    """Decrypt and verify a received business message; returns the plaintext payloads.

    The signature is checked with the sender's signing certificate in the CPA,
    after ``certificates`` (both during a rollover).

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
        candidates = certificates.signing_candidates(route.signing_certificate)
    except (LookupError, ValueError):
        raise _failure("the CPA names no usable signing certificate", _LOC_SIGNATURE) from None
    policy = security.policy(route.signing, f"verifying in CPA {cpa_id}")
    parts = {p.content_id: p.open for p in payloads}
    try:
        certificate = verify_with_any(envelope, parts, candidates, policy)
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
