"""CPA import validation: every rule has a test that breaks it and checks the finding."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from cpa.validate import Finding, ValidationOptions, ValidationReport, validate_cpa
from tests.conftest import FIXTURES, load_cert

TNS = "http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd"
NS = {"tns": TNS, "ds": "http://www.w3.org/2000/09/xmldsig#"}
# The ebms-core fixture CPAs carry certificates that expire in 2030; judge them at a
# fixed date so these tests do not start failing then.
FIXTURE_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / "cpa" / name).read_bytes()


def t(name: str) -> str:
    return f"{{{TNS}}}{name}"


def mutate(xml: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(xml)
    change(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def one(root: etree._Element, path: str) -> etree._Element:
    found = root.xpath(path, namespaces=NS)
    assert found, path
    return found[0]


def matching(report: ValidationReport, severity: str, text: str) -> list[Finding]:
    return [f for f in report.findings if f.severity == severity and text in str(f)]


def assert_error(report: ValidationReport, text: str) -> Finding:
    found = matching(report, "error", text)
    assert found, f"no error containing {text!r} in:\n" + "\n".join(map(str, report.findings))
    assert not report.ok
    return found[0]


def assert_only_warning(report: ValidationReport, text: str) -> None:
    assert matching(report, "warning", text), "\n".join(map(str, report.findings))
    assert report.ok, "\n".join(map(str, report.errors))


# -- generated CPAs are valid, and profiles are reported -------------------------


@pytest.mark.parametrize(
    "profile", ["osb-be", "osb-rm", "osb-be-s", "osb-rm-s", "osb-be-e", "osb-rm-e"]
)
def test_generated_cpa_is_valid_and_reports_its_profile(cpa_xml, profile: str) -> None:
    report = validate_cpa(cpa_xml(profile=profile))
    assert report.ok, "\n".join(map(str, report.findings))
    assert report.profiles == [profile]
    assert {(a.from_party, a.action) for a in report.actions} == {
        ("Gemeente Voorbeeld", "WMO301"),
        ("GGk/RINIS test", "WMO302"),
    }
    assert all(a.endpoint for a in report.actions)


def test_sync_reply_and_signed_acks_are_valid(cpa_xml) -> None:
    report = validate_cpa(cpa_xml(profile="osb-rm-s", sync_reply=True, ack_signed=True))
    assert report.ok, "\n".join(map(str, report.findings))


# -- the ebms-core fixture CPAs ---------------------------------------------------


def test_sha256_signed_fixture_is_valid_with_warnings() -> None:
    report = validate_cpa(
        fixture("cpaStubEBF.rm.https.signed-sha256.xml"), ValidationOptions(now=FIXTURE_NOW)
    )
    assert report.ok
    assert report.profiles == ["osb-rm-s"]
    assert matching(report, "warning", "declares SSL 3.0")
    assert matching(report, "warning", "port 8888")
    assert matching(report, "warning", "before the CPA ends")


def test_compliance_cpa_needs_legacy_crypto_and_has_all_six_profiles() -> None:
    xml = fixture("cpa-cv-https.xml")
    strict = validate_cpa(xml, ValidationOptions(now=FIXTURE_NOW))
    err = assert_error(strict, "xmldsig#sha1 is below the Digikoppeling minimum")
    assert err.line and "SenderNonRepudiation/HashFunction" in err.location
    assert_error(strict, "aes256-cbc is below the Digikoppeling minimum")
    legacy = validate_cpa(xml, ValidationOptions(now=FIXTURE_NOW, legacy_crypto=True))
    assert legacy.ok, "\n".join(map(str, legacy.errors))
    assert legacy.profiles == ["osb-be", "osb-be-e", "osb-be-s", "osb-rm", "osb-rm-e", "osb-rm-s"]
    by_service = {(a.service.split("$")[0], a.action): a.profile for a in legacy.actions}
    assert by_service[("urn:cv:rm:services:EchoService", "EchoRequest")] == "osb-rm"
    assert by_service[("urn:cv:be:encrypted:services:EchoService", "EchoResponse")] == "osb-be-e"


def test_sync_fixture_is_refused_for_signals_and_response() -> None:
    report = validate_cpa(
        fixture("cpaStubEBF.rm.https.signed.sync.xml"),
        ValidationOptions(now=FIXTURE_NOW, legacy_crypto=True),
    )
    err = assert_error(report, "'signalsAndResponse' is not allowed on Digikoppeling")
    assert err.location.endswith("MessagingCharacteristics/@syncReplyMode")


def test_plain_http_fixture_needs_allow_insecure() -> None:
    xml = fixture("cpaStubEBF.be.http.unsigned.xml")
    assert_error(
        validate_cpa(xml, ValidationOptions(now=FIXTURE_NOW)),
        "Digikoppeling requires an https endpoint",
    )
    relaxed = validate_cpa(xml, ValidationOptions(now=FIXTURE_NOW, allow_insecure=True))
    assert relaxed.ok, "\n".join(map(str, relaxed.errors))
    assert matching(relaxed, "warning", "plain http endpoint accepted")


def test_expired_fixture_certificates_are_errors_after_2030() -> None:
    report = validate_cpa(
        fixture("cpaStubEBF.rm.https.signed-sha256.xml"),
        ValidationOptions(now=datetime(2030, 7, 1, tzinfo=UTC)),
    )
    assert_error(report, "certificate expired on 2030-06-05")


# -- the document layer ------------------------------------------------------------


@pytest.mark.parametrize(
    ("xml", "text"),
    [
        (b"<not-closed", "not well-formed"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>', "DOCTYPE"),
        (b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><x/>', "DOCTYPE"),
        (b"<x xmlns='urn:other'/>", "not a CPPA 2.0"),
        (b"", "not well-formed"),
    ],
)
def test_unreadable_documents_are_refused(xml: bytes, text: str) -> None:
    report = validate_cpa(xml)
    assert report.cpa is None
    assert_error(report, text)


def test_billion_laughs_is_refused_quickly() -> None:
    entities = "".join(
        f'<!ENTITY l{i} "&l{i - 1};&l{i - 1};&l{i - 1};&l{i - 1};">' for i in range(1, 12)
    )
    xml = f'<!DOCTYPE x [<!ENTITY l0 "lol">{entities}]><x>&l11;</x>'.encode()
    assert_error(validate_cpa(xml), "DOCTYPE")


def test_schema_errors_carry_the_line(cpa_xml) -> None:
    xml = mutate(cpa_xml(), lambda r: r.remove(one(r, "tns:Status")))
    report = validate_cpa(xml)
    err = assert_error(report, "schema:")
    assert err.line is not None and err.line > 1
    assert "Start" in err.message


def test_oversized_document_is_refused() -> None:
    assert_error(validate_cpa(b"<x>" + b" " * (6 * 1024 * 1024) + b"</x>"), "the limit is")


# -- agreement rules -----------------------------------------------------------------


def _set_period(start: datetime, end: datetime) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        one(root, "tns:Start").text = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        one(root, "tns:End").text = end.strftime("%Y-%m-%dT%H:%M:%SZ")

    return change


def test_proposed_status_is_refused(cpa_xml) -> None:
    xml = mutate(cpa_xml(), lambda r: one(r, "tns:Status").set(t("value"), "proposed"))
    assert_error(validate_cpa(xml), "status is 'proposed'").location.endswith("Status/@value")


def test_signed_status_is_accepted(cpa_xml) -> None:
    xml = mutate(cpa_xml(), lambda r: one(r, "tns:Status").set(t("value"), "signed"))
    assert validate_cpa(xml).ok


def test_end_before_start_is_refused(cpa_xml) -> None:
    now = datetime.now(UTC)
    xml = mutate(cpa_xml(), _set_period(now + timedelta(days=2), now + timedelta(days=1)))
    assert_error(validate_cpa(xml), "is not after Start")


def test_expired_cpa_is_refused(cpa_xml) -> None:
    now = datetime.now(UTC)
    xml = mutate(cpa_xml(), _set_period(now - timedelta(days=20), now - timedelta(days=1)))
    assert_error(validate_cpa(xml), "the CPA expired on")


def test_future_cpa_is_a_warning(cpa_xml) -> None:
    now = datetime.now(UTC)
    xml = mutate(cpa_xml(), _set_period(now + timedelta(days=1), now + timedelta(days=30)))
    assert_only_warning(validate_cpa(xml), "the CPA is not valid before")


def test_same_party_id_on_both_sides_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        ids = root.xpath("tns:PartyInfo/tns:PartyId", namespaces=NS)
        ids[1].text = ids[0].text

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "is listed for both parties")


def test_two_roles_for_one_party_are_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        role = one(root, "tns:PartyInfo[1]/tns:CollaborationRole")
        copy = etree.fromstring(etree.tostring(role))
        one(copy, "tns:Role").set(t("name"), "Zorgaanbieder")
        for binding in copy.xpath(".//tns:ThisPartyActionBinding", namespaces=NS):
            binding.set(t("id"), binding.get(t("id")) + "_2")
        for other in copy.xpath(".//tns:OtherPartyActionBinding", namespaces=NS):
            other.getparent().remove(other)
        role.addnext(copy)

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "one role per CPA")


def test_whitespace_in_action_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        for b in root.xpath("//tns:ThisPartyActionBinding[@tns:action='WMO301']", namespaces=NS):
            b.set(t("action"), "WMO 301")

    err = assert_error(validate_cpa(mutate(cpa_xml(), change)), "contains whitespace")
    assert "@action" in err.location


def test_untyped_service_must_be_a_uri(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        for s in root.xpath("//tns:Service", namespaces=NS):
            del s.attrib[t("type")]
            s.text = "iWmo_3_2"  # "GGK:iWmo:3.2" would be a (scheme "GGK") URI

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "must be a URI")


def test_channel_id_pointing_at_a_transport_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        transport = one(root, "tns:PartyInfo[1]/tns:Transport").get(t("transportId"))
        one(
            root, "tns:PartyInfo[1]//tns:CanSend/tns:ThisPartyActionBinding/tns:ChannelId"
        ).text = transport

    err = assert_error(validate_cpa(mutate(cpa_xml(), change)), "is not a DeliveryChannel")
    assert err.location.endswith("/ChannelId")


def test_other_party_binding_must_be_the_matching_action(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        wrong = one(root, "tns:PartyInfo[2]//tns:CanSend/tns:ThisPartyActionBinding")
        one(root, "tns:PartyInfo[1]//tns:CanSend/tns:OtherPartyActionBinding").text = wrong.get(
            t("id")
        )

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "is not the CanReceive binding")


def test_send_without_receive_at_the_other_party_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        one(root, "tns:PartyInfo[2]//tns:CanReceive/tns:ThisPartyActionBinding").set(
            t("action"), "WMO999"
        )

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "has no CanReceive for service")


# -- transport rules -------------------------------------------------------------------


def _endpoint(uri: str) -> Callable[[etree._Element], None]:
    return lambda r: one(r, "tns:PartyInfo[2]//tns:Endpoint").set(t("uri"), uri)


def test_http_endpoint_is_refused_unless_insecure_is_allowed(cpa_xml) -> None:
    xml = mutate(cpa_xml(), _endpoint("http://localhost:18444/ebms"))
    assert_error(validate_cpa(xml), "requires an https endpoint")
    assert_only_warning(
        validate_cpa(xml, ValidationOptions(allow_insecure=True)), "plain http endpoint accepted"
    )


def test_endpoint_port_other_than_443_is_a_warning(cpa_xml) -> None:
    assert_only_warning(validate_cpa(cpa_xml()), "port 18444; Digikoppeling expects 443")
    xml = mutate(cpa_xml(), _endpoint("https://ebms.example.nl/ebms"))
    assert not matching(validate_cpa(xml), "warning", "port 443")


@pytest.mark.parametrize("uri", ["https:///ebms", "ftp://host/ebms", "https://host:99999/x"])
def test_malformed_endpoints_are_refused(cpa_xml, uri: str) -> None:
    assert not validate_cpa(mutate(cpa_xml(), _endpoint(uri))).ok


def test_missing_client_tls_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        sec = one(root, "tns:PartyInfo[1]//tns:TransportClientSecurity")
        sec.getparent().remove(sec)

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "two-way TLS is mandatory")


def test_ssl_protocol_label_is_a_warning(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        proto = one(
            root, "tns:PartyInfo[1]//tns:TransportClientSecurity/tns:TransportSecurityProtocol"
        )
        proto.text, proto.attrib[t("version")] = "SSL", "3.0"

    assert_only_warning(validate_cpa(mutate(cpa_xml(), change)), "declares SSL 3.0")


def test_non_http_transport_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        one(root, "tns:PartyInfo[1]//tns:TransportSender/tns:TransportProtocol").text = "SMTP"

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "runs over HTTP(S) only")


# -- channel / profile rules -------------------------------------------------------------


def _business_mc(root: etree._Element, party: int = 1) -> etree._Element:
    channel = one(
        root, f"tns:PartyInfo[{party}]//tns:CanSend/tns:ThisPartyActionBinding/tns:ChannelId"
    ).text
    return one(
        root,
        f"tns:PartyInfo[{party}]/tns:DeliveryChannel[@tns:channelId='{channel}']/"
        "tns:MessagingCharacteristics",
    )


def _mc(**attrs: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        mc = _business_mc(root)
        for name, value in attrs.items():
            if value:
                mc.set(t(name), value)
            else:
                del mc.attrib[t(name)]

    return change


@pytest.mark.parametrize(
    ("profile", "attrs", "text"),
    [
        ("osb-rm", {"syncReplyMode": "signalsOnly"}, "'signalsOnly' is not allowed"),
        ("osb-be", {"syncReplyMode": "mshSignalsOnly"}, "only allowed on reliable"),
        ("osb-rm", {"ackRequested": ""}, "'perMessage' is not a Digikoppeling setting"),
        ("osb-rm", {"duplicateElimination": "never"}, "must both be 'always'"),
        ("osb-rm", {"actor": "urn:oasis:names:tc:ebxml-msg:actor:nextMSH"}, "nextMSH"),
        ("osb-rm", {"actor": "urn:example:actor"}, "is not an element of the set"),
    ],
)
def test_channel_settings_outside_the_profiles_are_refused(cpa_xml, profile, attrs, text) -> None:
    assert_error(validate_cpa(mutate(cpa_xml(profile=profile), _mc(**attrs))), text)


def test_reliable_channel_needs_reliable_messaging(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        for rm in root.xpath(
            "tns:PartyInfo[1]//tns:ebXMLSenderBinding/tns:ReliableMessaging", namespaces=NS
        ):
            rm.getparent().remove(rm)

    assert_error(
        validate_cpa(mutate(cpa_xml(profile="osb-rm"), change)), "needs Retries and RetryInterval"
    )


def test_reliable_channel_needs_persist_duration(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        for pd in root.xpath(
            "tns:PartyInfo[1]//tns:ebXMLSenderBinding/tns:PersistDuration", namespaces=NS
        ):
            pd.getparent().remove(pd)

    assert_error(validate_cpa(mutate(cpa_xml(profile="osb-rm"), change)), "needs a PersistDuration")


def test_short_persist_duration_is_a_warning(cpa_xml) -> None:
    xml = cpa_xml(
        profile="osb-rm",
        retries=5,
        retry_interval=timedelta(hours=1),
        persist_duration=timedelta(hours=2),
    )
    assert_only_warning(validate_cpa(xml), "shorter than the retry window")


@pytest.mark.parametrize(
    ("element", "value", "text"),
    [
        ("Retries", "-1", "outside 0..1000"),
        ("Retries", "9999999999999999999999", "outside 0..1000"),
        ("RetryInterval", "-PT5M", "must be positive"),
        ("RetryInterval", "P99999999999D", "out of range"),
    ],
)
def test_unreasonable_reliability_values_are_refused(cpa_xml, element, value, text) -> None:
    def change(root: etree._Element) -> None:
        for el in root.xpath(f"//tns:{element}", namespaces=NS):
            el.text = value

    assert_error(validate_cpa(mutate(cpa_xml(profile="osb-rm"), change)), text)


def test_guaranteed_order_is_a_warning(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        for m in root.xpath("//tns:MessageOrderSemantics", namespaces=NS):
            m.text = "Guaranteed"

    assert_only_warning(
        validate_cpa(mutate(cpa_xml(profile="osb-rm"), change)),
        "Guaranteed message order is not supported",
    )


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("hash_function", "http://www.w3.org/2000/09/xmldsig#sha1", "digest algorithm"),
        (
            "signature_algorithm",
            "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
            "signature algorithm",
        ),
        (
            "encryption_algorithm",
            "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
            "encryption algorithm",
        ),
    ],
)
def test_legacy_algorithms_need_the_legacy_switch(cpa_xml, field, value, text) -> None:
    xml = cpa_xml(profile="osb-rm-e", **{field: value})
    assert_error(validate_cpa(xml), f"{text} {value} is below the Digikoppeling minimum")
    assert_only_warning(
        validate_cpa(xml, ValidationOptions(legacy_crypto=True)), f"legacy {text} {value} accepted"
    )


def test_unknown_algorithm_is_refused(cpa_xml) -> None:
    xml = cpa_xml(
        profile="osb-rm-s", signature_algorithm="http://www.w3.org/2001/04/xmldsig-more#hmac-sha256"
    )
    assert_error(validate_cpa(xml), "unsupported signature algorithm")


def test_non_repudiation_required_without_signing_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        for btc in root.xpath("//tns:BusinessTransactionCharacteristics", namespaces=NS):
            btc.set(t("isNonRepudiationRequired"), "true")

    assert_error(
        validate_cpa(mutate(cpa_xml(profile="osb-rm"), change)), "isNonRepudiationRequired is true"
    )


def test_confidential_without_digital_envelope_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        for btc in root.xpath("//tns:BusinessTransactionCharacteristics", namespaces=NS):
            btc.set(t("isConfidential"), "transient-and-persistent")

    assert_error(
        validate_cpa(mutate(cpa_xml(profile="osb-rm-s"), change)), "no ReceiverDigitalEnvelope"
    )


def test_signed_acks_need_signing_on_the_ackers_msh_channel(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        party = one(root, "tns:PartyInfo[2]")
        msh = party.get(t("defaultMshChannelId"))
        doc_id = one(party, f"tns:DeliveryChannel[@tns:channelId='{msh}']").get(t("docExchangeId"))
        nr = one(
            party,
            f"tns:DocExchange[@tns:docExchangeId='{doc_id}']/"
            "tns:ebXMLSenderBinding/tns:SenderNonRepudiation",
        )
        nr.getparent().remove(nr)

    xml = mutate(cpa_xml(profile="osb-rm-s", ack_signed=True), change)
    assert_error(validate_cpa(xml), "signed acknowledgments are requested")


# -- certificates ----------------------------------------------------------------------------


def _replace_cert(pem: Path, cert_id_suffix: str = "_TLSClientCert"):
    der = load_cert(pem).public_bytes(Encoding.DER)

    def change(root: etree._Element) -> None:
        cert = one(
            root,
            f"tns:PartyInfo[1]/tns:Certificate[contains(@tns:certId, "
            f"'{cert_id_suffix}')]//ds:X509Certificate",
        )
        cert.text = base64.b64encode(der).decode()

    return change


def test_expired_certificate_is_refused(cpa_xml, pki: Path) -> None:
    xml = mutate(cpa_xml(), _replace_cert(pki / "negative" / "expired.pem"))
    err = assert_error(validate_cpa(xml), "certificate expired on")
    assert "Certificate[@certId='A_TLSClientCert']" in err.location


def test_certificate_of_another_oin_is_a_warning(cpa_xml, pki: Path) -> None:
    xml = mutate(cpa_xml(), _replace_cert(pki / "ggk-rinis-test" / "tls-client.pem"))
    assert_only_warning(validate_cpa(xml), "certificate OIN 00000001007654321000 differs")


def test_certificate_expiring_before_the_cpa_ends_is_a_warning(cpa_xml) -> None:
    xml = cpa_xml(end=datetime.now(UTC) + timedelta(days=3650))
    assert_only_warning(validate_cpa(xml), "before the CPA ends")


def test_garbage_certificate_is_refused(cpa_xml) -> None:
    def change(root: etree._Element) -> None:
        one(root, "tns:PartyInfo[1]/tns:Certificate//ds:X509Certificate").text = base64.b64encode(
            b"not a certificate"
        ).decode()

    assert_error(validate_cpa(mutate(cpa_xml(), change)), "not a valid base64 DER")


def test_finding_text_names_line_and_element(cpa_xml) -> None:
    xml = mutate(cpa_xml(), lambda r: one(r, "tns:Status").set(t("value"), "proposed"))
    text = str(assert_error(validate_cpa(xml), "proposed"))
    assert text.startswith("error: line ")
    assert "CollaborationProtocolAgreement/Status/@value" in text
