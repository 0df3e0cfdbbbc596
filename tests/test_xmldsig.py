"""XML Signature profile (gateway.ebms.xmldsig) against independent implementations.

Our signatures are verified by python-xmlsec and by Debian's ``xmlsec1`` CLI;
python-xmlsec's signatures are verified by ours.  The tamper matrix checks
that each change is refused with the ebMS location an MSH would report, and
that the blocks ebMS 2.0 leaves unsigned on purpose (SyncReply, a nextMSH
AckRequested) may change.  Envelopes come from ``build_envelope`` and from
the ebms-core templates in tests/fixtures/messages.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.ebms import signals
from gateway.ebms.envelope import MAX_ENVELOPE_BYTES, Envelope, build_envelope, parse_envelope
from gateway.ebms.model import (
    DS_NS,
    EB_NS,
    NEXT_MSH,
    SOAP_NS,
    AckRequested,
    ErrorCode,
    ManifestReference,
    MessageHeader,
    PartyId,
    Service,
    SyncReply,
)
from gateway.ebms.xmldsig import (
    C14N_EXCLUSIVE,
    C14N_INCLUSIVE,
    CHUNK_SIZE,
    EBMS_XPATH,
    RSA_SHA1,
    RSA_SHA256,
    RSA_SHA512,
    SHA1,
    SHA256,
    SHA512,
    SignatureError,
    SignaturePolicy,
    SignedReference,
    SigningKey,
    VerifiedSignature,
    check_ack_references,
    cid_uri,
    digest_stream,
    keyinfo_certificates,
    message_timestamp,
    read_references,
    sign_envelope,
    signature_references,
    verify_envelope,
)
from tests.conftest import GEMEENTE_OIN, NODE_OIN
from tests.messages import render

POLICY = SignaturePolicy(RSA_SHA256, SHA256)
ALGORITHMS = {"sha256": (RSA_SHA256, SHA256), "sha512": (RSA_SHA512, SHA512)}
C14NS = {"exc": C14N_EXCLUSIVE, "inc": C14N_INCLUSIVE}
ATTACHMENTS = {
    "payload-1@gemeente.example": b"<wmo301>\r\n  binary \x00\xff follows</wmo301>\n",
    "payload 2@gemeente.example": bytes(range(256)) * 40,
}
SIG = "//Header/Signature"
SIGNED_INFO = f"{SIG}/SignedInfo"
ENVELOPE_REF = f"{SIGNED_INFO}/Reference[@URI='']"


# -- keys and envelopes ------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """A signing key and where its PEM files are (for the oracles)."""

    key: SigningKey
    key_path: Path
    cert_path: Path

    @property
    def cert(self) -> x509.Certificate:
        return self.key.certificate


def _party(key_path: Path, cert_path: Path) -> Party:
    return Party(
        SigningKey.from_pem(key_path.read_bytes(), cert_path.read_bytes()), key_path, cert_path
    )


@pytest.fixture(scope="module")
def gemeente(pki: Path) -> Party:
    return _party(
        pki / "gemeente-voorbeeld" / "signing.key", pki / "gemeente-voorbeeld" / "signing.pem"
    )


@pytest.fixture(scope="module")
def node(pki: Path) -> Party:
    return _party(pki / "ggk-rinis-test" / "signing.key", pki / "ggk-rinis-test" / "signing.pem")


@pytest.fixture(scope="module")
def attacker(pki: Path) -> Party:
    return _party(pki / "negative" / "foreign-client.key", pki / "negative" / "foreign-client.pem")


def business_envelope(
    cids: Sequence[str] = tuple(ATTACHMENTS),
    *,
    ack_actor: str | None = "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH",
    sync_reply: bool = True,
) -> bytes:
    """A WMO301 as the gateway sends it: osb-rm-s, a Manifest entry per payload."""
    header = MessageHeader(
        from_ids=(PartyId(GEMEENTE_OIN, "urn:osb:oin"),),
        to_ids=(PartyId(NODE_OIN, "urn:osb:oin"),),
        cpa_id="test-cpa",
        conversation_id="c0ffee00-0000-4000-8000-000000000001",
        service=Service("GGK:iWmo:3.2", "urn:osb:services"),
        action="WMO301",
        message_id="5f0f1f2a-3b4c-4d5e-8f90-a1b2c3d4e5f6@gemeente.example",
        timestamp=datetime(2026, 6, 1, 10, 15, 30, 123000, tzinfo=UTC),
        from_role="Gemeente",
        to_role="GGk",
        duplicate_elimination=True,
    )
    return build_envelope(
        Envelope(
            header=header,
            ack_requested=AckRequested(signed=True, actor=ack_actor),
            sync_reply=SyncReply() if sync_reply else None,
            manifest=tuple(ManifestReference(cid_uri(c)) for c in cids),
        )
    )


def template_envelope(cids: Sequence[str] = tuple(ATTACHMENTS)) -> bytes:
    """ebms-core's template: ``soap`` prefix, ds bound as ``ns4``, a comment before the root."""
    return render("EbMSMessageWithAttachments", cids=tuple(cid_uri(c)[4:] for c in cids))


def digests(attachments: Mapping[str, bytes], algorithm: str = SHA256) -> list[tuple[str, bytes]]:
    return [(cid, digest_stream(algorithm, io.BytesIO(data))) for cid, data in attachments.items()]


def _opener(data: bytes) -> Callable[[], io.BytesIO]:
    return lambda: io.BytesIO(data)


def openers(attachments: Mapping[str, bytes]) -> dict[str, Callable[[], io.BytesIO]]:
    return {cid: _opener(data) for cid, data in attachments.items()}


def sign(
    party: Party,
    envelope: bytes | None = None,
    attachments: Mapping[str, bytes] = ATTACHMENTS,
    policy: SignaturePolicy = POLICY,
    c14n: str = C14N_EXCLUSIVE,
) -> bytes:
    envelope = business_envelope(tuple(attachments)) if envelope is None else envelope
    return sign_envelope(
        envelope, digests(attachments, policy.digest_method), party.key, policy, c14n=c14n
    )


def verify(
    signed: bytes,
    party: Party,
    attachments: Mapping[str, bytes] = ATTACHMENTS,
    policy: SignaturePolicy = POLICY,
) -> VerifiedSignature:
    return verify_envelope(signed, openers(attachments), party.cert, policy)


def refused(
    signed: bytes,
    party: Party,
    attachments: Mapping[str, bytes] = ATTACHMENTS,
    policy: SignaturePolicy = POLICY,
) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        verify(signed, party, attachments, policy)
    return info.value


# -- the oracles --------------------------------------------------------------------------

#: Content of the cid: parts python-xmlsec may read; its IO callbacks are process-global.
_XMLSEC_PARTS: dict[str, bytes] = {}


@pytest.fixture(scope="module", autouse=True)
def xmlsec_cid_callbacks() -> Iterator[None]:
    """Resolve cid: from _XMLSEC_PARTS and nothing else (no file://, no http://)."""
    xmlsec.cleanup_callbacks()
    xmlsec.register_callbacks(
        lambda uri: uri[:4].lower() == b"cid:",
        # libxmlsec1 hands the URI over %-unescaped already.
        lambda uri: io.BytesIO(_XMLSEC_PARTS[uri[4:].decode("utf-8")]),
        lambda stream, buffer: stream.readinto(buffer),
        lambda stream: stream.close(),
    )
    yield
    xmlsec.cleanup_callbacks()
    xmlsec.register_default_callbacks()


_XMLSEC_ALGORITHMS = {
    C14N_EXCLUSIVE: xmlsec.constants.TransformExclC14N,
    C14N_INCLUSIVE: xmlsec.constants.TransformInclC14N,
    RSA_SHA1: xmlsec.constants.TransformRsaSha1,
    RSA_SHA256: xmlsec.constants.TransformRsaSha256,
    RSA_SHA512: xmlsec.constants.TransformRsaSha512,
    SHA1: xmlsec.constants.TransformSha1,
    SHA256: xmlsec.constants.TransformSha256,
    SHA512: xmlsec.constants.TransformSha512,
}


def xmlsec_verify(
    signed: bytes, party: Party, attachments: Mapping[str, bytes] = ATTACHMENTS
) -> None:
    """python-xmlsec verifies with the given certificate (raises xmlsec.Error if not)."""
    root = etree.fromstring(signed)
    ctx = xmlsec.SignatureContext()
    ctx.key = xmlsec.Key.from_file(str(party.cert_path), xmlsec.constants.KeyDataFormatCertPem)
    _XMLSEC_PARTS.clear()
    _XMLSEC_PARTS.update(attachments)
    ctx.verify(xmlsec.tree.find_node(root, xmlsec.constants.NodeSignature))


def xmlsec_sign(
    envelope: bytes,
    party: Party,
    attachments: Mapping[str, bytes] = ATTACHMENTS,
    *,
    c14n: str = C14N_EXCLUSIVE,
    policy: SignaturePolicy = POLICY,
    transforms: Sequence[str] = ("enveloped", "xpath", "c14n"),
    xpath: str = EBMS_XPATH,
    prefix: str = "SOAP",
    prefix_list: str | None = None,
) -> bytes:
    """Sign with python-xmlsec, the template built inside the document (toolchain pitfall 8)."""
    root = etree.fromstring(envelope)
    header = root.find(f"{{{SOAP_NS}}}Header")
    c14n_transform = _XMLSEC_ALGORITHMS[c14n]
    digest = _XMLSEC_ALGORITHMS[policy.digest_method]
    tmpl = xmlsec.template.create(
        root, c14n_transform, _XMLSEC_ALGORITHMS[policy.signature_method], ns="ds"
    )
    header.append(tmpl)
    ref = xmlsec.template.add_reference(tmpl, digest, uri="")
    for name in transforms:
        if name == "enveloped":
            xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
        elif name == "xpath":
            node = xmlsec.template.add_transform(ref, xmlsec.constants.TransformXPath)
            etree.SubElement(node, f"{{{DS_NS}}}XPath", nsmap={prefix: SOAP_NS}).text = xpath
        else:
            node = xmlsec.template.add_transform(ref, c14n_transform)
            if prefix_list is not None:
                xmlsec.template.transform_add_c14n_inclusive_namespaces(node, prefix_list)
    for cid in attachments:
        xmlsec.template.add_reference(tmpl, digest, uri=cid_uri(cid))
    xmlsec.template.x509_data_add_certificate(
        xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(tmpl))
    )
    key = xmlsec.Key.from_file(str(party.key_path), xmlsec.constants.KeyDataFormatPem)
    key.load_cert_from_file(str(party.cert_path), xmlsec.constants.KeyDataFormatPem)
    ctx = xmlsec.SignatureContext()
    ctx.key = key
    _XMLSEC_PARTS.clear()
    _XMLSEC_PARTS.update(attachments)
    ctx.sign(tmpl)
    out: bytes = etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")
    return out


XMLSEC1 = shutil.which("xmlsec1")


def xmlsec1_verify(
    signed: bytes, pki: Path, tmp_path: Path, attachments: Mapping[str, bytes] = ATTACHMENTS
) -> subprocess.CompletedProcess[str]:
    """The xmlsec1 CLI: KeyInfo's certificate, chained to the TEST root, cid: via --url-map."""
    document = tmp_path / "signed.xml"
    document.write_bytes(signed)
    command = [
        str(XMLSEC1),
        "--verify",
        "--trusted-pem",
        str(pki / "ca" / "root.pem"),
        "--untrusted-pem",
        str(pki / "ca" / "intermediate.pem"),
    ]
    for index, (cid, data) in enumerate(attachments.items()):
        part = tmp_path / f"part{index}.bin"
        part.write_bytes(data)
        command += [f"--url-map:cid:{cid}", str(part)]
    command.append(str(document))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


# -- cross-checks with independent implementations --------------------------------------


@pytest.mark.parametrize("algorithms", ALGORITHMS, ids=str)
@pytest.mark.parametrize("c14n", C14NS, ids=str)
@pytest.mark.parametrize("make", [business_envelope, template_envelope], ids=["built", "template"])
def test_ours_verified_by_python_xmlsec(
    gemeente: Party, c14n: str, algorithms: str, make: Callable[[], bytes]
) -> None:
    policy = SignaturePolicy(*ALGORITHMS[algorithms])
    signed = sign(gemeente, make(), policy=policy, c14n=C14NS[c14n])
    xmlsec_verify(signed, gemeente)
    assert verify(signed, gemeente, policy=policy).signature_method == policy.signature_method


@pytest.mark.skipif(
    XMLSEC1 is None, reason="xmlsec1 CLI not installed: independent signature oracle absent"
)
@pytest.mark.parametrize("algorithms", ALGORITHMS, ids=str)
@pytest.mark.parametrize("c14n", C14NS, ids=str)
def test_ours_verified_by_xmlsec1_cli(
    gemeente: Party, pki: Path, tmp_path: Path, c14n: str, algorithms: str
) -> None:
    policy = SignaturePolicy(*ALGORITHMS[algorithms])
    signed = sign(gemeente, template_envelope(), policy=policy, c14n=C14NS[c14n])
    result = xmlsec1_verify(signed, pki, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SignedInfo References (ok/all): 3/3" in result.stderr


@pytest.mark.skipif(
    XMLSEC1 is None, reason="xmlsec1 CLI not installed: independent signature oracle absent"
)
def test_xmlsec1_cli_refuses_a_changed_attachment(
    gemeente: Party, pki: Path, tmp_path: Path
) -> None:
    """The oracle itself notices tampering (so its OK above means something)."""
    signed = sign(gemeente, template_envelope())
    changed = {**ATTACHMENTS, "payload-1@gemeente.example": b"changed"}
    assert xmlsec1_verify(signed, pki, tmp_path, changed).returncode != 0


@pytest.mark.parametrize("algorithms", ALGORITHMS, ids=str)
@pytest.mark.parametrize("c14n", C14NS, ids=str)
def test_python_xmlsec_signature_verified_by_ours(
    gemeente: Party, c14n: str, algorithms: str
) -> None:
    policy = SignaturePolicy(*ALGORITHMS[algorithms])
    for envelope in (business_envelope(), template_envelope()):
        signed = xmlsec_sign(envelope, gemeente, c14n=C14NS[c14n], policy=policy)
        result = verify(signed, gemeente, policy=policy)
        assert [r.uri for r in result.references] == ["", *map(cid_uri, ATTACHMENTS)]
        # Same digests as ours: both compute the same canonical envelope.
        ours = read_references(sign(gemeente, envelope, policy=policy, c14n=C14NS[c14n]))
        assert ours == result.references


@pytest.mark.parametrize(
    ("xpath", "prefix"),
    [
        (EBMS_XPATH, "SOAP"),
        (EBMS_XPATH.replace("SOAP:", "SOAP-ENV:"), "SOAP-ENV"),
        (EBMS_XPATH.replace('"', "'"), "SOAP"),
        ("\n  " + EBMS_XPATH.replace("(", " ( ").replace("|", "\n|\n") + "\n", "SOAP"),
    ],
    ids=["spec", "other-prefix", "single-quotes", "white-space"],
)
def test_xpath_spellings_we_accept(gemeente: Party, xpath: str, prefix: str) -> None:
    signed = xmlsec_sign(template_envelope(), gemeente, xpath=xpath, prefix=prefix)
    verify(signed, gemeente)


def test_inclusive_namespaces_prefix_list(gemeente: Party) -> None:
    """exc-c14n with an InclusiveNamespaces PrefixList, as some MSHs send it."""
    signed = xmlsec_sign(business_envelope(), gemeente, prefix_list="SOAP eb")
    assert b"PrefixList" in signed
    verify(signed, gemeente)


@pytest.mark.parametrize("c14n", C14NS, ids=str)
def test_inherited_xml_attributes(gemeente: Party, c14n: str) -> None:
    """Inclusive C14N carries xml:lang from SignedInfo's ancestors into SignedInfo."""
    root = etree.fromstring(business_envelope())
    header = root.find(f"{{{SOAP_NS}}}Header")
    header.set("{http://www.w3.org/XML/1998/namespace}lang", "nl")
    envelope = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    verify(xmlsec_sign(envelope, gemeente, c14n=C14NS[c14n]), gemeente)
    xmlsec_verify(sign(gemeente, envelope, c14n=C14NS[c14n]), gemeente)


#: Envelopes that stress C14N: another SOAP prefix with a default namespace,
#: comments and a PI (inside and outside the root), CDATA, a character
#: reference for CR, entities, attribute order, namespace redeclaration,
#: non-ASCII text and the unsigned SyncReply as the first header child.
TRICKY = [
    """<?xml version="1.0" encoding="UTF-8"?>
<!-- before the root --><?app before?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"
    xmlns:eb="http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd">
  <SOAP-ENV:Header>
    <eb:SyncReply SOAP-ENV:mustUnderstand="1" eb:version="2.0"
        SOAP-ENV:actor="http://schemas.xmlsoap.org/soap/actor/next"/> tail text
    <eb:MessageHeader eb:version="2.0" SOAP-ENV:mustUnderstand="1"><!-- c -->
      <eb:CPAId>caf\u00e9 \u2603 &amp; &lt;x&gt;</eb:CPAId><?app inside?>
      <eb:Action z="1" a="2" xmlns:eb="http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd">A&#13;B</eb:Action>
    </eb:MessageHeader>
  </SOAP-ENV:Header>
  <SOAP-ENV:Body><data xmlns="urn:example:default"><![CDATA[<not markup> & ]]>line\r
two<inner xmlns="">no namespace</inner></data></SOAP-ENV:Body>
</SOAP-ENV:Envelope>
<!-- after the root -->""",
    """<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Header/><S:Body/></S:Envelope>""",
]


@pytest.mark.parametrize("c14n", C14NS, ids=str)
@pytest.mark.parametrize("index", range(len(TRICKY)), ids=["full", "minimal"])
def test_tricky_envelopes_both_directions(gemeente: Party, c14n: str, index: int) -> None:
    envelope = TRICKY[index].encode()
    ours = sign(gemeente, envelope, {}, c14n=C14NS[c14n])
    xmlsec_verify(ours, gemeente, {})
    verify(ours, gemeente, {})
    theirs = xmlsec_sign(envelope, gemeente, {}, c14n=C14NS[c14n])
    verify(theirs, gemeente, {})
    assert read_references(ours) == read_references(theirs)


# -- what the signature looks like ---------------------------------------------------------


def test_signature_structure(gemeente: Party) -> None:
    signed = sign(gemeente)
    root = etree.fromstring(signed)
    header = root.find(f"{{{SOAP_NS}}}Header")
    assert header[-1].tag == f"{{{DS_NS}}}Signature"
    assert len(root.findall(f".//{{{DS_NS}}}Signature")) == 1
    ns = {"ds": DS_NS}
    info = header[-1].find("ds:SignedInfo", ns)
    assert info.find("ds:CanonicalizationMethod", ns).get("Algorithm") == C14N_EXCLUSIVE
    refs = info.findall("ds:Reference", ns)
    assert [r.get("URI") for r in refs] == [
        "",
        "cid:payload-1@gemeente.example",
        "cid:payload%202@gemeente.example",
    ]
    transforms = [t.get("Algorithm") for t in refs[0].iterfind("ds:Transforms/ds:Transform", ns)]
    assert transforms == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/TR/1999/REC-xpath-19991116",
        C14N_EXCLUSIVE,
    ]
    xpath = refs[0].find("ds:Transforms/ds:Transform/ds:XPath", ns)
    assert xpath.text == EBMS_XPATH and xpath.nsmap["SOAP"] == SOAP_NS
    assert all(r.find("ds:Transforms", ns) is None for r in refs[1:])
    assert keyinfo_certificates(signed) == (gemeente.cert,)
    parse_envelope(signed)  # still a schema-valid ebMS envelope


def test_signing_is_deterministic_and_leaves_the_input_alone(gemeente: Party) -> None:
    tree = etree.ElementTree(etree.fromstring(business_envelope()))
    before = etree.tostring(tree)
    first = sign_envelope(tree, digests(ATTACHMENTS), gemeente.key, POLICY)
    assert etree.tostring(tree) == before
    assert sign_envelope(tree.getroot(), digests(ATTACHMENTS), gemeente.key, POLICY) == first
    assert sign(gemeente) == first
    with pytest.raises(ValueError, match="already signed"):
        sign(gemeente, first)


@pytest.mark.parametrize(
    ("attachments", "policy", "message"),
    [
        ([("a@x", b"\0" * 20)], POLICY, "not a .*sha256 digest"),
        ([("a@x", b"\0" * 32), ("a@x", b"\0" * 32)], POLICY, "given twice"),
        ([("<a@x>", b"\0" * 32)], POLICY, "angle brackets"),
        ([], SignaturePolicy(RSA_SHA1, SHA1), "legacy"),
        ([], SignaturePolicy(RSA_SHA256, SHA1), "legacy"),
        ([], SignaturePolicy("urn:nonsense", SHA256), "unknown SignatureMethod"),
    ],
)
def test_sign_refuses_bad_input(
    gemeente: Party, attachments: list[tuple[str, bytes]], policy: SignaturePolicy, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sign_envelope(business_envelope(()), attachments, gemeente.key, policy)


def test_sign_refuses_an_element_the_signature_would_leave_out(gemeente: Party) -> None:
    envelope = business_envelope().replace(
        b"<eb:Manifest",
        b'<x:note xmlns:x="urn:x" SOAP:actor="http://schemas.xmlsoap.org/soap/actor/next"/>'
        b"<eb:Manifest",
    )
    with pytest.raises(ValueError, match="//Body/note"):
        sign(gemeente, envelope)


def test_signing_key_must_match_its_certificate(gemeente: Party, node: Party) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        SigningKey(gemeente.key.private_key, node.cert)


def test_verified_signature_reports_what_was_signed(gemeente: Party) -> None:
    signed = sign(gemeente)
    result = verify(signed, gemeente)
    assert result.references[0] == SignedReference(
        "", SHA256, read_references(signed)[0].digest_value
    )
    assert result.references[1:] == tuple(
        SignedReference(cid_uri(cid), SHA256, hashlib.sha256(data).digest())
        for cid, data in ATTACHMENTS.items()
    )
    assert result.canonicalization == C14N_EXCLUSIVE
    assert result.signature_method == RSA_SHA256
    assert result.signed_at == datetime(2026, 6, 1, 10, 15, 30, 123000, tzinfo=UTC)
    assert message_timestamp(signed) == result.signed_at


def test_policy_from_cpa() -> None:
    from cpa.model import NonRepudiation

    nr = NonRepudiation("http://www.w3.org/2000/09/xmldsig#", f" {SHA512} ", RSA_SHA512, "c", None)
    assert SignaturePolicy.from_cpa(nr) == SignaturePolicy(RSA_SHA512, SHA512)


# -- digests -------------------------------------------------------------------------------


class _CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.sizes.append(-1 if size is None else size)
        return super().read(size)


def test_digest_stream_reads_in_chunks() -> None:
    data = bytes(range(256)) * (CHUNK_SIZE // 128 + 3)  # a bit over two chunks
    reader = _CountingReader(data)
    assert digest_stream(SHA512, reader) == hashlib.sha512(data).digest()
    assert set(reader.sizes) == {CHUNK_SIZE} and len(reader.sizes) == 4
    assert not reader.closed
    assert digest_stream(SHA256, [data[:10], data[10:]]) == hashlib.sha256(data).digest()
    assert digest_stream(SHA256, data) == hashlib.sha256(data).digest()
    assert digest_stream(SHA1, b"") == hashlib.sha1(b"").digest()  # noqa: S324 - the legacy algorithm
    with pytest.raises(ValueError, match="unknown"):
        digest_stream("urn:md5", b"")


def test_cid_uri_escapes_what_a_url_cannot_hold() -> None:
    assert cid_uri("uuid-1@host.example") == "cid:uuid-1@host.example"
    assert cid_uri("a b%c/é") == "cid:a%20b%25c%2F%C3%A9"


# -- the tamper matrix ------------------------------------------------------------------------


def _mutate(signed: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(signed)
    change(root)
    out: bytes = etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8")
    return out


def _find(root: etree._Element, path: str) -> etree._Element:
    found = root.find(path, {"SOAP": SOAP_NS, "eb": EB_NS, "ds": DS_NS})
    assert found is not None, path
    return found


def _swap_keyinfo(attacker: Party) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        der = attacker.cert.public_bytes(serialization.Encoding.DER)
        _find(root, ".//ds:X509Certificate").text = base64.b64encode(der).decode()

    return change


def test_header_byte_changed(gemeente: Party) -> None:
    signed = sign(gemeente)
    assert signed.count(b"c0ffee00") == 1
    error = refused(signed.replace(b"c0ffee00", b"c0ffee01"), gemeente)
    assert (error.location, error.description) == (
        f"{ENVELOPE_REF}/DigestValue",
        "digest does not match the content",
    )


def test_body_byte_changed(gemeente: Party) -> None:
    signed = sign(gemeente)
    changed = signed.replace(b'<eb:Manifest eb:version="2.0"', b'<eb:Manifest eb:version="2.1"')
    assert changed != signed
    assert refused(changed, gemeente).location == f"{ENVELOPE_REF}/DigestValue"


def test_attachment_byte_changed(gemeente: Party) -> None:
    signed = sign(gemeente)
    data = bytearray(ATTACHMENTS["payload 2@gemeente.example"])
    data[5000] ^= 1
    error = refused(
        signed, gemeente, attachments={**ATTACHMENTS, "payload 2@gemeente.example": bytes(data)}
    )
    assert (
        error.location
        == f"{SIGNED_INFO}/Reference[@URI='cid:payload%202@gemeente.example']/DigestValue"
    )


def test_attachment_dropped(gemeente: Party) -> None:
    signed = sign(gemeente)
    error = refused(
        signed,
        gemeente,
        attachments={"payload-1@gemeente.example": ATTACHMENTS["payload-1@gemeente.example"]},
    )
    assert error.location == f"{SIGNED_INFO}/Reference[@URI='cid:payload%202@gemeente.example']"


def test_extra_unsigned_attachment(gemeente: Party) -> None:
    signed = sign(gemeente)
    error = refused(signed, gemeente, attachments={**ATTACHMENTS, "smuggled@evil.example": b"x"})
    assert (error.location, error.description) == (
        "cid:smuggled@evil.example",
        "payload 'smuggled@evil.example' is not signed",
    )


def test_signed_by_another_party(gemeente: Party, node: Party) -> None:
    """The node's key and certificate, where the CPA names the municipality's."""
    error = refused(sign(node), gemeente)
    assert error.location == f"{SIG}/KeyInfo"


def test_signed_by_another_key_with_the_cpa_certificate_in_keyinfo(
    gemeente: Party, attacker: Party
) -> None:
    """KeyInfo is never trusted: the CPA certificate's key must verify."""
    forged = _mutate(sign(attacker), _swap_keyinfo(gemeente))
    error = refused(forged, gemeente)
    assert (error.location, error.description) == (f"{SIG}/SignatureValue", "Invalid Signature.")


def test_keyinfo_swapped_to_attacker_certificate(gemeente: Party, attacker: Party) -> None:
    swapped = _mutate(sign(gemeente), _swap_keyinfo(attacker))
    assert refused(swapped, gemeente).location == f"{SIG}/KeyInfo"


def test_keyinfo_is_optional(gemeente: Party) -> None:
    def drop(root: etree._Element) -> None:
        key_info = _find(root, ".//ds:KeyInfo")
        key_info.getparent().remove(key_info)

    verify(_mutate(sign(gemeente), drop), gemeente)


def test_signed_over_another_xpath(gemeente: Party) -> None:
    """A valid signature (python-xmlsec says so) whose XPath leaves the Body out."""
    signed = xmlsec_sign(business_envelope(), gemeente, xpath="not(ancestor-or-self::SOAP:Body)")
    xmlsec_verify(signed, gemeente)
    error = refused(signed, gemeente)
    assert error.location == f"{ENVELOPE_REF}/Transforms/Transform/XPath"


@pytest.mark.parametrize(
    "transforms",
    [("enveloped", "c14n"), ("enveloped", "xpath", "c14n", "c14n"), ("xpath", "enveloped", "c14n")],
    ids=["missing", "extra", "reordered"],
)
def test_transforms_other_than_the_profile(gemeente: Party, transforms: tuple[str, ...]) -> None:
    signed = xmlsec_sign(template_envelope(), gemeente, transforms=transforms)
    xmlsec_verify(signed, gemeente)
    assert refused(signed, gemeente).location == f"{ENVELOPE_REF}/Transforms"


def test_xpath_prefix_rebound(gemeente: Party) -> None:
    """Exclusive C14N does not sign the xmlns:SOAP on ds:XPath; the profile check must."""
    signed = sign(gemeente, template_envelope())
    assert signed.count(b'<ds:XPath xmlns:SOAP="http://schemas.xmlsoap.org/soap/envelope/">') == 1
    rebound = signed.replace(
        b'<ds:XPath xmlns:SOAP="http://schemas.xmlsoap.org/soap/envelope/">',
        b'<ds:XPath xmlns:SOAP="urn:evil">',
    )
    assert refused(rebound, gemeente).location == f"{ENVELOPE_REF}/Transforms/Transform/XPath"


def test_payload_reference_with_a_transform(gemeente: Party) -> None:
    def add(root: etree._Element) -> None:
        ref = root.findall(f".//{{{DS_NS}}}Reference")[1]
        transforms = etree.Element(f"{{{DS_NS}}}Transforms")
        etree.SubElement(transforms, f"{{{DS_NS}}}Transform", Algorithm=C14N_EXCLUSIVE)
        ref.insert(0, transforms)

    error = refused(_mutate(sign(gemeente), add), gemeente)
    assert error.location == f"{SIGNED_INFO}/Reference[@URI='cid:payload-1@gemeente.example']"


def test_sha1_only_for_legacy_partners(gemeente: Party) -> None:
    legacy = SignaturePolicy(RSA_SHA1, SHA1, legacy=True)
    signed = sign(gemeente, policy=legacy)
    verify(signed, gemeente, policy=legacy)
    error = refused(signed, gemeente, policy=replace(legacy, legacy=False))
    assert error.location == f"{SIGNED_INFO}/SignatureMethod/@Algorithm"
    assert "legacy" in error.description
    # SHA-1 digests under an SHA-2 signature are refused as well.
    mixed = SignaturePolicy(RSA_SHA256, SHA1)
    signed = sign(gemeente, policy=replace(mixed, legacy=True))
    error = refused(signed, gemeente, policy=mixed)
    assert error.location == f"{ENVELOPE_REF}/DigestMethod/@Algorithm"


def test_signature_method_not_the_cpa_one(gemeente: Party) -> None:
    signed = sign(gemeente, policy=SignaturePolicy(RSA_SHA512, SHA256))
    error = refused(signed, gemeente)
    assert (error.location, error.description) == (
        "//Header/Signature/SignedInfo/SignatureMethod/@Algorithm",
        "Invalid SignatureMethod.",
    )
    assert error.code == ErrorCode.SECURITY_FAILURE


def test_digest_method_not_the_cpa_one(gemeente: Party) -> None:
    signed = sign(gemeente, policy=SignaturePolicy(RSA_SHA256, SHA512))
    error = refused(signed, gemeente)
    assert (error.location, error.description) == (
        "//Header/Signature/SignedInfo/Reference[@URI='']/DigestMethod/@Algorithm",
        "Invalid DigestMethod.",
    )


def test_two_signatures(gemeente: Party) -> None:
    def duplicate(root: etree._Element) -> None:
        signature = _find(root, "SOAP:Header/ds:Signature")
        signature.getparent().append(copy.deepcopy(signature))

    error = refused(_mutate(sign(gemeente), duplicate), gemeente)
    assert error.location == SIG and "2 ds:Signature" in error.description


def test_signature_in_body(gemeente: Party) -> None:
    def move(root: etree._Element) -> None:
        _find(root, "SOAP:Body").append(_find(root, "SOAP:Header/ds:Signature"))

    assert refused(_mutate(sign(gemeente), move), gemeente).location == "//Body/Signature"


def test_missing_signature(gemeente: Party) -> None:
    error = refused(business_envelope(), gemeente)
    assert (error.description, error.location) == ("Signature not found.", "//Header/Signature")
    assert error.to_error().code == ErrorCode.SECURITY_FAILURE


def test_unsigned_element_added_after_signing(gemeente: Party) -> None:
    """A block with the next actor would be outside the signature: refused."""

    def add(root: etree._Element) -> None:
        block = etree.SubElement(_find(root, "SOAP:Header"), f"{{{EB_NS}}}Bogus")
        block.set(f"{{{SOAP_NS}}}actor", NEXT_MSH)

    assert refused(_mutate(sign(gemeente), add), gemeente).location == "//Header/Bogus"


def test_doctype_refused(gemeente: Party) -> None:
    signed = sign(gemeente)
    with_doctype = signed.replace(b"?>", b'?>\n<!DOCTYPE x [<!ENTITY a "b">]>', 1)
    error = refused(with_doctype, gemeente)
    assert "DOCTYPE" in error.description


def test_oversized_envelope_refused_before_any_work(gemeente: Party) -> None:
    signed = sign(gemeente)
    padded = signed.replace(b"</SOAP:Envelope>", b" " * MAX_ENVELOPE_BYTES + b"</SOAP:Envelope>")
    assert "over the limit" in refused(padded, gemeente).description


def test_unsigned_blocks_may_change(gemeente: Party) -> None:
    """ebMS 2.0 §4.1.3: SyncReply and a nextMSH AckRequested are outside the signature."""
    signed = sign(gemeente, business_envelope(ack_actor=NEXT_MSH))
    verify(signed, gemeente)
    assert signed.count(b'eb:signed="true"') == 1
    verify(signed.replace(b'eb:signed="true"', b'eb:signed="false"'), gemeente)

    def drop_sync_reply(root: etree._Element) -> None:
        sync_reply = _find(root, "SOAP:Header/eb:SyncReply")
        sync_reply.getparent().remove(sync_reply)

    verify(_mutate(signed, drop_sync_reply), gemeente)


def test_signed_ack_requested_may_not_change(gemeente: Party) -> None:
    """The toPartyMSH AckRequested is signed."""
    signed = sign(gemeente)
    changed = signed.replace(b'eb:signed="true"', b'eb:signed="false"')
    assert refused(changed, gemeente).location == f"{ENVELOPE_REF}/DigestValue"


# -- signed acknowledgments -------------------------------------------------------------------


def _ack_for(received: bytes, references: Sequence[bytes]) -> bytes:
    request, _ = parse_envelope(received)
    ack = signals.acknowledgment(
        request,
        now=datetime(2026, 6, 1, 10, 15, 31, tzinfo=UTC),
        host="node.example",
        references=references,
    )
    return build_envelope(ack)


def test_signed_acknowledgment_round_trip(gemeente: Party, node: Party) -> None:
    sent = sign(gemeente, template_envelope())
    # Receiver: verify, copy the references into a signed Acknowledgment.
    verify(sent, gemeente)
    copies = signature_references(sent)
    assert len(copies) == 3
    assert b'xmlns:SOAP="http://schemas.xmlsoap.org/soap/envelope/"' in copies[0]
    signed_ack = sign_envelope(_ack_for(sent, copies), [], node.key, POLICY, c14n=C14N_INCLUSIVE)
    parse_envelope(signed_ack)  # schema-valid, references included
    xmlsec_verify(signed_ack, node, {})
    # Sender: verify the ack's own signature, then its references against what it sent.
    verify(signed_ack, node, {})
    check_ack_references(signed_ack, read_references(sent))


def test_signed_acknowledgment_with_wrong_references(gemeente: Party, node: Party) -> None:
    sent = sign(gemeente)
    copies = signature_references(sent)
    other = signature_references(
        sign(gemeente, attachments={**ATTACHMENTS, "payload-1@gemeente.example": b"other"})
    )
    original = read_references(sent)

    with pytest.raises(SignatureError) as info:
        check_ack_references(_ack_for(sent, (copies[0], other[1], copies[2])), original)
    assert (
        info.value.location
        == "//Header/Acknowledgment/Reference[@URI='cid:payload-1@gemeente.example']"
    )

    with pytest.raises(SignatureError) as info:
        check_ack_references(_ack_for(sent, copies[:2]), original)
    assert info.value.location == "//Header/Acknowledgment"
    assert "cid:payload%202@gemeente.example" in info.value.description

    with pytest.raises(SignatureError) as info:
        check_ack_references(business_envelope(), original)
    assert info.value.location == "//Header/Acknowledgment"


def test_no_references_without_a_signature() -> None:
    assert signature_references(business_envelope()) == ()
    assert read_references(business_envelope()) == ()
    assert keyinfo_certificates(business_envelope()) == ()


# -- property -----------------------------------------------------------------------------------

_content_ids = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="<>"), min_size=1, max_size=24
).filter(lambda s: s == s.strip())


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    attachments=st.dictionaries(_content_ids, st.binary(max_size=4096), max_size=4),
    c14n=st.sampled_from(sorted(C14NS.values())),
)
def test_sign_verify_round_trip(gemeente: Party, attachments: dict[str, bytes], c14n: str) -> None:
    signed = sign(gemeente, attachments=attachments, c14n=c14n)
    result = verify(signed, gemeente, attachments)
    assert [r.uri for r in result.references[1:]] == [cid_uri(c) for c in attachments]
    assert [r.digest_value for r in result.references[1:]] == [
        hashlib.sha256(d).digest() for d in attachments.values()
    ]
