"""SOAP 1.1 Faults: the answer when no ebMS error can be built.

ebms-core answers a wrong SOAPAction, an unknown CPA or a client certificate
that does not match the CPA with a SOAP Fault (faultcode ``Client``, HTTP
500), because without a CPA there is nowhere to send an ebMS MessageError
(ebMS 2.0 §4.2.3; docs/security.md).  The fault text names the problem, never the
message content.
"""

from __future__ import annotations

from lxml import etree

from gateway.ebms.model import SOAP_NS

CLIENT = "Client"
SERVER = "Server"
MUST_UNDERSTAND = "MustUnderstand"


def soap_fault(code: str, message: str) -> bytes:
    """A SOAP 1.1 Fault envelope with ``faultcode`` SOAP:``code``."""
    envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"SOAP": SOAP_NS})
    body = etree.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP_NS}}}Fault")
    # faultcode and faultstring are unqualified (SOAP 1.1 §4.4).
    etree.SubElement(fault, "faultcode").text = f"SOAP:{code}"
    etree.SubElement(fault, "faultstring").text = message
    out: bytes = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return out
