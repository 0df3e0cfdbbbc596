"""Read and write the SOAP 1.1 envelope of an ebMS 2.0 message.

:func:`parse_envelope` turns the bytes of the SOAP part into an
:class:`Envelope`, after a safe parse and validation against the SOAP 1.1 and
ebMS 2.0 header schemas.  Values that the schema admits but Digikoppeling
forbids (another ``eb:version``, a nextMSH actor, ...) are kept as received:
judging them, with the right ebMS error code, is the validator's job
(docs/msh.md, Receiving).  A document that is not a schema-valid
envelope raises :class:`EnvelopeError`; the MSH answers that with a bare HTTP
500, as ebms-core does (§3.3).

:func:`build_envelope` writes an :class:`Envelope` with the customary prefixes
(``SOAP``, ``eb``, ``xlink``, ``ds``), UTC timestamps with ``Z`` and every
header block flagged ``SOAP:mustUnderstand="1"`` as the schema requires.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from lxml import etree

from cpa.xsdtypes import format_datetime, parse_datetime
from gateway.ebms.model import (
    DS_NS,
    EB_NS,
    SOAP_NS,
    XLINK_NS,
    XML_NS,
    Acknowledgment,
    AckRequested,
    EbmsError,
    ErrorCode,
    ErrorList,
    ManifestReference,
    MessageHeader,
    MessageStatus,
    PartyId,
    Service,
    Severity,
    StatusRequest,
    StatusResponse,
    SyncReply,
)
from wsdl import XSD_DIR
from xmlsafe import UnsafeXmlError, parse_xml
from xmlsafe.schemas import Schema

#: The SOAP part of an ebMS message is headers only: payloads travel as MIME
#: parts.  1 MiB is generous (a signed envelope with a dozen references is a
#: few kB) and keeps libxml2's XPath transform, which is quadratic, cheap.
MAX_ENVELOPE_BYTES = 1024 * 1024

T = TypeVar("T")


class EnvelopeError(ValueError):
    """The SOAP part is not a schema-valid ebMS 2.0 envelope."""


@dataclass(frozen=True)
class Envelope:
    """Everything the MSH reads from or writes into a SOAP envelope."""

    header: MessageHeader
    ack_requested: AckRequested | None = None
    sync_reply: SyncReply | None = None
    message_order: bool = False
    acknowledgment: Acknowledgment | None = None
    error_list: ErrorList | None = None
    manifest: tuple[ManifestReference, ...] | None = None
    manifest_version: str | None = None
    status_request: StatusRequest | None = None
    status_response: StatusResponse | None = None
    signed: bool = False
    unknown_must_understand: tuple[str, ...] = ()


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _load_schema() -> etree._Element:
    """SOAP 1.1 + ebMS 2.0 header schema, from the local copies only."""
    wrapper = f"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
        targetNamespace="urn:dkgw:envelope-wrapper">
      <xs:import namespace="{SOAP_NS}" schemaLocation="{(XSD_DIR / "envelope.xsd").as_uri()}"/>
      <xs:import namespace="{EB_NS}" schemaLocation="{(XSD_DIR / "msg-header-2_0.xsd").as_uri()}"/>
    </xs:schema>"""
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.fromstring(wrapper.encode(), parser)


#: Compiled once and shared by the threads that parse envelopes (xmlsafe/schemas.py).
ENVELOPE_SCHEMA = Schema("envelope.xsd + msg-header-2_0.xsd", _load_schema)


# -- parsing -------------------------------------------------------------------


def parse_envelope(xml: bytes) -> tuple[Envelope, etree._ElementTree]:
    """Parse the SOAP part; returns the envelope and the tree (for signature checks).

    Raises :class:`EnvelopeError` for anything that is not a schema-valid
    SOAP 1.1 envelope carrying an ``eb:MessageHeader``.
    """
    try:
        tree = parse_xml(xml, max_bytes=MAX_ENVELOPE_BYTES)
    except UnsafeXmlError as exc:
        raise EnvelopeError(str(exc)) from None
    root = tree.getroot()
    if root.tag != _q(SOAP_NS, "Envelope"):
        raise EnvelopeError(f"root element is {_one_line(root.tag)}, not a SOAP 1.1 Envelope")
    errors = ENVELOPE_SCHEMA.validate(tree)
    if errors is not None:
        first = errors[0]
        raise EnvelopeError(f"schema: line {first.line}: {_one_line(first.message)}")
    header_el = root.find(_q(SOAP_NS, "Header"))
    body_el = root.find(_q(SOAP_NS, "Body"))
    if header_el is None or body_el is None:
        raise EnvelopeError("an ebMS message has a SOAP Header and a SOAP Body")
    mh = header_el.find(_q(EB_NS, "MessageHeader"))
    if mh is None:
        raise EnvelopeError("no eb:MessageHeader in the SOAP Header")
    if len(header_el.findall(_q(EB_NS, "MessageHeader"))) > 1:
        raise EnvelopeError("more than one eb:MessageHeader")
    manifest_el = body_el.find(_q(EB_NS, "Manifest"))
    envelope = Envelope(
        header=_message_header(mh),
        ack_requested=_optional(header_el, "AckRequested", _ack_requested),
        sync_reply=_optional(header_el, "SyncReply", _sync_reply),
        message_order=header_el.find(_q(EB_NS, "MessageOrder")) is not None,
        acknowledgment=_optional(header_el, "Acknowledgment", _acknowledgment),
        error_list=_optional(header_el, "ErrorList", _error_list),
        manifest=(
            tuple(_reference(r) for r in manifest_el.findall(_q(EB_NS, "Reference")))
            if manifest_el is not None
            else None
        ),
        manifest_version=_eb_attr(manifest_el, "version") if manifest_el is not None else None,
        status_request=_optional(body_el, "StatusRequest", _status_request),
        status_response=_optional(body_el, "StatusResponse", _status_response),
        signed=header_el.find(_q(DS_NS, "Signature")) is not None,
        unknown_must_understand=tuple(
            el.tag
            for el in header_el
            if isinstance(el.tag, str)
            and _token(el.get(_q(SOAP_NS, "mustUnderstand"))) in ("1", "true")
            and etree.QName(el).namespace not in (EB_NS, DS_NS)
        ),
    )
    return envelope, tree


def _one_line(text: str, limit: int = 300) -> str:
    """A message quoting the peer's document, without line breaks and cut short.

    libxml2's schema messages quote element values as they came, ``&#10;``
    included, and the message ends up in a log line.
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _optional(parent: etree._Element, name: str, build: Callable[[etree._Element], T]) -> T | None:
    el = parent.find(_q(EB_NS, name))
    return None if el is None else build(el)


def _text(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    value: str = el.text
    return value.strip()


def _required_text(parent: etree._Element, name: str) -> str:
    value = _text(parent.find(_q(EB_NS, name)))
    if not value:  # the schema requires the element; it may still be blank
        raise EnvelopeError(f"eb:{name} is empty")
    return value


def _eb_attr(el: etree._Element, name: str) -> str | None:
    value = el.get(_q(EB_NS, name))
    return None if value is None else str(value)


def _token(value: str | None) -> str:
    """An xsd:boolean or NMTOKEN value as the schema compares it: white space collapsed.

    The schema accepts ``eb:signed=" true "`` and ``eb:messageStatus=" Received "``;
    read verbatim they would mean false and raise.
    """
    return (value or "").strip()


def _enum(kind: Callable[[str], T], value: str, name: str) -> T:
    try:
        return kind(value)
    except ValueError:
        raise EnvelopeError(f"{name} {value[:40]!r} is not a known value") from None


def _datetime(text: str, name: str) -> datetime:
    try:
        return parse_datetime(text)
    except ValueError as exc:
        # The schema admits dates whose UTC instant a datetime cannot hold
        # (0001-01-01T00:00:00+14:00); the message says which (and is bounded).
        raise EnvelopeError(f"eb:{name} is not a usable xsd:dateTime: {exc}") from None


def _party_ids(el: etree._Element | None) -> tuple[PartyId, ...]:
    if el is None:
        return ()
    return tuple(
        PartyId((p.text or "").strip(), _eb_attr(p, "type"))
        for p in el.findall(_q(EB_NS, "PartyId"))
    )


def _message_header(mh: etree._Element) -> MessageHeader:
    from_el, to_el = mh.find(_q(EB_NS, "From")), mh.find(_q(EB_NS, "To"))
    service_el = mh.find(_q(EB_NS, "Service"))
    data = mh.find(_q(EB_NS, "MessageData"))
    if from_el is None or to_el is None or service_el is None or data is None:
        # Schema-required, so only a schema that drifted could let this through.
        raise EnvelopeError("eb:MessageHeader lacks From, To, Service or MessageData")
    ttl = _text(data.find(_q(EB_NS, "TimeToLive")))
    return MessageHeader(
        from_ids=_party_ids(from_el),
        from_role=_text(from_el.find(_q(EB_NS, "Role"))),
        to_ids=_party_ids(to_el),
        to_role=_text(to_el.find(_q(EB_NS, "Role"))),
        cpa_id=_required_text(mh, "CPAId"),
        conversation_id=_required_text(mh, "ConversationId"),
        service=Service((service_el.text or "").strip(), _eb_attr(service_el, "type")),
        action=_required_text(mh, "Action"),
        message_id=_required_text(data, "MessageId"),
        timestamp=_datetime(_required_text(data, "Timestamp"), "Timestamp"),
        ref_to_message_id=_text(data.find(_q(EB_NS, "RefToMessageId"))),
        time_to_live=_datetime(ttl, "TimeToLive") if ttl else None,
        duplicate_elimination=mh.find(_q(EB_NS, "DuplicateElimination")) is not None,
        version=_eb_attr(mh, "version") or "",
    )


def _ack_requested(el: etree._Element) -> AckRequested:
    return AckRequested(
        signed=_token(_eb_attr(el, "signed")) in ("true", "1"),
        actor=el.get(_q(SOAP_NS, "actor")),
        version=_eb_attr(el, "version") or "",
    )


def _sync_reply(el: etree._Element) -> SyncReply:
    return SyncReply(
        actor=str(el.get(_q(SOAP_NS, "actor")) or ""), version=_eb_attr(el, "version") or ""
    )


def _canonical(el: etree._Element) -> bytes:
    try:
        out: bytes = etree.tostring(el, method="c14n")
    except etree.C14NError:
        # libxml2 refuses C14N with a relative namespace URI in scope (C14N 1.0 §2).
        raise EnvelopeError(
            f"{etree.QName(el).localname} cannot be canonicalised (a relative namespace URI?)"
        ) from None
    return out


def _acknowledgment(el: etree._Element) -> Acknowledgment:
    return Acknowledgment(
        timestamp=_datetime(_required_text(el, "Timestamp"), "Timestamp"),
        ref_to_message_id=_required_text(el, "RefToMessageId"),
        from_ids=_party_ids(el.find(_q(EB_NS, "From"))),
        references=tuple(_canonical(r) for r in el.findall(_q(DS_NS, "Reference"))),
        actor=el.get(_q(SOAP_NS, "actor")),
        version=_eb_attr(el, "version") or "",
    )


def _error_list(el: etree._Element) -> ErrorList:
    errors = []
    for e in el.findall(_q(EB_NS, "Error")):
        code = _eb_attr(e, "errorCode") or ""
        try:
            error_code = ErrorCode(code)
        except ValueError:
            error_code = ErrorCode.UNKNOWN  # a code we do not know still means failure
        errors.append(
            EbmsError(
                code=error_code,
                location=_eb_attr(e, "location"),
                description=_text(e.find(_q(EB_NS, "Description"))),
                severity=_enum(Severity, _token(_eb_attr(e, "severity")) or "Error", "severity"),
                code_context=_eb_attr(e, "codeContext") or "",
            )
        )
    return ErrorList(errors=tuple(errors), version=_eb_attr(el, "version") or "")


def _reference(el: etree._Element) -> ManifestReference:
    return ManifestReference(
        href=str(el.get(_q(XLINK_NS, "href")) or ""), role=el.get(_q(XLINK_NS, "role"))
    )


def _status_request(el: etree._Element) -> StatusRequest:
    return StatusRequest(
        ref_to_message_id=_required_text(el, "RefToMessageId"),
        version=_eb_attr(el, "version") or "",
    )


def _status_response(el: etree._Element) -> StatusResponse:
    ts = _text(el.find(_q(EB_NS, "Timestamp")))
    return StatusResponse(
        ref_to_message_id=_required_text(el, "RefToMessageId"),
        message_status=_enum(
            MessageStatus, _token(_eb_attr(el, "messageStatus")), "eb:messageStatus"
        ),
        timestamp=_datetime(ts, "Timestamp") if ts else None,
        version=_eb_attr(el, "version") or "",
    )


# -- building ------------------------------------------------------------------

_NSMAP = {"SOAP": SOAP_NS, "eb": EB_NS, "xlink": XLINK_NS, "ds": DS_NS}


def _sub(
    parent: etree._Element, ns: str, name: str, text: str | None = None, **attrs: str
) -> etree._Element:
    el = etree.SubElement(parent, _q(ns, name))
    for key, value in attrs.items():
        el.set(key, value)
    if text is not None:
        el.text = text
    return el


def _header_block(
    parent: etree._Element, name: str, version: str, actor: str | None = None
) -> etree._Element:
    el = _sub(parent, EB_NS, name)
    el.set(_q(EB_NS, "version"), version)
    el.set(_q(SOAP_NS, "mustUnderstand"), "1")
    if actor is not None:
        el.set(_q(SOAP_NS, "actor"), actor)
    return el


def _add_party(
    parent: etree._Element, name: str, ids: tuple[PartyId, ...], role: str | None
) -> None:
    el = _sub(parent, EB_NS, name)
    for pid in ids:
        p = _sub(el, EB_NS, "PartyId", pid.value)
        if pid.type is not None:
            p.set(_q(EB_NS, "type"), pid.type)
    if role is not None:
        _sub(el, EB_NS, "Role", role)


def build_envelope(env: Envelope) -> bytes:
    """Serialise ``env`` as UTF-8 XML with an XML declaration."""
    root = etree.Element(_q(SOAP_NS, "Envelope"), nsmap=_NSMAP)
    header = _sub(root, SOAP_NS, "Header")
    body = _sub(root, SOAP_NS, "Body")
    h = env.header
    mh = _header_block(header, "MessageHeader", h.version)
    _add_party(mh, "From", h.from_ids, h.from_role)
    _add_party(mh, "To", h.to_ids, h.to_role)
    _sub(mh, EB_NS, "CPAId", h.cpa_id)
    _sub(mh, EB_NS, "ConversationId", h.conversation_id)
    service = _sub(mh, EB_NS, "Service", h.service.value)
    if h.service.type is not None:
        service.set(_q(EB_NS, "type"), h.service.type)
    _sub(mh, EB_NS, "Action", h.action)
    data = _sub(mh, EB_NS, "MessageData")
    _sub(data, EB_NS, "MessageId", h.message_id)
    _sub(data, EB_NS, "Timestamp", format_datetime(h.timestamp))
    if h.ref_to_message_id is not None:
        _sub(data, EB_NS, "RefToMessageId", h.ref_to_message_id)
    if h.time_to_live is not None:
        _sub(data, EB_NS, "TimeToLive", format_datetime(h.time_to_live))
    if h.duplicate_elimination:
        _sub(mh, EB_NS, "DuplicateElimination")
    if env.sync_reply is not None:
        _header_block(header, "SyncReply", env.sync_reply.version, env.sync_reply.actor)
    if env.ack_requested is not None:
        ar = _header_block(
            header, "AckRequested", env.ack_requested.version, env.ack_requested.actor
        )
        ar.set(_q(EB_NS, "signed"), "true" if env.ack_requested.signed else "false")
    if env.acknowledgment is not None:
        _build_acknowledgment(header, env.acknowledgment)
    if env.error_list is not None:
        _build_error_list(header, env.error_list)
    if env.manifest:
        manifest = _sub(body, EB_NS, "Manifest")
        manifest.set(_q(EB_NS, "version"), env.manifest_version or "2.0")
        for ref in env.manifest:
            r = _sub(manifest, EB_NS, "Reference")
            r.set(_q(XLINK_NS, "type"), "simple")
            r.set(_q(XLINK_NS, "href"), ref.href)
            if ref.role is not None:
                r.set(_q(XLINK_NS, "role"), ref.role)
    if env.status_request is not None:
        sr = _sub(body, EB_NS, "StatusRequest")
        sr.set(_q(EB_NS, "version"), env.status_request.version)
        _sub(sr, EB_NS, "RefToMessageId", env.status_request.ref_to_message_id)
    if env.status_response is not None:
        resp = env.status_response
        sr = _sub(body, EB_NS, "StatusResponse")
        sr.set(_q(EB_NS, "version"), resp.version)
        sr.set(_q(EB_NS, "messageStatus"), resp.message_status.value)
        _sub(sr, EB_NS, "RefToMessageId", resp.ref_to_message_id)
        if resp.timestamp is not None:
            _sub(sr, EB_NS, "Timestamp", format_datetime(resp.timestamp))
    out: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return out


def _build_acknowledgment(header: etree._Element, ack: Acknowledgment) -> None:
    el = _header_block(header, "Acknowledgment", ack.version, ack.actor)
    _sub(el, EB_NS, "Timestamp", format_datetime(ack.timestamp))
    _sub(el, EB_NS, "RefToMessageId", ack.ref_to_message_id)
    if ack.from_ids:
        _add_party(el, "From", ack.from_ids, None)
    for reference in ack.references:
        el.append(etree.fromstring(reference))


def _build_error_list(header: etree._Element, errors: ErrorList) -> None:
    el = _header_block(header, "ErrorList", errors.version)
    el.set(_q(EB_NS, "highestSeverity"), errors.highest_severity.value)
    for error in errors.errors:
        e = _sub(el, EB_NS, "Error")
        e.set(_q(EB_NS, "codeContext"), error.code_context)
        e.set(_q(EB_NS, "errorCode"), error.code.value)
        e.set(_q(EB_NS, "severity"), error.severity.value)
        if error.location is not None:
            e.set(_q(EB_NS, "location"), error.location)
        if error.description is not None:
            d = _sub(e, EB_NS, "Description", error.description)
            d.set(_q(XML_NS, "lang"), "en-US")
