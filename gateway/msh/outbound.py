"""Creating outbound ebMS messages: build from the CPA, store with a delivery task.

The sending half of the MSH without the network.  :func:`send_message` is
what the back-office APIs, the file drop and the CLI call: it resolves the
route in the CPA, builds the envelope with exactly the header blocks the
sender's channel demands (CPPA 2.0 §8.4), and stores the message
(CREATED) with its delivery task in one transaction.  The delivery worker
takes it from there.  :func:`send_ping` does the same for a Ping.

Reliable messaging (ebMS 2.0 §6.5): TimeToLive = Timestamp +
RetryInterval × (Retries + 1), as ebms-core sets it, and the task allows
1 + Retries attempts, one RetryInterval apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cpa.model import MSH_SERVICE, PartyId, Service, parse_party
from cpa.resolve import ResolutionError, Route, resolve
from gateway.ebms.envelope import Envelope, build_envelope
from gateway.ebms.model import AckRequested, ManifestReference, MessageHeader, SyncReply
from gateway.ebms.signals import new_message_id, ping, status_request
from gateway.msh.security import MessageSecurity, SecurityUnavailable, protect_outbound
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor, Database
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    MessageRecord,
    OutboundStatus,
    PayloadFile,
    insert_message,
    insert_task,
)
from gateway.store.timeutil import utcnow

XML = "text/xml; charset=UTF-8"


class SendError(ValueError):
    """The message cannot be sent under this CPA; the text says why."""


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
class Queued:
    """A stored outbound message."""

    message_id: str
    conversation_id: str
    url: str
    profile: str


def _host(url: str | None) -> str:
    return (urlsplit(url).hostname if url else None) or "localhost"


def _parties(ids: Sequence[PartyId]) -> str:
    return ",".join(p.key() for p in ids)


def multipart_content_type(boundary: str, start: str) -> str:
    """The HTTP Content-Type of a SOAP-with-attachments message (ebMS 2.0 §2.1.2)."""
    return f'multipart/related; type="text/xml"; boundary="{boundary}"; start="<{start}>"'


def _store(
    cur: Cursor,
    env: Envelope,
    route: Route,
    payloads: Sequence[AttachmentRecord],
    now: datetime,
    *,
    status: str | None,
    max_attempts: int,
    retry_interval: timedelta | None,
    correlation_id: str | None = None,
    envelope: bytes | None = None,
) -> Queued:
    h = env.header
    url = route.endpoint
    if url is None:  # refuse before anything is stored
        raise SendError(f"the CPA gives {route.to_party.party_name!r} no endpoint")
    host = _host(route.send.endpoint)
    if payloads:
        content_type = multipart_content_type(
            f"MIMEBoundary_{uuid.uuid4().hex}", f"soap-{uuid.uuid4().hex}@{host}"
        )
    else:
        content_type = XML
    pk = insert_message(
        cur,
        MessageRecord(
            message_id=h.message_id,
            direction=Direction.OUT,
            cpa_id=h.cpa_id,
            conversation_id=h.conversation_id,
            ref_to_message_id=h.ref_to_message_id,
            from_party=_parties(h.from_ids),
            from_role=h.from_role,
            to_party=_parties(h.to_ids),
            to_role=h.to_role,
            service=h.service.key(),
            action=h.action,
            sent_at=h.timestamp,
            time_to_live=h.time_to_live,
            status=status,
            content_type=content_type,
            envelope=envelope if envelope is not None else build_envelope(env),
            correlation_id=correlation_id,
        ),
        payloads,
        now=now,
    )
    insert_task(
        cur,
        pk,
        url,
        now=now,
        max_attempts=max_attempts,
        retry_interval=retry_interval,
        expires_at=h.time_to_live,
    )
    return Queued(h.message_id, h.conversation_id, url, route.profile)


def send_message(db: Database, registry: CpaRegistry, **kwargs: Any) -> Queued:
    """:func:`queue_message` in a transaction of its own (the keyword arguments are its)."""
    with db.transaction() as cur:
        return queue_message(cur, registry, **kwargs)


def queue_message(
    cur: Cursor,
    registry: CpaRegistry,
    *,
    cpa_id: str,
    from_party: PartyId,
    from_role: str,
    to_party: PartyId,
    to_role: str,
    service: Service,
    action: str,
    payloads: Sequence[Payload] = (),
    conversation_id: str | None = None,
    message_id: str | None = None,
    ref_to_message_id: str | None = None,
    correlation_id: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    security: MessageSecurity | None = None,
) -> Queued:
    """Build, store and queue a business message in ``cur``'s transaction; returns its ids.

    On a signed or encrypted route the message is signed with our key and its
    payloads encrypted for the receiver (:mod:`gateway.msh.security`) here,
    once: what is stored are the wire bytes, so every resend repeats them
    (ebMS 2.0 §6.5.3).  Raises :class:`SendError` when the CPA does not allow
    it (unknown CPA, parties, roles, service or action; a CPA that is not in
    force) or the message cannot be secured as the CPA demands.
    """
    cpa = registry.get_cpa(cpa_id, cur)
    now = clock()
    if not cpa.in_force(now):
        raise SendError(f"CPA {cpa_id} is not in force now")
    try:
        route = resolve(
            cpa,
            from_ids=(from_party,),
            from_role=from_role,
            to_ids=(to_party,),
            to_role=to_role,
            service=service,
            action=action,
        )
    except ResolutionError as exc:
        raise SendError(f"not allowed by CPA {cpa_id}: {exc.location} {exc.description}") from None
    host = _host(route.send.endpoint)
    records = tuple(
        AttachmentRecord(
            p.content_id or f"{uuid.uuid4()}@{host}", p.content_type, p.content, p.filename
        )
        for p in payloads
    )
    ttl = None
    if route.retry_interval is not None and route.ack_requested:
        try:
            ttl = now + route.retry_interval * (route.retries + 1)
        except OverflowError:
            # A CPA imported before cpa.validate refused such a schedule: the
            # retries outlast any date, so the message never expires.
            ttl = datetime.max.replace(tzinfo=UTC)
    header = MessageHeader(
        from_ids=(from_party,),
        from_role=from_role,
        to_ids=(to_party,),
        to_role=to_role,
        cpa_id=cpa_id,
        conversation_id=conversation_id or str(uuid.uuid4()),
        service=service,
        action=action,
        message_id=message_id or new_message_id(host),
        timestamp=now,
        ref_to_message_id=ref_to_message_id,
        time_to_live=ttl,
        duplicate_elimination=route.duplicate_elimination,
    )
    env = Envelope(
        header=header,
        ack_requested=AckRequested(signed=route.ack_signature_requested)
        if route.ack_requested
        else None,
        sync_reply=SyncReply() if route.sync_reply_mode != "none" else None,
        manifest=tuple(ManifestReference(f"cid:{r.content_id}") for r in records) or None,
        manifest_version="2.0" if records else None,
    )
    try:
        wire, wire_parts = protect_outbound(
            cur, route, build_envelope(env), records, security, now=now
        )
    except SecurityUnavailable as exc:
        raise SendError(str(exc)) from None
    return _store(
        cur,
        env,
        route,
        wire_parts,
        now,
        status=OutboundStatus.CREATED.value,
        max_attempts=1 + route.retries,
        retry_interval=route.retry_interval,
        correlation_id=correlation_id,
        envelope=wire,
    )


def send_ping(db: Database, registry: CpaRegistry, **kwargs: Any) -> Queued:
    """:func:`queue_ping` in a transaction of its own."""
    with db.transaction() as cur:
        return queue_ping(cur, registry, **kwargs)


def _queue_msh_request(
    cur: Cursor,
    registry: CpaRegistry,
    *,
    cpa_id: str,
    from_party: PartyId,
    to_party: PartyId,
    action: str,
    build: Callable[[MessageHeader, bool], Envelope],
    clock: Callable[[], datetime],
) -> Queued:
    """Store and queue an MSH request (Ping, StatusRequest) on the MSH's own route.

    Neither is retried: a monitoring probe or a status question wants the truth
    about now, not an answer from a later attempt.
    """
    cpa = registry.get_cpa(cpa_id, cur)
    try:
        route = resolve(
            cpa,
            from_ids=(from_party,),
            from_role=None,
            to_ids=(to_party,),
            to_role=None,
            service=Service(MSH_SERVICE),
            action=action,
        )
    except ResolutionError as exc:
        raise SendError(f"not allowed by CPA {cpa_id}: {exc.location} {exc.description}") from None
    now = clock()
    header = MessageHeader(
        from_ids=(from_party,),
        to_ids=(to_party,),
        cpa_id=cpa_id,
        conversation_id=str(uuid.uuid4()),
        service=Service(MSH_SERVICE),
        action=action,
        message_id=new_message_id(_host(route.send.endpoint)),
        timestamp=now,
    )
    env = build(header, route.sync_reply_mode != "none")
    return _store(cur, env, route, (), now, status=None, max_attempts=1, retry_interval=None)


def queue_ping(
    cur: Cursor,
    registry: CpaRegistry,
    *,
    cpa_id: str,
    from_party: PartyId,
    to_party: PartyId,
    clock: Callable[[], datetime] = utcnow,
) -> Queued:
    """Store and queue a Ping; its Pong arrives as an inbound message (ebMS 2.0 §8)."""
    return _queue_msh_request(
        cur,
        registry,
        cpa_id=cpa_id,
        from_party=from_party,
        to_party=to_party,
        action="Ping",
        build=lambda header, sync: ping(header, sync=sync),
        clock=clock,
    )


def queue_status_request(
    cur: Cursor,
    registry: CpaRegistry,
    *,
    cpa_id: str,
    from_party: PartyId,
    to_party: PartyId,
    ref_to_message_id: str,
    clock: Callable[[], datetime] = utcnow,
) -> Queued:
    """Store and queue a StatusRequest about our message ``ref_to_message_id``.

    The StatusResponse arrives as an inbound message referring to the request
    (ebMS 2.0 §7.3).
    """
    return _queue_msh_request(
        cur,
        registry,
        cpa_id=cpa_id,
        from_party=from_party,
        to_party=to_party,
        action="StatusRequest",
        build=lambda header, sync: status_request(header, ref_to_message_id, sync=sync),
        clock=clock,
    )


__all__ = [
    "Payload",
    "Queued",
    "SendError",
    "parse_party",
    "queue_message",
    "queue_ping",
    "queue_status_request",
    "send_message",
    "send_ping",
]
