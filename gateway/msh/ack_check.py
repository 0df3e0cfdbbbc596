"""May a signed acknowledgment settle one of our messages?  Read the CPA, then check.

Only messages that asked for a signed acknowledgment are checked (ebMS 2.0
§6.3.2.5): the ack's signature must verify with the acking party's signing
certificate from the CPA (after certificate mapping), that certificate must be
trusted at the ack's Timestamp, and its ``ds:Reference`` elements must be those
of the signature we sent (docs/security.md).  :func:`check_signed_ack` decides
from values; :class:`gateway.msh.read.AckVerifier` reads them from the store first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

from cpa.model import MSH_SERVICE, Cpa, Service
from cpa.resolve import ResolutionError, Route, resolve
from gateway.ebms.envelope import Envelope, EnvelopeError, parse_envelope
from gateway.ebms.model import SignalAction
from gateway.ebms.xmldsig import SignatureError, check_ack_references, read_references
from gateway.msh.facts import CertificateMap
from gateway.msh.keys import MessageSecurity, verify_with_any
from gateway.store.records import StoredMessage
from gateway.trust import CertificateRejected

__all__ = ["AckTrust", "check_signed_ack", "signed_ack_asked"]


@dataclass(frozen=True)
class AckTrust:
    """The CPA of our message and its certificate mappings (``cpa`` None: ``missing`` says why)."""

    cpa: Cpa | None
    certificates: CertificateMap
    missing: str = ""


def _ack_route(cpa: Cpa, ack: Envelope) -> Route:
    """The acknowledging party's MSH channel to us (ebMS 2.0 §6.3.2.5)."""
    return resolve(
        cpa,
        from_ids=tuple(ack.header.from_ids),
        from_role=None,
        to_ids=tuple(ack.header.to_ids),
        to_role=None,
        service=Service(MSH_SERVICE),
        action=SignalAction.ACKNOWLEDGMENT.value,
    )


def signed_ack_asked(ours: StoredMessage) -> bool | str:
    """Whether ``ours`` asked for a signed acknowledgment; a string: why that is unknown."""
    try:
        sent, _ = parse_envelope(ours.envelope)
    except EnvelopeError:
        return "our stored message is unreadable"
    return sent.ack_requested is not None and sent.ack_requested.signed


def check_signed_ack(
    security: MessageSecurity | None,
    trust: AckTrust,
    ours: StoredMessage,
    ack: Envelope,
    body: bytes,
) -> str | None:
    """None when the ack ``body`` may settle ``ours``, else why it may not."""
    asked = signed_ack_asked(ours)
    if asked is not True:
        return asked or None
    if security is None or security.trust is None:
        return "a signed acknowledgment was asked for, but [security] is not configured"
    if trust.cpa is None:
        return f"no CPA channel for the acknowledgment: {trust.missing}"
    try:
        route = _ack_route(trust.cpa, ack)
    except ResolutionError as exc:
        return f"no CPA channel for the acknowledgment: {exc}"
    if route.signing is None:
        return "the CPA names no signing certificate for the acknowledging party"
    try:
        candidates = trust.certificates.signing_candidates(route.signing_certificate)
    except (LookupError, ValueError):
        return "the CPA names no usable signing certificate for the acknowledging party"
    policy = security.policy(route.signing, f"a signed acknowledgment in CPA {trust.cpa.cpa_id}")
    try:
        certificate = verify_with_any(body, {}, candidates, policy)
        check_ack_references(body, read_references(ours.envelope))
        security.trust.check_certificate(
            certificate, purpose="signing", at=ack.header.timestamp.astimezone(UTC)
        )
    except SignatureError as exc:
        return f"{exc.description} at {exc.location}"
    except CertificateRejected as exc:
        return f"signing certificate refused: {exc.reason}"
    return None
