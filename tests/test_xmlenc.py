"""XML Encryption of payload parts (gateway.ebms.xmlenc), checked against xmlsec.

Independent implementations in both directions: python-xmlsec (libxmlsec1 1.3)
and the Debian ``xmlsec1`` command (1.2.37) decrypt what we encrypt, and we
decrypt what they encrypt.  ``xmlsec1`` 1.2.37 knows aes*-gcm, aes*-cbc,
rsa-oaep-mgf1p and rsa-1_5 but not xmlenc11 ``rsa-oaep``; python-xmlsec also
handles xmlenc11 ``rsa-oaep`` with SHA-256 digest and MGF.

xmlsec honours ``Type=".../xmlenc#Element"`` (which ebms-core writes and so do
we) by parsing the plaintext back into the document, which only works for an XML
payload without an XML declaration.  To compare raw octets the tests drop that
attribute from a copy first (:func:`_octets`).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from cpa.model import DigitalEnvelope
from gateway.ebms import xmlenc
from gateway.ebms.model import ErrorCode
from gateway.ebms.xmlenc import (
    AES128_CBC,
    AES128_GCM,
    AES192_GCM,
    AES256_CBC,
    AES256_GCM,
    RSA_1_5,
    RSA_OAEP,
    RSA_OAEP_MGF1P,
    TRIPLEDES_CBC,
    XENC_NS,
    DecryptionError,
    EncryptionError,
    data_algorithm_for,
    decrypt_part,
    encrypt_part,
    key_name,
    looks_encrypted,
    write_encrypted_part,
)

XMLSEC1 = shutil.which("xmlsec1")
needs_xmlsec1 = pytest.mark.skipif(
    XMLSEC1 is None, reason="xmlsec1 CLI not installed: independent encryption oracle absent"
)

PAYLOAD = bytes(range(256)) * 9 + b"tail \x00\xff"
CID = "payload-1@gemeente.example"


@dataclass(frozen=True)
class Keys:
    """The receiver's encryption certificate and key, and someone else's key."""

    cert: x509.Certificate
    cert_path: Path
    key: rsa.RSAPrivateKey
    key_path: Path
    other_key: rsa.RSAPrivateKey


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def keys(pki: Path) -> Keys:
    party = pki / "gemeente-voorbeeld"
    return Keys(
        cert=x509.load_pem_x509_certificate((party / "encryption.pem").read_bytes()),
        cert_path=party / "encryption.pem",
        key=_load_key(party / "encryption.key"),
        key_path=party / "encryption.key",
        other_key=_load_key(pki / "ggk-rinis-test" / "encryption.key"),
    )


def _encrypt(
    keys: Keys,
    payload: bytes = PAYLOAD,
    algorithm: str = AES256_GCM,
    transport: str = RSA_OAEP_MGF1P,
    *,
    legacy: bool = False,
    mime_type: str = "application/pdf",
) -> bytes:
    return encrypt_part(
        payload,
        content_id=CID,
        mime_type=mime_type,
        recipient_cert=keys.cert,
        data_algorithm=algorithm,
        key_transport=transport,
        legacy=legacy,
    )


def _octets(document: bytes) -> etree._Element:
    """A copy without ``Type``, so that xmlsec hands back the raw plaintext."""
    root = etree.fromstring(document)
    del root.attrib["Type"]
    return root


def _xmlsec_decrypt(root: etree._Element, key_path: Path) -> object:
    manager = xmlsec.KeysManager()
    manager.add_key(xmlsec.Key.from_file(str(key_path), xmlsec.constants.KeyDataFormatPem))
    return xmlsec.EncryptionContext(manager).decrypt(root)


def _xmlsec_encrypt(
    keys: Keys, payload: bytes, method: object, transport: object, session: tuple[object, int]
) -> bytes:
    """python-xmlsec's own EncryptedData with an EncryptedKey for our certificate."""
    template = xmlsec.template.encrypted_data_create(
        etree.Element("holder"), method, id="xmlsec@test", mime_type="text/plain", ns="xenc"
    )
    xmlsec.template.encrypted_data_ensure_cipher_value(template)
    key_info = xmlsec.template.encrypted_data_ensure_key_info(template, ns="dsig")
    encrypted_key = xmlsec.template.add_encrypted_key(key_info, transport)
    xmlsec.template.encrypted_data_ensure_cipher_value(encrypted_key)
    manager = xmlsec.KeysManager()
    manager.add_key(
        xmlsec.Key.from_file(str(keys.cert_path), xmlsec.constants.KeyDataFormatCertPem)
    )
    context = xmlsec.EncryptionContext(manager)
    data, bits = session
    context.key = xmlsec.Key.generate(data, bits, xmlsec.constants.KeyDataTypeSession)
    out: bytes = etree.tostring(context.encrypt_binary(template, payload))
    return out


def _cipher_values(document: bytes) -> list[etree._Element]:
    root = etree.fromstring(document)
    return [root, *root.iter(f"{{{XENC_NS}}}CipherValue")]


def _rewrite_data(document: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """The document with its data CipherValue's octets passed through ``change``."""
    root, *values = _cipher_values(document)
    value = values[-1]
    value.text = base64.b64encode(change(base64.b64decode(value.text or ""))).decode()
    out: bytes = etree.tostring(root)
    return out


def _flip(position: int, mask: int = 0x01) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        octets = bytearray(data)
        octets[position] ^= mask
        return bytes(octets)

    return change


_ORACLE_WORDS = re.compile(
    r"padding|(authentication|invalid|bad|gcm) tag|tag mismatch|\bmac\b|wrong key|invalid key"
    r"|unwrap|oaep|pkcs|decrypt(ion)? error",
    re.I,
)


def _refused(document: bytes, private_key: rsa.RSAPrivateKey, **kwargs: Any) -> DecryptionError:
    """Decryption fails with a SecurityFailure that says nothing about why the crypto failed."""
    with pytest.raises(DecryptionError) as caught:
        decrypt_part(document, private_key=private_key, **kwargs)
    error = caught.value
    assert error.code == ErrorCode.SECURITY_FAILURE
    assert not _ORACLE_WORDS.search(error.description), error.description
    return error


# -- interop: ours -> xmlsec ---------------------------------------------------------

OURS_TO_XMLSEC = [
    pytest.param(AES128_GCM, RSA_OAEP_MGF1P, False, id="aes128-gcm"),
    pytest.param(AES256_GCM, RSA_OAEP_MGF1P, False, id="aes256-gcm"),
    pytest.param(AES256_CBC, RSA_1_5, True, id="legacy-aes256-cbc-rsa15"),
]


@pytest.mark.parametrize(
    ("algorithm", "transport", "legacy"),
    [*OURS_TO_XMLSEC, pytest.param(AES256_GCM, RSA_OAEP, False, id="aes256-gcm-xenc11-oaep")],
)
def test_python_xmlsec_decrypts_ours(
    keys: Keys, algorithm: str, transport: str, legacy: bool
) -> None:
    document = _encrypt(keys, algorithm=algorithm, transport=transport, legacy=legacy)
    assert _xmlsec_decrypt(_octets(document), keys.key_path) == PAYLOAD


@needs_xmlsec1
@pytest.mark.parametrize(("algorithm", "transport", "legacy"), OURS_TO_XMLSEC)
def test_xmlsec1_command_decrypts_ours(
    keys: Keys, tmp_path: Path, algorithm: str, transport: str, legacy: bool
) -> None:
    document = _encrypt(keys, algorithm=algorithm, transport=transport, legacy=legacy)
    path = tmp_path / "part.xml"
    path.write_bytes(etree.tostring(_octets(document)))
    assert XMLSEC1 is not None
    done = subprocess.run(
        [XMLSEC1, "--decrypt", "--privkey-pem", str(keys.key_path), str(path)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-500:]
    assert done.stdout == PAYLOAD


def test_xmlsec_takes_our_document_as_is_for_an_xml_payload(keys: Keys) -> None:
    # With Type=Element intact xmlsec puts the decrypted element in place of
    # the EncryptedData: proof that the exact bytes we send are acceptable.
    payload = b'<iwmo:Bericht xmlns:iwmo="urn:test">WMO301</iwmo:Bericht>'
    document = _encrypt(keys, payload, mime_type="application/xml")
    result = _xmlsec_decrypt(etree.fromstring(document), keys.key_path)
    assert isinstance(result, etree._Element)
    assert etree.tostring(result) == payload


# -- interop: xmlsec -> ours ---------------------------------------------------------

C = xmlsec.constants
AES128, AES256, DES3 = (C.KeyDataAes, 128), (C.KeyDataAes, 256), (C.KeyDataDes, 192)


@pytest.mark.parametrize(
    ("method", "transport", "session", "legacy"),
    [
        pytest.param(C.TransformAes128Gcm, C.TransformRsaOaep, AES128, False, id="gcm128"),
        pytest.param(C.TransformAes256Gcm, C.TransformRsaOaep, AES256, False, id="gcm256"),
        pytest.param(C.TransformAes256Cbc, C.TransformRsaPkcs1, AES256, True, id="cbc256-rsa15"),
        pytest.param(C.TransformAes128Cbc, C.TransformRsaOaep, AES128, True, id="cbc128"),
        pytest.param(C.TransformDes3Cbc, C.TransformRsaOaep, DES3, True, id="3des"),
    ],
)
def test_we_decrypt_python_xmlsec(
    keys: Keys, method: object, transport: object, session: tuple[object, int], legacy: bool
) -> None:
    # libxmlsec1 refuses to encrypt nothing; our empty case is in the round trips.
    for size in (1, 15, 16, 17, len(PAYLOAD)):
        document = _xmlsec_encrypt(keys, PAYLOAD[:size], method, transport, session)
        part = decrypt_part(document, private_key=keys.key, legacy=legacy)
        assert part.content == PAYLOAD[:size]
        assert part.mime_type == "text/plain"
        assert part.content_id == "xmlsec@test"


@needs_xmlsec1
def test_we_decrypt_the_xmlsec1_command(keys: Keys, tmp_path: Path) -> None:
    template = tmp_path / "template.xml"
    template.write_text(
        f'<xenc:EncryptedData xmlns:xenc="{XENC_NS}" xmlns:ds="http://www.w3.org/2000/09/xmldsig#"'
        ' Id="cli@test" MimeType="application/pdf">'
        f'<xenc:EncryptionMethod Algorithm="{AES256_GCM}"/>'
        f'<ds:KeyInfo><xenc:EncryptedKey><xenc:EncryptionMethod Algorithm="{RSA_OAEP_MGF1P}"/>'
        "<xenc:CipherData><xenc:CipherValue/></xenc:CipherData></xenc:EncryptedKey></ds:KeyInfo>"
        "<xenc:CipherData><xenc:CipherValue/></xenc:CipherData></xenc:EncryptedData>"
    )
    (tmp_path / "payload.bin").write_bytes(PAYLOAD)
    assert XMLSEC1 is not None
    subprocess.run(
        [
            XMLSEC1,
            "--encrypt",
            "--pubkey-cert-pem",
            str(keys.cert_path),
            "--session-key",
            "aes-256",
            "--binary-data",
            str(tmp_path / "payload.bin"),
            "--output",
            str(tmp_path / "out.xml"),
            str(template),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    part = decrypt_part((tmp_path / "out.xml").read_bytes(), private_key=keys.key)
    assert (part.content, part.mime_type, part.content_id) == (
        PAYLOAD,
        "application/pdf",
        "cli@test",
    )


def test_santuario_style_line_breaks_are_accepted(keys: Keys) -> None:
    # Apache Santuario (ebms-core) wraps base64 and on some platforms writes
    # the line breaks as "&#13;\n".
    document = _encrypt(keys, legacy=True, algorithm=AES256_CBC, transport=RSA_1_5)
    root, *values = _cipher_values(document)
    for value in values:
        text = "".join((value.text or "").split())
        value.text = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    wrapped = etree.tostring(root)
    assert b"&#13;" in wrapped
    assert decrypt_part(wrapped, private_key=keys.key, legacy=True).content == PAYLOAD


# -- our own format ------------------------------------------------------------------


def test_document_has_the_ebms_core_shape(keys: Keys) -> None:
    root = etree.fromstring(_encrypt(keys, mime_type="application/xml; charset=UTF-8"))
    ns = {"xenc": XENC_NS, "ds": "http://www.w3.org/2000/09/xmldsig#"}
    assert root.tag == f"{{{XENC_NS}}}EncryptedData"
    assert root.get("Id") == CID
    assert root.get("MimeType") == "application/xml; charset=UTF-8"
    assert root.get("Type") == f"{XENC_NS}Element"
    assert root.xpath("xenc:EncryptionMethod/@Algorithm", namespaces=ns) == [AES256_GCM]
    encrypted_key = root.xpath("ds:KeyInfo/xenc:EncryptedKey", namespaces=ns)
    assert len(encrypted_key) == 1
    assert encrypted_key[0].xpath("xenc:EncryptionMethod/@Algorithm", namespaces=ns) == [
        RSA_OAEP_MGF1P
    ]
    assert encrypted_key[0].xpath("ds:KeyInfo/ds:KeyName/text()", namespaces=ns) == [
        key_name(keys.cert)
    ]
    assert root.xpath("xenc:CipherData/xenc:CipherValue", namespaces=ns)
    assert xmlenc.ENCRYPTED_CONTENT_TYPE == "application/xml"


@pytest.mark.parametrize("algorithm", [AES128_GCM, AES192_GCM, AES256_GCM])
@pytest.mark.parametrize("transport", [RSA_OAEP_MGF1P, RSA_OAEP])
def test_round_trip(keys: Keys, algorithm: str, transport: str) -> None:
    part = decrypt_part(
        _encrypt(keys, algorithm=algorithm, transport=transport), private_key=keys.key
    )
    assert (part.content, part.mime_type, part.algorithm, part.key_transport) == (
        PAYLOAD,
        "application/pdf",
        algorithm,
        transport,
    )
    assert part.key_name == key_name(keys.cert)


class _Recording(io.BytesIO):
    """Remembers the largest read, to show encryption reads in chunks."""

    largest = 0

    def read(self, size: int | None = -1, /) -> bytes:
        self.largest = max(self.largest, -1 if size is None or size < 0 else size)
        return super().read(size)


def test_a_large_file_streams_through_both_ways(keys: Keys, tmp_path: Path) -> None:
    # 11 MiB: its base64 is a text node above libxml2's 10 MB limit for trees.
    payload = bytes(range(251)) * (11 * 1024 * 1024 // 251)
    source = _Recording(payload)
    target = tmp_path / "encrypted.xml"
    with target.open("wb") as out:
        written = write_encrypted_part(
            source,
            out,
            content_id=CID,
            mime_type="application/octet-stream",
            recipient_cert=keys.cert,
            data_algorithm=AES128_GCM,
        )
    assert 0 < source.largest <= 64 * 1024 + 1024
    document = target.read_bytes()
    assert written == len(document)
    assert decrypt_part(document, private_key=keys.key).content == payload


def test_file_input_and_empty_payloads(keys: Keys) -> None:
    for algorithm, legacy in ((AES128_GCM, False), (AES128_CBC, True)):
        empty = _encrypt(keys, b"", algorithm, legacy=legacy)
        assert decrypt_part(empty, private_key=keys.key, legacy=legacy).content == b""
        from_file = encrypt_part(
            io.BytesIO(PAYLOAD),
            content_id=CID,
            mime_type="text/plain",
            recipient_cert=keys.cert,
            data_algorithm=algorithm,
            legacy=legacy,
        )
        part = decrypt_part(from_file, private_key=keys.key, legacy=legacy)
        assert part.content == PAYLOAD


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.binary(max_size=3000),
    mime_type=st.from_regex(
        r"\A[a-z]{1,12}/[a-z0-9.+-]{1,20}(; ?[a-z]{1,8}=[A-Za-z0-9-]{1,12})?\Z"
    ),
    algorithm=st.sampled_from([AES128_GCM, AES192_GCM, AES256_GCM, AES128_CBC, AES256_CBC]),
    transport=st.sampled_from([RSA_OAEP_MGF1P, RSA_OAEP, RSA_1_5]),
)
def test_round_trip_property(
    keys: Keys, payload: bytes, mime_type: str, algorithm: str, transport: str
) -> None:
    document = _encrypt(keys, payload, algorithm, transport, legacy=True, mime_type=mime_type)
    part = decrypt_part(document, private_key=keys.key, legacy=True)
    assert (part.content, part.mime_type, part.content_id) == (payload, mime_type, CID)


# -- the receiver certificate's name ---------------------------------------------------


def _certificate(subject: x509.Name) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_key_name_is_the_java_form_of_the_subject(keys: Keys) -> None:
    subject = keys.cert.subject
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    oin = subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value
    org = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert key_name(keys.cert) == f"CN={cn}, SERIALNUMBER={oin}, O={org}, C=NL"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("Plain Name", "Plain Name"),
        ("Gemeente, Afdeling", '"Gemeente, Afdeling"'),
        (" leading", '" leading"'),
        ("trailing ", '"trailing "'),
        ("two  spaces", '"two  spaces"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("Zoë & Co", "Zoë & Co"),
    ],
)
def test_key_name_quotes_like_java(value: str, written: str) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, "NTRNL-12345678"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Utrecht"),
            x509.NameAttribute(NameOID.COMMON_NAME, value),
        ]
    )
    expected = f"CN={written}, ST=Utrecht, OID.2.5.4.97=NTRNL-12345678, C=NL"
    assert key_name(_certificate(subject)) == expected


# -- choosing and refusing algorithms when sending -----------------------------------


def _envelope(
    algorithm: str, strength: int | None = None, protocol: str = "XMLENC"
) -> DigitalEnvelope:
    return DigitalEnvelope(
        protocol=protocol,
        protocol_version="1.0",
        algorithm=algorithm,
        minimum_strength=strength,
        certificate_id="enc",
        security_details_id=None,
    )


def test_data_algorithm_for_the_cpa() -> None:
    assert data_algorithm_for(_envelope(AES256_GCM, 256)) == AES256_GCM
    assert data_algorithm_for(_envelope(AES128_GCM, 128)) == AES128_GCM
    assert data_algorithm_for(_envelope(AES256_CBC, 256), legacy=True) == AES256_CBC
    refused = [
        (_envelope(AES256_CBC, 256), False),  # legacy without the switch
        (_envelope(TRIPLEDES_CBC), True),  # decrypt only
        (_envelope("http://example.org/rot13"), True),
        (_envelope(AES128_GCM, 256), False),  # weaker than minimumStrength
        (_envelope(AES256_GCM, protocol="S/MIME"), False),
    ]
    for envelope, legacy in refused:
        with pytest.raises(EncryptionError):
            data_algorithm_for(envelope, legacy)


def test_encrypt_refuses_what_is_not_allowed(keys: Keys) -> None:
    cases: list[dict[str, Any]] = [
        {"data_algorithm": AES256_CBC},
        {"data_algorithm": AES256_GCM, "key_transport": RSA_1_5},
        {"data_algorithm": TRIPLEDES_CBC, "legacy": True},
        {"data_algorithm": AES128_GCM, "minimum_strength": 192},
        {"data_algorithm": AES256_GCM, "key_transport": "urn:example:rot13"},
        {"data_algorithm": AES256_GCM, "mime_type": "text/plain\r\nX-Evil: 1"},
        {"data_algorithm": AES256_GCM, "content_id": ""},
    ]
    for case in cases:
        arguments: dict[str, Any] = {
            "content_id": CID,
            "mime_type": "text/plain",
            "recipient_cert": keys.cert,
            **case,
        }
        with pytest.raises(EncryptionError):
            encrypt_part(b"x", **arguments)
    ec_cert = _certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")]))
    with pytest.raises(EncryptionError):
        encrypt_part(
            b"x",
            content_id=CID,
            mime_type="text/plain",
            recipient_cert=ec_cert,
            data_algorithm=AES256_GCM,
        )


# -- refusing what we receive ----------------------------------------------------------


def test_cryptographic_failures_all_look_the_same(keys: Keys) -> None:
    gcm = _encrypt(keys)
    cbc = _encrypt(keys, algorithm=AES256_CBC, transport=RSA_1_5, legacy=True)
    # Changing the second-last block changes the same bits of the last
    # plaintext block: this turns the pad length octet into 0x20, never valid.
    bad_pad = _flip(-17, (16 - len(PAYLOAD) % 16) ^ 0x20)
    failures = {
        "wrong key gcm": _refused(gcm, keys.other_key),
        "wrong key cbc+rsa15": _refused(cbc, keys.other_key, legacy=True),
        "gcm tag": _refused(_rewrite_data(gcm, _flip(-1)), keys.key),
        "gcm ciphertext": _refused(_rewrite_data(gcm, _flip(20)), keys.key),
        "cbc padding": _refused(_rewrite_data(cbc, bad_pad), keys.key, legacy=True),
        "truncated gcm": _refused(_rewrite_data(gcm, lambda d: d[:-3]), keys.key),
        "shorter than iv and tag": _refused(_rewrite_data(gcm, lambda d: d[:20]), keys.key),
        "truncated cbc": _refused(_rewrite_data(cbc, lambda d: d[:-5]), keys.key, legacy=True),
    }
    descriptions = {error.description for error in failures.values()}
    assert len(descriptions) == 1, descriptions
    assert all(error.content_id == CID for error in failures.values())


def test_broken_wrapped_key_fails_like_the_rest(keys: Keys) -> None:
    document = _encrypt(keys, algorithm=AES256_CBC, transport=RSA_1_5, legacy=True)
    root, key_value, _ = _cipher_values(document)
    key_value.text = base64.b64encode(b"\x00\x02" + b"\x11" * 254).decode()
    bad_rsa = _refused(etree.tostring(root), keys.key, legacy=True)
    wrong_key = _refused(document, keys.other_key, legacy=True)
    assert bad_rsa.description == wrong_key.description


def _replace(document: bytes, old: bytes, new: bytes) -> bytes:
    assert old in document
    return document.replace(old, new, 1)


def test_malformed_documents_are_refused(keys: Keys) -> None:
    good = _encrypt(keys)
    body = good.split(b"?>", 1)[1]
    end = b"</xenc:EncryptedData>"
    data_end = b"</xenc:CipherValue></xenc:CipherData>" + end
    key_data = b"<xenc:CipherData><xenc:CipherValue>"
    base64_error = "not valid base64"
    # name: (document, words the description must contain)
    cases = {
        "base64 garbage": (_replace(good, data_end, b"!!!!" + data_end), base64_error),
        "base64 after padding": (_replace(good, data_end, b"AA==AAAA" + data_end), base64_error),
        "truncated base64": (_replace(good, data_end, b"A" + data_end), base64_error),
        "doctype": (b'<!DOCTYPE x [<!ENTITY big "big">]>' + body, "DOCTYPE"),
        "entity": (_replace(good, key_data, key_data + b"&big;"), "not well-formed"),
        "EncryptedData not the root": (b"<two>" + body + body + b"</two>", "not an xenc"),
        "nested EncryptedData": (_replace(good, end, body + end), "only one EncryptedData"),
        "not XML": (b"%PDF-1.7", "not well-formed"),
        "unknown data algorithm": (
            _replace(good, AES256_GCM.encode(), b"urn:example:rot13"),
            "not supported",
        ),
        "unknown key transport": (
            _replace(good, RSA_OAEP_MGF1P.encode(), b"urn:example:rsa"),
            "not supported",
        ),
        # Greedy: from the outer KeyInfo's start to its end, the EncryptedKey's inside.
        "no EncryptedKey": (
            re.sub(rb"<ds:KeyInfo>.*</ds:KeyInfo>", b"", good, flags=re.S),
            "no EncryptedKey",
        ),
        "CipherReference": (
            _replace(good, key_data, b'<xenc:CipherData><xenc:CipherReference URI="http://x/"/>'),
            "CipherReference",
        ),
        "MimeType with a line break": (
            _replace(good, b'MimeType="application/pdf"', b'MimeType="application/pdf&#10;X: 1"'),
            "MimeType",
        ),
        "UTF-16": (body.decode().encode("utf-16"), "UTF-8"),
    }
    for name, (document, words) in cases.items():
        error = _refused(document, keys.key)
        assert words in error.description, (name, error.description)


def test_content_id_is_reported_once_known(keys: Keys) -> None:
    document = _replace(_encrypt(keys), AES256_GCM.encode(), b"urn:example:rot13")
    error = _refused(document, keys.key)
    assert error.content_id == CID
    assert CID in str(error)


def test_legacy_algorithms_need_the_switch(keys: Keys) -> None:
    cbc = _encrypt(keys, algorithm=AES256_CBC, legacy=True)
    rsa15 = _encrypt(keys, transport=RSA_1_5, legacy=True)
    both = _encrypt(keys, algorithm=AES128_CBC, transport=RSA_1_5, legacy=True)
    for document in (cbc, rsa15, both):
        assert "legacy" in _refused(document, keys.key).description
    seen: list[str] = []
    for document in (cbc, rsa15, both):
        assert decrypt_part(document, private_key=keys.key, legacy=True, on_legacy=seen.append)
    assert seen == [AES256_CBC, RSA_1_5, AES128_CBC, RSA_1_5]
    quiet: list[str] = []
    decrypt_part(_encrypt(keys), private_key=keys.key, legacy=True, on_legacy=quiet.append)
    assert quiet == []


def test_weaker_than_minimum_strength_is_refused(keys: Keys) -> None:
    document = _encrypt(keys, algorithm=AES128_GCM)
    assert "256" in _refused(document, keys.key, minimum_strength=256).description
    assert decrypt_part(document, private_key=keys.key, minimum_strength=128).content == PAYLOAD


def test_oversized_input_is_refused_before_parsing(keys: Keys) -> None:
    document = _encrypt(keys)
    error = _refused(document, keys.key, max_bytes=len(document) - 1)
    assert str(len(document)) in error.description
    assert decrypt_part(document, private_key=keys.key, max_bytes=len(document)).content == PAYLOAD


# -- detecting parts that should have been encrypted ---------------------------------


def test_looks_encrypted(keys: Keys) -> None:
    document = _encrypt(keys)
    assert looks_encrypted("application/xml", document)
    assert looks_encrypted("text/xml; charset=UTF-8", document)
    assert looks_encrypted("application/xml", document[: xmlenc.SNIFF_BYTES])
    default_ns = f'<!-- part --><EncryptedData xmlns="{XENC_NS}" Id="x">'.encode()
    assert looks_encrypted("application/xml", b"\xef\xbb\xbf" + default_ns)
    assert not looks_encrypted("application/pdf", document)
    assert not looks_encrypted(None, document)
    assert not looks_encrypted("application/xml", b'<?xml version="1.0"?><Bericht/>')
    assert not looks_encrypted("application/xml", b'<x:EncryptedData xmlns:x="urn:other"/>')
    assert not looks_encrypted("application/xml", b"<Bericht><EncryptedData/></Bericht>")
