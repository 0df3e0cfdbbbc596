"""The store rows of received messages and of the signals we answer with.

Pure builders over the parsed envelope: the decisions put them in
:class:`~gateway.msh.effects.StoreInbound` and
:class:`~gateway.msh.effects.StoreReply` effects.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cpa.model import PartyId
from gateway.ebms.envelope import Envelope
from gateway.store.parties import encode
from gateway.store.records import Direction, MessageRecord

__all__ = [
    "XML",
    "header_record",
    "host",
    "inbound_record",
    "parties",
    "reply_record",
    "sync_reply_record",
]

XML = "text/xml; charset=UTF-8"


def parties(ids: Sequence[PartyId]) -> str:
    """The party ids as the store keeps them (:func:`gateway.store.parties.encode`)."""
    return encode(ids)


def host(url: str | None) -> str:
    """The host name for a signal's MessageId (ebMS 2.0 §3.1.6.1), from our endpoint URL."""
    return (urlsplit(url).hostname if url else None) or "localhost"


def header_record(
    env: Envelope,
    direction: Direction,
    content_type: str,
    envelope: bytes,
    *,
    with_roles: bool = False,
    **extra: Any,
) -> MessageRecord:
    """The row of ``env``: its header's ids, parties, service and action.

    ``with_roles`` keeps the From and To roles and the TimeToLive (business
    messages); signals are stored without them.  ``extra``: further columns
    (status, persist_until, correlation_id).
    """
    h = env.header
    if with_roles:
        extra = {"from_role": h.from_role, "to_role": h.to_role,
                 "time_to_live": h.time_to_live, **extra}  # fmt: skip
    return MessageRecord(
        message_id=h.message_id,
        direction=direction,
        cpa_id=h.cpa_id,
        conversation_id=h.conversation_id,
        ref_to_message_id=h.ref_to_message_id,
        from_party=parties(h.from_ids),
        to_party=parties(h.to_ids),
        service=h.service.key(),
        action=h.action,
        sent_at=h.timestamp,
        content_type=content_type,
        envelope=envelope,
        **extra,
    )


def inbound_record(
    env: Envelope,
    content_type: str,
    envelope: bytes,
    status: str | None,
    persist_until: datetime | None = None,
) -> MessageRecord:
    """The row of a received message, as it arrived (``envelope`` are its bytes)."""
    return header_record(
        env, Direction.IN, content_type, envelope, with_roles=True,
        persist_until=persist_until, status=status,
    )  # fmt: skip


def reply_record(reply: Envelope, body: bytes) -> MessageRecord:
    """The row of a signal we send (``body`` its bytes, signed or not)."""
    return header_record(reply, Direction.OUT, XML, body)


def sync_reply_record(env: Envelope, content_type: str, body: bytes) -> MessageRecord:
    """The row of a signal that came back in the HTTP response to one of our POSTs."""
    return header_record(env, Direction.IN, content_type, body)
