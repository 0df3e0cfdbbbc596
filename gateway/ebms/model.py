"""The ebMS 2.0 message header blocks as plain data.

Field names follow the OASIS schema ``msg-header-2_0.xsd``.  Objects are
immutable; :mod:`gateway.ebms.envelope` reads them from and writes them to the
SOAP envelope, and :mod:`gateway.ebms.errors` holds the error vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from cpa.model import MSH_SERVICE, NEXT_MSH, TO_PARTY_MSH, PartyId, Service

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
EB_NS = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
XLINK_NS = "http://www.w3.org/1999/xlink"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XML_NS = "http://www.w3.org/XML/1998/namespace"

EBMS_VERSION = "2.0"
#: ``SOAP:actor`` of ``eb:SyncReply`` (ebMS 2.0 §4.3): the next SOAP node.
SOAP_ACTOR_NEXT = "http://schemas.xmlsoap.org/soap/actor/next"
#: ``eb:codeContext`` of every Digikoppeling error (ebMS 2.0 §4.2.3).
ERROR_CODE_CONTEXT = "urn:oasis:names:tc:ebxml-msg:service:errors"

__all__ = [
    "EBMS_VERSION",
    "EB_NS",
    "ERROR_CODE_CONTEXT",
    "MSH_SERVICE",
    "NEXT_MSH",
    "SOAP_ACTOR_NEXT",
    "SOAP_NS",
    "TO_PARTY_MSH",
    "XLINK_NS",
    "XML_NS",
    "AckRequested",
    "Acknowledgment",
    "EbmsError",
    "ErrorCode",
    "ErrorList",
    "ManifestReference",
    "MessageHeader",
    "MessageStatus",
    "PartyId",
    "Service",
    "Severity",
    "SignalAction",
    "StatusRequest",
    "StatusResponse",
    "SyncReply",
]


class SignalAction(StrEnum):
    """Actions of the MSH service ``urn:oasis:names:tc:ebxml-msg:service``."""

    ACKNOWLEDGMENT = "Acknowledgment"
    MESSAGE_ERROR = "MessageError"
    PING = "Ping"
    PONG = "Pong"
    STATUS_REQUEST = "StatusRequest"
    STATUS_RESPONSE = "StatusResponse"


class ErrorCode(StrEnum):
    """ebMS 2.0 §4.2.3.4.1 error codes (codeContext ``...:service:errors``)."""

    VALUE_NOT_RECOGNIZED = "ValueNotRecognized"
    NOT_SUPPORTED = "NotSupported"
    INCONSISTENT = "Inconsistent"
    OTHER_XML = "OtherXml"
    DELIVERY_FAILURE = "DeliveryFailure"
    TIME_TO_LIVE_EXPIRED = "TimeToLiveExpired"
    SECURITY_FAILURE = "SecurityFailure"
    MIME_PROBLEM = "MimeProblem"
    UNKNOWN = "Unknown"


class Severity(StrEnum):
    """``eb:severity``."""

    WARNING = "Warning"
    ERROR = "Error"


class MessageStatus(StrEnum):
    """``eb:messageStatus`` of a StatusResponse (ebMS 2.0 §7.3.2)."""

    UNAUTHORIZED = "UnAuthorized"
    NOT_RECOGNIZED = "NotRecognized"
    RECEIVED = "Received"
    PROCESSED = "Processed"
    FORWARDED = "Forwarded"


@dataclass(frozen=True)
class EbmsError:
    """One ``eb:Error``: what went wrong and where."""

    code: ErrorCode
    location: str | None = None
    description: str | None = None
    severity: Severity = Severity.ERROR
    code_context: str = ERROR_CODE_CONTEXT


@dataclass(frozen=True)
class MessageHeader:
    """``eb:MessageHeader`` (ebMS 2.0 §3.1)."""

    from_ids: tuple[PartyId, ...]
    to_ids: tuple[PartyId, ...]
    cpa_id: str
    conversation_id: str
    service: Service
    action: str
    message_id: str
    timestamp: datetime
    from_role: str | None = None
    to_role: str | None = None
    ref_to_message_id: str | None = None
    time_to_live: datetime | None = None
    duplicate_elimination: bool = False
    version: str = EBMS_VERSION

    @property
    def is_signal(self) -> bool:
        """True for messages of the MSH service (acks, errors, ping, pong, status)."""
        return self.service.value == MSH_SERVICE and self.service.type is None


@dataclass(frozen=True)
class AckRequested:
    """``eb:AckRequested`` (ebMS 2.0 §6.3.1)."""

    signed: bool
    actor: str | None = TO_PARTY_MSH
    version: str = EBMS_VERSION


@dataclass(frozen=True)
class SyncReply:
    """``eb:SyncReply`` (ebMS 2.0 §4.3)."""

    actor: str = SOAP_ACTOR_NEXT
    version: str = EBMS_VERSION


@dataclass(frozen=True)
class ManifestReference:
    """One ``eb:Manifest/eb:Reference``: a payload by ``xlink:href``."""

    href: str
    role: str | None = None


@dataclass(frozen=True)
class Acknowledgment:
    """``eb:Acknowledgment`` (ebMS 2.0 §6.3.2).

    ``references`` are the ``ds:Reference`` elements of a signed
    acknowledgment, kept as canonical bytes: they are evidence, compared with
    the sender's own signature, never interpreted field by field here.
    """

    timestamp: datetime
    ref_to_message_id: str
    from_ids: tuple[PartyId, ...] = ()
    references: tuple[bytes, ...] = field(default=(), compare=False)
    actor: str | None = TO_PARTY_MSH
    version: str = EBMS_VERSION


@dataclass(frozen=True)
class ErrorList:
    """``eb:ErrorList`` (ebMS 2.0 §4.2)."""

    errors: tuple[EbmsError, ...]
    version: str = EBMS_VERSION

    @property
    def highest_severity(self) -> Severity:
        """Error when any error is an Error, else Warning."""
        if any(e.severity == Severity.ERROR for e in self.errors):
            return Severity.ERROR
        return Severity.WARNING


@dataclass(frozen=True)
class StatusRequest:
    """``eb:StatusRequest`` (ebMS 2.0 §7.3.1)."""

    ref_to_message_id: str
    version: str = EBMS_VERSION


@dataclass(frozen=True)
class StatusResponse:
    """``eb:StatusResponse`` (ebMS 2.0 §7.3.2)."""

    ref_to_message_id: str
    message_status: MessageStatus
    timestamp: datetime | None = None
    version: str = EBMS_VERSION
