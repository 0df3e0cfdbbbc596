"""Step 1 of receiving: what is refused before the store is asked anything.

Pure.  In ebms-core's order (docs/msh.md, "Receiving" and "Error matrix"):
the SOAPAction (ebMS 2.0 §2.1.3), the envelope (schema-valid SOAP 1.1 and
ebMS 2.0, ebMS 2.0 §2.1; a bare refusal), identifiers that a MessageError would
have to repeat (ebMS 2.0 §4.2.4.2; a SOAP Fault) and unknown
``mustUnderstand`` header blocks (SOAP 1.1 §4.2.3; a SOAP Fault).  What passes
is :class:`Received`, decided on by :func:`gateway.msh.receive.decide`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from gateway.ebms.checks import ECHOED_LOCATIONS, clip, identifier_problem
from gateway.ebms.envelope import Envelope, EnvelopeError, parse_envelope
from gateway.ebms.faults import CLIENT, MUST_UNDERSTAND, soap_fault
from gateway.ebms.model import EbmsError
from gateway.msh.effects import Decision, FaultReply, LogLine, Refusal
from gateway.msh.records import parties
from gateway.store.records import AttachmentRecord

__all__ = ["Received", "Request", "fault", "screen"]


@dataclass(frozen=True)
class Request:
    """One received HTTP request, as the edge saw it."""

    soap_action: str | None
    content_type: str
    envelope: bytes
    attachments: tuple[AttachmentRecord, ...] = ()
    peer_certificate: x509.Certificate | None = None


@dataclass(frozen=True)
class Received:
    """An envelope that passed :func:`screen`, with its log fields."""

    env: Envelope
    fields: Mapping[str, str] = field(default_factory=dict)
    bad_identifier: EbmsError | None = None
    notes: tuple[LogLine, ...] = ()
    """Lines already due (an identifier refused), logged before the decision's own."""


def fault(
    message: str, log: Mapping[str, str], code: str = CLIENT, notes: tuple[LogLine, ...] = ()
) -> Decision:
    """A SOAP Fault with ``code`` and ``message`` (SOAP 1.1 §4.4), logged with ``log``."""
    return Decision(FaultReply(soap_fault(code, message)), log=log, notes=notes)


def screen(request: Request) -> Received | Decision:
    """The envelope to decide on, or the refusal that needs no store."""
    action = (request.soap_action or "").strip()
    if action.startswith('"') and action.endswith('"') and len(action) >= 2:
        action = action[1:-1]
    if action != "ebXML":
        # ebMS 2.0 §2.1.3: lenient on the quotes only.
        return fault(
            f"Unable to process message! SOAPAction={clip(request.soap_action or '')}",
            {"outcome": "bad-soapaction"},
        )
    try:
        env, _tree = parse_envelope(request.envelope)
    except EnvelopeError as exc:
        line = LogLine.warning(
            "refused: not an ebMS envelope (%s), %d bytes", exc, len(request.envelope)
        )
        return Decision(
            Refusal(), log={"outcome": "bad-envelope", "reason": str(exc)}, notes=(line,)
        )
    header = env.header
    # Every value is the peer's: bounded and escaped before it reaches a log line.
    fields = {
        "message_id": clip(header.message_id),
        "cpa_id": clip(header.cpa_id),
        "from": clip(parties(header.from_ids), 1024),
        "to": clip(parties(header.to_ids), 1024),
        "service": clip(header.service.key()),
        "action": clip(header.action),
    }
    if header.ref_to_message_id:
        fields["ref_to"] = clip(header.ref_to_message_id)
    bad = identifier_problem(env)
    notes: tuple[LogLine, ...] = ()
    if bad is not None:
        notes = (
            LogLine.warning(
                "refused %s: %s at %s", fields["message_id"], bad.description, bad.location
            ),
        )
        if bad.location in ECHOED_LOCATIONS:
            # A MessageError would have to repeat the value (ebMS 2.0 §4.2.4.2):
            # as with an unknown CPA, a SOAP Fault is the only answer left.
            return fault(
                f"Invalid value at {bad.location}: {bad.description}",
                {**fields, "outcome": "bad-identifier", "error": bad.location},
                notes=notes,
            )
    if env.unknown_must_understand:
        return fault(
            f"Header not understood: {env.unknown_must_understand[0]}",
            {**fields, "outcome": "must-understand"},
            code=MUST_UNDERSTAND,
            notes=notes,
        )
    return Received(env, fields, bad, notes)
