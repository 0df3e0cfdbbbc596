"""Our TLS identities and trust anchors, read from PEM files.

A :class:`TlsIdentity` is a certificate with its private key and the chain sent
with it; :func:`load_trust_anchors` reads the CA certificates we trust.  Both
refuse what cannot work in a handshake before anything listens: an encrypted
key, a key that is not the certificate's, a key type NCSC does not accept
(Digikoppeling Beveiligingsstandaarden; gateway/tls.py builds the contexts).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

#: Key types that can sign a handshake and that NCSC accepts (no DSA).
SIGNING_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding, the way the CPA tooling identifies a certificate."""
    return hashlib.sha256(_der(cert)).digest()


def _spki(key: PublicKeyTypes) -> bytes:
    """SubjectPublicKeyInfo of a public key, for comparing keys of any type."""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def _pem_certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: no PEM certificate could be read ({exc})") from None


@dataclass(frozen=True)
class TlsIdentity:
    """A certificate with its private key and the intermediates to send with it.

    ``chain`` is sent as is, leaf not included.  When it is empty, OpenSSL
    completes the chain from the context's trust anchors where it can.
    """

    certificate: x509.Certificate
    private_key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, SIGNING_KEYS):
            raise ValueError(
                f"a {type(self.private_key).__name__} is not usable for TLS"
                " (RSA, EC, Ed25519 or Ed448 keys are)"
            )
        if _spki(self.private_key.public_key()) != _spki(self.certificate.public_key()):
            raise ValueError("the private key does not belong to the certificate")

    @classmethod
    def from_files(cls, cert: Path, key: Path, chain: Path | None = None) -> TlsIdentity:
        """Load PEM files: certificate, unencrypted private key, optional chain.

        When ``cert`` holds several certificates, the first is ours and the rest
        are taken as chain, followed by those in ``chain``.  Raises ValueError
        naming the file when its content is wrong or the key does not belong to
        the certificate, and OSError when a file cannot be read.
        """
        leaf, *extra = _pem_certificates(cert)
        if chain is not None:
            extra += _pem_certificates(chain)
        try:
            private_key = load_pem_private_key(key.read_bytes(), password=None)
        except TypeError:
            # cryptography raises TypeError for an encrypted key without password.
            raise ValueError(f"{key}: the private key is encrypted; give it unencrypted") from None
        except ValueError as exc:
            raise ValueError(f"{key}: no PEM private key could be read ({exc})") from None
        try:
            return cls(leaf, private_key, tuple(extra))
        except ValueError as exc:
            raise ValueError(f"{key} and {cert}: {exc}") from None


def load_trust_anchors(path: Path) -> tuple[x509.Certificate, ...]:
    """The CA certificates in one PEM file, or in the ``*.pem`` files of a directory.

    In a directory, ``*.pem`` files without a certificate block (a CRL, say) are
    passed over; a certificate block that cannot be read is an error everywhere.
    Duplicates are dropped (a directory may hold both ``root.pem`` and a chain
    file that repeats it).  Raises ValueError when no certificate is found and
    OSError when a file cannot be read.
    """
    if path.is_dir():
        files = [f for f in sorted(path.glob("*.pem")) if _PEM_CERTIFICATE in f.read_bytes()]
    else:
        files = [path]
    anchors: dict[bytes, x509.Certificate] = {}
    for file in files:
        for cert in _pem_certificates(file):
            anchors.setdefault(fingerprint(cert), cert)
    if not anchors:
        raise ValueError(f"{path}: no trust anchor certificates found")
    return tuple(anchors.values())
