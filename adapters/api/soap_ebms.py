"""The SOAP ``EbMSMessageService`` (``/service/ebms``, ``wsdl/ebms.wsdl``).

Translates ebms-core's request and response elements (namespace
``http://www.ordina.nl/ebms/2.18``, unqualified children) to and from the
:class:`~adapters.api.service.BackOffice` dataclasses.  Everything that
touches the store or base64 runs in the thread pool; ``ping`` and
``getMessageStatus`` wait on the reactor for the partner's answer.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from lxml import etree

from adapters.api.service import (
    BackOffice,
    BadRequest,
    DataSource,
    Message,
    MessageFilter,
    MessageRequest,
    MessageRequestProperties,
    decode_base64,
)
from adapters.api.soap_http import (
    Handler,
    add,
    boolean_of,
    in_thread,
    integer_of,
    text_of,
    xs_datetime,
)

__all__ = ["EBMS_NS", "ebms_operations"]

EBMS_NS = "http://www.ordina.nl/ebms/2.18"

#: ebms-core's EbMSMessageStatus names (the WSDL's enumeration).
_STATUSES = frozenset(
    {
        "UNAUTHORIZED",
        "NOT_RECOGNIZED",
        "RECEIVED",
        "PROCESSED",
        "FORWARDED",
        "FAILED",
        "CREATED",
        "DELIVERY_FAILED",
        "DELIVERED",
        "EXPIRED",
    }
)


def ebms_operations(backoffice: BackOffice, run_in_thread: Any, reactor: Any) -> dict[str, Handler]:
    """The handlers of ``/service/ebms``, by operation name."""

    async def ping(wrapper: etree._Element) -> Sequence[etree._Element]:
        await backoffice.ping(
            run_in_thread,
            reactor,
            _required(wrapper, "cpaId"),
            _required(wrapper, "fromPartyId"),
            _required(wrapper, "toPartyId"),
        )
        return []

    async def get_message_status(wrapper: etree._Element) -> Sequence[etree._Element]:
        info = await backoffice.message_status(
            run_in_thread, reactor, _required(wrapper, "messageId")
        )
        status = etree.Element("messageStatus")
        if info.timestamp is not None:
            add(status, "timestamp", xs_datetime(info.timestamp))
        # BackOffice already spells it as ebms-core does (PROCESSED, not Processed).
        add(status, "status", info.status)
        return [status]

    def send_message(wrapper: etree._Element) -> list[etree._Element]:
        message_id = backoffice.send_message(_message_request(_child(wrapper, "message")))
        return [_leaf("messageId", message_id)]

    def resend_message(wrapper: etree._Element) -> list[etree._Element]:
        message_id = backoffice.resend_message(_required(wrapper, "messageId"))
        return [_leaf("messageId", message_id)]

    def unprocessed_ids(wrapper: etree._Element) -> list[etree._Element]:
        ids = backoffice.unprocessed_message_ids(
            _message_filter(wrapper.find("messageFilter")), _max_nr(wrapper)
        )
        return [_leaf("messageId", message_id) for message_id in ids]

    def get_message(wrapper: etree._Element) -> list[etree._Element]:
        message = backoffice.get_message(
            _required(wrapper, "messageId"), process=bool(boolean_of(wrapper, "process"))
        )
        return [_message(message)]

    def process_message(wrapper: etree._Element) -> list[etree._Element]:
        backoffice.process_message(_required(wrapper, "messageId"))
        return []

    def unprocessed_events(wrapper: etree._Element) -> list[etree._Element]:
        types = [(t.text or "").strip() for t in wrapper.findall("eventType")]
        events = backoffice.unprocessed_events(
            _message_filter(wrapper.find("messageFilter")), types, _max_nr(wrapper)
        )
        found = []
        for event in events:
            element = etree.Element("messageEvent")
            add(element, "messageId", event.message_id)
            add(element, "type", event.type)
            found.append(element)
        return found

    def process_event(wrapper: etree._Element) -> list[etree._Element]:
        backoffice.process_event(_required(wrapper, "messageId"))
        return []

    return {
        "ping": ping,
        "sendMessage": in_thread(run_in_thread, send_message),
        "resendMessage": in_thread(run_in_thread, resend_message),
        "getUnprocessedMessageIds": in_thread(run_in_thread, unprocessed_ids),
        "getMessage": in_thread(run_in_thread, get_message),
        "processMessage": in_thread(run_in_thread, process_message),
        "getMessageStatus": get_message_status,
        "getUnprocessedMessageEvents": in_thread(run_in_thread, unprocessed_events),
        "processMessageEvent": in_thread(run_in_thread, process_event),
    }


# -- requests ------------------------------------------------------------------------


def _child(parent: etree._Element, name: str) -> etree._Element:
    # The schema has checked that required elements are there; this keeps a
    # handler honest if the WSDL and the code ever disagree.
    child = parent.find(name)
    if child is None:
        raise BadRequest(f"{etree.QName(parent).localname}.{name} is required")
    return child


def _required(parent: etree._Element, name: str) -> str:
    return (_child(parent, name).text or "").strip()


def _optional(parent: etree._Element | None, name: str) -> str | None:
    # An empty element counts as absent: generated clients and soapUI
    # templates send <toRole/> for "not set".
    value = text_of(parent, name)
    if value is None:
        return None
    return value.strip() or None


def _max_nr(wrapper: etree._Element) -> int | None:
    max_nr = integer_of(wrapper, "maxNr")
    if max_nr is not None and max_nr < 0:
        raise BadRequest("maxNr must not be negative")
    return max_nr


def _message_request(message: etree._Element) -> MessageRequest:
    props = _child(message, "properties")
    properties = MessageRequestProperties(
        cpa_id=_required(props, "cpaId"),
        from_party_id=_required(props, "fromPartyId"),
        from_role=_optional(props, "fromRole"),
        to_party_id=_optional(props, "toPartyId"),
        to_role=_optional(props, "toRole"),
        service=_required(props, "service"),
        action=_required(props, "action"),
        conversation_id=_optional(props, "conversationId"),
        message_id=_optional(props, "messageId"),
        ref_to_message_id=_optional(props, "refToMessageId"),
    )
    sources = []
    for n, source in enumerate(message.findall("dataSource")):
        sources.append(
            DataSource(
                content_type=_required(source, "contentType"),
                content=decode_base64(
                    _child(source, "content").text or "", f"dataSource[{n}].content"
                ),
                name=_optional(source, "name"),
                content_id=_optional(source, "contentId"),
            )
        )
    return MessageRequest(properties, tuple(sources))


def _message_filter(element: etree._Element | None) -> MessageFilter:
    """ebms-core's messageFilter; fromParty and toParty are {partyId, role}."""
    if element is None:
        return MessageFilter()
    from_party = element.find("fromParty")
    to_party = element.find("toParty")
    return MessageFilter(
        cpa_id=_optional(element, "cpaId"),
        from_party=_optional(from_party, "partyId"),
        from_role=_optional(from_party, "role"),
        to_party=_optional(to_party, "partyId"),
        to_role=_optional(to_party, "role"),
        service=_optional(element, "service"),
        action=_optional(element, "action"),
        conversation_id=_optional(element, "conversationId"),
        message_id=_optional(element, "messageId"),
        ref_to_message_id=_optional(element, "refToMessageId"),
    )


# -- responses -----------------------------------------------------------------------


def _leaf(name: str, value: str) -> etree._Element:
    element = etree.Element(name)
    element.text = value
    return element


def _party(parent: etree._Element, name: str, party_id: str, role: str | None) -> None:
    party = add(parent, name)
    add(party, "partyId", party_id)
    if role:
        add(party, "role", role)


def _message(message: Message) -> etree._Element:
    """``message{properties, dataSource*}`` in the WSDL's order."""
    element = etree.Element("message")
    p = message.properties
    props = add(element, "properties")
    add(props, "cpaId", p.cpa_id)
    _party(props, "fromParty", p.from_party_id, p.from_role)
    _party(props, "toParty", p.to_party_id, p.to_role)
    add(props, "service", p.service)
    add(props, "action", p.action)
    add(props, "timestamp", xs_datetime(p.timestamp))
    add(props, "conversationId", p.conversation_id)
    add(props, "messageId", p.message_id)
    if p.ref_to_message_id:
        add(props, "refToMessageId", p.ref_to_message_id)
    if p.message_status in _STATUSES:
        add(props, "messageStatus", p.message_status)
    for source in message.data_sources:
        ds = add(element, "dataSource")
        if source.name is not None:
            add(ds, "name", source.name)
        if source.content_id:
            add(ds, "contentId", source.content_id)
        add(ds, "contentType", source.content_type)
        add(ds, "content", base64.b64encode(source.content).decode("ascii"))
    return element
