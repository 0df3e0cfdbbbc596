"""Our certificates and keys, read for ``dkgw serve --check``: findings, not exceptions.

Each pair the configuration names (:func:`our_pairs`) is read and checked:
the files can be read and parsed, the key is not encrypted and belongs to the
certificate, it is not readable by others, the certificate is valid now and
for some weeks yet, and it chains to our trust anchors for its purpose as
partners will judge it.  Nothing is raised; every problem is a
:class:`~gateway.material.findings.Finding`.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from gateway.material.findings import Finding, error, warning
from gateway.trust import CertificateRejected, Purpose, RejectReason, TrustStore

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

#: A certificate expiring within this is worth a warning: PKIoverheid renewals
#: take weeks (a new CPA with every partner).
EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class PairSpec:
    """A certificate and key the configuration names: where, which files, for what."""

    subject: str
    """The certificate's option, as findings name it: ``[tls] client_certificate``."""
    certificate: Path
    key: Path
    purpose: Purpose
    checked_against_trust: bool = True
    """False for the API and admin listeners: their certificates may come from
    another CA than PKIoverheid."""


def our_pairs(config: GatewayConfig) -> list[PairSpec]:
    """Every certificate and key the configuration names, in report order."""
    tls, sec, api, admin = config.tls, config.security, config.api, config.admin
    pairs = [
        PairSpec("[tls] certificate", tls.certificate, tls.key, "tls-server"),
        PairSpec("[tls] client_certificate", tls.client_certificate, tls.client_key, "tls-client"),
    ]
    optional: list[tuple[str, Path | None, Path | None, Purpose, bool]] = [
        ("[security] signing_certificate", sec.signing_certificate, sec.signing_key,
         "signing", True),
        ("[security] encryption_certificate", sec.encryption_certificate, sec.encryption_key,
         "encryption", True),
        # Our [api]/[admin] certificates may come from another CA than PKIoverheid.
        ("[api] certificate", api.certificate, api.key, "tls-server", False),
        ("[admin] certificate", admin.certificate, admin.key, "tls-server", False),
    ]  # fmt: skip
    pairs += [
        PairSpec(subject, cert, key, purpose, trusted)
        for subject, cert, key, purpose, trusted in optional
        if cert is not None and key is not None
    ]
    return pairs


@dataclass(frozen=True)
class Inspected:
    """What :func:`inspect_pairs` found: the findings, and the DER of each readable certificate."""

    findings: list[Finding]
    certificates: dict[str, bytes]
    """By subject (``[tls] certificate``)."""


def inspect_pairs(
    config: GatewayConfig, trust: TrustStore | None, now: datetime, *, crls_at_hand: bool
) -> Inspected:
    """Read and check every pair of :func:`our_pairs`."""
    findings: list[Finding] = []
    loaded: dict[str, bytes] = {}
    for pair in our_pairs(config):
        findings += check_key_permissions(pair.subject.replace("certificate", "key"), pair.key)
        cert, problems = load_pair(pair.subject, pair.certificate, pair.key)
        findings += problems
        if cert is None:
            continue
        loaded[pair.subject] = cert.public_bytes(Encoding.DER)
        findings += check_validity(pair.subject, cert, now)
        if trust is not None and pair.checked_against_trust:
            findings += check_trusted(
                pair.subject, cert, pair.purpose, trust, now, report_unchecked=crls_at_hand
            )
    return Inspected(findings, loaded)


def check_key_permissions(subject: str, path: Path) -> list[Finding]:
    """A private key readable by others is an error, by the group a warning."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return []  # reported once, by load_pair
    if mode & stat.S_IROTH:
        return [error(subject, f"{path} is readable by everyone (mode {mode:04o}); chmod 600 it")]
    if mode & stat.S_IRGRP:
        return [warning(subject, f"{path} is readable by its group (mode {mode:04o})")]
    return []


def _spki(key: object) -> bytes:
    public = getattr(key, "public_key", None)
    if public is None:
        return b""
    spki: bytes = public().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return spki


def load_pair(
    subject: str, cert_path: Path, key_path: Path
) -> tuple[x509.Certificate | None, list[Finding]]:
    """Read a certificate and its private key; the certificate (if readable) and findings.

    Findings: a file that cannot be read or parsed, an encrypted key, a key that
    does not belong to the certificate.
    """
    findings: list[Finding] = []
    key_subject = subject.replace("certificate", "key")  # "[tls] client_key"
    cert: x509.Certificate | None = None
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except OSError as exc:
        findings.append(error(subject, f"cannot read {cert_path}: {exc.strerror}"))
    except ValueError:
        findings.append(error(subject, f"{cert_path} holds no PEM certificate"))
    key: PrivateKeyTypes | None = None
    try:
        key = load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        findings.append(error(key_subject, f"cannot read {key_path}: {exc.strerror}"))
    except TypeError:
        findings.append(error(key_subject, f"{key_path} is encrypted; give it unencrypted"))
    except ValueError:
        findings.append(error(key_subject, f"{key_path} holds no PEM private key"))
    if cert is not None and key is not None and _spki(key) != _spki(cert):
        findings.append(
            error(
                subject,
                f"the private key {key_path} does not belong to the certificate {cert_path}",
            )
        )
    return cert, findings


def _day(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def check_validity(
    subject: str, cert: x509.Certificate, now: datetime, warn: timedelta = EXPIRY_WARNING
) -> list[Finding]:
    """Expired or not yet valid: error; expiring within ``warn``: warning."""
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if after <= now:
        return [error(subject, f"certificate expired on {_day(after)}")]
    if before > now:
        return [error(subject, f"certificate is not valid before {_day(before)}")]
    if after - now <= warn:
        days = (after - now).days
        return [warning(subject, f"certificate expires on {_day(after)} (in {days} days)")]
    return []


def check_trusted(
    subject: str,
    cert: x509.Certificate,
    purpose: Purpose,
    trust: TrustStore,
    now: datetime,
    *,
    report_unchecked: bool = True,
) -> list[Finding]:
    """Chain, usage and revocation (per ``crl_mode``) as partners will judge it.

    Validity dates are :func:`check_validity`'s business and not repeated here.
    With ``report_unchecked`` a revocation that could not be checked (crl_mode
    ``best-effort`` without a CRL of the issuer) is a warning.
    """
    try:
        # The CRL store logs what best-effort let pass; here it becomes a finding.
        with _quiet("dkgw.crl"):
            checked = trust.check_certificate(cert, purpose=purpose, at=now, now=now)
    except CertificateRejected as exc:
        if exc.code in (RejectReason.EXPIRED, RejectReason.NOT_YET_VALID):
            return []
        return [error(subject, exc.reason)]
    if not report_unchecked:
        return []
    return [warning(subject, text) for text in checked.warnings]


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = before
