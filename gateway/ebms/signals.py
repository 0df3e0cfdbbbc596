"""Building the MSH's own messages: Acknowledgment, MessageError, Pong, StatusResponse.

ebMS 2.0 §6.3.2 and §4.2: a signal answers one message.  It carries the request's
CPAId and ConversationId, the request's To party as From and its From party as
To (without roles), a new MessageId, the request's MessageId as
RefToMessageId, and no TimeToLive, DuplicateElimination or AckRequested:
signals are never acknowledged.  Whether it is signed and whether it goes back
in the HTTP response or in its own POST is decided by the CPA (the caller).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from gateway.ebms.envelope import Envelope
from gateway.ebms.model import (
    MSH_SERVICE,
    Acknowledgment,
    EbmsError,
    ErrorList,
    MessageHeader,
    MessageStatus,
    Service,
    SignalAction,
    StatusRequest,
    StatusResponse,
    SyncReply,
)

__all__ = [
    "acknowledgment",
    "message_error",
    "new_message_id",
    "ping",
    "pong",
    "status_request",
    "status_response",
]


def new_message_id(host: str) -> str:
    """A globally unique MessageId, ``uuid@host`` [DK-BP EB013]."""
    return f"{uuid.uuid4()}@{host}"


def _reply_header(
    request: MessageHeader, action: SignalAction, now: datetime, host: str
) -> MessageHeader:
    return MessageHeader(
        from_ids=request.to_ids,
        to_ids=request.from_ids,
        cpa_id=request.cpa_id,
        conversation_id=request.conversation_id,
        service=Service(MSH_SERVICE),
        action=action.value,
        message_id=new_message_id(host),
        timestamp=now,
        ref_to_message_id=request.message_id,
    )


def acknowledgment(
    request: Envelope, *, now: datetime, host: str, references: Sequence[bytes] = ()
) -> Envelope:
    """The Acknowledgment of ``request`` (ebMS 2.0 §6.3.2).

    ``references`` are the request signature's ``ds:Reference`` elements,
    copied into a signed acknowledgment as evidence of what was received.
    """
    header = _reply_header(request.header, SignalAction.ACKNOWLEDGMENT, now, host)
    return Envelope(
        header=header,
        acknowledgment=Acknowledgment(
            timestamp=now,
            ref_to_message_id=request.header.message_id,
            from_ids=header.from_ids,
            references=tuple(references),
        ),
    )


def message_error(
    request: Envelope, errors: Sequence[EbmsError], *, now: datetime, host: str
) -> Envelope:
    """A MessageError reporting ``errors`` about ``request`` (ebMS 2.0 §4.2)."""
    if not errors:
        raise ValueError("a MessageError needs at least one error")
    return Envelope(
        header=_reply_header(request.header, SignalAction.MESSAGE_ERROR, now, host),
        error_list=ErrorList(errors=tuple(errors)),
    )


def pong(request: Envelope, *, now: datetime, host: str) -> Envelope:
    """The Pong answering a Ping (ebMS 2.0 §8)."""
    return Envelope(header=_reply_header(request.header, SignalAction.PONG, now, host))


def status_response(
    request: Envelope,
    status: MessageStatus,
    timestamp: datetime | None,
    *,
    now: datetime,
    host: str,
) -> Envelope:
    """The StatusResponse to a StatusRequest (ebMS 2.0 §7.3.2).

    ``timestamp`` (when the message was received or processed) is only sent
    for Received, Processed and Forwarded.
    """
    if request.status_request is None:
        raise ValueError("a StatusResponse answers a message with an eb:StatusRequest")
    carries_time = status in (
        MessageStatus.RECEIVED,
        MessageStatus.PROCESSED,
        MessageStatus.FORWARDED,
    )
    return Envelope(
        header=_reply_header(request.header, SignalAction.STATUS_RESPONSE, now, host),
        status_response=StatusResponse(
            ref_to_message_id=request.status_request.ref_to_message_id,
            message_status=status,
            timestamp=timestamp if carries_time else None,
        ),
    )


def _request(header: MessageHeader, sync: bool) -> Envelope:
    return Envelope(header=header, sync_reply=SyncReply() if sync else None)


def ping(header: MessageHeader, *, sync: bool) -> Envelope:
    """A Ping; ``header`` gives parties, CPA and ids, its service/action are set here."""
    return _request(
        replace(
            header,
            service=Service(MSH_SERVICE),
            action=SignalAction.PING.value,
            from_role=None,
            to_role=None,
        ),
        sync,
    )


def status_request(header: MessageHeader, ref_to_message_id: str, *, sync: bool) -> Envelope:
    """A StatusRequest asking about ``ref_to_message_id``."""
    env = _request(
        replace(
            header,
            service=Service(MSH_SERVICE),
            action=SignalAction.STATUS_REQUEST.value,
            from_role=None,
            to_role=None,
        ),
        sync,
    )
    return replace(env, status_request=StatusRequest(ref_to_message_id))
