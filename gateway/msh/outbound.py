"""Storing outbound ebMS messages: a resolved route in, a queued message out.

The sending half of the MSH without the network.  The front doors reach it
through :mod:`gateway.msh.service`, which resolves the CPA, service, parties
and roles once (:mod:`gateway.msh.addressing`); here :func:`queue_message`
and :func:`queue_signal` take that :class:`SendRoute`, let
:mod:`gateway.msh.plan` decide the envelope and the delivery task, secure the
envelope as the sender's channel demands (CPPA 2.0 §8.4) and store the
message with its task in the caller's transaction.  The delivery worker
takes it from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cpa.model import parse_party
from cpa.resolve import Route
from gateway.ebms.envelope import Envelope, build_envelope
from gateway.ebms.model import MessageHeader
from gateway.msh.addressing import Refusal, SendError, SendRoute
from gateway.msh.facts import CertificateMap
from gateway.msh.plan import (
    OutboundPlan,
    Payload,
    multipart_content_type,
    plan_message,
    plan_signal,
)
from gateway.msh.records import header_record
from gateway.msh.security import MessageSecurity, SecurityUnavailable, protect
from gateway.store.certmap import certificate_map
from gateway.store.database import Cursor
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    insert_message,
    insert_task,
)
from gateway.store.timeutil import utcnow


@dataclass(frozen=True)
class Queued:
    """A stored outbound message."""

    message_id: str
    conversation_id: str
    url: str
    profile: str


def queue_message(
    cur: Cursor,
    route: SendRoute,
    *,
    payloads: Sequence[Payload] = (),
    conversation_id: str | None = None,
    message_id: str | None = None,
    ref_to_message_id: str | None = None,
    correlation_id: str | None = None,
    clock: Callable[[], datetime] = utcnow,
    security: MessageSecurity | None = None,
) -> Queued:
    """Build, store and queue a business message on ``route`` in ``cur``'s transaction.

    On a signed or encrypted route the message is signed with our key and its
    payloads encrypted for the receiver (:mod:`gateway.msh.security`) here,
    once: what is stored are the wire bytes, so every resend repeats them
    (ebMS 2.0 §6.5.3).  Raises :class:`SendError` when it cannot be secured
    as the CPA demands.
    """
    now = clock()
    plan = plan_message(
        route,
        payloads,
        now,
        message_id=message_id,
        conversation_id=conversation_id,
        ref_to_message_id=ref_to_message_id,
        correlation_id=correlation_id,
    )
    try:
        wire, parts = protect_outbound(
            cur, route.route, build_envelope(plan.envelope), plan.parts, security, now=now
        )
    except SecurityUnavailable as exc:
        raise SendError(str(exc), Refusal.INSECURE, cpa_id=route.cpa_id) from None
    return apply_plan(cur, plan, wire, parts, now)


def queue_signal(
    cur: Cursor,
    route: SendRoute,
    build: Callable[[MessageHeader, bool], Envelope],
    *,
    clock: Callable[[], datetime] = utcnow,
) -> Queued:
    """Store and queue an MSH request (Ping, StatusRequest) on ``route``; tried once."""
    now = clock()
    plan = plan_signal(route, now, build)
    return apply_plan(cur, plan, build_envelope(plan.envelope), (), now)


def apply_plan(
    cur: Cursor,
    plan: OutboundPlan,
    envelope: bytes,
    parts: Sequence[AttachmentRecord],
    now: datetime,
) -> Queued:
    """Store the planned message (``envelope`` and ``parts`` as sent) with its delivery task."""
    h = plan.envelope.header
    url = plan.route.endpoint
    pk = insert_message(
        cur,
        header_record(
            plan.envelope,
            Direction.OUT,
            plan.content_type,
            envelope,
            with_roles=True,
            status=plan.status,
            correlation_id=plan.correlation_id,
        ),
        parts,
        now=now,
    )
    insert_task(
        cur,
        pk,
        url,
        now=now,
        max_attempts=plan.max_attempts,
        retry_interval=plan.retry_interval,
        expires_at=h.time_to_live,
    )
    return Queued(h.message_id, h.conversation_id, url, plan.route.route.profile)


def __getattr__(name: str) -> Any:
    # The functions that resolve and queue in one call are the MSH's door now
    # (gateway.msh.service); their old home keeps answering for them.
    if name in _DOOR:
        from gateway.msh import service

        return getattr(service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_DOOR = ("send_message", "send_ping", "queue_ping", "queue_status_request")

__all__ = [
    "Payload",
    "Queued",
    "SendError",
    "apply_plan",
    "multipart_content_type",
    "parse_party",
    "queue_message",
    "queue_signal",
]


def protect_outbound(
    cur: Cursor,
    route: Route,
    envelope: bytes,
    parts: Sequence[AttachmentRecord],
    security: MessageSecurity | None,
    *,
    now: datetime,
) -> tuple[bytes, tuple[AttachmentRecord, ...]]:
    """:func:`protect`, with the CPA's certificate mappings read in ``cur``'s transaction."""
    if route.encryption is None:
        certificates = CertificateMap()
    else:
        certificates = CertificateMap(certificate_map(cur, route.cpa.cpa_id))
    return protect(route, envelope, parts, security, certificates, now=now)
