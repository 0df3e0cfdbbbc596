"""Certificate revocation lists: loading, checking, and keeping them fresh.

Digikoppeling requires a CRL check for every partner certificate, PKIoverheid-conform
[DK PKI002-PKI004]: CRLs refreshed at least every 4 hours, an expired CRL invalidating
every certificate of that CA, and the CRLs of the whole chain taken into account
(Digikoppeling Beveiligingsstandaarden).  This module holds the CRLs:

* :class:`CrlStore` parses PEM or DER CRLs, accepts only those whose signature
  verifies with the key of a CA it knows (the configured trust anchors and
  intermediates), keeps the newest per CA, and answers "is this certificate on the
  CRL of that CA?" and "what does the CRL policy say about it?"
  (:meth:`CrlStore.status`).  No I/O, no Twisted.
* :class:`~gateway.crl_refresh.CrlRefresher` (a module of its own, the only one
  of the two that imports Twisted) fetches CRLs from URLs on the reactor, with a
  timeout and a size cap, and re-reads a CRL directory, every ``interval``
  seconds (4 h by default).  A failed fetch is logged and the last good CRL
  stays in use.

What to do when no usable CRL covers a certificate is :data:`CrlMode`:
``"require"`` refuses the certificate, ``"best-effort"`` (the default) accepts it and
logs a warning, ``"off"`` does not look at CRLs at all.

Only complete, direct CRLs are supported (RFC 5280 §5): a CRL that is a delta CRL,
indirect, limited to some revocation reasons, or that carries another critical
extension this module does not understand is refused when loaded, because using it
as if it were complete could let a revoked certificate through.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeAlias, get_args

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

__all__ = [
    "CRL_MODES",
    "CrlError",
    "CrlMode",
    "CrlRecord",
    "CrlStore",
    "RevocationInfo",
    "RevocationStatus",
]

log = logging.getLogger("dkgw.crl")

CrlMode: TypeAlias = Literal["require", "best-effort", "off"]
#: The values :data:`CrlMode` may take, for validating settings.
CRL_MODES: tuple[str, ...] = get_args(CrlMode)

#: Largest CRL accepted from a URL.  PKIoverheid CRLs are a few hundred kilobytes;
#: the cap only stops a misbehaving server from filling memory.
MAX_CRL_BYTES = 20 * 1024 * 1024

#: Default refresh interval: PKIoverheid asks for at least every 4 hours [PKI002].
DEFAULT_REFRESH_SECONDS = 4 * 3600.0

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)

#: CRL extensions this module understands; any other critical one makes a CRL unusable
#: (RFC 5280 §5.2).  The delta CRL indicator is understood in order to refuse it.
_KNOWN_CRL_EXTENSIONS = frozenset(
    {
        ExtensionOID.CRL_NUMBER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.ISSUING_DISTRIBUTION_POINT,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
        ExtensionOID.FRESHEST_CRL,
    }
)
_KNOWN_ENTRY_EXTENSIONS = frozenset(
    {CRLEntryExtensionOID.CRL_REASON, CRLEntryExtensionOID.INVALIDITY_DATE}
)


class CrlError(ValueError):
    """A CRL that cannot be used; the text says which and why."""


def _name(name: x509.Name) -> str:
    # RFC 4514 has no short name for serialNumber (the OIN's place); spell it out.
    return name.rfc4514_string({x509.NameOID.SERIAL_NUMBER: "serialNumber"})


def stamp(when: datetime) -> str:
    """A UTC time for messages, to the second: ``2026-11-23 14:21:02Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _key_id(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """Who a CA is for CRL purposes: its name and its key (RFC 5280 §6.3.3 (f))."""
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return cert.subject.public_bytes(), hashlib.sha256(spki).digest()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


@dataclass(frozen=True)
class RevocationInfo:
    """A certificate found on a CRL."""

    serial_number: int
    revoked_at: datetime
    reason: str | None
    """The CRL reason code (RFC 5280 §5.3.1), e.g. ``keyCompromise``; None when absent."""
    crl_issuer: str
    crl_source: str

    def describe(self) -> str:
        """One line for a log or an error message."""
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"revoked on {stamp(self.revoked_at)}{why} "
            f"according to the CRL of {self.crl_issuer} from {self.crl_source}"
        )


@dataclass(frozen=True)
class CrlRecord:
    """One verified CRL and the CA that signed it."""

    crl: x509.CertificateRevocationList
    issuer: x509.Certificate
    source: str
    """Where it came from: a file path or URL, for log messages."""
    number: int | None
    this_update: datetime
    next_update: datetime
    scope: Literal["all", "end-entity", "ca"]
    """Which certificates it lists (issuingDistributionPoint onlyContains...)."""
    distribution_point: tuple[x509.GeneralName, ...] = ()
    """The issuingDistributionPoint fullName; empty when the CRL covers the whole CA."""

    @property
    def issuer_name(self) -> str:
        """The CA's name as text."""
        return _name(self.issuer.subject)

    def is_stale(self, now: datetime) -> bool:
        """True once ``now`` is past nextUpdate: the CA promises nothing any more."""
        return now > self.next_update

    def is_newer_than(self, other: CrlRecord) -> bool:
        """True when this CRL supersedes ``other`` (by CRLNumber, else thisUpdate)."""
        if self.number is not None and other.number is not None:
            return self.number > other.number
        return self.this_update > other.this_update

    def covers(self, cert: x509.Certificate) -> bool:
        """True when this CRL is the one that would list ``cert`` if it were revoked."""
        if self.scope == "ca" and not _is_ca(cert):
            return False
        if self.scope == "end-entity" and _is_ca(cert):
            return False
        if not self.distribution_point:
            return True
        # A partitioned CRL only speaks for the certificates that point at it
        # (RFC 5280 §6.3.3 (b)(2)(i)).
        try:
            points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            return False
        wanted = set(self.distribution_point)
        return any(wanted.intersection(p.full_name or ()) for p in points)

    def lookup(self, cert: x509.Certificate) -> RevocationInfo | None:
        """The entry for ``cert`` on this CRL, or None when it is not listed."""
        entry = self.crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is None:
            return None
        reason: str | None = None
        with contextlib.suppress(x509.ExtensionNotFound):
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        return RevocationInfo(
            serial_number=cert.serial_number,
            revoked_at=entry.revocation_date_utc,
            reason=reason,
            crl_issuer=self.issuer_name,
            crl_source=self.source,
        )

    def describe(self) -> str:
        """One line for a log message."""
        number = "without CRLNumber" if self.number is None else f"number {self.number}"
        return (
            f"CRL of {self.issuer_name} ({number}, thisUpdate {stamp(self.this_update)}, "
            f"nextUpdate {stamp(self.next_update)}) from {self.source}"
        )


@dataclass(frozen=True)
class RevocationStatus:
    """What the CRLs and the CRL policy say about one certificate."""

    revoked: RevocationInfo | None = None
    problem: str | None = None
    """Why revocation could not be checked (no CRL, stale CRL); None when it was."""
    record: CrlRecord | None = None
    """The CRL consulted, if any."""


def split_crls(data: bytes) -> list[bytes]:
    """The CRLs in ``data``: each PEM block as its own item, or ``data`` itself as DER."""
    blocks = _PEM_CRL.findall(data)
    if blocks:
        return list(blocks)
    return [data]


def _parse(blob: bytes) -> x509.CertificateRevocationList:
    try:
        if blob.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(blob)
        return x509.load_der_x509_crl(blob)
    except ValueError as exc:
        raise CrlError(f"not a PEM or DER CRL ({exc})") from None


def _check_extensions(crl: x509.CertificateRevocationList) -> None:
    """Refuse CRLs that cannot be used as a complete list (see the module docstring)."""
    try:
        extensions = list(crl.extensions)
    except ValueError as exc:
        raise CrlError(f"malformed CRL extension ({exc})") from None
    for ext in extensions:
        if ext.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise CrlError("delta CRLs are not supported; publish or configure the full CRL")
        if ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
            raise CrlError(f"unsupported critical CRL extension {ext.oid.dotted_string}")
    for entry in crl:
        for ext in entry.extensions:
            if ext.oid == CRLEntryExtensionOID.CERTIFICATE_ISSUER:
                raise CrlError("indirect CRLs (certificateIssuer entries) are not supported")
            if ext.critical and ext.oid not in _KNOWN_ENTRY_EXTENSIONS:
                raise CrlError(f"unsupported critical CRL entry extension {ext.oid.dotted_string}")


def _scope(
    crl: x509.CertificateRevocationList,
) -> tuple[Literal["all", "end-entity", "ca"], tuple[x509.GeneralName, ...]]:
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return "all", ()
    if idp.indirect_crl:
        raise CrlError("indirect CRLs are not supported")
    if idp.only_some_reasons:
        # It would say nothing about certificates revoked for other reasons.
        raise CrlError("CRLs limited to some revocation reasons are not supported")
    if idp.only_contains_attribute_certs:
        raise CrlError("a CRL of attribute certificates says nothing about X.509 certificates")
    if idp.relative_name is not None:
        raise CrlError("an issuingDistributionPoint with a relative name is not supported")
    points = tuple(idp.full_name or ())
    if idp.only_contains_user_certs:
        return "end-entity", points
    if idp.only_contains_ca_certs:
        return "ca", points
    return "all", points


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


#: Where a CRL is kept: its CA's name and key, and its distribution point (partitions).
_Slot: TypeAlias = tuple[bytes, bytes, tuple[x509.GeneralName, ...]]


@dataclass
class CrlStore:
    """The CRLs in use: at most one, the newest, per CA.

    ``issuers`` are the CA certificates whose CRLs are accepted (the trust anchors and
    configured intermediates); a CRL that no such CA signed is refused, so nobody can
    feed in a CRL that hides a revocation or invents one.  Load CRLs from one thread
    (the reactor's, as the refresher does); lookups may run in other threads meanwhile,
    because records are only ever replaced whole, never changed.
    """

    issuers: Sequence[x509.Certificate] = ()
    mode: CrlMode = "best-effort"
    _records: dict[_Slot, CrlRecord] = field(default_factory=dict, repr=False)
    _warned: set[tuple[tuple[bytes, bytes], str]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in CRL_MODES:
            raise ValueError(f"crl mode must be one of {', '.join(CRL_MODES)}, not {self.mode!r}")
        self.issuers = tuple(self.issuers)

    def parse(self, data: bytes, *, source: str) -> list[CrlRecord]:
        """Verify the CRL(s) in ``data`` (PEM, possibly several, or one DER) without keeping them.

        Raises :class:`CrlError` naming ``source`` when a CRL cannot be read, is not
        signed by a known CA (or by one not allowed to sign CRLs), lacks nextUpdate,
        or is of a kind not supported.
        """
        records = []
        for blob in split_crls(data):
            try:
                records.append(self._verify(_parse(blob), source))
            except CrlError as exc:
                raise CrlError(f"{source}: {exc}") from None
        return records

    def _verify(self, crl: x509.CertificateRevocationList, source: str) -> CrlRecord:
        issuer_name = _name(crl.issuer)
        candidates = [ca for ca in self.issuers if ca.subject == crl.issuer]
        if not candidates:
            raise CrlError(f"CRL issued by {issuer_name}, which is not a configured CA")
        signer = None
        for ca in candidates:
            try:
                valid = crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
            except TypeError:  # a key type that cannot sign CRLs
                valid = False
            if valid:
                signer = ca
                break
        if signer is None:
            raise CrlError(f"the signature of the CRL of {issuer_name} does not verify")
        try:
            usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
            if not usage.crl_sign:
                raise CrlError(f"{issuer_name} may not sign CRLs (keyUsage without cRLSign)")
        except x509.ExtensionNotFound:
            pass
        _check_extensions(crl)
        next_update = crl.next_update_utc
        if next_update is None:
            # RFC 5280 §5.1.2.5: issuers MUST include it; without it nothing says
            # when the list stops being current.
            raise CrlError(f"the CRL of {issuer_name} has no nextUpdate")
        scope, points = _scope(crl)
        return CrlRecord(
            crl=crl,
            issuer=signer,
            source=source,
            number=_crl_number(crl),
            this_update=crl.last_update_utc,
            next_update=next_update,
            scope=scope,
            distribution_point=points,
        )

    def add(self, record: CrlRecord) -> bool:
        """Keep ``record`` unless a newer (or the same) CRL of its CA is held; True if kept.

        Records for a partitioned CRL (with a distribution point) are kept per
        distribution point, so partitions do not replace each other.
        """
        key = _key_id(record.issuer)
        slot = (*key, record.distribution_point)
        held = self._records.get(slot)
        if held is not None and not record.is_newer_than(held):
            return False
        self._records[slot] = record
        self._warned = {w for w in self._warned if w[0] != key}
        return True

    def load(self, data: bytes, *, source: str) -> list[CrlRecord]:
        """Verify and keep the CRL(s) in ``data``; returns those now in use.

        A CRL older than the one held for its CA is passed over (logged), so a
        replayed old CRL cannot undo a revocation.  Raises :class:`CrlError`.
        """
        kept = []
        for record in self.parse(data, source=source):
            if self.add(record):
                log.info("using %s", record.describe())
                kept.append(record)
            else:
                log.info("not newer than the CRL in use, ignored: %s", record.describe())
        return kept

    def load_directory(self, directory: Path) -> list[CrlRecord]:
        """Load every ``*.crl``, ``*.pem`` and ``*.der`` file in ``directory``.

        A file that cannot be used is logged and skipped, so one bad download does
        not take the other CRLs down; ``*.pem`` files without a CRL (certificates)
        are passed over silently.  Raises OSError when the directory cannot be read.
        """
        kept = []
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() not in (".crl", ".pem", ".der") or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.error("cannot read CRL file %s: %s", path, exc.strerror)
                continue
            if path.suffix.lower() == ".pem" and not _PEM_CRL.search(data):
                continue
            try:
                kept += self.load(data, source=str(path))
            except CrlError as exc:
                log.error("CRL refused: %s", exc)
        return kept

    def records(self) -> list[CrlRecord]:
        """The CRLs in use."""
        return list(self._records.values())

    def _covering(self, cert: x509.Certificate, issuer: x509.Certificate) -> list[CrlRecord]:
        key = _key_id(issuer)
        return [
            record
            # A snapshot: the refresher may replace records meanwhile (see the class).
            for slot, record in list(self._records.items())
            if slot[:2] == key and record.covers(cert)
        ]

    def is_revoked(
        self, cert: x509.Certificate, issuer: x509.Certificate | None = None
    ) -> RevocationInfo | None:
        """The CRL entry for ``cert``, or None when no CRL held lists it.

        ``issuer`` is the CA certificate the chain check found for ``cert``; without
        it the CA is any known one whose key verifies ``cert``'s signature.  Pure
        lookup: says nothing about whether the CRL is current (see :meth:`status`).
        """
        issuers = [issuer] if issuer is not None else self._issuers_of(cert)
        for ca in issuers:
            for record in self._covering(cert, ca):
                found = record.lookup(cert)
                if found is not None:
                    return found
        return None

    def _issuers_of(self, cert: x509.Certificate) -> list[x509.Certificate]:
        found = []
        for ca in self.issuers:
            try:
                cert.verify_directly_issued_by(ca)
            except Exception:  # noqa: S112 - name mismatch, bad signature, odd key: not it
                continue
            found.append(ca)
        return found

    def status(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: datetime
    ) -> RevocationStatus:
        """Revocation of ``cert`` (issued by ``issuer``) under this store's :data:`CrlMode`.

        ``revoked`` is set when a CRL held lists the certificate, stale or not: a
        revocation never expires.  ``problem`` is set when no current CRL covers it;
        in ``"best-effort"`` mode that is also logged as a warning, once per CA until
        its next CRL arrives.  In ``"off"`` mode nothing is looked at.
        """
        if self.mode == "off":
            return RevocationStatus()
        records = self._covering(cert, issuer)
        for record in records:
            found = record.lookup(cert)
            if found is not None:
                return RevocationStatus(revoked=found, record=record)
        current = [r for r in records if not r.is_stale(now)]
        if current:
            return RevocationStatus(record=current[0])
        issuer_name = _name(issuer.subject)
        if records:
            stale = max(records, key=lambda r: r.next_update)
            problem = (
                f"the CRL of {issuer_name} expired at {stamp(stale.next_update)} "
                f"(nextUpdate; from {stale.source}) and no newer one could be loaded"
            )
        else:
            problem = f"no CRL of {issuer_name} is loaded"
            stale = None
        if self.mode == "best-effort":
            marker = (_key_id(issuer), "stale" if stale else "missing")
            if marker not in self._warned:
                self._warned.add(marker)
                log.warning("revocation not checked (crl_mode best-effort): %s", problem)
        return RevocationStatus(problem=problem, record=stale)
