"""Read CPA XML into :mod:`cpa.model` objects.

Two steps, kept apart so validation can report each kind of failure on its
own: :func:`read_document` (safe XML parse + XSD validation against the OASIS
CPPA 2.0 schema shipped in ``wsdl/xsd``) and :func:`build_cpa` (the model,
from a schema-valid tree).  :func:`parse_cpa` does both.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from lxml import etree

from cpa.model import (
    ActionBinding,
    BusinessTransactionCharacteristics,
    Certificate,
    CollaborationRole,
    Cpa,
    DeliveryChannel,
    DigitalEnvelope,
    DocExchange,
    Endpoint,
    MessagingBinding,
    MessagingCharacteristics,
    NonRepudiation,
    PartyId,
    PartyInfo,
    ReliableMessaging,
    SecurityDetails,
    Service,
    Transport,
    TransportSecurity,
)
from cpa.xsdtypes import parse_datetime, parse_duration
from wsdl import XSD_DIR
from xmlsafe import UnsafeXmlError, parse_xml
from xmlsafe.schemas import Schema

_T = TypeVar("_T")

TNS = "http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd"
DS = "http://www.w3.org/2000/09/xmldsig#"
XLINK = "http://www.w3.org/1999/xlink"
NS = {"tns": TNS, "ds": DS, "xlink": XLINK}

#: A CPA is a few hundred kB at most; a register-generated one with a dozen
#: certificates stays well under 1 MB.  Anything past this is not a CPA.
MAX_CPA_BYTES = 5 * 1024 * 1024

SCHEMA_PATH = XSD_DIR / "cpp-cpa-2_0.xsd"


@dataclass(frozen=True)
class XmlProblem:
    """A problem found while reading the document, with its source line."""

    line: int | None
    message: str


class CpaReadError(ValueError):
    """The bytes are not a readable, schema-valid CPA."""

    def __init__(self, problems: list[XmlProblem]) -> None:
        super().__init__("; ".join(_fmt(p) for p in problems) or "invalid CPA")
        self.problems = problems


def _fmt(p: XmlProblem) -> str:
    return f"line {p.line}: {p.message}" if p.line else p.message


def _load_cpa_schema() -> etree._ElementTree:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.parse(str(SCHEMA_PATH), parser)


#: The CPPA 2.0 schema, from the local copy (never the network), compiled once
#: and shared (xmlsafe/schemas.py).
CPA_SCHEMA = Schema(SCHEMA_PATH.name, _load_cpa_schema)


def read_document(xml: bytes) -> etree._ElementTree:
    """Parse safely and validate against the CPPA 2.0 schema.

    Raises :class:`CpaReadError` listing every problem with its line.
    """
    try:
        tree = parse_xml(xml, max_bytes=MAX_CPA_BYTES)
    except UnsafeXmlError as exc:
        raise CpaReadError([XmlProblem(exc.line, str(exc))]) from None
    root = tree.getroot()
    if root.tag != f"{{{TNS}}}CollaborationProtocolAgreement":
        raise CpaReadError(
            [
                XmlProblem(
                    root.sourceline,
                    f"root element is {root.tag}, not a CPPA 2.0 CollaborationProtocolAgreement",
                )
            ]
        )
    errors = CPA_SCHEMA.validate(tree)
    if errors is not None:
        raise CpaReadError([XmlProblem(e.line or None, f"schema: {e.message}") for e in errors])
    return tree


def parse_cpa(xml: bytes) -> Cpa:
    """Read and model a CPA; raises :class:`CpaReadError` when it is not valid XML/XSD."""
    return build_cpa(read_document(xml))


# -- model building ---------------------------------------------------------


def _t(name: str) -> str:
    return f"{{{TNS}}}{name}"


def _attr(el: etree._Element, name: str, default: str | None = None) -> str | None:
    # CPPA 2.0 has attributeFormDefault="qualified": attributes are tns:name.
    value = el.get(_t(name))
    return default if value is None else value


def _req(el: etree._Element, name: str) -> str:
    value = _attr(el, name)
    if value is None:  # the schema guarantees required attributes; be explicit anyway
        raise CpaReadError([XmlProblem(el.sourceline, f"missing attribute tns:{name}")])
    return value


def _line(el: etree._Element) -> int:
    return el.sourceline or 0


def _value(text: str, read: Callable[[str], _T], el: etree._Element, name: str) -> _T:
    """``read(text)``, or a :class:`CpaReadError` naming the element and its line.

    The schema admits values the model cannot hold: a dateTime whose UTC instant
    falls outside years 1-9999 (``0001-01-01T00:00:00+14:00``), a duration of
    more days than a timedelta has.
    """
    try:
        return read(text)
    except ValueError as exc:
        raise CpaReadError([XmlProblem(_line(el) or None, f"tns:{name}: {exc}")]) from None


def _children(el: etree._Element, name: str) -> Iterator[etree._Element]:
    return iter(el.findall(f"tns:{name}", NS))


def _child(el: etree._Element, name: str) -> etree._Element | None:
    return el.find(f"tns:{name}", NS)


def _text(el: etree._Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    text: str = el.text
    return text.strip()


def _bool(value: str | None) -> bool:
    return value in ("true", "1")


def build_cpa(tree: etree._ElementTree) -> Cpa:
    """Build the model from a schema-valid CPA tree."""
    root = tree.getroot()
    status = _child(root, "Status")
    start_el, end_el = _child(root, "Start"), _child(root, "End")
    start, end = _text(start_el), _text(end_el)
    # schema-required
    assert status is not None and start_el is not None and end_el is not None
    assert start is not None and end is not None
    return Cpa(
        cpa_id=_req(root, "cpaid"),
        version=_attr(root, "version"),
        status=_req(status, "value"),
        start=_value(start, parse_datetime, start_el, "Start"),
        end=_value(end, parse_datetime, end_el, "End"),
        parties=tuple(_party(p) for p in _children(root, "PartyInfo")),
        has_conversation_constraints=_child(root, "ConversationConstraints") is not None,
        lines={
            "root": _line(root),
            "Status": _line(status),
            **{
                n: _line(e)
                for n in ("Start", "End", "ConversationConstraints")
                if (e := _child(root, n)) is not None
            },
        },
    )


def _party(el: etree._Element) -> PartyInfo:
    return PartyInfo(
        party_name=_req(el, "partyName"),
        party_ids=tuple(
            PartyId(value=(p.text or "").strip(), type=_attr(p, "type"))
            for p in _children(el, "PartyId")
        ),
        default_msh_channel_id=_req(el, "defaultMshChannelId"),
        default_msh_package_id=_req(el, "defaultMshPackageId"),
        roles=tuple(_role(r) for r in _children(el, "CollaborationRole")),
        certificates={c.cert_id: c for c in map(_certificate, _children(el, "Certificate"))},
        security_details={
            s.security_id: s for s in map(_security_details, _children(el, "SecurityDetails"))
        },
        channels={c.channel_id: c for c in map(_channel, _children(el, "DeliveryChannel"))},
        transports={t.transport_id: t for t in map(_transport, _children(el, "Transport"))},
        doc_exchanges={
            d.doc_exchange_id: d for d in map(_doc_exchange, _children(el, "DocExchange"))
        },
        msh_overrides={
            _req(o, "action"): _req(o, "channelId")
            for o in _children(el, "OverrideMshActionBinding")
        },
        line=_line(el),
    )


def _role(el: etree._Element) -> CollaborationRole:
    spec, role, binding = (
        _child(el, "ProcessSpecification"),
        _child(el, "Role"),
        _child(el, "ServiceBinding"),
    )
    assert spec is not None and role is not None and binding is not None
    service_el = _child(binding, "Service")
    assert service_el is not None
    return CollaborationRole(
        role=_req(role, "name"),
        process_name=_req(spec, "name"),
        service=Service(value=(service_el.text or "").strip(), type=_attr(service_el, "type")),
        can_send=tuple(_action(c, sends=True) for c in _children(binding, "CanSend")),
        can_receive=tuple(_action(c, sends=False) for c in _children(binding, "CanReceive")),
        line=_line(el),
    )


def _action(el: etree._Element, *, sends: bool) -> ActionBinding:
    this = _child(el, "ThisPartyActionBinding")
    assert this is not None
    btc = _child(this, "BusinessTransactionCharacteristics")
    assert btc is not None
    ttp = _attr(btc, "timeToPerform")
    return ActionBinding(
        binding_id=_req(this, "id"),
        action=_req(this, "action"),
        package_id=_req(this, "packageId"),
        characteristics=BusinessTransactionCharacteristics(
            is_non_repudiation_required=_bool(_attr(btc, "isNonRepudiationRequired")),
            is_non_repudiation_receipt_required=_bool(
                _attr(btc, "isNonRepudiationReceiptRequired")
            ),
            is_confidential=_attr(btc, "isConfidential"),
            is_authenticated=_attr(btc, "isAuthenticated"),
            is_tamper_proof=_attr(btc, "isTamperProof"),
            is_authorization_required=_bool(_attr(btc, "isAuthorizationRequired")),
            is_intelligible_check_required=_bool(_attr(btc, "isIntelligibleCheckRequired")),
            time_to_perform=_value(ttp, parse_duration, btc, "timeToPerform") if ttp else None,
            line=_line(btc),
        ),
        channel_ids=tuple(t for c in _children(this, "ChannelId") if (t := _text(c))),
        other_party_binding_id=_text(_child(el, "OtherPartyActionBinding")),
        sends=sends,
        line=_line(this),
    )


def _certificate(el: etree._Element) -> Certificate:
    der: bytes | None = None
    node = el.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
    if node is not None and node.text:
        try:
            der = base64.b64decode("".join(node.text.split()), validate=True)
        except (binascii.Error, ValueError):
            der = b""  # present but undecodable: validation reports it
    return Certificate(cert_id=_req(el, "certId"), der=der, line=_line(el))


def _security_details(el: etree._Element) -> SecurityDetails:
    anchors = el.findall("tns:TrustAnchors/tns:AnchorCertificateRef", NS)
    return SecurityDetails(
        security_id=_req(el, "securityId"),
        anchor_cert_ids=tuple(_req(a, "certId") for a in anchors),
        line=_line(el),
    )


def _channel(el: etree._Element) -> DeliveryChannel:
    mc = _child(el, "MessagingCharacteristics")
    assert mc is not None
    return DeliveryChannel(
        channel_id=_req(el, "channelId"),
        transport_id=_req(el, "transportId"),
        doc_exchange_id=_req(el, "docExchangeId"),
        messaging=MessagingCharacteristics(
            sync_reply_mode=_attr(mc, "syncReplyMode", "none") or "none",
            ack_requested=_attr(mc, "ackRequested", "perMessage") or "perMessage",
            ack_signature_requested=_attr(mc, "ackSignatureRequested", "perMessage")
            or "perMessage",
            duplicate_elimination=_attr(mc, "duplicateElimination", "perMessage") or "perMessage",
            actor=_attr(mc, "actor"),
            line=_line(mc),
        ),
        line=_line(el),
    )


def _transport_security(
    el: etree._Element | None, cert_ref: str, details_ref: str
) -> TransportSecurity | None:
    if el is None:
        return None
    proto = _child(el, "TransportSecurityProtocol")
    cert = _child(el, cert_ref)
    details = _child(el, details_ref)
    return TransportSecurity(
        protocol=_text(proto) or "",
        protocol_version=_attr(proto, "version") if proto is not None else None,
        certificate_id=_attr(cert, "certId") if cert is not None else None,
        security_details_id=_attr(details, "securityId") if details is not None else None,
        line=_line(el),
    )


def _transport(el: etree._Element) -> Transport:
    sender, receiver = _child(el, "TransportSender"), _child(el, "TransportReceiver")
    s_proto = _child(sender, "TransportProtocol") if sender is not None else None
    r_proto = _child(receiver, "TransportProtocol") if receiver is not None else None
    return Transport(
        transport_id=_req(el, "transportId"),
        sender_protocol=_text(s_proto),
        sender_protocol_version=_attr(s_proto, "version") if s_proto is not None else None,
        client_security=_transport_security(
            _child(sender, "TransportClientSecurity") if sender is not None else None,
            "ClientCertificateRef",
            "ServerSecurityDetailsRef",
        ),
        receiver_protocol=_text(r_proto),
        receiver_protocol_version=_attr(r_proto, "version") if r_proto is not None else None,
        endpoints=tuple(
            Endpoint(
                uri=_req(e, "uri"),
                type=_attr(e, "type", "allPurpose") or "allPurpose",
                line=_line(e),
            )
            for e in (_children(receiver, "Endpoint") if receiver is not None else iter(()))
        ),
        server_security=_transport_security(
            _child(receiver, "TransportServerSecurity") if receiver is not None else None,
            "ServerCertificateRef",
            "ClientSecurityDetailsRef",
        ),
        line=_line(el),
    )


def _doc_exchange(el: etree._Element) -> DocExchange:
    sender, receiver = _child(el, "ebXMLSenderBinding"), _child(el, "ebXMLReceiverBinding")
    return DocExchange(
        doc_exchange_id=_req(el, "docExchangeId"),
        sender=_binding(sender, "Sender") if sender is not None else None,
        receiver=_binding(receiver, "Receiver") if receiver is not None else None,
        line=_line(el),
    )


def _binding(el: etree._Element, side: str) -> MessagingBinding:
    rm_el = _child(el, "ReliableMessaging")
    rm = None
    if rm_el is not None:
        retries, interval = _text(_child(rm_el, "Retries")), _text(_child(rm_el, "RetryInterval"))
        rm = ReliableMessaging(
            retries=int(retries) if retries else None,
            retry_interval=(
                _value(interval, parse_duration, rm_el, "RetryInterval") if interval else None
            ),
            message_order_semantics=_text(_child(rm_el, "MessageOrderSemantics"))
            or "NotGuaranteed",
            line=_line(rm_el),
        )
    persist = _text(_child(el, "PersistDuration"))
    nr_el = _child(el, f"{side}NonRepudiation")
    nr = None
    if nr_el is not None:
        sig_alg = _child(nr_el, "SignatureAlgorithm")
        cert = _child(nr_el, "SigningCertificateRef")
        details = _child(nr_el, "SigningSecurityDetailsRef")
        nr = NonRepudiation(
            protocol=_text(_child(nr_el, "NonRepudiationProtocol")) or "",
            hash_function=_text(_child(nr_el, "HashFunction")) or "",
            signature_algorithm=(
                (_attr(sig_alg, "w3c") or _text(sig_alg) or "") if sig_alg is not None else ""
            ),
            certificate_id=_attr(cert, "certId") if cert is not None else None,
            security_details_id=_attr(details, "securityId") if details is not None else None,
            line=_line(nr_el),
        )
    de_el = _child(el, f"{side}DigitalEnvelope")
    de = None
    if de_el is not None:
        proto = _child(de_el, "DigitalEnvelopeProtocol")
        alg = _child(de_el, "EncryptionAlgorithm")
        cert = _child(de_el, "EncryptionCertificateRef")
        details = _child(de_el, "EncryptionSecurityDetailsRef")
        strength = _attr(alg, "minimumStrength") if alg is not None else None
        de = DigitalEnvelope(
            protocol=_text(proto) or "",
            protocol_version=_attr(proto, "version") if proto is not None else None,
            algorithm=((_attr(alg, "w3c") or _text(alg) or "") if alg is not None else ""),
            minimum_strength=int(strength) if strength else None,
            certificate_id=_attr(cert, "certId") if cert is not None else None,
            security_details_id=_attr(details, "securityId") if details is not None else None,
            line=_line(de_el),
        )
    return MessagingBinding(
        version=_attr(el, "version") or "",
        reliable_messaging=rm,
        persist_duration=_value(persist, parse_duration, el, "PersistDuration")
        if persist
        else None,
        non_repudiation=nr,
        digital_envelope=de,
        line=_line(el),
    )
