"""What the store knows that an inbound decision needs, as small frozen values.

:mod:`gateway.msh.read` fills these from the store in the decision's
transaction; :mod:`gateway.msh.receive` and :mod:`gateway.msh.correlate`
decide from them without a cursor, so the MSH rules are tested with values
(tests/test_inbound_decisions.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from cpa.model import Certificate, Cpa
from gateway.store.records import StoredMessage

__all__ = ["CertificateMap", "Duplicate", "InboundFacts", "ReplyFacts"]


@dataclass(frozen=True)
class CertificateMap:
    """The operator's certificate mappings that apply under one CPA (docs/api.md).

    ``mapped`` takes the DER of a certificate as the CPA names it to the DER of
    the one to use instead; a certificate without a mapping stays what it is.
    """

    mapped: Mapping[bytes, bytes] = field(default_factory=dict)

    def resolve(self, der: bytes) -> bytes:
        """The certificate to use for the CPA certificate ``der``."""
        data = bytes(der)
        return self.mapped.get(data, data)

    def der_candidates(self, der: bytes) -> tuple[bytes, ...]:
        """The mapped certificate first, then the CPA's own when they differ.

        During a rollover (docs/operations.md, "Certificate rotation") messages
        made with the old key are still on their way: both are accepted until
        the mapping and the CPA are replaced.
        """
        mapped = self.resolve(der)
        return (mapped,) if mapped == bytes(der) else (mapped, bytes(der))

    def signing_candidates(self, cert: Certificate | None) -> list[x509.Certificate]:
        """The certificates a partner's signature may verify against: the mapped one first.

        Raises LookupError when the CPA names no certificate, ValueError when
        one is not a certificate.
        """
        if cert is None or cert.der is None:
            raise LookupError("the CPA names no such certificate")
        return [x509.load_der_x509_certificate(der) for der in self.der_candidates(cert.der)]

    def certificate(self, cert: Certificate | None) -> x509.Certificate:
        """A certificate the CPA names, after mapping; LookupError/ValueError as above."""
        if cert is None or cert.der is None:
            raise LookupError("the CPA names no such certificate")
        return x509.load_der_x509_certificate(self.resolve(cert.der))


@dataclass(frozen=True)
class Duplicate:
    """A message with the same MessageId was received before (ebMS 2.0 §6.4.1).

    ``identical``: the same bytes (for an encrypted message, the same
    plaintext); ``reply``: the signal we answered it with, if any.
    """

    identical: bool
    reply: StoredMessage | None = None


@dataclass(frozen=True)
class ReplyFacts:
    """What an acknowledgment, MessageError or other signal refers to.

    ``ours``: our outbound message named by its RefToMessageId (None: no such
    message); ``ack_refusal``: for an acknowledgment of a message that asked
    for a signed one, why its signature is not accepted (None: accepted, or not
    checked); ``correlation_id``: the back office's id of the referenced message.
    ``duplicate``: the signal itself was stored before.
    """

    ours: StoredMessage | None = None
    ack_refusal: str | None = None
    correlation_id: str | None = None
    duplicate: bool = False


@dataclass(frozen=True)
class InboundFacts:
    """Everything an inbound request's decision reads from the store.

    ``cpa`` None: the CPAId is not known.  ``ref_known``: a business message's
    RefToMessageId names a message we sent or received (step 9 of ebMS 2.0
    §6.4; True when there is none).  ``asked``: the message a StatusRequest asks
    about.  The rest is None or empty when it does not apply.
    """

    cpa: Cpa | None
    certificates: CertificateMap = field(default_factory=CertificateMap)
    duplicate: Duplicate | None = None
    ref_known: bool = True
    asked: StoredMessage | None = None
    signal: ReplyFacts = field(default_factory=ReplyFacts)
