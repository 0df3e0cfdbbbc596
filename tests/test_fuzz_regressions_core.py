"""Regressions from fuzzing the protocol core, the MSH and the StUF readers.

Each test holds the smallest input that showed the bug: a parser raising
something other than its documented error, the MSH answering a partner with an
exception instead of an ebMS error, or a store update colliding with itself.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.api.service import BackOffice, BadRequest
from adapters.stuf.bare import read_bare, wrap_bare
from adapters.stuf.envelope import unwrap, wrap
from cpa.validate import validate_cpa
from cpa.xsdtypes import parse_datetime
from gateway.ebms.checks import MAX_IDENTIFIER_LENGTH, MAX_PARTY_IDS
from gateway.ebms.envelope import (
    Envelope,
    EnvelopeError,
    build_envelope,
    parse_envelope,
)
from gateway.ebms.model import (
    AckRequested,
    ErrorCode,
    ManifestReference,
    MessageHeader,
    PartyId,
    Service,
    SyncReply,
)
from gateway.ebms.xmldsig import (
    RSA_SHA256,
    SHA256,
    SignatureError,
    SignaturePolicy,
    SigningKey,
    cid_uri,
    digest_stream,
    message_timestamp,
    sign_envelope,
    signature_references,
    verify_envelope,
)
from gateway.msh.inbound import (
    SIGNAL_ATTEMPTS,
    SIGNAL_RETRY_INTERVAL,
    InboundProcessor,
    InboundRequest,
    accept_sync_reply,
)
from gateway.msh.security import MessageSecurity
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.messages import AttachmentRecord, TaskOutcome, claim_due_tasks, finish_attempt
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import utcnow
from gateway.trust import TrustStore
from tests.conftest import GEMEENTE_OIN, NODE_OIN, REPO, load_cert
from tests.messages import render

XML = "text/xml; charset=UTF-8"
POLICY = SignaturePolicy(RSA_SHA256, SHA256)
STUF = Path(__file__).parent / "fixtures" / "stuf"


def _request(xml: bytes, cert: x509.Certificate) -> InboundRequest:
    return InboundRequest('"ebXML"', XML, xml, (), cert)


def _rows(db: Database, sql: str, *params: object) -> list[tuple[object, ...]]:
    with db.transaction() as cur:
        return list(cur.execute(sql, params).fetchall())


@pytest.fixture
def gemeente_tls(pki: Path) -> x509.Certificate:
    return load_cert(pki / "gemeente-voorbeeld" / "tls-client.pem")


@pytest.fixture
def node(store: Database, cpa_xml, pki: Path):
    """The node's inbound processor with one CPA (and message security); CPA overrides apply."""
    apply_migrations(store)
    registry = CpaRegistry(store)
    trust = TrustStore(
        anchors=[load_cert(pki / "ca" / "root.pem")],
        intermediates=[load_cert(pki / "ca" / "intermediate.pem")],
        crl_mode="off",
    )
    base = pki / "ggk-rinis-test"
    security = MessageSecurity(
        signing_key=SigningKey.from_pem(
            (base / "signing.key").read_bytes(), (base / "signing.pem").read_bytes()
        ),
        trust=trust,
    )

    def make(**overrides) -> InboundProcessor:
        registry.insert(cpa_xml(**overrides), overwrite=True)
        return InboundProcessor(store, registry, security=security)

    return make


# -- 1. extreme but well-formed xsd:dateTime values ------------------------------------------

EXTREME_DATETIMES = [
    "0001-01-01T00:00:00+14:00",  # UTC instant in year 0
    "9999-12-31T23:59:59-14:00",  # UTC instant in year 10000
    "9999-12-31T24:00:00Z",  # end of day: the next day is year 10000
    "0000-01-01T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "2026-02-29T00:00:00Z",
    "2026-01-01T00:00:00+14:01",
    "2026-01-01T00:00:00+00:60",
    "2026-01-01T24:00:01Z",
    "\uff12\uff10\uff12\uff16-01-01T00:00:00Z",  # fullwidth digits match \d
]


@pytest.mark.parametrize("text", EXTREME_DATETIMES)
def test_parse_datetime_raises_only_value_error(text: str) -> None:
    with pytest.raises(ValueError):  # not OverflowError
        parse_datetime(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("0001-01-01T00:00:00-14:00", datetime(1, 1, 1, 14, tzinfo=UTC)),
        ("2026-06-30T24:00:00Z", datetime(2026, 7, 1, tzinfo=UTC)),
        ("2026-06-01T12:00:00.5+14:00", datetime(2026, 5, 31, 22, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_parse_datetime_edges_that_are_in_range(text: str, expected: datetime) -> None:
    assert parse_datetime(text) == expected


@settings(max_examples=300, deadline=None)
def _edges(low: int, high: int, *edges: int) -> st.SearchStrategy[int]:
    """Integers from ``low`` to ``high``, the edges drawn as often as all the rest."""
    return st.one_of(st.sampled_from((low, high, *edges)), st.integers(low, high))


@given(
    year=_edges(0, 10000, 1, 9999),
    month=_edges(0, 13, 1, 12),
    day=_edges(0, 32, 1, 31),
    hour=_edges(0, 25, 23, 24),
    minute=_edges(0, 60, 59),
    second=_edges(0, 61, 59, 60),
    zone=st.one_of(
        st.none(),
        st.just("Z"),
        st.tuples(st.sampled_from("+-"), _edges(0, 15, 14), _edges(0, 60, 59)),
    ),
)
def test_parse_datetime_on_every_field_edge(year, month, day, hour, minute, second, zone) -> None:
    if zone is None or isinstance(zone, str):
        tz = zone or ""
    else:
        sign, hours, minutes = zone
        tz = f"{sign}{hours:02d}:{minutes:02d}"
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{tz}"
    try:
        value = parse_datetime(text)
    except ValueError:
        return
    assert value.tzinfo is UTC and 1 <= value.year <= 9999


@settings(max_examples=100, deadline=None)
@given(
    end=st.sampled_from(["0001-01-01", "9999-12-31"]),
    clock=st.times(),
    zone=st.tuples(st.sampled_from("+-"), st.integers(0, 14), st.sampled_from([0, 30, 45])),
)
def test_parse_datetime_at_the_ends_of_the_range(end, clock, zone) -> None:
    sign, hours, minutes = zone
    text = f"{end}T{clock:%H:%M:%S}{sign}{hours:02d}:{minutes if hours < 14 else 0:02d}"
    try:
        value = parse_datetime(text)
    except ValueError:
        return
    assert value.tzinfo is UTC


def _with_timestamp(xml: bytes, value: str, element: str = "Timestamp") -> bytes:
    changed, count = re.subn(
        rf"<eb:{element}>[^<]*</eb:{element}>".encode(),
        f"<eb:{element}>{value}</eb:{element}>".encode(),
        xml,
        count=1,
    )
    assert count == 1, xml
    return changed


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
@pytest.mark.parametrize("element", ["Timestamp", "TimeToLive"])
def test_envelope_with_an_extreme_timestamp_is_an_envelope_error(value: str, element: str) -> None:
    xml = _with_timestamp(render("EbMSMessage"), value, element)
    with pytest.raises(EnvelopeError, match=f"eb:{element}"):
        parse_envelope(xml)
    assert message_timestamp(xml) is None or element == "TimeToLive"


def _status_response(status: str) -> bytes:
    xml = render("EbMSMessageStatus").replace(
        b"<eb:Action>StatusRequest<", b"<eb:Action>StatusResponse<"
    )
    xml = xml.replace(
        b'<eb:StatusRequest eb:version="2.0">',
        f'<eb:StatusResponse eb:version="2.0" eb:messageStatus="{status}">'.encode(),
    ).replace(b"</eb:StatusRequest>", b"</eb:StatusResponse>")
    assert b"StatusResponse eb:" in xml
    return xml


def test_whitespace_around_an_nmtoken_or_boolean_is_what_the_schema_says() -> None:
    # NMTOKEN and xsd:boolean collapse white space: the schema passes " Received ",
    # and MessageStatus(" Received ") raised a bare ValueError out of the parser.
    env, _ = parse_envelope(_status_response(" Received "))
    assert env.status_response is not None
    assert env.status_response.message_status.value == "Received"
    signed = render("EbMSMessage").replace(b'eb:signed="false"', b'eb:signed=" true "')
    assert signed != render("EbMSMessage")
    env, _ = parse_envelope(signed)
    assert env.ack_requested is not None and env.ack_requested.signed


def test_inbound_answers_an_extreme_timestamp_without_raising(node, gemeente_tls) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = _with_timestamp(render("EbMSMessage"), "0001-01-01T00:00:00+14:00")
    reply = processor.handle(_request(xml, gemeente_tls))
    assert reply.status == 500 and reply.log["outcome"] == "bad-envelope"
    assert "out of range" in reply.log["reason"]


def test_a_message_at_the_end_of_time_under_a_cpa_that_lasts_until_then(
    node, store, gemeente_tls
) -> None:
    # persist_until = Timestamp + PersistDuration overflowed a datetime.
    end = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    processor = node(profile="osb-rm", sync_reply=True, end=end)
    xml = _with_timestamp(render("EbMSMessage"), "9999-12-31T23:59:59Z")
    xml = re.sub(rb"\s*<eb:TimeToLive>[^<]*</eb:TimeToLive>", b"", xml)
    reply = processor.handle(_request(xml, gemeente_tls))
    assert reply.status == 200 and reply.log["outcome"] == "received", reply
    ((until,),) = _rows(store, "SELECT persist_until FROM ebms_message WHERE direction = 'in'")
    assert str(until).startswith("9999-12-31T23:59:59")


def _cpa_with_start(cpa_xml, value: str) -> bytes:
    xml = cpa_xml(profile="osb-rm")
    changed, count = re.subn(
        rb"<tns:Start>[^<]*</tns:Start>", f"<tns:Start>{value}</tns:Start>".encode(), xml
    )
    assert count == 1
    return changed


def test_cpa_validation_reports_an_extreme_start_with_its_line(cpa_xml) -> None:
    xml = _cpa_with_start(cpa_xml, "0001-01-01T00:00:00+14:00")
    report = validate_cpa(xml)
    assert not report.ok
    (finding,) = report.errors
    line = xml[: xml.index(b"<tns:Start>")].count(b"\n") + 1
    assert finding.line == line
    assert "tns:Start" in finding.message and "out of range" in finding.message


@pytest.mark.parametrize("interval", ["P2000000Y", "P999999999D"])
def test_cpa_validation_reports_a_retry_schedule_beyond_any_date(cpa_xml, interval: str) -> None:
    # RetryInterval x Retries overflowed a timedelta inside the validator.
    xml = cpa_xml(profile="osb-rm")
    xml, count = re.subn(
        rb"<tns:RetryInterval>[^<]*</tns:RetryInterval>",
        f"<tns:RetryInterval>{interval}</tns:RetryInterval>".encode(),
        xml,
    )
    assert count >= 1
    report = validate_cpa(xml)
    assert not report.ok
    assert report.errors and all(
        "RetryInterval" in f.location and "year 9999" in f.message and f.line for f in report.errors
    ), report.errors


def test_dkgw_cpa_validate_prints_the_problem_not_a_traceback(cpa_xml, tmp_path: Path) -> None:
    path = tmp_path / "cpa.xml"
    path.write_bytes(_cpa_with_start(cpa_xml, "9999-12-31T23:59:59-14:00"))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "cpa", "validate", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr + done.stdout
    assert "tns:Start" in done.stdout + done.stderr


def test_rest_cpa_validation_is_a_bad_request(store: Database, cpa_xml) -> None:
    apply_migrations(store)
    office = BackOffice(store, CpaRegistry(store))
    xml = _cpa_with_start(cpa_xml, "0001-01-01T00:00:00+14:00")
    for call in (office.validate_cpa, office.insert_cpa):
        with pytest.raises(BadRequest, match="tns:Start") as caught:
            call(xml)
        assert caught.value.status == 400


# -- 2. hostile KeyInfo and namespaces in signed messages ------------------------------------


@pytest.fixture(scope="module")
def gemeente_signing(pki: Path) -> SigningKey:
    base = pki / "gemeente-voorbeeld"
    return SigningKey.from_pem(
        (base / "signing.key").read_bytes(), (base / "signing.pem").read_bytes()
    )


PAYLOAD = ("payload-1@gemeente.example", b"<wmo301/>")


def _business_envelope(*, ack_signed: bool = False) -> bytes:
    header = MessageHeader(
        from_ids=(PartyId(GEMEENTE_OIN, "urn:osb:oin"),),
        to_ids=(PartyId(NODE_OIN, "urn:osb:oin"),),
        cpa_id="test-cpa",
        conversation_id="c0ffee00-0000-4000-8000-000000000001",
        service=Service("GGK:iWmo:3.2", "urn:osb:services"),
        action="WMO301",
        message_id=f"{datetime.now(UTC).timestamp()}@gemeente.example",
        timestamp=datetime.now(UTC),
        from_role="Gemeente",
        to_role="GGk",
        duplicate_elimination=True,
    )
    return build_envelope(
        Envelope(
            header=header,
            ack_requested=AckRequested(signed=ack_signed),
            sync_reply=SyncReply(),
            manifest=(ManifestReference(cid_uri(PAYLOAD[0])),),
        )
    )


def _signed(key: SigningKey, envelope: bytes | None = None) -> bytes:
    envelope = _business_envelope() if envelope is None else envelope
    digest = digest_stream(SHA256, PAYLOAD[1])
    return sign_envelope(envelope, [(PAYLOAD[0], digest)], key, POLICY)


def _self_signed(private_key, algorithm) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyinfo")])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    return builder.sign(private_key, algorithm).public_bytes(serialization.Encoding.DER)


def _bad_version(der: bytes) -> bytes:
    # TBSCertificate's [0] EXPLICIT version: A0 03 02 01 02 (v3); 7 is no X.509 version.
    at = der.index(b"\xa0\x03\x02\x01\x02")
    return der[: at + 4] + b"\x07" + der[at + 5 :]


def _broken_key(der: bytes, spki: bytes) -> bytes:
    # The RSAPublicKey SEQUENCE inside the BIT STRING becomes a SET: the
    # certificate loads, its key does not.
    inner = bytearray(spki)
    bit_string = spki.index(b"\x03\x82")
    assert inner[bit_string + 5] == 0x30
    inner[bit_string + 5] = 0x31
    return der.replace(spki, bytes(inner))


def _unknown_curve(der: bytes) -> bytes:
    # P-256 (1.2.840.10045.3.1.7) becomes SM2 (1.2.156.10197.1.301), same length:
    # cryptography reads the certificate but has no such curve.
    p256 = bytes.fromhex("06082a8648ce3d030107")
    sm2 = bytes.fromhex("06082a811ccf5501822d")
    assert der.count(p256) == 1
    return der.replace(p256, sm2)


def _keyinfo_variants(signing: SigningKey) -> dict[str, bytes]:
    der = signing.certificate.public_bytes(serialization.Encoding.DER)
    spki = signing.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "bad-version": _bad_version(der),
        "broken-key": _broken_key(der, spki),
        "unknown-curve": _unknown_curve(
            _self_signed(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        ),
        "ed25519": _self_signed(ed25519.Ed25519PrivateKey.generate(), None),
    }


def _replace_keyinfo(signed: bytes, signing: SigningKey, der: bytes) -> bytes:
    ours = base64.b64encode(signing.certificate.public_bytes(serialization.Encoding.DER))
    assert signed.count(ours) == 1
    return signed.replace(ours, base64.b64encode(der))


def _relative_namespace(signed: bytes) -> bytes:
    # A relative namespace URI in scope of everything: libxml2 refuses C14N.
    changed = signed.replace(b"<SOAP:Envelope ", b'<SOAP:Envelope xmlns:x="rel" ', 1)
    assert changed != signed
    return changed


@pytest.mark.parametrize("variant", ["bad-version", "broken-key", "unknown-curve", "ed25519"])
def test_hostile_keyinfo_certificate_is_a_signature_error(
    gemeente_signing: SigningKey, variant: str
) -> None:
    der = _keyinfo_variants(gemeente_signing)[variant]
    signed = _replace_keyinfo(_signed(gemeente_signing), gemeente_signing, der)
    parts = {PAYLOAD[0]: lambda: iter([PAYLOAD[1]])}
    with pytest.raises(SignatureError) as caught:
        verify_envelope(signed, parts, gemeente_signing.certificate, POLICY)
    assert caught.value.to_error().code is ErrorCode.SECURITY_FAILURE
    assert caught.value.location == "//Header/Signature/KeyInfo"


def test_relative_namespace_uri_is_a_signature_error(gemeente_signing: SigningKey) -> None:
    signed = _relative_namespace(_signed(gemeente_signing))
    parts = {PAYLOAD[0]: lambda: iter([PAYLOAD[1]])}
    with pytest.raises(SignatureError, match="canonicalised"):
        verify_envelope(signed, parts, gemeente_signing.certificate, POLICY)
    with pytest.raises(SignatureError):
        signature_references(signed)
    with pytest.raises(ValueError, match="canonicalised"):
        sign_envelope(_relative_namespace(_business_envelope()), [], gemeente_signing, POLICY)


def test_acknowledgment_reference_under_a_relative_namespace_is_an_envelope_error() -> None:
    ack = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<SOAP:Envelope xmlns:SOAP="http://schemas.xmlsoap.org/soap/envelope/" '
        b'xmlns:eb="http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd" '
        b'xmlns:ds="http://www.w3.org/2000/09/xmldsig#" xmlns:x="rel">'
        b'<SOAP:Header><eb:MessageHeader eb:version="2.0" SOAP:mustUnderstand="1">'
        b'<eb:From><eb:PartyId eb:type="urn:osb:oin">1</eb:PartyId></eb:From>'
        b'<eb:To><eb:PartyId eb:type="urn:osb:oin">2</eb:PartyId></eb:To>'
        b"<eb:CPAId>c</eb:CPAId><eb:ConversationId>c</eb:ConversationId>"
        b"<eb:Service>urn:oasis:names:tc:ebxml-msg:service</eb:Service>"
        b"<eb:Action>Acknowledgment</eb:Action><eb:MessageData><eb:MessageId>a@b</eb:MessageId>"
        b"<eb:Timestamp>2026-01-01T00:00:00Z</eb:Timestamp>"
        b"<eb:RefToMessageId>m@b</eb:RefToMessageId></eb:MessageData></eb:MessageHeader>"
        b'<eb:Acknowledgment eb:version="2.0" SOAP:mustUnderstand="1">'
        b"<eb:Timestamp>2026-01-01T00:00:00Z</eb:Timestamp>"
        b"<eb:RefToMessageId>m@b</eb:RefToMessageId>"
        b'<ds:Reference URI=""><ds:DigestMethod Algorithm="x"/>'
        b"<ds:DigestValue>AAAA</ds:DigestValue></ds:Reference>"
        b"</eb:Acknowledgment></SOAP:Header><SOAP:Body/></SOAP:Envelope>"
    )
    with pytest.raises(EnvelopeError, match="canonicalised"):
        parse_envelope(ack)


def _signed_request(signed: bytes, cert: x509.Certificate) -> InboundRequest:
    part = AttachmentRecord(PAYLOAD[0], "application/xml", PAYLOAD[1])
    return InboundRequest('"ebXML"', "multipart/related", signed, (part,), cert)


@pytest.mark.parametrize(
    "variant", ["bad-version", "broken-key", "unknown-curve", "relative-namespace"]
)
def test_inbound_answers_a_hostile_signature_with_a_security_failure(
    node, store, gemeente_tls, gemeente_signing: SigningKey, variant: str
) -> None:
    processor = node(profile="osb-rm-s", sync_reply=True, ack_signed=True)
    signed = _signed(gemeente_signing, _business_envelope(ack_signed=True))
    if variant == "relative-namespace":
        signed = _relative_namespace(signed)
    else:
        der = _keyinfo_variants(gemeente_signing)[variant]
        signed = _replace_keyinfo(signed, gemeente_signing, der)
    reply = processor.handle(_signed_request(signed, gemeente_tls))
    assert reply.status == 200 and reply.log["outcome"] == "refused", reply
    error_reply, _ = parse_envelope(reply.body)
    assert error_reply.header.action == "MessageError"
    assert error_reply.error_list is not None
    (error,) = error_reply.error_list.errors
    assert error.code is ErrorCode.SECURITY_FAILURE
    assert _rows(store, "SELECT status FROM ebms_message WHERE direction = 'in'") == [("FAILED",)]


def test_inbound_baseline_accepts_the_unchanged_signed_message(
    node, gemeente_tls, gemeente_signing: SigningKey
) -> None:
    processor = node(profile="osb-rm-s", sync_reply=True, ack_signed=True)
    signed = _signed(gemeente_signing, _business_envelope(ack_signed=True))
    reply = processor.handle(_signed_request(signed, gemeente_tls))
    assert reply.status == 200 and reply.log["outcome"] == "received", reply


# -- 4. comments and processing instructions inside StUF and iStandaarden values -------------


def _insert_after(data: bytes, tag: bytes, what: bytes) -> bytes:
    at = data.index(tag) + len(tag)
    return data[:at] + what + data[at:]


@pytest.mark.parametrize("inserted", [b"<!--c-->", b"<?pi x?>", b"<?pi?>"])
def test_bare_reader_takes_comments_and_pis_inside_the_header(inserted: bytes) -> None:
    sample = (STUF / "ieb" / "1.0" / "WMO401.xml").read_bytes()
    prefix = re.search(rb"<(\w+):BerichtIdentificatie>", sample)
    assert prefix is not None
    ns = prefix.group(1)
    ident = _insert_after(sample, b"<" + ns + b":BerichtIdentificatie>", inserted)
    assert read_bare(ident, max_bytes=1 << 20).identificatie == "123456789012"
    split = sample.replace(
        b"<" + ns + b":Identificatie>123456", b"<" + ns + b":Identificatie>123456" + inserted, 1
    )
    assert read_bare(split, max_bytes=1 << 20).identificatie == "123456789012"


@pytest.mark.parametrize("inserted", [b"<!--c-->", b"<?pi x?>"])
def test_stuf_envelope_values_may_hold_comments_and_pis(inserted: bytes) -> None:
    bare = read_bare((STUF / "ieb" / "1.0" / "WMO401.xml").read_bytes(), max_bytes=1 << 20)
    env = wrap_bare(
        bare,
        applicatie="Backoffice",
        applicatie_versie="0001",
        applicatie_subversie="0001",
        cross_ref=lambda _: None,
    )
    data = wrap(env)
    referentie = env.stuurgegevens.referentienummer.encode()
    data = data.replace(referentie, referentie[:4] + inserted + referentie[4:], 1)
    payload = re.search(rb"<(\w+:)?xmlBestand>([A-Za-z0-9+/]{8})", data)
    assert payload is not None
    data = data.replace(payload.group(2), payload.group(2)[:4] + inserted + payload.group(2)[4:], 1)
    read = unwrap(data)
    assert read.stuurgegevens.referentienummer == env.stuurgegevens.referentienummer
    assert read.payload == env.payload


# -- 3. a StatusRequest without eb:StatusRequest; 6. an unknown action of the MSH service -----


def _error_of(reply) -> tuple[str, str | None]:
    env, _ = parse_envelope(reply.body)
    assert env.header.action == "MessageError", reply.body
    assert env.error_list is not None
    (error,) = env.error_list.errors
    return error.code.value, error.location


def test_status_request_without_its_element_is_inconsistent(node, store, gemeente_tls) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = render("EbMSMessageStatus")
    xml, count = re.subn(rb"\s*<eb:StatusRequest .*</eb:StatusRequest>", b"", xml, flags=re.S)
    assert count == 1
    reply = processor.handle(_request(xml, gemeente_tls))
    assert (reply.status, reply.log["outcome"]) == (200, "refused")
    assert _error_of(reply) == ("Inconsistent", "//Body/StatusRequest")
    assert _rows(store, "SELECT action, status FROM ebms_message WHERE direction = 'in'") == [
        ("StatusRequest", "FAILED")
    ]


@pytest.mark.parametrize("action", ["Bogus", "ping", "MessageAcknowledgment"])
def test_unknown_action_of_the_msh_service_is_refused(
    node, store, gemeente_tls, action: str
) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = render("EbMSPing").replace(
        b"<eb:Action>Ping</eb:Action>", f"<eb:Action>{action}</eb:Action>".encode()
    )
    reply = processor.handle(_request(xml, gemeente_tls))
    assert (reply.status, reply.log["outcome"]) == (200, "refused"), reply
    assert _error_of(reply) == ("ValueNotRecognized", "//Header/MessageHeader/Action")
    assert _rows(store, "SELECT status FROM ebms_message WHERE direction = 'in'") == [("FAILED",)]


def test_the_known_signals_still_pass(node, gemeente_tls) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    pong = processor.handle(_request(render("EbMSPing"), gemeente_tls))
    assert pong.log["outcome"] == "ping"
    status = processor.handle(_request(render("EbMSMessageStatus"), gemeente_tls))
    assert status.log["outcome"] == "status-request"


# -- 5. the partner's resend reopens our asynchronous acknowledgment ------------------------


def _send_round(
    store: Database, outcome: TaskOutcome, later: timedelta = timedelta(0), node_id: str = "n1"
) -> int:
    """Claim the due task and record one attempt with ``outcome``; returns its number."""
    now = utcnow() + later
    with store.transaction() as cur:
        (task,) = claim_due_tasks(cur, node=node_id, now=now, lease=timedelta(minutes=5))
        took = finish_attempt(cur, task, outcome, node=node_id, started_at=now, now=now)
        assert took is outcome
        return task.attempts


def test_a_resend_after_our_async_ack_went_out_sends_it_again(node, store, gemeente_tls) -> None:
    processor = node(profile="osb-rm")  # asynchronous: the ack goes in its own POST
    xml = render("EbMSMessageMissingSyncReply")
    first = processor.handle(_request(xml, gemeente_tls))
    assert first.queued and first.log["reply"] == "Acknowledgment"
    assert _send_round(store, TaskOutcome.DONE) == 1
    # The partner never saw the ack and resends (ebMS 2.0 §6.5.3): the stored ack goes again.
    again = processor.handle(_request(xml, gemeente_tls))
    assert again.queued and again.log["outcome"] == "duplicate"
    assert _send_round(store, TaskOutcome.RETRY) == 2  # was 1 again: UNIQUE (task_id, attempt)
    assert _send_round(store, TaskOutcome.DONE, SIGNAL_RETRY_INTERVAL * 2) == 3
    # Once more, after two more rounds: the numbering still goes on.
    processor.handle(_request(xml, gemeente_tls))
    assert _send_round(store, TaskOutcome.DONE) == 4
    assert _rows(store, "SELECT attempt, outcome FROM delivery_attempt ORDER BY attempt") == [
        (1, "done"),
        (2, "retry"),
        (3, "done"),
        (4, "done"),
    ]
    assert _rows(store, "SELECT state, attempts, max_attempts FROM delivery_task") == [
        ("done", 4, 4 + SIGNAL_ATTEMPTS - 1)
    ]


# -- 7. identifiers are bounded and free of control characters ------------------------------

LIMIT = MAX_IDENTIFIER_LENGTH


def _with_element(xml: bytes, element: str, value: str) -> bytes:
    """The first eb:``element`` (its attributes kept) holding ``value``."""
    changed, count = re.subn(
        rf"(<eb:{element}(?:\s[^>]*)?>)[^<]*(</eb:{element}>)".encode(),
        lambda m: m.group(1) + value.encode() + m.group(2),
        xml,
        count=1,
    )
    assert count == 1, element
    return changed


def _logged(caplog: pytest.LogCaptureFixture) -> int:
    return max((len(r.getMessage()) for r in caplog.records), default=0)


@pytest.mark.parametrize(
    ("element", "value", "location"),
    [
        ("MessageId", "m" * 600_000 + "@x", "MessageData/MessageId"),
        ("MessageId", "a&#9;b@localhost", "MessageData/MessageId"),
        ("MessageId", "a&#x85;b@localhost", "MessageData/MessageId"),
        ("MessageId", "a\u202eb@localhost", "MessageData/MessageId"),
        ("ConversationId", "c" * (LIMIT + 1), "ConversationId"),
        ("CPAId", "test-cpa" + "x" * LIMIT, "CPAId"),
        ("PartyId", "9" * (LIMIT + 1), "From/PartyId"),
    ],
)
def test_an_identifier_a_message_error_would_echo_gets_a_bounded_fault(
    node, store, gemeente_tls, caplog: pytest.LogCaptureFixture, element, value, location
) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = _with_element(render("EbMSMessage"), element, value)
    reply = processor.handle(_request(xml, gemeente_tls))
    assert (reply.status, reply.log["outcome"]) == (500, "bad-identifier"), reply.log
    assert b"Fault" in reply.body and len(reply.body) < 2048
    assert f"//Header/MessageHeader/{location}".encode() in reply.body
    assert all(len(v) < 1200 for v in reply.log.values())
    assert _logged(caplog) < 2048
    assert _rows(store, "SELECT count(*) FROM ebms_message") == [(0,)]


@pytest.mark.parametrize(
    ("element", "value", "location"),
    [
        ("Action", "A" * 600_000, "//Header/MessageHeader/Action"),
        ("Action", "WMO&#x7f;301", "//Header/MessageHeader/Action"),
        ("Role", "R" * (LIMIT + 1), "//Header/MessageHeader/From/Role"),
        ("Service", "S" * (LIMIT + 1), "//Header/MessageHeader/Service"),
    ],
)
def test_another_identifier_gets_a_bounded_message_error(
    node, store, gemeente_tls, caplog: pytest.LogCaptureFixture, element, value, location
) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = _with_element(render("EbMSMessage"), element, value)
    reply = processor.handle(_request(xml, gemeente_tls))
    assert (reply.status, reply.log["outcome"]) == (200, "refused"), reply.log
    assert _error_of(reply) == ("OtherXml", location)
    assert len(reply.body) < 4096
    assert all(len(v) < 1200 for v in reply.log.values())
    assert _logged(caplog) < 2048
    # The refused message is not kept with its oversized value; the answer is.
    assert _rows(store, "SELECT direction, action FROM ebms_message") == [("out", "MessageError")]


def test_a_status_request_about_an_oversized_id_is_refused(node, gemeente_tls) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = render("EbMSMessageStatus", ref_to_message_id="r" * 600_000)
    reply = processor.handle(_request(xml, gemeente_tls))
    assert _error_of(reply) == ("OtherXml", "//Body/StatusRequest/RefToMessageId")
    assert len(reply.body) < 4096


def test_too_many_party_ids_are_refused(node, gemeente_tls) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    xml = render("EbMSMessage")
    party = re.search(rb"<eb:PartyId [^>]*>[^<]*</eb:PartyId>", xml)
    assert party is not None
    xml = xml.replace(party.group(0), party.group(0) * (MAX_PARTY_IDS + 1), 1)
    reply = processor.handle(_request(xml, gemeente_tls))
    assert (reply.status, reply.log["outcome"]) == (500, "bad-identifier")
    assert b"//Header/MessageHeader/From/PartyId" in reply.body


def test_the_bound_itself_is_accepted(node, gemeente_tls) -> None:
    processor = node(profile="osb-rm", sync_reply=True)
    message_id = "m" * (LIMIT - len("@localhost")) + "@localhost"
    xml = _with_element(render("EbMSMessage"), "MessageId", message_id)
    xml = _with_element(xml, "ConversationId", "c" * LIMIT)
    reply = processor.handle(_request(xml, gemeente_tls))
    assert reply.log["outcome"] == "received", reply.log
    ack, _ = parse_envelope(reply.body)
    assert ack.header.ref_to_message_id == message_id


def test_a_synchronous_reply_with_an_oversized_id_is_not_taken_in(store: Database) -> None:
    apply_migrations(store)
    pong = _with_element(render("EbMSPing"), "MessageId", "p" * 600_000)
    pong = pong.replace(b"<eb:Action>Ping</eb:Action>", b"<eb:Action>Pong</eb:Action>")
    with store.transaction() as cur:
        outcome = accept_sync_reply(cur, pong, XML, now=utcnow())
    assert outcome == "bad-reply"
    assert _rows(store, "SELECT count(*) FROM ebms_message") == [(0,)]
