"""The outbound decision: what to store and queue for a resolved message, without I/O.

:func:`plan_message` and :func:`plan_signal` take a :class:`SendRoute`, the
payloads, the time and the fresh identifiers, and return an
:class:`OutboundPlan`: the envelope to build, the parts to store, the status,
and the delivery task's schedule.  :mod:`gateway.msh.outbound` secures the
envelope and applies the plan in the caller's transaction.

Reliable messaging (ebMS 2.0 §6.5): TimeToLive = Timestamp +
RetryInterval × (Retries + 1), as ebms-core sets it, and the task allows
1 + Retries attempts, one RetryInterval apart.  MSH requests (Ping,
StatusRequest) are tried once: a monitoring probe or a status question wants
the truth about now, not an answer from a later attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from gateway.ebms.envelope import Envelope
from gateway.ebms.model import AckRequested, ManifestReference, MessageHeader, SyncReply
from gateway.msh.addressing import SendRoute
from gateway.msh.states import OutboundStatus
from gateway.store.records import AttachmentRecord, PayloadFile

__all__ = [
    "OutboundPlan",
    "Payload",
    "host_of",
    "multipart_content_type",
    "plan_message",
    "plan_signal",
    "time_to_live",
]

XML = "text/xml; charset=UTF-8"

#: A source of fresh unique strings (a random UUID each; tests give a counter).
Fresh = Callable[[], str]


def _uuid() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Payload:
    """One business document to send as a MIME part.

    ``content`` is the bytes, or a :class:`~gateway.store.messages.PayloadFile`
    for a large document, which the store then copies in chunks, never whole.
    """

    content: bytes | PayloadFile
    content_type: str = "application/xml"
    filename: str | None = None
    content_id: str | None = None  # default: a new uuid@host


@dataclass(frozen=True)
class OutboundPlan:
    """What to store for one outbound message and how its delivery task runs."""

    route: SendRoute
    envelope: Envelope
    parts: tuple[AttachmentRecord, ...]
    content_type: str
    status: str | None  # None for MSH signals, which have no business status
    max_attempts: int
    retry_interval: timedelta | None
    correlation_id: str | None = None

    @property
    def message_id(self) -> str:
        """The MessageId of the planned message."""
        return self.envelope.header.message_id


def host_of(url: str | None) -> str:
    """The host part of ``url`` for ``uuid@host`` identifiers [DK-BP EB013]."""
    return (urlsplit(url).hostname if url else None) or "localhost"


def multipart_content_type(boundary: str, start: str) -> str:
    """The HTTP Content-Type of a SOAP-with-attachments message (ebMS 2.0 §2.1.2)."""
    return f'multipart/related; type="text/xml"; boundary="{boundary}"; start="<{start}>"'


def time_to_live(route: SendRoute, now: datetime) -> datetime | None:
    """TimeToLive of a reliably sent message (ebMS 2.0 §6.4.4), None without RM."""
    r = route.route
    if r.retry_interval is None or not r.ack_requested:
        return None
    try:
        return now + r.retry_interval * (r.retries + 1)
    except OverflowError:
        # A CPA imported before cpa.validate refused such a schedule: the
        # retries outlast any date, so the message never expires.
        return datetime.max.replace(tzinfo=UTC)


def _content_type(host: str, parts: Sequence[AttachmentRecord], fresh: Fresh) -> str:
    if not parts:
        return XML
    return multipart_content_type(f"MIMEBoundary_{_hex(fresh())}", f"soap-{_hex(fresh())}@{host}")


def _hex(value: str) -> str:
    return value.replace("-", "")


def plan_message(
    route: SendRoute,
    payloads: Sequence[Payload],
    now: datetime,
    *,
    message_id: str | None = None,
    conversation_id: str | None = None,
    ref_to_message_id: str | None = None,
    correlation_id: str | None = None,
    fresh: Fresh = _uuid,
) -> OutboundPlan:
    """The plan for a business message on ``route`` (stored CREATED).

    The envelope carries exactly the header blocks the sender's channel
    demands (CPPA 2.0 §8.4): AckRequested, SyncReply, DuplicateElimination.
    """
    r = route.route
    host = host_of(r.send.endpoint)
    parts = tuple(
        AttachmentRecord(p.content_id or f"{fresh()}@{host}", p.content_type, p.content, p.filename)
        for p in payloads
    )
    header = MessageHeader(
        from_ids=(route.from_party,),
        from_role=route.from_role,
        to_ids=(route.to_party,),
        to_role=route.to_role,
        cpa_id=route.cpa_id,
        conversation_id=conversation_id or fresh(),
        service=route.service,
        action=route.action,
        message_id=message_id or f"{fresh()}@{host}",
        timestamp=now,
        ref_to_message_id=ref_to_message_id,
        time_to_live=time_to_live(route, now),
        duplicate_elimination=r.duplicate_elimination,
    )
    envelope = Envelope(
        header=header,
        ack_requested=AckRequested(signed=r.ack_signature_requested) if r.ack_requested else None,
        sync_reply=SyncReply() if r.sync_reply_mode != "none" else None,
        manifest=tuple(ManifestReference(f"cid:{p.content_id}") for p in parts) or None,
        manifest_version="2.0" if parts else None,
    )
    return OutboundPlan(
        route=route,
        envelope=envelope,
        parts=parts,
        content_type=_content_type(host_of(r.send.endpoint), parts, fresh),
        status=OutboundStatus.CREATED.value,
        max_attempts=1 + r.retries,
        retry_interval=r.retry_interval,
        correlation_id=correlation_id,
    )


def plan_signal(
    route: SendRoute,
    now: datetime,
    build: Callable[[MessageHeader, bool], Envelope],
    *,
    fresh: Fresh = _uuid,
) -> OutboundPlan:
    """The plan for an MSH request (Ping, StatusRequest) on ``route``: tried once.

    ``build`` makes the envelope from the header and whether the channel asks
    for a synchronous reply (:func:`gateway.ebms.signals.ping`).
    """
    r = route.route
    host = host_of(r.send.endpoint)
    header = MessageHeader(
        from_ids=(route.from_party,),
        to_ids=(route.to_party,),
        cpa_id=route.cpa_id,
        conversation_id=fresh(),
        service=route.service,
        action=route.action,
        message_id=f"{fresh()}@{host}",
        timestamp=now,
    )
    return OutboundPlan(
        route=route,
        envelope=build(header, r.sync_reply_mode != "none"),
        parts=(),
        content_type=XML,
        status=None,
        max_attempts=1,
        retry_interval=None,
    )
