"""Checking an inbound ebMS message against its CPA, in ebms-core's order.

docs/msh.md (Receiving) gives the order; this module covers the steps that need
only the envelope, the CPA and the clock (5-8, 10, 11 and 13).  Steps that
need the store (duplicate detection, RefToMessageId) and the signature steps
are separate, so every function here is pure and tested with bytes in and
errors out.  Each failure is the :class:`EbmsError` the MSH returns, with the
code, location and description ebms-core uses (§9), so partners see the same
errors from us as from the reference implementation.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from cpa.model import Cpa, PartyId
from cpa.resolve import ResolutionError, Route, resolve
from gateway.ebms.cid import norm_cid
from gateway.ebms.envelope import Envelope
from gateway.ebms.model import (
    EBMS_VERSION,
    NEXT_MSH,
    SOAP_ACTOR_NEXT,
    TO_PARTY_MSH,
    EbmsError,
    ErrorCode,
    SignalAction,
)

__all__ = [
    "ECHOED_LOCATIONS",
    "MAX_IDENTIFIER_LENGTH",
    "MAX_PARTY_IDS",
    "CheckFailed",
    "check_manifest",
    "check_message",
    "clip",
    "identifier_problem",
]

#: Longest MessageId, RefToMessageId, ConversationId, CPAId, PartyId (value and
#: type), Role, Service (value and type) or Action the MSH takes, in characters.
#: ebms-core keeps each of them in a VARCHAR(256) column, so a partner cannot
#: rely on more; real ones are far shorter (``uuid@host`` is about 50, an OIN
#: 20, the longest CPA id in the field about 60).  RFC 2822 §2.1.1 caps a line,
#: and so a msg-id, at 998 characters.
MAX_IDENTIFIER_LENGTH = 256
#: Most PartyIds in eb:From or eb:To.  Digikoppeling uses one (the OIN); ebMS
#: 2.0 §3.1.1.1 allows more, and each is echoed in every reply.
MAX_PARTY_IDS = 8
#: Where a value sits that a MessageError would have to repeat (ebMS 2.0
#: §4.2.4.2 and §3.1: it carries the message's CPAId, ConversationId and
#: parties and refers to its MessageId).  A refused value there leaves no
#: MessageError to build: the MSH answers with a SOAP Fault instead.
ECHOED_LOCATIONS = frozenset(
    {
        "//Header/MessageHeader/MessageData/MessageId",
        "//Header/MessageHeader/CPAId",
        "//Header/MessageHeader/ConversationId",
        "//Header/MessageHeader/From/PartyId",
        "//Header/MessageHeader/To/PartyId",
    }
)
# Control characters (C0, DEL, C1), line and paragraph separators, and the
# invisible format characters (bidi overrides, zero-width ones): none belongs
# in an identifier, and each can break or disguise a log line.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def clip(value: str, limit: int = MAX_IDENTIFIER_LENGTH) -> str:
    """``value`` made safe for a log line: cut at ``limit`` characters, controls escaped."""
    cut = value if len(value) <= limit else value[:limit]
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in cut):
        cut = "".join(
            c if unicodedata.category(c) not in _REFUSED_CATEGORIES else f"\\u{ord(c):04x}"
            for c in cut
        )
    return cut if len(value) <= limit else f"{cut}...({len(value)} characters)"


def _identifier_fault(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return f"Value too long ({len(value)} characters, at most {MAX_IDENTIFIER_LENGTH})."
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in value):
        return "Value holds a control character."
    return None


def identifier_problem(env: Envelope) -> EbmsError | None:
    """The first identifier of ``env`` that is too long or holds a control character.

    Checked before anything is looked up, logged or stored (docs/msh.md, "What
    the endpoint refuses").  ebMS 2.0 §4.2.3.4.1: a schema-valid value that is
    wrong for another reason than being unknown or contradicting another value
    is ``OtherXml``, "other error in an element content or attribute value".
    """
    h = env.header
    mh = "//Header/MessageHeader"
    values: list[tuple[str, str | None]] = [
        (f"{mh}/MessageData/MessageId", h.message_id),
        (f"{mh}/CPAId", h.cpa_id),
        (f"{mh}/ConversationId", h.conversation_id),
    ]
    for side, ids, role in (("From", h.from_ids, h.from_role), ("To", h.to_ids, h.to_role)):
        if len(ids) > MAX_PARTY_IDS:
            return EbmsError(
                ErrorCode.OTHER_XML,
                f"{mh}/{side}/PartyId",
                f"More than {MAX_PARTY_IDS} PartyIds.",
            )
        values += [(f"{mh}/{side}/PartyId", v) for p in ids for v in (p.value, p.type)]
        values.append((f"{mh}/{side}/Role", role))
    values += [
        (f"{mh}/Service", h.service.value),
        (f"{mh}/Service/@type", h.service.type),
        (f"{mh}/Action", h.action),
        (f"{mh}/MessageData/RefToMessageId", h.ref_to_message_id),
    ]
    if env.status_request is not None:
        values.append(("//Body/StatusRequest/RefToMessageId", env.status_request.ref_to_message_id))
    if env.acknowledgment is not None:
        values.append(
            ("//Header/Acknowledgment/RefToMessageId", env.acknowledgment.ref_to_message_id)
        )
    for location, value in values:
        fault = _identifier_fault(value)
        if fault is not None:
            return EbmsError(ErrorCode.OTHER_XML, location, fault)
    return None


class CheckFailed(Exception):
    """The message is refused with ``error``."""

    def __init__(self, error: EbmsError) -> None:
        super().__init__(f"{error.code.value} at {error.location}: {error.description}")
        self.error = error


def _fail(code: ErrorCode, location: str, description: str) -> CheckFailed:
    return CheckFailed(EbmsError(code, location, description))


@dataclass(frozen=True)
class Checked:
    """A message that passed: the CPA route that governs it."""

    route: Route


def _check_party_ids(ids: tuple[PartyId, ...], side: str) -> None:
    # ebMS 2.0 §3.1.1.1: without eb:type the PartyId must be a URI.
    for pid in ids:
        if pid.type is None and ":" not in pid.value:
            raise _fail(
                ErrorCode.INCONSISTENT, f"//Header/MessageHeader/{side}/PartyId", "Invalid value."
            )


def check_message(env: Envelope, cpa: Cpa, *, now: datetime) -> Checked:
    """Steps 6-8, 10 and 11 of §6.4 for a message whose CPA was found.

    Raises :class:`CheckFailed` with the error to return.
    """
    header = env.header
    # Step 6: the CPA must be in force when the message was made.
    if not cpa.in_force(header.timestamp):
        raise _fail(ErrorCode.INCONSISTENT, "//Header/MessageHeader/@cpaid", "Invalid CPA.")
    # Step 7: the header itself.
    if header.version != EBMS_VERSION:
        raise _fail(ErrorCode.INCONSISTENT, "//Header/MessageHeader/@version", "Invalid value.")
    _check_party_ids(header.from_ids, "From")
    _check_party_ids(header.to_ids, "To")
    if header.service.type is None and ":" not in header.service.value:
        raise _fail(ErrorCode.INCONSISTENT, "//Header/MessageHeader/Service", "Invalid value.")
    # Step 8: who may send what to whom.
    try:
        route = resolve(
            cpa,
            from_ids=header.from_ids,
            from_role=header.from_role,
            to_ids=header.to_ids,
            to_role=header.to_role,
            service=header.service,
            action=header.action,
        )
    except ResolutionError as exc:
        code = ErrorCode(exc.code)
        raise _fail(code, exc.location, exc.description) from None
    if header.is_signal:
        _check_signal(env)
    # Step 10: a message that arrives after its TimeToLive is not delivered.
    if header.time_to_live is not None and header.time_to_live < now:
        raise _fail(
            ErrorCode.TIME_TO_LIVE_EXPIRED,
            "//Header/MessageHeader/MessageData/TimeToLive",
            "Message has expired.",
        )
    _check_reliability(env, route)
    return Checked(route)


#: The actions of the MSH service (ebMS 2.0 §6.3.2.1, §4.2.4.1, §7.1, §8.1).
_SIGNAL_ACTIONS = frozenset(a.value for a in SignalAction)


def _check_signal(env: Envelope) -> None:
    """A message of the MSH service must be one of its signals, with the body it needs."""
    action = env.header.action
    if action not in _SIGNAL_ACTIONS:
        # ebMS 2.0 §4.2.3.4.1: an eb:Action the MSH service does not define is
        # element content not recognised, i.e. ValueNotRecognized.  NotSupported
        # is for elements and attributes (a feature), Inconsistent for a value
        # that contradicts another; neither describes an unknown action.  It is
        # also what a business Action missing from the CPA gets (step 8 of §6.4).
        raise _fail(
            ErrorCode.VALUE_NOT_RECOGNIZED, "//Header/MessageHeader/Action", "Value not found."
        )
    if action == SignalAction.STATUS_REQUEST and env.status_request is None:
        # ebMS 2.0 §7.1: a StatusRequest message carries an eb:StatusRequest
        # element.  The schema cannot require it (it ties no body to an
        # Action), so the Action is inconsistent with the body: Inconsistent.
        raise _fail(ErrorCode.INCONSISTENT, "//Body/StatusRequest", "Element missing.")


def _check_reliability(env: Envelope, route: Route) -> None:
    """Step 11: the optional header blocks must match the sender's channel."""
    if env.message_order:
        raise _fail(ErrorCode.NOT_SUPPORTED, "//Header/MessageOrder", "MessageOrder not supported.")
    signal = route.is_signal
    if not signal and env.header.duplicate_elimination != route.duplicate_elimination:
        raise _fail(
            ErrorCode.INCONSISTENT, "//Header/MessageHeader/DuplicateElimination", "Wrong value."
        )
    ack = env.ack_requested
    if signal:
        if ack is not None:  # signals are never acknowledged (ebMS 2.0 §6.3.1)
            raise _fail(ErrorCode.INCONSISTENT, "//Header/AckRequested", "Wrong value.")
    elif (ack is not None) != route.ack_requested:
        raise _fail(ErrorCode.INCONSISTENT, "//Header/AckRequested", "Wrong value.")
    if ack is not None:
        if ack.version != EBMS_VERSION:
            raise _fail(ErrorCode.INCONSISTENT, "//Header/AckRequested/@version", "Invalid value.")
        if ack.actor == NEXT_MSH:
            raise _fail(
                ErrorCode.NOT_SUPPORTED, "//Header/AckRequested/@actor", "NextMSH not supported."
            )
        if ack.actor not in (None, TO_PARTY_MSH):
            raise _fail(ErrorCode.INCONSISTENT, "//Header/AckRequested/@actor", "Invalid value.")
        if ack.signed != route.ack_signature_requested:
            raise _fail(ErrorCode.INCONSISTENT, "//Header/AckRequested/@signed", "Wrong value.")
    sync = env.sync_reply
    wants_sync = route.sync_reply_mode != "none"
    if (sync is not None) != wants_sync:
        raise _fail(ErrorCode.INCONSISTENT, "//Header/SyncReply", "Wrong value.")
    if sync is not None:
        if sync.version != EBMS_VERSION:
            raise _fail(ErrorCode.INCONSISTENT, "//Header/SyncReply/@version", "Invalid value.")
        if sync.actor != SOAP_ACTOR_NEXT:
            raise _fail(ErrorCode.INCONSISTENT, "//Header/SyncReply/@actor", "Wrong value.")


def check_manifest(env: Envelope, attachment_ids: Collection[str]) -> tuple[str, ...]:
    """Step 13: every Manifest reference must name a received MIME part.

    Returns the referenced content ids in Manifest order; parts that are not
    referenced are dropped by the caller (ebms-core's ManifestValidator).
    """
    if env.manifest is None:
        return ()
    if env.manifest_version != EBMS_VERSION:
        raise _fail(ErrorCode.INCONSISTENT, "//Body/Manifest/@version", "Invalid value.")
    referenced = []
    for ref in env.manifest:
        # Digikoppeling allows only cid: references (Koppelvlakstandaard ebMS2).
        if not ref.href.lower().startswith("cid:"):
            raise _fail(
                ErrorCode.MIME_PROBLEM,
                f"//Body/Manifest/Reference[@href='{ref.href}']",
                "URI cannot be resolved.",
            )
        cid = norm_cid(ref.href)
        if cid not in attachment_ids:
            raise _fail(ErrorCode.MIME_PROBLEM, ref.href, "MIME part not found.")
        referenced.append(cid)
    return tuple(referenced)
