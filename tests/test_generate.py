"""Tests for cpa.generate: every profile yields a schema-valid, self-consistent DK CPA."""

from __future__ import annotations

import base64
import dataclasses
import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from cpa.generate import (
    PROFILES,
    ActionSpec,
    CpaSpec,
    CpaSpecError,
    PartySpec,
    format_duration,
    make_cpa,
)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "wsdl" / "xsd" / "cpp-cpa-2_0.xsd"
NS = {
    "tns": "http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xlink": "http://www.w3.org/1999/xlink",
}
T = f"{{{NS['tns']}}}"
START = datetime(2026, 1, 1, tzinfo=UTC)
END = datetime(2027, 1, 1, 12, 30, tzinfo=UTC)
FIXED_ID = "GGK_iWmo_3_2_test"

# --------------------------------------------------------------------------- certificates


@functools.cache
def _key() -> rsa.RSAPrivateKey:
    # One key for all certificates: generating RSA keys is what makes tests slow.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def make_cert(common_name: str) -> x509.Certificate:
    """A throwaway self-signed RSA-2048 certificate, one per name, cached for the module."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    key = _key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(START - timedelta(days=1))
        .not_valid_after(END + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def party(letter: str, **overrides: Any) -> PartySpec:
    base = PartySpec(
        name=f"Party {letter}",
        party_id=f"0000000100123456700{'1' if letter == 'a' else '2'}",
        role="Gemeente" if letter == "a" else "Zorgaanbieder",
        endpoint=f"https://{letter}.example.nl:8443/ebms",
        tls_client_cert=make_cert(f"{letter}-tls-client"),
        tls_server_cert=make_cert(f"{letter}-tls-server"),
        signing_cert=make_cert(f"{letter}-signing"),
        encryption_cert=make_cert(f"{letter}-encryption"),
    )
    return dataclasses.replace(base, **overrides)


ONE_EACH_WAY = (ActionSpec("Toewijzing", "a"), ActionSpec("Retour", "b"))
SEVERAL = (
    ActionSpec("Toewijzing", "a"),
    ActionSpec("Stop", "a"),
    ActionSpec("Declaratie:v1", "b"),  # ":" cannot stand in an xsd:ID
    ActionSpec("Declaratie_v1", "b"),  # ... and collides with the previous one once replaced
    ActionSpec("Retour.Start", "b"),
)


def make_spec(**overrides: Any) -> CpaSpec:
    base = CpaSpec(
        a=party("a"),
        b=party("b"),
        service="GGK:iWmo:3.2",
        actions=ONE_EACH_WAY,
        profile="osb-rm-s",
        start=START,
        end=END,
        cpa_id=FIXED_ID,
    )
    return dataclasses.replace(base, **overrides)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA_PATH)))


def parse(document: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.fromstring(document, parser)


def generate(schema: etree.XMLSchema, spec: CpaSpec) -> etree._Element:
    """make_cpa + the checks every generated document must pass."""
    document = make_cpa(spec)
    assert document.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = parse(document)
    assert schema.validate(root), schema.error_log
    return root


def attr(element: etree._Element, name: str) -> str:
    value = element.get(T + name)
    assert value is not None, f"{element.tag} lacks @{name}"
    return str(value)


def xp(element: etree._Element, path: str) -> list[Any]:
    return list(element.xpath(path, namespaces=NS))


def one(element: etree._Element, path: str) -> Any:
    found = xp(element, path)
    assert len(found) == 1, f"{path}: {len(found)} matches"
    return found[0]


def party_infos(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    a, b = xp(root, "tns:PartyInfo")
    return a, b


def ids(scope: etree._Element, element: str, id_attr: str) -> set[str]:
    return {attr(e, id_attr) for e in xp(scope, f".//tns:{element}")}


def channel(info: etree._Element, channel_id: str) -> etree._Element:
    return one(info, f"tns:DeliveryChannel[@tns:channelId='{channel_id}']")


def doc_exchange_of(info: etree._Element, channel_el: etree._Element) -> etree._Element:
    return one(info, f"tns:DocExchange[@tns:docExchangeId='{attr(channel_el, 'docExchangeId')}']")


def business_channel_id(info: etree._Element) -> str:
    channel_ids = {str(c) for c in xp(info, ".//tns:ThisPartyActionBinding/tns:ChannelId/text()")}
    assert len(channel_ids) == 1
    return channel_ids.pop()


def check_references(root: etree._Element) -> None:
    """Every IDREF-like value points at an element of the right kind, in the right party."""
    packages = ids(root, "Packaging", "id")
    simple_parts = ids(root, "SimplePart", "id")
    for constituent in xp(root, ".//tns:Constituent"):
        assert attr(constituent, "idref") in simple_parts
    infos = party_infos(root)
    for own, other in (infos, infos[::-1]):
        channels = ids(own, "DeliveryChannel", "channelId")
        certs = ids(own, "Certificate", "certId")
        securities = ids(own, "SecurityDetails", "securityId")
        assert attr(own, "defaultMshChannelId") in channels
        assert attr(own, "defaultMshPackageId") in packages
        for ch in xp(own, "tns:DeliveryChannel"):
            assert attr(ch, "transportId") in ids(own, "Transport", "transportId")
            assert attr(ch, "docExchangeId") in ids(own, "DocExchange", "docExchangeId")
        for ref in xp(own, ".//*[@tns:certId][not(self::tns:Certificate)]"):
            assert attr(ref, "certId") in certs, etree.QName(ref).localname
        for ref in xp(own, ".//*[@tns:securityId][not(self::tns:SecurityDetails)]"):
            assert attr(ref, "securityId") in securities, etree.QName(ref).localname
        for binding in xp(own, ".//tns:ThisPartyActionBinding"):
            assert attr(binding, "packageId") in packages
            assert {str(c) for c in xp(binding, "tns:ChannelId/text()")} <= channels
        check_other_party_bindings(own, other)


def check_other_party_bindings(own: etree._Element, other: etree._Element) -> None:
    # A CanSend refers to the other party's CanReceive of the same action, and vice versa.
    for mine, theirs in (("CanSend", "CanReceive"), ("CanReceive", "CanSend")):
        for can in xp(own, f".//tns:{mine}"):
            action = attr(one(can, "tns:ThisPartyActionBinding"), "action")
            target_id = str(one(can, "tns:OtherPartyActionBinding/text()"))
            target = one(
                other, f".//tns:{theirs}/tns:ThisPartyActionBinding[@tns:id='{target_id}']"
            )
            assert attr(target, "action") == action


def certificate(info: etree._Element, cert_id: str) -> x509.Certificate:
    text = one(info, f"tns:Certificate[@tns:certId='{cert_id}']//ds:X509Certificate/text()")
    assert "\n" not in text
    return x509.load_der_x509_certificate(base64.b64decode(text, validate=True))


def features(profile: str) -> tuple[bool, bool, bool]:
    """(reliable, signed, encrypted) as in Koppelvlakstandaard ebMS2."""
    return profile.startswith("osb-rm"), profile[-2:] in ("-s", "-e"), profile.endswith("-e")


# --------------------------------------------------------------------------- the profiles


@pytest.mark.parametrize("actions", [ONE_EACH_WAY, SEVERAL], ids=["one-each-way", "several"])
@pytest.mark.parametrize("profile", PROFILES)
def test_profile_document(
    schema: etree.XMLSchema, profile: str, actions: tuple[ActionSpec, ...]
) -> None:
    spec = make_spec(profile=profile, actions=actions)
    root = generate(schema, spec)

    assert attr(root, "cpaid") == FIXED_ID
    assert attr(root, "version") == "2_0b"
    assert attr(one(root, "tns:Status"), "value") == "agreed"
    assert one(root, "tns:Start/text()") == "2026-01-01T00:00:00Z"
    assert one(root, "tns:End/text()") == "2027-01-01T12:30:00Z"
    check_references(root)

    reliable, signed, encrypted = features(profile)
    for info, spec_party, key in zip(party_infos(root), (spec.a, spec.b), "ab", strict=True):
        check_party(info, spec_party, reliable, signed, encrypted)
        check_actions(info, spec, key)
        check_business_characteristics(info, signed, encrypted)


def check_party(
    info: etree._Element, spec_party: PartySpec, reliable: bool, signed: bool, encrypted: bool
) -> None:
    assert attr(info, "partyName") == spec_party.name
    assert one(info, "tns:PartyId/text()") == spec_party.party_id
    assert attr(one(info, "tns:PartyId"), "type") == "urn:osb:oin"
    assert attr(one(info, ".//tns:Role"), "name") == spec_party.role
    assert attr(one(info, ".//tns:Endpoint"), "uri") == spec_party.endpoint
    assert attr(one(info, ".//tns:Endpoint"), "type") == "allPurpose"

    business = channel(info, business_channel_id(info))
    msh = channel(info, attr(info, "defaultMshChannelId"))
    assert business is not msh
    assert attr(business, "transportId") == attr(msh, "transportId")
    assert len(xp(info, "tns:Transport")) == 1

    rm = "always" if reliable else "never"
    assert characteristics(business) == {
        "syncReplyMode": "none",
        "ackRequested": rm,
        "ackSignatureRequested": "never",
        "duplicateElimination": rm,
        "actor": "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH",
    }
    assert characteristics(msh) == {
        "syncReplyMode": "none",
        "ackRequested": "never",
        "ackSignatureRequested": "never",
        "duplicateElimination": "never",
        "actor": "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH",
    }

    business_dx = doc_exchange_of(info, business)
    msh_dx = doc_exchange_of(info, msh)
    assert business_dx is not msh_dx
    check_doc_exchange(info, business_dx, reliable, signed, encrypted)
    # Signals: never reliable themselves, signed when the CPA signs, never encrypted.
    check_doc_exchange(info, msh_dx, False, signed, False)
    check_certificates(info, spec_party, signed, encrypted)


def characteristics(channel_el: etree._Element) -> dict[str, str]:
    mc = one(channel_el, "tns:MessagingCharacteristics")
    return {etree.QName(k).localname: str(v) for k, v in mc.attrib.items()}


def check_doc_exchange(
    info: etree._Element, dx: etree._Element, reliable: bool, signed: bool, encrypted: bool
) -> None:
    sender = one(dx, "tns:ebXMLSenderBinding")
    receiver = one(dx, "tns:ebXMLReceiverBinding")
    assert attr(sender, "version") == attr(receiver, "version") == "2.0"
    for binding in (sender, receiver):
        assert bool(xp(binding, "tns:ReliableMessaging")) == reliable
        assert bool(xp(binding, "tns:PersistDuration")) == reliable
    assert bool(xp(sender, "tns:SenderNonRepudiation")) == signed
    assert bool(xp(receiver, "tns:ReceiverNonRepudiation")) == signed
    assert bool(xp(sender, "tns:SenderDigitalEnvelope")) == encrypted
    assert bool(xp(receiver, "tns:ReceiverDigitalEnvelope")) == encrypted
    if reliable:
        rm = one(sender, "tns:ReliableMessaging")
        assert one(rm, "tns:Retries/text()") == "8"
        assert one(rm, "tns:RetryInterval/text()") == "PT3H"
        assert one(rm, "tns:MessageOrderSemantics/text()") == "NotGuaranteed"
        assert one(sender, "tns:PersistDuration/text()") == "P1D"
    if signed:
        nr = one(sender, "tns:SenderNonRepudiation")
        assert one(nr, "tns:NonRepudiationProtocol/text()") == "http://www.w3.org/2000/09/xmldsig#"
        assert one(nr, "tns:HashFunction/text()") == "http://www.w3.org/2001/04/xmlenc#sha256"
        assert (
            one(nr, "tns:SignatureAlgorithm/text()")
            == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
        )
        assert attr(one(nr, "tns:SigningCertificateRef"), "certId").endswith("_SigningCert")
    if encrypted:
        envelope = one(receiver, "tns:ReceiverDigitalEnvelope")
        assert one(envelope, "tns:DigitalEnvelopeProtocol/text()") == "XMLENC"
        algorithm = one(envelope, "tns:EncryptionAlgorithm")
        assert algorithm.text == "http://www.w3.org/2009/xmlenc11#aes256-gcm"
        assert attr(algorithm, "w3c") == algorithm.text
        assert attr(algorithm, "minimumStrength") == "256"
        ref = attr(one(envelope, "tns:EncryptionCertificateRef"), "certId")
        assert ref.endswith("_EncryptionCert")


def check_certificates(
    info: etree._Element, spec_party: PartySpec, signed: bool, encrypted: bool
) -> None:
    prefix = attr(info, "defaultMshChannelId")[0]
    expected = {
        f"{prefix}_TLSClientCert": spec_party.tls_client_cert,
        f"{prefix}_TLSServerCert": spec_party.tls_server_cert,
    }
    if signed:
        expected[f"{prefix}_SigningCert"] = spec_party.signing_cert
    if encrypted:
        expected[f"{prefix}_EncryptionCert"] = spec_party.encryption_cert
    assert ids(info, "Certificate", "certId") == set(expected)
    for cert_id, cert in expected.items():
        assert certificate(info, cert_id) == cert
    assert attr(one(info, ".//tns:ClientCertificateRef"), "certId") == f"{prefix}_TLSClientCert"
    assert attr(one(info, ".//tns:ServerCertificateRef"), "certId") == f"{prefix}_TLSServerCert"
    for protocol in xp(info, ".//tns:TransportSecurityProtocol"):
        assert (protocol.text, attr(protocol, "version")) == ("TLS", "1.2")
    anchors = {str(a) for a in xp(info, ".//tns:AnchorCertificateRef/@tns:certId")}
    assert anchors == set(expected)


def check_actions(info: etree._Element, spec: CpaSpec, key: str) -> None:
    sends = [str(a) for a in xp(info, ".//tns:CanSend/tns:ThisPartyActionBinding/@tns:action")]
    receives = [
        str(a) for a in xp(info, ".//tns:CanReceive/tns:ThisPartyActionBinding/@tns:action")
    ]
    assert sends == [a.name for a in spec.actions if a.sender == key]
    assert receives == [a.name for a in spec.actions if a.sender != key]
    assert attr(one(info, ".//tns:Service"), "type") == "urn:osb:services"
    assert one(info, ".//tns:Service/text()") == spec.service


def check_business_characteristics(info: etree._Element, signed: bool, encrypted: bool) -> None:
    persistent = "transient-and-persistent"
    expected = {
        "isNonRepudiationRequired": "true" if signed else "false",
        "isNonRepudiationReceiptRequired": "true" if signed else "false",
        "isConfidential": persistent if encrypted else "transient",
        "isAuthenticated": persistent if signed else "transient",
        "isTamperProof": persistent if signed else "transient",
        "isAuthorizationRequired": "true",
        "isIntelligibleCheckRequired": "false",
        "timeToPerform": "P2D",
    }
    for btc in xp(info, ".//tns:BusinessTransactionCharacteristics"):
        assert {etree.QName(k).localname: v for k, v in btc.attrib.items()} == expected


def test_binding_ids_are_xml_ids_even_for_odd_action_names(schema: etree.XMLSchema) -> None:
    root = generate(schema, make_spec(actions=SEVERAL))
    a_info, _ = party_infos(root)
    receive_ids = [
        str(i) for i in xp(a_info, ".//tns:CanReceive/tns:ThisPartyActionBinding/@tns:id")
    ]
    assert receive_ids == ["A_R_Declaratie_v1", "A_R_Declaratie_v1_2", "A_R_Retour.Start"]


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("profile", ["osb-rm", "osb-rm-s", "osb-rm-e"])
def test_sync_reply(schema: etree.XMLSchema, profile: str) -> None:
    root = generate(schema, make_spec(profile=profile, sync_reply=True))
    check_references(root)
    for info in party_infos(root):
        business = characteristics(channel(info, business_channel_id(info)))
        msh = characteristics(channel(info, attr(info, "defaultMshChannelId")))
        assert business["syncReplyMode"] == msh["syncReplyMode"] == "mshSignalsOnly"
        assert business["ackRequested"] == "always"
        assert msh["ackRequested"] == "never"


@pytest.mark.parametrize("profile", ["osb-rm-s", "osb-rm-e"])
def test_ack_signed(schema: etree.XMLSchema, profile: str) -> None:
    root = generate(schema, make_spec(profile=profile, ack_signed=True))
    for info in party_infos(root):
        business = characteristics(channel(info, business_channel_id(info)))
        msh = characteristics(channel(info, attr(info, "defaultMshChannelId")))
        assert business["ackSignatureRequested"] == "always"
        assert msh["ackSignatureRequested"] == "never"


def test_custom_reliability_and_algorithms(schema: etree.XMLSchema) -> None:
    spec = make_spec(
        profile="osb-rm-e",
        retries=0,
        retry_interval=timedelta(minutes=5),
        persist_duration=timedelta(days=5, hours=1),
        time_to_perform=timedelta(hours=1),
        hash_function="http://www.w3.org/2001/04/xmlenc#sha512",
        signature_algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
        encryption_algorithm="http://www.w3.org/2009/xmlenc11#aes128-gcm",
        process_name="Wmo berichten",
        service_type="urn:osb:services:test",
    )
    root = generate(schema, spec)
    assert {str(t) for t in xp(root, ".//tns:Retries/text()")} == {"0"}
    assert {str(t) for t in xp(root, ".//tns:RetryInterval/text()")} == {"PT5M"}
    assert {str(t) for t in xp(root, ".//tns:PersistDuration/text()")} == {"P5DT1H"}
    assert {str(t) for t in xp(root, ".//@tns:timeToPerform")} == {"PT1H"}
    assert {str(t) for t in xp(root, ".//tns:HashFunction/text()")} == {spec.hash_function}
    algorithms = xp(root, ".//tns:EncryptionAlgorithm")
    assert {a.text for a in algorithms} == {spec.encryption_algorithm}
    assert {attr(a, "minimumStrength") for a in algorithms} == {"128"}
    assert {attr(p, "name") for p in xp(root, ".//tns:ProcessSpecification")} == {"Wmo berichten"}
    assert {attr(s, "type") for s in xp(root, ".//tns:Service")} == {"urn:osb:services:test"}


def test_unknown_cipher_has_no_strength(schema: etree.XMLSchema) -> None:
    spec = make_spec(profile="osb-be-e", encryption_algorithm="urn:example:cipher")
    root = generate(schema, spec)
    for algorithm in xp(root, ".//tns:EncryptionAlgorithm"):
        assert algorithm.get(T + "minimumStrength") is None
        assert attr(algorithm, "w3c") == "urn:example:cipher"


def test_unused_certificates_are_left_out(schema: etree.XMLSchema) -> None:
    # Plain profiles carry no signing/encryption certificates even when the spec has them.
    root = generate(schema, make_spec(profile="osb-rm"))
    assert not xp(root, ".//tns:Certificate[contains(@tns:certId, 'Signing')]")
    assert not xp(root, ".//tns:Certificate[contains(@tns:certId, 'Encryption')]")
    no_certs = make_spec(
        profile="osb-be",
        a=party("a", signing_cert=None, encryption_cert=None),
        b=party("b", signing_cert=None, encryption_cert=None),
    )
    generate(schema, no_certs)


def test_times_are_converted_to_utc(schema: etree.XMLSchema) -> None:
    cet = timezone(timedelta(hours=1))
    spec = make_spec(
        start=datetime(2026, 3, 1, 0, 0, tzinfo=cet),
        end=datetime(2026, 3, 2, 0, 0, 0, 500000, tzinfo=cet),
    )
    root = generate(schema, spec)
    assert one(root, "tns:Start/text()") == "2026-02-28T23:00:00Z"
    assert one(root, "tns:End/text()") == "2026-03-01T23:00:00.5Z"


def test_default_cpa_id(schema: etree.XMLSchema) -> None:
    spec = make_spec(cpa_id=None, service="GGK:iWmo:3.2")
    first = attr(generate(schema, spec), "cpaid")
    second = attr(generate(schema, spec), "cpaid")
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}"
    assert re.fullmatch(rf"GGK_iWmo_3_2_{spec.a.party_id}_{spec.b.party_id}_{uuid}", first), first
    assert first != second


def test_deterministic() -> None:
    spec = make_spec(profile="osb-rm-e", actions=SEVERAL)
    assert make_cpa(spec) == make_cpa(dataclasses.replace(spec))


def test_pretty_printed_utf8() -> None:
    document = make_cpa(make_spec(a=party("a", name="Gemeente Súdwest-Fryslân")))
    assert document.count(b"\n") > 100
    assert "Súdwest-Fryslân".encode() in document


# --------------------------------------------------------------------------- errors


def _no(field: str) -> Callable[[CpaSpec], CpaSpec]:
    return lambda s: dataclasses.replace(s, **{field: None})


def _party_change(letter: str, **changes: Any) -> Callable[[CpaSpec], CpaSpec]:
    def change(spec: CpaSpec) -> CpaSpec:
        current: PartySpec = getattr(spec, letter)
        return dataclasses.replace(spec, **{letter: dataclasses.replace(current, **changes)})

    return change


def _set(**changes: Any) -> Callable[[CpaSpec], CpaSpec]:
    return lambda s: dataclasses.replace(s, **changes)


ERROR_CASES: list[tuple[str, Callable[[CpaSpec], CpaSpec], str]] = [
    ("unknown profile", _set(profile="osb-xx"), "profile"),
    ("service whitespace", _set(service="GGK iWmo"), "service"),
    ("service empty", _set(service=""), "service"),
    ("service_type whitespace", _set(service_type="urn:osb: services"), "service_type"),
    ("cpa_id whitespace", _set(cpa_id="a b"), "cpa_id"),
    ("process_name empty", _set(process_name=" "), "process_name"),
    ("action whitespace", _set(actions=(ActionSpec("Toe wijzing", "a"),)), "actions[0].name"),
    ("action empty", _set(actions=(ActionSpec("", "a"),)), "actions[0].name"),
    ("action sender", _set(actions=(ActionSpec("X", "c"),)), "actions[0].sender"),
    (
        "duplicate action",
        _set(actions=(ActionSpec("X", "a"), ActionSpec("X", "b"))),
        "actions[1].name",
    ),
    ("no actions", _set(actions=()), "actions"),
    ("role whitespace", _party_change("a", role="Ge meente"), "a.role"),
    ("party id whitespace", _party_change("b", party_id="0000 1"), "b.party_id"),
    ("party id empty", _party_change("a", party_id=""), "a.party_id"),
    ("party id type", _party_change("b", party_id_type="urn:osb: oin"), "b.party_id_type"),
    ("party name empty", _party_change("a", name=""), "a.name"),
    ("same party twice", _party_change("b", party_id="00000001001234567001"), "b.party_id"),
    ("endpoint scheme", _party_change("a", endpoint="ftp://a.example/ebms"), "a.endpoint"),
    ("endpoint no host", _party_change("b", endpoint="https:///ebms"), "b.endpoint"),
    ("endpoint relative", _party_change("a", endpoint="/ebms"), "a.endpoint"),
    ("endpoint whitespace", _party_change("a", endpoint="https://a b/ebms"), "a.endpoint"),
    ("endpoint bad port", _party_change("a", endpoint="https://a.example:x/"), "a.endpoint"),
    ("tls cert missing", _party_change("a", tls_client_cert=None), "a.tls_client_cert"),
    ("start naive", _set(start=datetime(2026, 1, 1)), "start"),
    ("end naive", _set(end=datetime(2027, 1, 1)), "end"),
    ("start after end", _set(start=END, end=START), "end"),
    ("start equals end", _set(end=START), "end"),
    ("sync reply on BE", _set(profile="osb-be-s", sync_reply=True), "sync_reply"),
    ("ack signed unsigned", _set(profile="osb-rm", ack_signed=True), "ack_signed"),
    ("ack signed on BE", _set(profile="osb-be-e", ack_signed=True), "ack_signed"),
    ("signing cert a", _party_change("a", signing_cert=None), "a.signing_cert"),
    (
        "signing cert b",
        lambda s: _party_change("b", signing_cert=None)(_set(profile="osb-be-e")(s)),
        "b.signing_cert",
    ),
    (
        "encryption cert",
        lambda s: _party_change("b", encryption_cert=None)(_set(profile="osb-rm-e")(s)),
        "b.encryption_cert",
    ),
    ("negative retries", _set(retries=-1), "retries"),
    ("retry interval zero", _set(retry_interval=timedelta(0)), "retry_interval"),
    ("persist negative", _set(persist_duration=timedelta(hours=-1)), "persist_duration"),
    ("time to perform zero", _set(time_to_perform=timedelta(0)), "time_to_perform"),
    ("hash function empty", _set(hash_function=""), "hash_function"),
]


@pytest.mark.parametrize(
    ("mutate", "field"), [(m, f) for _, m, f in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_spec_errors(mutate: Callable[[CpaSpec], CpaSpec], field: str) -> None:
    with pytest.raises(CpaSpecError) as excinfo:
        make_cpa(mutate(make_spec()))
    assert str(excinfo.value).startswith(f"{field}:"), str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)


def test_error_spec_is_otherwise_valid(schema: etree.XMLSchema) -> None:
    # The base spec of the error cases must itself be accepted.
    generate(schema, make_spec())


def test_plain_profile_needs_no_message_certificates() -> None:
    spec = make_spec(profile="osb-rm", a=party("a", signing_cert=None, encryption_cert=None))
    make_cpa(spec)
    signing_only = dataclasses.replace(spec, a=party("a", encryption_cert=None))
    make_cpa(dataclasses.replace(signing_only, profile="osb-rm-s"))
    with pytest.raises(CpaSpecError, match=r"^a\.encryption_cert:"):
        make_cpa(dataclasses.replace(signing_only, profile="osb-rm-e"))


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(hours=3), "PT3H"),
        (timedelta(days=1), "P1D"),
        (timedelta(minutes=5), "PT5M"),
        (timedelta(days=1, hours=2, minutes=30), "P1DT2H30M"),
        (timedelta(days=1, hours=2), "P1DT2H"),
        (timedelta(seconds=0.5), "PT0.5S"),
        (timedelta(0), "PT0S"),
        (timedelta(seconds=90), "PT1M30S"),
        (timedelta(days=400), "P400D"),
        (timedelta(seconds=1, microseconds=25), "PT1.000025S"),
        (timedelta(hours=-3), "-PT3H"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
