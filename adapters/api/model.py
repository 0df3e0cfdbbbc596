"""ebms-core's message dataclasses as the back-office APIs exchange them.

Plain frozen dataclasses, the canonical digest of a message request (for
idempotency keys) and the properties of a stored message; the REST and SOAP
layers translate JSON or XML to and from these.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime

from adapters.api.errors import BadRequest
from gateway.store.messages import StoredMessage

__all__ = [
    "IDENTIFIERS",
    "DataSource",
    "Message",
    "MessageEvent",
    "MessageProperties",
    "MessageRequest",
    "MessageRequestProperties",
    "MessageStatusInfo",
    "decode_base64",
    "properties_of",
    "request_digest",
]


@dataclass(frozen=True)
class DataSource:
    """ebms-core's ``DataSource``: one payload."""

    content_type: str
    content: bytes
    name: str | None = None
    content_id: str | None = None


@dataclass(frozen=True)
class MessageRequestProperties:
    """ebms-core's ``MessageRequestProperties``; party ids and service are ``type:value``."""

    cpa_id: str
    from_party_id: str
    service: str
    action: str
    from_role: str | None = None
    to_party_id: str | None = None
    to_role: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    ref_to_message_id: str | None = None


@dataclass(frozen=True)
class MessageRequest:
    """ebms-core's ``MessageRequest``: properties and payloads."""

    properties: MessageRequestProperties
    data_sources: tuple[DataSource, ...] = ()


@dataclass(frozen=True)
class MessageProperties:
    """ebms-core's ``MessageProperties`` of a stored message."""

    cpa_id: str
    from_party_id: str
    from_role: str | None
    to_party_id: str
    to_role: str | None
    service: str
    action: str
    timestamp: datetime
    conversation_id: str
    message_id: str
    ref_to_message_id: str | None
    message_status: str | None


@dataclass(frozen=True)
class Message:
    """ebms-core's ``Message``: properties and payloads."""

    properties: MessageProperties
    data_sources: tuple[DataSource, ...] = field(default=())


@dataclass(frozen=True)
class MessageStatusInfo:
    """ebms-core's ``MessageStatus``: what the partner said about our message."""

    status: str
    timestamp: datetime | None


@dataclass(frozen=True)
class MessageEvent:
    """ebms-core's ``MessageEvent``, and why a FAILED one failed when that is known."""

    message_id: str
    type: str
    error_code: str | None = None
    error_text: str | None = None


def decode_base64(value: str, what: str) -> bytes:
    """Strict base64 (whitespace allowed, as line-wrapped encoders produce)."""
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None


#: The message request properties stored and sent as they are.
IDENTIFIERS = (
    "cpa_id",
    "from_party_id",
    "from_role",
    "to_party_id",
    "to_role",
    "service",
    "action",
    "conversation_id",
    "message_id",
    "ref_to_message_id",
)


def request_digest(request: MessageRequest) -> str:
    """Hex SHA-256 of a message request's canonical form: equal for equal requests.

    Properties and payloads (their bytes by digest), whatever JSON or XML
    formatting carried them.
    """
    props = request.properties
    canonical = {
        "properties": {name: getattr(props, name) for name in IDENTIFIERS},
        "dataSources": [
            {
                "contentType": ds.content_type,
                "name": ds.name,
                "contentId": ds.content_id,
                "sha256": hashlib.sha256(ds.content).hexdigest(),
            }
            for ds in request.data_sources
        ],
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()


def properties_of(message: StoredMessage) -> MessageProperties:
    """The ebms-core properties of a stored message."""
    return MessageProperties(
        cpa_id=message.cpa_id,
        from_party_id=message.from_party.split(",")[0],
        from_role=message.from_role,
        to_party_id=message.to_party.split(",")[0],
        to_role=message.to_role,
        service=message.service,
        action=message.action,
        timestamp=message.sent_at,
        conversation_id=message.conversation_id,
        message_id=message.message_id,
        ref_to_message_id=message.ref_to_message_id,
        message_status=message.status,
    )
