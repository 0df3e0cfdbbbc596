"""Trust decisions about partner certificates: chain, validity, key usage, revocation.

Digikoppeling certificates are PKIoverheid certificates, under the "Staat der
Nederlanden Private Root" for machine-to-machine traffic [PKI005], with the
holder's OIN in the subject serialNumber [PKI001]; dates and CRL must be checked
for every peer certificate [PKI002-PKI004] (Digikoppeling Beveiligingsstandaarden).  A signing
certificate is checked at the message's Timestamp, as ebms-core's
``EbMSSignatureValidator`` does (docs/security.md, "Receiving").
:meth:`TrustStore.check_certificate` does all of that for one
certificate and one purpose and either returns what it found or raises
:class:`CertificateRejected` with a reason an operator can act on.

Why not ``cryptography.x509.verification`` (``PolicyBuilder``)?  It implements the
CA/Browser Forum web PKI profile: its verifiers only know the TLS purposes (there
is none for XML signing or key encipherment), it insists on extensions the web
profile wants (and, with a permissive extension policy, stops checking the
extended key usage altogether), it has no CRL support, and when a chain fails it
names the candidate that failed rather than the link and the rule.  PKIoverheid's
private hierarchy is not a web PKI, and an operator facing a refused partner needs
"expired on ..." or "not signed by ...", so the RFC 5280 §6.1 basic path
validation the gateway needs is done here with cryptography's primitives:
signatures (``verify_directly_issued_by``), basicConstraints and pathLen,
keyUsage of issuers, validity of every link, key usage for the purpose, and CRLs
(:mod:`gateway.crl`).  Not implemented, because PKIoverheid certificates do not
rely on them for Digikoppeling: certificate policy processing (policy OIDs are not
enforced) and name constraints (a critical nameConstraints extension makes the
chain fail, rather than be silently ignored).  Cross-checked against ``openssl
verify`` in the tests.

No Twisted here: the TLS layer and the MSH call this from wherever they run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from cpa.certificates import CertificateFacts, facts
from gateway.crl import CRL_MODES, DEFAULT_REFRESH_SECONDS, CrlMode, CrlStore, stamp

__all__ = [
    "PURPOSES",
    "CertificateRejected",
    "CheckedCertificate",
    "Purpose",
    "RejectReason",
    "TrustSettings",
    "TrustStore",
    "load_certificates",
]

Purpose: TypeAlias = Literal["signing", "encryption", "tls-client", "tls-server"]
#: The values :data:`Purpose` may take.
PURPOSES: tuple[str, ...] = get_args(Purpose)

#: Most certificates in a chain, leaf and anchor included.  PKIoverheid has four
#: levels (root, domain CA, TSP CA, leaf); the rest is headroom for cross-certificates.
MAX_CHAIN_LENGTH = 6

#: Smallest RSA key accepted without ``legacy_crypto``: the PKIoverheid minimum.
MIN_RSA_BITS = 2048

#: Extensions this module processes (or, for certificatePolicies, may ignore: policy
#: OIDs are not enforced and no policy constraints are accepted).  Any other critical
#: extension fails the chain (RFC 5280 §4.2).
_UNDERSTOOD = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.CERTIFICATE_POLICIES,
    }
)

_NAMES = {x509.NameOID.SERIAL_NUMBER: "serialNumber"}


class RejectReason(StrEnum):
    """Why a certificate was refused, for callers that map refusals to ebMS errors."""

    UNTRUSTED = "untrusted"  # no chain to a trust anchor
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    WRONG_USAGE = "wrong-usage"  # key usage / extended key usage / CA flag
    INVALID_CHAIN = "invalid-chain"  # an issuer that may not issue, unknown critical ext
    WEAK_CRYPTO = "weak-crypto"
    REVOKED = "revoked"
    REVOCATION_UNKNOWN = "revocation-unknown"  # crl_mode "require" without a current CRL


class CertificateRejected(Exception):
    """A certificate is not acceptable; ``str()`` is a complete sentence for an operator."""

    def __init__(self, code: RejectReason, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        """The kind of refusal."""
        self.reason = reason
        """The message: which certificate, which rule, which date or issuer."""


@dataclass(frozen=True)
class CheckedCertificate:
    """A certificate that passed :meth:`TrustStore.check_certificate`."""

    facts: CertificateFacts
    purpose: Purpose
    checked_at: datetime
    """The moment its validity was checked for (a message Timestamp, or now)."""
    chain: tuple[x509.Certificate, ...]
    """Leaf first, trust anchor last."""
    warnings: tuple[str, ...] = ()
    """What could not be checked but was let pass (crl_mode "best-effort")."""

    @property
    def oin(self) -> str | None:
        """The holder's OIN from the subject serialNumber [PKI001], if it has one."""
        return self.facts.oin

    @property
    def certificate(self) -> x509.Certificate:
        """The certificate that was checked."""
        return self.chain[0]


def _label(cert: x509.Certificate) -> str:
    """How a certificate is named in messages: subject and serial number."""
    return f"'{cert.subject.rfc4514_string(_NAMES)}' (serial {cert.serial_number:#x})"


def _whose(cert: x509.Certificate, leaf: x509.Certificate) -> str:
    """How a message starts: the checked certificate itself, or a CA in its chain."""
    if cert is leaf:
        return "certificate"
    return f"CA certificate in the chain of {_label(leaf)}:"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _extension(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _extension(cert, x509.BasicConstraints)
    return bool(constraints is not None and constraints.ca)


def load_certificates(path: Path) -> list[x509.Certificate]:
    """The certificates in a PEM or DER file, or in the certificate files of a directory.

    In a directory ``*.pem``, ``*.crt``, ``*.cer`` and ``*.der`` files are read, and
    PEM files without a certificate (a CRL, a key) are passed over.  Raises ValueError
    naming the file when a certificate cannot be read and OSError when a file cannot.
    """
    if path.is_dir():
        found = []
        for file in sorted(path.iterdir()):
            if file.suffix.lower() not in (".pem", ".crt", ".cer", ".der") or not file.is_file():
                continue
            data = file.read_bytes()
            if data.lstrip().startswith(b"-----BEGIN") and b"CERTIFICATE-----" not in data:
                continue
            found += _read_certificates(file, data)
        return found
    return _read_certificates(path, path.read_bytes())


def _read_certificates(path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ValueError(f"{path}: no certificate could be read ({exc})") from None


def _unique(certs: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    seen: dict[bytes, x509.Certificate] = {}
    for cert in certs:
        seen.setdefault(_der(cert), cert)
    return list(seen.values())


# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustSettings:
    """The ``[security]`` table of the configuration file.

    Example::

        [security]
        trust_anchors = ["certs/pkioverheid-private-root.pem"]   # files or directories
        intermediates = "certs/pkioverheid-chain.pem"  # CA certificates to build chains with
        crl_dir = "certs/crl"                # *.crl / *.pem / *.der, re-read at each refresh
        crl_urls = ["http://crl.pkioverheid.nl/PrivateRootLatestCRL.crl"]
        crl_refresh = 14400                  # seconds, at most 4 h [PKI002]
        crl_mode = "best-effort"             # or "require" or "off"
        legacy_crypto = false                # accept SHA-1 signed certificates, RSA < 2048

    Empty ``trust_anchors`` means "use the TLS trust anchors" (the caller decides).
    """

    trust_anchors: tuple[Path, ...] = ()
    intermediates: tuple[Path, ...] = ()
    crl_dir: Path | None = None
    crl_urls: tuple[str, ...] = ()
    crl_refresh: float = DEFAULT_REFRESH_SECONDS
    crl_mode: CrlMode = "best-effort"
    legacy_crypto: bool = False

    #: Bounds of ``crl_refresh``: at least a minute (do not hammer the CA), at most the
    #: 4 hours PKIoverheid allows between refreshes [PKI002].
    MIN_REFRESH = 60.0
    MAX_REFRESH = DEFAULT_REFRESH_SECONDS

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, base_dir: Path | None = None) -> TrustSettings:
        """Check a TOML ``[security]`` table; relative paths are taken from ``base_dir``.

        Raises ValueError naming the option for an unknown key or a wrong value.
        Files are not opened here (see :meth:`TrustStore.from_settings`).
        """
        if not isinstance(table, Mapping):
            raise ValueError("[security] must be a table")
        allowed = {
            "trust_anchors",
            "intermediates",
            "crl_dir",
            "crl_urls",
            "crl_refresh",
            "crl_mode",
            "legacy_crypto",
        }
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} in [security] "
                f"(known: {', '.join(sorted(allowed))})"
            )

        def path(value: Any, key: str) -> Path:
            if not isinstance(value, str) or not value:
                raise ValueError(f"[security] {key} must be a path (a non-empty string)")
            return base_dir / value if base_dir is not None else Path(value)

        def paths(key: str) -> tuple[Path, ...]:
            value = table.get(key, [])
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list):
                raise ValueError(f"[security] {key} must be a path or a list of paths")
            return tuple(path(v, key) for v in values)

        urls = table.get("crl_urls", [])
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ValueError("[security] crl_urls must be a list of http(s) URLs")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"[security] crl_urls: not an http(s) URL: {url!r}")

        refresh = table.get("crl_refresh", DEFAULT_REFRESH_SECONDS)
        if isinstance(refresh, bool) or not isinstance(refresh, int | float):
            raise ValueError(f"[security] crl_refresh must be a number of seconds, not {refresh!r}")
        if not cls.MIN_REFRESH <= refresh <= cls.MAX_REFRESH:
            raise ValueError(
                f"[security] crl_refresh must lie between {cls.MIN_REFRESH:.0f} and "
                f"{cls.MAX_REFRESH:.0f} seconds (PKIoverheid: refresh CRLs at least every "
                f"4 hours), not {refresh}"
            )

        mode = table.get("crl_mode", "best-effort")
        if mode not in CRL_MODES:
            raise ValueError(
                f"[security] crl_mode must be one of {', '.join(map(repr, CRL_MODES))}, "
                f"not {mode!r}"
            )
        legacy = table.get("legacy_crypto", False)
        if not isinstance(legacy, bool):
            raise ValueError(f"[security] legacy_crypto must be true or false, not {legacy!r}")

        crl_dir = table.get("crl_dir")
        return cls(
            trust_anchors=paths("trust_anchors"),
            intermediates=paths("intermediates"),
            crl_dir=None if crl_dir is None else path(crl_dir, "crl_dir"),
            crl_urls=tuple(urls),
            crl_refresh=float(refresh),
            crl_mode=mode,
            legacy_crypto=legacy,
        )


# -- the trust store --------------------------------------------------------------------


@dataclass
class TrustStore:
    """Trust anchors, helper intermediates and CRLs; decides on one certificate at a time.

    ``anchors`` are trusted as they are: a root, or a CA below it when an operator
    trusts only that CA (as :mod:`gateway.tls` does with ``PARTIAL_CHAIN``).
    ``intermediates`` only help to build chains and are never trusted themselves.  Their
    CRLs are accepted into :attr:`crls` (a CRL is only accepted from a CA listed here).
    """

    anchors: Sequence[x509.Certificate]
    intermediates: Sequence[x509.Certificate] = ()
    crl_mode: CrlMode = "best-effort"
    legacy_crypto: bool = False
    crls: CrlStore = field(init=False)

    def __post_init__(self) -> None:
        self.anchors = tuple(_unique(self.anchors))
        if not self.anchors:
            raise ValueError("at least one trust anchor is needed")
        for anchor in self.anchors:
            if not _is_ca(anchor):
                raise ValueError(
                    f"trust anchor {_label(anchor)} is not a CA certificate "
                    "(basicConstraints cA is not set); configure the CA that issued it"
                )
        anchor_ders = {_der(a) for a in self.anchors}
        self.intermediates = tuple(
            c for c in _unique(self.intermediates) if _der(c) not in anchor_ders
        )
        self.crls = CrlStore(issuers=self.ca_certificates, mode=self.crl_mode)

    @classmethod
    def from_files(
        cls,
        anchors: Path | Sequence[Path],
        intermediates: Path | Sequence[Path] = (),
        *,
        crl_mode: CrlMode = "best-effort",
        legacy_crypto: bool = False,
    ) -> TrustStore:
        """A store from certificate files or directories (see :func:`load_certificates`)."""
        anchor_paths = [anchors] if isinstance(anchors, Path) else list(anchors)
        chain_paths = [intermediates] if isinstance(intermediates, Path) else list(intermediates)
        return cls(
            anchors=[c for p in anchor_paths for c in load_certificates(p)],
            intermediates=[c for p in chain_paths for c in load_certificates(p)],
            crl_mode=crl_mode,
            legacy_crypto=legacy_crypto,
        )

    @classmethod
    def from_settings(
        cls, settings: TrustSettings, *, default_anchors: Sequence[Path] = ()
    ) -> TrustStore:
        """A store as ``[security]`` says, with the CRLs of ``crl_dir`` loaded.

        ``default_anchors`` is used when the settings name no trust anchors (the TLS
        trust anchors).  CRL URLs are not fetched here: start a
        :class:`gateway.crl_refresh.CrlRefresher` on :attr:`crls` for that.
        """
        store = cls.from_files(
            settings.trust_anchors or tuple(default_anchors),
            settings.intermediates,
            crl_mode=settings.crl_mode,
            legacy_crypto=settings.legacy_crypto,
        )
        if settings.crl_dir is not None and settings.crl_mode != "off":
            store.crls.load_directory(settings.crl_dir)
        return store

    @property
    def ca_certificates(self) -> tuple[x509.Certificate, ...]:
        """Anchors and intermediates: the CAs whose CRLs are accepted."""
        return (*self.anchors, *self.intermediates)

    def check_certificate(
        self,
        cert: x509.Certificate,
        *,
        purpose: Purpose,
        at: datetime,
        extra_intermediates: Iterable[x509.Certificate] = (),
        now: datetime | None = None,
    ) -> CheckedCertificate:
        """Check ``cert`` for ``purpose`` at the moment ``at``; raise if it is not acceptable.

        ``at`` is when the certificate must have been valid: the ebMS Timestamp of a
        signed message (ebms-core's ``EbMSSignatureValidator`` checks the signing
        certificate there; docs/security.md, "Receiving"), or the current time for
        TLS and encryption.  Every certificate of the chain must be valid at ``at``.
        Revocation is judged against the CRLs held and the current time ``now``
        (default: the clock): a revoked certificate is refused whatever the
        revocation date, since a key compromise is only noticed after the fact and
        a Timestamp is the sender's claim.
        ``extra_intermediates`` (from the message, the TLS handshake or the CPA) help
        to build the chain but are never trusted.

        Raises :class:`CertificateRejected`.  When several chains can be built, the
        first acceptable one is used; if none is, the refusal names the problem of the
        first (anchors are tried before intermediates, so that is the shortest chain).
        """
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}")
        if at.tzinfo is None or (now is not None and now.tzinfo is None):
            raise ValueError("at and now must be timezone-aware datetimes")
        when_now = now if now is not None else datetime.now(UTC)
        helpers = _unique([*self.intermediates, *extra_intermediates])

        first: CertificateRejected | None = None
        for path in self._paths(cert, helpers):
            try:
                warnings = self._check_path(path, purpose, at, when_now)
            except CertificateRejected as exc:
                first = first or exc
                continue
            return CheckedCertificate(
                facts=facts(cert),
                purpose=purpose,
                checked_at=at,
                chain=tuple(path),
                warnings=tuple(warnings),
            )
        if first is not None:
            raise first
        raise CertificateRejected(RejectReason.UNTRUSTED, self._no_path_reason(cert, helpers))

    # -- chain building ---------------------------------------------------------------

    def _issued_by(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            return False
        return True

    def _paths(
        self, cert: x509.Certificate, helpers: Sequence[x509.Certificate]
    ) -> Iterator[list[x509.Certificate]]:
        """Every chain from ``cert`` to an anchor, signatures checked, shortest first."""
        if any(_der(cert) == _der(a) for a in self.anchors):
            yield [cert]
            return
        queue: list[list[x509.Certificate]] = [[cert]]
        while queue:
            path = queue.pop(0)
            tip = path[-1]
            for anchor in self.anchors:
                if anchor.subject == tip.issuer and self._issued_by(tip, anchor):
                    yield [*path, anchor]
            if len(path) + 1 >= MAX_CHAIN_LENGTH:
                continue
            seen = {_der(c) for c in path}
            for helper in helpers:
                if (
                    helper.subject == tip.issuer
                    and _der(helper) not in seen
                    and self._issued_by(tip, helper)
                ):
                    queue.append([*path, helper])

    def _no_path_reason(self, cert: x509.Certificate, helpers: Sequence[x509.Certificate]) -> str:
        """Where the chain of ``cert`` breaks off, in words."""
        tip = cert
        seen = {_der(cert)}
        hops: list[x509.Certificate] = []
        while len(hops) < MAX_CHAIN_LENGTH:
            named = [c for c in (*self.anchors, *helpers) if c.subject == tip.issuer]
            issuers = [c for c in named if _der(c) not in seen and self._issued_by(tip, c)]
            if not issuers:
                where = f"{_label(cert)}" if tip is cert else f"{_label(cert)}, at {_label(tip)}"
                issuer = tip.issuer.rfc4514_string(_NAMES)
                if named:
                    return (
                        f"certificate {where}: the signature does not verify with the key of "
                        f"any certificate named '{issuer}'; the chain does not lead to a "
                        "trust anchor"
                    )
                return (
                    f"certificate {where}: issuer '{issuer}' is neither a trust anchor nor "
                    "a known intermediate; the chain does not lead to a trust anchor"
                )
            tip = issuers[0]
            seen.add(_der(tip))
            hops.append(tip)
        return f"certificate {_label(cert)}: no chain to a trust anchor within {MAX_CHAIN_LENGTH}"

    # -- checks on a built chain ------------------------------------------------------

    def _check_path(
        self, path: list[x509.Certificate], purpose: Purpose, at: datetime, now: datetime
    ) -> list[str]:
        leaf = path[0]
        for cert in path:
            self._check_validity(cert, leaf, at)
        for cert in path[:-1]:  # anchors were read when the store was made
            self._check_extensions(cert)
        if _is_ca(leaf):
            raise CertificateRejected(
                RejectReason.WRONG_USAGE,
                f"certificate {_label(leaf)} is a CA certificate, not one of a party",
            )
        for index, cert in enumerate(path[:-1]):
            self._check_crypto(cert)
            if index > 0:
                self._check_issuer(cert, intermediates_below=index - 1)
        self._check_issuer(path[-1], intermediates_below=len(path) - 2)
        _check_purpose(leaf, purpose)

        warnings = []
        for cert, issuer in pairwise(path):
            status = self.crls.status(cert, issuer, now=now)
            if status.revoked is not None:
                raise CertificateRejected(
                    RejectReason.REVOKED,
                    f"{_whose(cert, leaf)} {_label(cert)} is {status.revoked.describe()}",
                )
            if status.problem is not None:
                if self.crl_mode == "require":
                    raise CertificateRejected(
                        RejectReason.REVOCATION_UNKNOWN,
                        f"revocation of {_label(cert)} cannot be checked (crl_mode require): "
                        f"{status.problem}",
                    )
                warnings.append(f"revocation of {_label(cert)} not checked: {status.problem}")
        return warnings

    def _check_validity(self, cert: x509.Certificate, leaf: x509.Certificate, at: datetime) -> None:
        whose = _whose(cert, leaf)
        if at < cert.not_valid_before_utc:
            raise CertificateRejected(
                RejectReason.NOT_YET_VALID,
                f"{whose} {_label(cert)} is not valid before {stamp(cert.not_valid_before_utc)} "
                f"(checked at {stamp(at)})",
            )
        if at > cert.not_valid_after_utc:
            raise CertificateRejected(
                RejectReason.EXPIRED,
                f"{whose} {_label(cert)} expired at {stamp(cert.not_valid_after_utc)} "
                f"(checked at {stamp(at)})",
            )

    def _check_extensions(self, cert: x509.Certificate) -> None:
        try:
            extensions = list(cert.extensions)
        except ValueError as exc:
            raise CertificateRejected(
                RejectReason.INVALID_CHAIN,
                f"certificate {_label(cert)}: malformed extension ({exc})",
            ) from None
        for ext in extensions:
            if ext.critical and ext.oid not in _UNDERSTOOD:
                name = getattr(ext.oid, "_name", None) or ext.oid.dotted_string
                raise CertificateRejected(
                    RejectReason.INVALID_CHAIN,
                    f"certificate {_label(cert)} has a critical extension this gateway does not "
                    f"process ({name}, {ext.oid.dotted_string})",
                )

    def _check_crypto(self, cert: x509.Certificate) -> None:
        """DK forbids SHA-1 [SIGN001-SIGN004]; PKIoverheid keys are RSA 2048 or more."""
        if self.legacy_crypto:
            return
        try:
            algorithm = cert.signature_hash_algorithm
        except UnsupportedAlgorithm:
            algorithm = None
        if isinstance(algorithm, hashes.SHA1 | hashes.MD5):
            raise CertificateRejected(
                RejectReason.WEAK_CRYPTO,
                f"certificate {_label(cert)} is signed with {algorithm.name.upper()}, which "
                "Digikoppeling forbids (set legacy_crypto to accept it)",
            )
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise CertificateRejected(
                RejectReason.WEAK_CRYPTO,
                f"certificate {_label(cert)} has a {key.key_size}-bit RSA key; at least "
                f"{MIN_RSA_BITS} bits are required (set legacy_crypto to accept it)",
            )

    def _check_issuer(self, cert: x509.Certificate, *, intermediates_below: int) -> None:
        """RFC 5280 §6.1.4 (k)-(n): may ``cert`` issue the certificates below it?"""
        constraints = _extension(cert, x509.BasicConstraints)
        if constraints is None or not constraints.ca:
            raise CertificateRejected(
                RejectReason.INVALID_CHAIN,
                f"certificate {_label(cert)} issued another certificate but is not a CA "
                "(basicConstraints cA is not set)",
            )
        if constraints.path_length is not None and intermediates_below > constraints.path_length:
            raise CertificateRejected(
                RejectReason.INVALID_CHAIN,
                f"CA certificate {_label(cert)} allows {constraints.path_length} intermediate "
                f"CA(s) below it (pathLenConstraint), the chain has {intermediates_below}",
            )
        usage = _extension(cert, x509.KeyUsage)
        if usage is not None and not usage.key_cert_sign:
            raise CertificateRejected(
                RejectReason.INVALID_CHAIN,
                f"CA certificate {_label(cert)} may not sign certificates "
                "(keyUsage without keyCertSign)",
            )


def _check_purpose(cert: x509.Certificate, purpose: Purpose) -> None:
    """Key usage for ``purpose`` (RFC 5280 §4.2.1.3, §4.2.1.12).

    An absent keyUsage allows every use (RFC 5280); PKIoverheid certificates always
    carry one.  signing: digitalSignature or nonRepudiation; encryption:
    keyEncipherment (RSA key transport, XML Encryption [ENC004]); tls-client:
    digitalSignature, and clientAuth when an extendedKeyUsage is present; tls-server:
    digitalSignature and an extendedKeyUsage with serverAuth (every PKIoverheid server
    certificate has one, and without it any signing certificate would pass as a
    server).  anyExtendedKeyUsage stands for every extended key usage.
    """
    usage = _extension(cert, x509.KeyUsage)
    eku = _extension(cert, x509.ExtendedKeyUsage)
    purposes = set(eku) if eku is not None else None
    label = _label(cert)

    def refuse(why: str) -> CertificateRejected:
        return CertificateRejected(
            RejectReason.WRONG_USAGE, f"certificate {label} is not for {purpose}: {why}"
        )

    def eku_allows(oid: x509.ObjectIdentifier) -> bool:
        return purposes is None or bool(
            purposes & {oid, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
        )

    if purpose == "signing":
        if usage is not None and not (usage.digital_signature or usage.content_commitment):
            raise refuse("keyUsage has neither digitalSignature nor nonRepudiation")
    elif purpose == "encryption":
        if usage is not None and not usage.key_encipherment:
            raise refuse("keyUsage lacks keyEncipherment")
    elif purpose == "tls-client":
        if usage is not None and not usage.digital_signature:
            raise refuse("keyUsage lacks digitalSignature")
        if not eku_allows(ExtendedKeyUsageOID.CLIENT_AUTH):
            raise refuse("extendedKeyUsage lacks clientAuth")
    else:
        if usage is not None and not usage.digital_signature:
            raise refuse("keyUsage lacks digitalSignature")
        if purposes is None:
            raise refuse("it has no extendedKeyUsage (serverAuth is required)")
        if not eku_allows(ExtendedKeyUsageOID.SERVER_AUTH):
            raise refuse("extendedKeyUsage lacks serverAuth")
