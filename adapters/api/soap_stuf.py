"""The SOAP ``StufService`` (``/service/stuf``, ``wsdl/stuf.wsdl``): the iWmo/iJw relay.

Not an ebms-core service, so it has dkgw's own namespace (:data:`STUF_NS`).
``sendStufMessage`` is the SOAP twin of REST's ``POST /stuf/messages``: it
takes a bare iWmo/iJw message (or a StUF-GGk envelope), base64, and hands it
to :meth:`adapters.stuf.relay.Relay.send`, which wraps, checks, logs and
queues it in the thread pool (docs/stuf.md).

A refusal is a ``soap:Client`` fault whose faultstring is ``CODE: reason``
(REST's 400 text) and whose detail ``StufServiceException`` carries
``message``, ``code`` and ``reason``; a gateway without a ``[stuf]`` role
answers every call with a ``soap:Client`` fault saying so.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from adapters.api.service import BackOffice, BadRequest, decode_base64
from adapters.api.soap_http import (
    SOAP_NS,
    Handler,
    SoapFault,
    SoapResource,
    WsdlDescription,
    add,
    in_thread,
    xml_text,
)

__all__ = ["NOT_CONFIGURED", "STUF_NS", "StufRefusal", "StufSoapResource", "stuf_operations"]

STUF_NS = "urn:dkgw:stuf:1.0"

#: The fault's detail element (``wsdl/stuf.wsdl``).
FAULT_ELEMENT = "StufServiceException"

NOT_CONFIGURED = "the iWmo/iJw relay is not configured ([stuf] role)"


class StufRefusal(SoapFault):
    """The relay refused the message: a ``soap:Client`` fault with the code apart."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__("Client", f"{code}: {reason}", detail=True, operation="sendStufMessage")
        self.refusal_code = code
        self.refusal_reason = reason


class StufSoapResource(SoapResource):
    """``/service/stuf``: a :class:`SoapResource` whose refusal faults carry code and reason."""

    def __init__(self, wsdl: WsdlDescription, operations: dict[str, Handler], run_in_thread: Any):
        super().__init__(wsdl, operations, FAULT_ELEMENT, run_in_thread)
        wsdl.schema.compile()  # compiled now, so a broken schema stops the start-up

    def fault_envelope(self, fault: SoapFault) -> bytes:
        payload = super().fault_envelope(fault)
        if not isinstance(fault, StufRefusal):
            return payload
        # Our own envelope, just built: add code and reason after its message.
        envelope = etree.fromstring(payload)
        exception = envelope.find(
            f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault/detail/{{{self.wsdl.namespace}}}{FAULT_ELEMENT}"
        )
        if exception is None:  # pragma: no cover - the base class always writes it
            return payload
        add(exception, "code", xml_text(fault.refusal_code))
        add(exception, "reason", xml_text(fault.refusal_reason))
        return bytes(etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"))


def stuf_operations(backoffice: BackOffice, run_in_thread: Any) -> dict[str, Handler]:
    """The handlers of ``/service/stuf``, by operation name."""

    def send_stuf_message(wrapper: etree._Element) -> list[etree._Element]:
        # Imported here, as REST does: the relay pulls in the StUF rule chain.
        from adapters.stuf.relay import Refused

        relay = backoffice.relay
        if relay is None:
            raise SoapFault("Client", NOT_CONFIGURED, detail=True, operation="sendStufMessage")
        bericht = wrapper.find("bericht")  # required by the schema, checked already
        data = decode_base64((bericht.text or "") if bericht is not None else "", "bericht")
        if not data:
            raise BadRequest("bericht must be an iWmo/iJw message (XML)")
        try:
            sent = relay.send(data, file_name=None)
        except Refused as refused:
            raise StufRefusal(refused.code, refused.reason) from None
        return [
            _leaf("referentienummer", sent.referentienummer),
            _leaf("functie", sent.functie),
            _leaf("berichtcode", sent.berichtcode),
            _leaf("messageId", sent.message_id),
        ]

    return {"sendStufMessage": in_thread(run_in_thread, send_stuf_message)}


def _leaf(name: str, value: str) -> etree._Element:
    element = etree.Element(name)
    element.text = value
    return element
