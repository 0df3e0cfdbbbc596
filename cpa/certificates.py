"""X.509 facts about the certificates a CPA carries.

PKIoverheid puts the 20-digit OIN of the holder in the subject
``serialNumber`` (OID 2.5.4.5) [DK PKI001]; that is how a certificate is tied
to a Digikoppeling party id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

_OIN = re.compile(r"^\d{20}$")
#: RFC 4514 has no short name for serialNumber; spell it out rather than "2.5.4.5".
_NAMES = {NameOID.SERIAL_NUMBER: "serialNumber"}


@dataclass(frozen=True)
class CertificateFacts:
    """What an operator and a validator want to know about one certificate."""

    subject: str
    issuer: str
    serial_number: int
    not_before: datetime
    not_after: datetime
    oin: str | None
    sha256: str

    def valid_at(self, when: datetime) -> bool:
        """True when ``when`` lies within the certificate's validity period."""
        return self.not_before <= when <= self.not_after


def load_der(der: bytes) -> x509.Certificate:
    """Parse a DER certificate; raises ValueError when it is not one."""
    return x509.load_der_x509_certificate(der)


def oin_of(cert: x509.Certificate) -> str | None:
    """The 20-digit OIN in the subject serialNumber, or None."""
    for attr in cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        value = attr.value if isinstance(attr.value, str) else attr.value.decode()
        if _OIN.match(value):
            return value
    return None


def facts(cert: x509.Certificate) -> CertificateFacts:
    """Summarise a certificate."""
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(_NAMES),
        issuer=cert.issuer.rfc4514_string(_NAMES),
        serial_number=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        oin=oin_of(cert),
        sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
    )
