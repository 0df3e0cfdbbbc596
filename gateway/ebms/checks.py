"""Checking an inbound ebMS message against its CPA, in ebms-core's order.

Research notes §6.4 give the order; this module covers the steps that need
only the envelope, the CPA and the clock (5-8, 10, 11 and 13).  Steps that
need the store (duplicate detection, RefToMessageId) and the signature steps
are separate, so every function here is pure and tested with bytes in and
errors out.  Each failure is the :class:`EbmsError` the MSH returns, with the
code, location and description ebms-core uses (§9), so partners see the same
errors from us as from the reference implementation.
"""

from __future__ import annotations

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

__all__ = ["CheckFailed", "check_manifest", "check_message"]


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
        # Digikoppeling allows only cid: references (research notes §1.6).
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
