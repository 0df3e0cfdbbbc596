"""XML Encryption of ebMS payload parts for the Digikoppeling "-e" profiles.

Wire format (docs/security.md, the ebms-core interop baseline): every payload
part is replaced by a part with the same Content-ID and ``Content-Type:
application/xml`` whose body is one ``xenc:EncryptedData`` with
``Type=".../xmlenc#Element"``, ``Id`` = the Content-ID and ``MimeType`` = the
original content type.  Its ``ds:KeyInfo`` holds one ``xenc:EncryptedKey`` (the
random data key, wrapped with the receiver's RSA key from the CPA) whose own
``ds:KeyInfo/ds:KeyName`` is the receiver certificate's subject DN written the
way Java writes it (older ebms-core versions compare that string).

Algorithms [DK ENC001-ENC004]: AES-GCM data encryption and RSA-OAEP key
transport.  AES-CBC, 3DES-CBC (decrypt only) and RSA PKCS#1 v1.5 key transport
are what ebms-core and the Compliance Voorziening's model CPA still use, so they
are available behind an explicit ``legacy`` switch (docs/security.md).

Memory: the ciphertext travels base64-encoded inside XML, so an encrypted part is
about 4/3 of the plaintext.  :func:`write_encrypted_part` reads the plaintext and
writes the document in chunks, so its memory use does not grow with the part;
:func:`encrypt_part` collects that output in memory.  :func:`decrypt_part` takes
the document as bytes (capped by ``max_bytes``) and decodes and decrypts the
ciphertext while the parser reads it: no second copy of the base64 text or of
the ciphertext is made, so the peak is the input plus the plaintext (twice for
a moment at the end, when it is handed over as ``bytes``).

Parsing follows the rules of :mod:`xmlsafe` (no DTD, no entities, no
network, bounded size) but cannot call :func:`xmlsafe.parse_xml`: with
``huge_tree`` off libxml2 refuses a text node above 10 MB, and the base64 text of
a 20 MiB Digikoppeling payload (Koppelvlakstandaard ebMS2) is larger than that.  An lxml
parser *target* receives the text in pieces instead of building a tree, which
lifts that limit without switching off the others.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import (
    AEADDecryptionContext,
    Cipher,
    CipherContext,
    algorithms,
    modes,
)
from lxml import etree

from cpa.model import DigitalEnvelope
from gateway.ebms.model import DS_NS, ErrorCode

XENC_NS = "http://www.w3.org/2001/04/xmlenc#"
XENC11_NS = "http://www.w3.org/2009/xmlenc11#"

#: ``EncryptedData/@Type`` as ebms-core writes it (docs/security.md).
TYPE_ELEMENT = XENC_NS + "Element"

AES128_GCM = XENC11_NS + "aes128-gcm"
AES192_GCM = XENC11_NS + "aes192-gcm"
AES256_GCM = XENC11_NS + "aes256-gcm"
AES128_CBC = XENC_NS + "aes128-cbc"
AES192_CBC = XENC_NS + "aes192-cbc"
AES256_CBC = XENC_NS + "aes256-cbc"
TRIPLEDES_CBC = XENC_NS + "tripledes-cbc"

RSA_OAEP_MGF1P = XENC_NS + "rsa-oaep-mgf1p"
RSA_OAEP = XENC11_NS + "rsa-oaep"
RSA_1_5 = XENC_NS + "rsa-1_5"

#: Content-Type of a part after encryption (docs/security.md).
ENCRYPTED_CONTENT_TYPE = "application/xml"

#: Default ceiling for one encrypted part.  A 20 MiB payload, above which
#: Digikoppeling asks for Grote Berichten (Koppelvlakstandaard ebMS2), becomes about
#: 27 MiB of base64 with line breaks; the rest is headroom.
DEFAULT_MAX_ENCRYPTED_BYTES = 32 * 1024 * 1024

#: How much of a part's body :func:`looks_encrypted` wants to see.
SNIFF_BYTES = 4096

# Plaintext is read in chunks of this many bytes.  A multiple of 57 keeps every
# chunk's base64 in whole 76-character lines (RFC 2045 §6.8), as
# base64.encodebytes writes them.
_CHUNK = 57 * 1152

# One description for every failure of the cryptography itself (wrong key, bad
# padding, bad tag, short ciphertext), so that an error message never tells a
# sender which of them it hit (padding-oracle style attacks).
_UNDECRYPTABLE = "the encrypted part could not be decrypted"

_SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
_DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    _SHA1: hashes.SHA1,
    "http://www.w3.org/2001/04/xmldsig-more#sha224": hashes.SHA224,
    _SHA256: hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashes.SHA384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashes.SHA512,
}
_MGF1_SHA1 = XENC11_NS + "mgf1sha1"
_MGF1_SHA256 = XENC11_NS + "mgf1sha256"
_MGFS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    _MGF1_SHA1: hashes.SHA1,
    XENC11_NS + "mgf1sha224": hashes.SHA224,
    _MGF1_SHA256: hashes.SHA256,
    XENC11_NS + "mgf1sha384": hashes.SHA384,
    XENC11_NS + "mgf1sha512": hashes.SHA512,
}

# What may go into a MIME header value: printable ASCII, no line breaks, and
# no longer than a header line (RFC 5322 §2.1.1).
_HEADER_VALUE = re.compile(r"^[!-~][ -~]{0,900}$")
_XML_MEDIA_TYPE = re.compile(r"^\s*(application|text)/([\w.+-]+\+)?xml\s*(;.*)?$", re.I | re.S)


class EncryptionError(ValueError):
    """A payload cannot be encrypted as asked (algorithm not allowed, unusable input)."""


class DecryptionError(ValueError):
    """An encrypted part was refused.

    Always an ebMS ``SecurityFailure`` (docs/security.md); the caller reports
    it at ``cid:<content-id>``.  ``content_id`` is the ``EncryptedData/@Id`` when
    the document got far enough to show it.
    """

    code = ErrorCode.SECURITY_FAILURE

    def __init__(self, description: str, content_id: str | None = None) -> None:
        super().__init__(description if content_id is None else f"{content_id}: {description}")
        self.description = description
        self.content_id = content_id


@dataclass(frozen=True)
class DataAlgorithm:
    """A data encryption algorithm of XML Encryption (1.0 §5.2, 1.1 §5.2.4)."""

    uri: str
    mode: Literal["gcm", "cbc"]
    key_size: int
    """Key length in bytes."""
    strength: int
    """Security strength in bits, compared with the CPA's ``minimumStrength``."""
    legacy: bool
    """Only with the legacy switch: not allowed by DK ENC001-ENC003."""
    decrypt_only: bool = False


#: Every data algorithm this module knows.
DATA_ALGORITHMS: dict[str, DataAlgorithm] = {
    a.uri: a
    for a in (
        DataAlgorithm(AES128_GCM, "gcm", 16, 128, legacy=False),
        DataAlgorithm(AES192_GCM, "gcm", 24, 192, legacy=False),
        DataAlgorithm(AES256_GCM, "gcm", 32, 256, legacy=False),
        DataAlgorithm(AES128_CBC, "cbc", 16, 128, legacy=True),
        DataAlgorithm(AES192_CBC, "cbc", 24, 192, legacy=True),
        DataAlgorithm(AES256_CBC, "cbc", 32, 256, legacy=True),
        # Three-key 3DES offers 112 bits of security (NIST SP 800-57 part 1).
        DataAlgorithm(TRIPLEDES_CBC, "cbc", 24, 112, legacy=True, decrypt_only=True),
    )
}

#: Key transport algorithms, mapped to whether they are legacy.  RSA v1.5 is
#: what ebms-core sends but DK ENC004 asks for RSA-OAEP (docs/security.md).
KEY_TRANSPORTS: dict[str, bool] = {RSA_OAEP_MGF1P: False, RSA_OAEP: False, RSA_1_5: True}


@dataclass(frozen=True)
class DecryptedPart:
    """The plaintext of an encrypted part and what the document said about it."""

    content: bytes
    mime_type: str | None
    """``EncryptedData/@MimeType``: the part's original Content-Type."""
    algorithm: str
    key_transport: str
    content_id: str | None = None
    """``EncryptedData/@Id``: ebms-core puts the part's Content-ID there."""
    key_name: str | None = None
    """``EncryptedKey/ds:KeyInfo/ds:KeyName``: the certificate the sender meant."""


# -- choosing algorithms -------------------------------------------------------------


def data_algorithm_for(envelope: DigitalEnvelope, legacy: bool = False) -> str:
    """The data encryption algorithm to send with, from the receiver's CPA envelope.

    Raises :class:`EncryptionError` when the CPA asks for another protocol than
    XMLENC, an unknown or decrypt-only algorithm, a legacy one without
    ``legacy``, or an algorithm weaker than its own ``minimumStrength``.
    """
    protocol = envelope.protocol.strip()
    if protocol and protocol.upper() != "XMLENC":
        raise EncryptionError(f"digital envelope protocol {protocol!r} is not supported")
    _data_algorithm(
        envelope.algorithm,
        legacy=legacy,
        minimum_strength=envelope.minimum_strength,
        encrypting=True,
    )
    return envelope.algorithm


def _data_algorithm(
    uri: str, *, legacy: bool, minimum_strength: int | None, encrypting: bool
) -> DataAlgorithm:
    algorithm = DATA_ALGORITHMS.get(uri)
    if algorithm is None:
        raise EncryptionError(f"data encryption algorithm {uri!r} is not supported")
    if encrypting and algorithm.decrypt_only:
        raise EncryptionError(f"{uri} is accepted on receipt only, never sent")
    if algorithm.legacy and not legacy:
        raise EncryptionError(f"{uri} is a legacy algorithm and legacy algorithms are off")
    if minimum_strength is not None and algorithm.strength < minimum_strength:
        raise EncryptionError(
            f"{uri} offers {algorithm.strength} bits, the CPA asks for {minimum_strength}"
        )
    return algorithm


def _check_key_transport(uri: str, *, legacy: bool) -> None:
    if uri not in KEY_TRANSPORTS:
        raise EncryptionError(f"key transport algorithm {uri!r} is not supported")
    if KEY_TRANSPORTS[uri] and not legacy:
        raise EncryptionError(f"{uri} is a legacy algorithm and legacy algorithms are off")


# -- the receiver certificate's name -------------------------------------------------

# Java's keywords for X500Name.toString() (sun.security.x509.AVA, DEFAULT format);
# any other attribute is written as OID.<dotted>.
_JAVA_KEYWORDS = {
    "2.5.4.3": "CN",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "T",
    "2.5.4.9": "STREET",
    "0.9.2342.19200300.100.1.25": "DC",
    "2.5.4.46": "DNQ",
    "2.5.4.4": "SURNAME",
    "2.5.4.42": "GIVENNAME",
    "2.5.4.43": "INITIALS",
    "2.5.4.44": "GENERATION",
    "1.2.840.113549.1.9.1": "EMAILADDRESS",
    "0.9.2342.19200300.100.1.1": "UID",
    "2.5.4.5": "SERIALNUMBER",
    "1.3.6.1.4.1.42.2.11.2.1": "IP",
}
_JAVA_PRINTABLE = frozenset(string.ascii_letters + string.digits + " '()+,-./:=?")
_JAVA_SPECIAL = frozenset(',+=\n<>#;\\"')


def _java_value(value: str) -> str:
    # Java quotes the whole value (instead of escaping characters as RFC 4514
    # does) when it holds a special character, leading or trailing white space
    # or a run of white space; inside the quotes '"' and '\' get a backslash.
    already_quoted = len(value) > 1 and value[0] == value[-1] == '"'
    quote = False
    previous_white = False
    out: list[str] = []
    for i, c in enumerate(value):
        if already_quoted and i in (0, len(value) - 1):
            out.append(c)
            continue
        white = c in " \n"
        if c in _JAVA_PRINTABLE or c in _JAVA_SPECIAL:
            if (i == 0 and white) or c in _JAVA_SPECIAL or (white and previous_white):
                quote = True
            if c in '"\\':
                out.append("\\")
            previous_white = white
        else:
            previous_white = False
        out.append(c)
    text = "".join(out)
    if text[-1:] in (" ", "\n"):
        quote = True
    return f'"{text}"' if quote and not already_quoted else text


def key_name(certificate: x509.Certificate) -> str:
    """The certificate's subject DN as Java's ``X500Name.toString()`` writes it.

    ebms-core puts ``getSubjectDN().getName()`` in ``ds:KeyName`` and its older
    releases refuse a part whose KeyName is not exactly that string
    (``EbMSMessageEncrypter.setEncryptedData``): most specific RDN first,
    ``", "`` between RDNs, Java's keywords (``SERIALNUMBER``, ``ST``,
    ``OID.2.5.4.97``) and Java's quoting.
    """
    rdns: list[str] = []
    for rdn in reversed(certificate.subject.rdns):
        avas: list[str] = []
        for attribute in rdn:
            oid = attribute.oid.dotted_string
            if not isinstance(attribute.value, str):
                # Only bit-string attributes get here; Java prints their DER in
                # hex, which is no use for matching, so fall back to RFC 4514.
                avas.append(attribute.rfc4514_string())
                continue
            keyword = _JAVA_KEYWORDS.get(oid, f"OID.{oid}")
            avas.append(f"{keyword}={_java_value(attribute.value)}")
        rdns.append(" + ".join(avas))
    return ", ".join(rdns)


# -- encryption ----------------------------------------------------------------------


def encrypt_part(
    content: bytes | IO[bytes],
    *,
    content_id: str,
    mime_type: str,
    recipient_cert: x509.Certificate,
    data_algorithm: str,
    key_transport: str = RSA_OAEP_MGF1P,
    legacy: bool = False,
    minimum_strength: int | None = None,
) -> bytes:
    """Encrypt one payload part into an ``xenc:EncryptedData`` document.

    The result is the new body of the part, whose Content-Type becomes
    :data:`ENCRYPTED_CONTENT_TYPE` and whose Content-ID stays the same.  The
    whole document is held in memory; :func:`write_encrypted_part` writes it
    to a file instead.  Raises :class:`EncryptionError`.
    """
    out = io.BytesIO()
    write_encrypted_part(
        content,
        out,
        content_id=content_id,
        mime_type=mime_type,
        recipient_cert=recipient_cert,
        data_algorithm=data_algorithm,
        key_transport=key_transport,
        legacy=legacy,
        minimum_strength=minimum_strength,
    )
    return out.getvalue()


def write_encrypted_part(
    content: bytes | IO[bytes],
    out: IO[bytes],
    *,
    content_id: str,
    mime_type: str,
    recipient_cert: x509.Certificate,
    data_algorithm: str,
    key_transport: str = RSA_OAEP_MGF1P,
    legacy: bool = False,
    minimum_strength: int | None = None,
) -> int:
    """Like :func:`encrypt_part`, but write the document to ``out`` in chunks.

    A file ``content`` is read from its current position in chunks, so memory
    use does not depend on the part's size.  Returns the bytes written.
    """
    algorithm = _data_algorithm(
        data_algorithm, legacy=legacy, minimum_strength=minimum_strength, encrypting=True
    )
    _check_key_transport(key_transport, legacy=legacy)
    for value, what in ((content_id, "content_id"), (mime_type, "mime_type")):
        if not _HEADER_VALUE.match(value):
            raise EncryptionError(f"{what} must be printable ASCII without line breaks")
    public_key = recipient_cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise EncryptionError("the encryption certificate does not hold an RSA key")

    key = os.urandom(algorithm.key_size)
    digest, mgf = _SEND_DIGESTS.get(key_transport, (_SHA1, _MGF1_SHA1))
    wrapped = public_key.encrypt(key, _key_transport_padding(key_transport, digest, mgf))
    marker = "CIPHER-VALUE-GOES-HERE"
    document = _skeleton(
        content_id, mime_type, algorithm.uri, key_transport, recipient_cert, wrapped, marker
    )
    # The data CipherValue is the document's last text, so its marker is the
    # last occurrence even if an attribute happened to contain the same text.
    head, _, tail = document.rpartition(marker.encode("ascii"))
    written = out.write(head)
    pending = b""
    for ciphertext in _encrypt_chunks(algorithm, key, _read_chunks(content)):
        pending += ciphertext
        whole = len(pending) - len(pending) % 57
        if whole:
            written += out.write(base64.encodebytes(pending[:whole]))
            pending = pending[whole:]
    if pending:
        written += out.write(base64.encodebytes(pending))
    written += out.write(tail)
    return written


# DigestMethod and MGF written for each OAEP variant: rsa-oaep-mgf1p keeps its
# SHA-1 default, which every XML Encryption 1.0 implementation supports;
# xmlenc11 rsa-oaep gets SHA-256 for both.
_SEND_DIGESTS = {RSA_OAEP_MGF1P: (_SHA1, _MGF1_SHA1), RSA_OAEP: (_SHA256, _MGF1_SHA256)}


def _key_transport_padding(
    uri: str, digest: str, mgf: str, label: bytes | None = None
) -> padding.AsymmetricPadding:
    """RSA padding for ``uri``; ``digest`` and ``mgf`` matter for OAEP only."""
    if uri == RSA_1_5:
        return padding.PKCS1v15()
    # rsa-oaep-mgf1p fixes the mask generation function to MGF1 with SHA-1
    # (XML Encryption §5.4.2); only xmlenc11 rsa-oaep may name another.
    mgf_hash = _MGFS[_MGF1_SHA1 if uri == RSA_OAEP_MGF1P else mgf]()
    return padding.OAEP(mgf=padding.MGF1(mgf_hash), algorithm=_DIGESTS[digest](), label=label)


def _skeleton(
    content_id: str,
    mime_type: str,
    data_algorithm: str,
    key_transport: str,
    recipient_cert: x509.Certificate,
    wrapped: bytes,
    marker: str,
) -> bytes:
    nsmap = {"xenc": XENC_NS, "ds": DS_NS}
    if key_transport == RSA_OAEP:
        nsmap["xenc11"] = XENC11_NS
    root = etree.Element(f"{{{XENC_NS}}}EncryptedData", nsmap=nsmap)
    root.set("Id", content_id)
    root.set("MimeType", mime_type)
    root.set("Type", TYPE_ELEMENT)
    etree.SubElement(root, f"{{{XENC_NS}}}EncryptionMethod", Algorithm=data_algorithm)
    key_info = etree.SubElement(root, f"{{{DS_NS}}}KeyInfo")
    encrypted_key = etree.SubElement(key_info, f"{{{XENC_NS}}}EncryptedKey")
    method = etree.SubElement(encrypted_key, f"{{{XENC_NS}}}EncryptionMethod")
    method.set("Algorithm", key_transport)
    if key_transport in _SEND_DIGESTS:
        digest, mgf = _SEND_DIGESTS[key_transport]
        # SHA-1 is rsa-oaep-mgf1p's default; naming it spares the reader a guess.
        etree.SubElement(method, f"{{{DS_NS}}}DigestMethod", Algorithm=digest)
        if key_transport == RSA_OAEP:
            etree.SubElement(method, f"{{{XENC11_NS}}}MGF", Algorithm=mgf)
    recipient = etree.SubElement(encrypted_key, f"{{{DS_NS}}}KeyInfo")
    etree.SubElement(recipient, f"{{{DS_NS}}}KeyName").text = key_name(recipient_cert)
    # The issuer and serial name the certificate without the ambiguity of a
    # DN string; ebms-core reads only the KeyName and ignores the rest.
    issuer_serial = etree.SubElement(
        etree.SubElement(recipient, f"{{{DS_NS}}}X509Data"), f"{{{DS_NS}}}X509IssuerSerial"
    )
    etree.SubElement(
        issuer_serial, f"{{{DS_NS}}}X509IssuerName"
    ).text = recipient_cert.issuer.rfc4514_string()
    etree.SubElement(issuer_serial, f"{{{DS_NS}}}X509SerialNumber").text = str(
        recipient_cert.serial_number
    )
    key_data = etree.SubElement(encrypted_key, f"{{{XENC_NS}}}CipherData")
    etree.SubElement(key_data, f"{{{XENC_NS}}}CipherValue").text = base64.b64encode(wrapped).decode(
        "ascii"
    )
    data = etree.SubElement(root, f"{{{XENC_NS}}}CipherData")
    etree.SubElement(data, f"{{{XENC_NS}}}CipherValue").text = marker
    out: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return out


def _read_chunks(content: bytes | IO[bytes]) -> Iterator[bytes]:
    if isinstance(content, bytes | bytearray | memoryview):
        view = memoryview(content)
        for start in range(0, len(view), _CHUNK):
            yield bytes(view[start : start + _CHUNK])
        return
    while chunk := content.read(_CHUNK):
        yield chunk


def _encrypt_chunks(
    algorithm: DataAlgorithm, key: bytes, plain: Iterator[bytes]
) -> Iterator[bytes]:
    if algorithm.mode == "gcm":
        # XML Encryption 1.1 §5.2.4: a 96-bit IV before the ciphertext and the
        # 128-bit authentication tag after it.
        iv = os.urandom(12)
        gcm = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
        yield iv
        for chunk in plain:
            yield gcm.update(chunk)
        yield gcm.finalize()
        yield gcm.tag
        return
    # XML Encryption §5.2.1: the IV before the ciphertext and the plaintext
    # padded to whole blocks with arbitrary octets and a final length octet
    # (ISO 10126 style); the padding is always present, 1 to 16 octets.
    iv = os.urandom(16)
    cbc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    yield iv
    length = 0
    for chunk in plain:
        length += len(chunk)
        yield cbc.update(chunk)
    pad = 16 - length % 16
    yield cbc.update(os.urandom(pad - 1) + bytes([pad]))
    yield cbc.finalize()


# -- decryption ----------------------------------------------------------------------


def decrypt_part(
    data: bytes,
    *,
    private_key: rsa.RSAPrivateKey,
    legacy: bool = False,
    on_legacy: Callable[[str], None] | None = None,
    minimum_strength: int | None = None,
    max_bytes: int = DEFAULT_MAX_ENCRYPTED_BYTES,
) -> DecryptedPart:
    """Decrypt the ``xenc:EncryptedData`` document ``data`` with ``private_key``.

    The document must hold exactly one EncryptedData (its root) with one
    EncryptedKey and inline CipherValues.  Legacy algorithms (AES-CBC,
    3DES-CBC, RSA v1.5) are refused unless ``legacy`` is set; each accepted one
    is reported to ``on_legacy`` so that the caller can log a warning.  Every
    failure raises :class:`DecryptionError`; failures of the cryptography
    itself all carry the same description.
    """
    if len(data) > max_bytes:
        raise DecryptionError(f"encrypted part is {len(data)} bytes, the limit is {max_bytes}")
    # xmlsafe's rule: a document with a DTD is refused, not parsed
    # carefully.  Base64 and the EncryptedData vocabulary never contain "<!".
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DecryptionError("a DOCTYPE is not allowed")
    if data.startswith((b"\xfe\xff", b"\xff\xfe")) or b"\x00" in data[:4]:
        raise DecryptionError("only UTF-8 documents are accepted")
    reader = _Reader(
        private_key, legacy=legacy, on_legacy=on_legacy, minimum_strength=minimum_strength
    )
    parser = etree.XMLParser(
        target=reader,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
    )
    try:
        etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise DecryptionError(f"not well-formed XML: {exc.msg}", reader.content_id) from None
    return reader.result()


_ED = f"{{{XENC_NS}}}EncryptedData"
_EK = f"{{{XENC_NS}}}EncryptedKey"
_EM = f"{{{XENC_NS}}}EncryptionMethod"
_KI = f"{{{DS_NS}}}KeyInfo"
_CD = f"{{{XENC_NS}}}CipherData"
_CV = f"{{{XENC_NS}}}CipherValue"
_CIPHER_REFERENCE = f"{{{XENC_NS}}}CipherReference"
_DATA_VALUE = (_ED, _CD, _CV)
_KEY_METHOD = (_ED, _KI, _EK, _EM)
_KEY_VALUE = (_ED, _KI, _EK, _CD, _CV)
_KEY_NAME = (_ED, _KI, _EK, _KI, f"{{{DS_NS}}}KeyName")
_OAEP_PARAMS = (*_KEY_METHOD, f"{{{XENC_NS}}}OAEPparams")
_DIGEST_METHOD = (*_KEY_METHOD, f"{{{DS_NS}}}DigestMethod")
_MGF = (*_KEY_METHOD, f"{{{XENC11_NS}}}MGF")
#: Elements that may occur once; a repeat is refused rather than guessed at.
_UNIQUE = frozenset(
    {
        (_ED,),
        (_ED, _EM),
        (_ED, _KI),
        (_ED, _KI, _EK),
        _KEY_METHOD,
        _DIGEST_METHOD,
        _MGF,
        _OAEP_PARAMS,
        (_ED, _KI, _EK, _CD),
        _KEY_VALUE,
        (_ED, _CD),
        _DATA_VALUE,
    }
)
#: Small texts that are kept; each is capped at :data:`_SMALL_TEXT` characters.
_COLLECTED = frozenset({_KEY_VALUE, _KEY_NAME, _OAEP_PARAMS})
_SMALL_TEXT = 16 * 1024


class _Reader:
    """lxml parser target: checks the document's shape and decrypts as it reads.

    The schema puts EncryptionMethod and KeyInfo before CipherData (XML
    Encryption §3.1), so by the time the data CipherValue starts everything
    needed to decrypt it is known.
    """

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey,
        *,
        legacy: bool,
        on_legacy: Callable[[str], None] | None,
        minimum_strength: int | None,
    ) -> None:
        self._private_key = private_key
        self._legacy = legacy
        self._on_legacy = on_legacy
        self._minimum_strength = minimum_strength
        self._path: list[str] = []
        self._seen: set[tuple[str, ...]] = set()
        self._attributes: dict[tuple[str, ...], dict[str, str]] = {}
        self._texts: dict[tuple[str, ...], list[str]] = {}
        self._text_sizes: dict[tuple[str, ...], int] = {}
        self._closed_texts: set[tuple[str, ...]] = set()
        self._decoder = _Base64Decoder()
        self._decryptor: _Decryptor | None = None
        self._data_algorithm = ""
        self._key_transport = ""
        self.content_id: str | None = None

    def _fail(self, description: str) -> DecryptionError:
        return DecryptionError(description, self.content_id)

    def start(self, tag: str, attrib: dict[str, str], nsmap: object = None) -> None:
        if tag == _ED and self._path:
            raise self._fail("a part may hold only one EncryptedData")
        if not self._path and tag != _ED:
            raise self._fail("the part is not an xenc:EncryptedData document")
        if tag == _CIPHER_REFERENCE:
            raise self._fail("CipherReference is not supported, only CipherValue")
        self._path.append(tag)
        path = tuple(self._path)
        if path in self._seen and path in _UNIQUE:
            raise self._fail(f"more than one {etree.QName(tag).localname} in one place")
        self._seen.add(path)
        if path in _UNIQUE:
            self._attributes[path] = dict(attrib)
        if path == (_ED,):
            self.content_id = attrib.get("Id")
            if "Encoding" in attrib:
                raise self._fail("EncryptedData/@Encoding is not supported")
            mime_type = attrib.get("MimeType")
            if mime_type is not None and not _HEADER_VALUE.match(mime_type):
                # It becomes a MIME header again: no line breaks or control characters.
                raise self._fail("EncryptedData/@MimeType is not a valid media type")
        elif path == _DATA_VALUE:
            self._decryptor = self._start_decryption()

    def end(self, tag: str) -> None:
        path = tuple(self._path)
        if path in self._texts:
            # A second KeyName (or any repeat) does not add to the first.
            self._closed_texts.add(path)
        self._path.pop()

    def data(self, text: str) -> None:
        path = tuple(self._path)
        if path == _DATA_VALUE:
            assert self._decryptor is not None
            self._decryptor.update(self._decoder.feed(text, self._fail))
        elif path in _COLLECTED and path not in self._closed_texts:
            size = self._text_sizes.get(path, 0) + len(text)
            if size > _SMALL_TEXT:
                raise self._fail(f"{etree.QName(path[-1]).localname} is too long")
            self._text_sizes[path] = size
            self._texts.setdefault(path, []).append(text)

    def close(self) -> None:
        """Nothing to hand back: :meth:`result` does the final checks."""

    def _text(self, path: tuple[str, ...]) -> str | None:
        parts = self._texts.get(path)
        return "".join(parts) if parts is not None else None

    def _algorithm(self, path: tuple[str, ...], what: str) -> str:
        uri = self._attributes.get(path, {}).get("Algorithm")
        if not uri:
            raise self._fail(f"the {what} EncryptionMethod is missing")
        return uri

    def _accept(self, uri: str, legacy: bool) -> None:
        if legacy and self._on_legacy is not None:
            self._on_legacy(uri)

    def _start_decryption(self) -> _Decryptor:
        self._data_algorithm = self._algorithm((_ED, _EM), "data")
        if (_ED, _KI, _EK) not in self._seen:
            raise self._fail("no EncryptedKey precedes the CipherData")
        self._key_transport = self._algorithm(_KEY_METHOD, "key transport")
        try:
            algorithm = _data_algorithm(
                self._data_algorithm,
                legacy=self._legacy,
                minimum_strength=self._minimum_strength,
                encrypting=False,
            )
            _check_key_transport(self._key_transport, legacy=self._legacy)
        except EncryptionError as exc:
            raise self._fail(str(exc)) from None
        key_padding = self._key_padding()
        wrapped_text = self._text(_KEY_VALUE)
        if wrapped_text is None:
            raise self._fail("the EncryptedKey has no CipherValue")
        wrapped = _Base64Decoder().decode_all(wrapped_text, self._fail)
        self._accept(algorithm.uri, algorithm.legacy)
        self._accept(self._key_transport, KEY_TRANSPORTS[self._key_transport])
        return _Decryptor(algorithm, *self._unwrap(wrapped, key_padding, algorithm.key_size))

    def _key_padding(self) -> padding.AsymmetricPadding:
        digest = self._attributes.get(_DIGEST_METHOD, {})
        mgf = self._attributes.get(_MGF, {})
        digest_uri = digest.get("Algorithm", _SHA1)
        mgf_uri = mgf.get("Algorithm", _MGF1_SHA1)
        if digest_uri not in _DIGESTS:
            raise self._fail(f"OAEP digest {digest_uri!r} is not supported")
        if mgf_uri not in _MGFS:
            raise self._fail(f"OAEP mask generation function {mgf_uri!r} is not supported")
        params = self._text(_OAEP_PARAMS)
        label = _Base64Decoder().decode_all(params, self._fail) if params else None
        return _key_transport_padding(self._key_transport, digest_uri, mgf_uri, label)

    def _unwrap(
        self, wrapped: bytes, key_padding: padding.AsymmetricPadding, size: int
    ) -> tuple[bytes, bool]:
        """The data key, and whether it is the one the sender wrapped."""
        try:
            key = self._private_key.decrypt(wrapped, key_padding)
        except ValueError:
            key = b""
        if len(key) == size:
            return key, True
        # Go on with a random key and fail only after decrypting the data, so
        # that a bad RSA block fails at the same point and with the same words
        # as a bad tag or bad padding (Bleichenbacher-style oracles).  The flag
        # makes the failure certain: CBC has no integrity of its own and would
        # accept one random key in sixteen.
        return os.urandom(size), False

    def result(self) -> DecryptedPart:
        """Finish decrypting and return the part, or raise :class:`DecryptionError`."""
        if self._decryptor is None:
            raise self._fail("the EncryptedData has no CipherData/CipherValue")
        self._decoder.finish(self._fail)
        content = self._decryptor.finish(self._fail)
        name = self._text(_KEY_NAME)
        return DecryptedPart(
            content=content,
            mime_type=self._attributes[(_ED,)].get("MimeType"),
            algorithm=self._data_algorithm,
            key_transport=self._key_transport,
            content_id=self.content_id,
            key_name=name.strip() if name is not None else None,
        )


_Fail = Callable[[str], DecryptionError]
_WHITE_SPACE = b" \t\r\n"


class _Base64Decoder:
    """Strict base64 (xs:base64Binary) decoding of text that arrives in pieces."""

    def __init__(self) -> None:
        self._carry = b""
        self._ended = False

    def feed(self, text: str, fail: _Fail) -> bytes:
        try:
            raw = text.encode("ascii").translate(None, _WHITE_SPACE)
        except UnicodeEncodeError:
            raise fail("CipherValue is not valid base64") from None
        if not raw:
            return b""
        if self._ended:
            raise fail("CipherValue is not valid base64")
        raw = self._carry + raw
        whole = len(raw) - len(raw) % 4
        self._carry = raw[whole:]
        if b"=" in raw[:whole]:
            # Padding closes the value: nothing may follow it.
            self._ended = True
            if self._carry:
                raise fail("CipherValue is not valid base64")
        try:
            return binascii.a2b_base64(raw[:whole], strict_mode=True)
        except binascii.Error:
            raise fail("CipherValue is not valid base64") from None

    def finish(self, fail: _Fail) -> None:
        if self._carry:
            raise fail("CipherValue is not valid base64")

    def decode_all(self, text: str, fail: _Fail) -> bytes:
        out = self.feed(text, fail)
        self.finish(fail)
        return out


class _Decryptor:
    """Decrypts ciphertext as it arrives; output is released only by :meth:`finish`."""

    def __init__(self, algorithm: DataAlgorithm, key: bytes, key_ok: bool) -> None:
        self._algorithm = algorithm
        self._key = key
        self._key_ok = key_ok
        self._gcm = algorithm.mode == "gcm"
        self._iv_size = 12 if self._gcm else (8 if algorithm.uri == TRIPLEDES_CBC else 16)
        # GCM's last 16 octets are the tag, not ciphertext: hold them back.
        self._held_back = 16 if self._gcm else 0
        self._pending = b""
        self._cipher: CipherContext | None = None
        self._plain = bytearray()

    def update(self, data: bytes) -> None:
        if not data:
            return
        self._pending += data
        if self._cipher is None:
            if len(self._pending) < self._iv_size:
                return
            iv, self._pending = self._pending[: self._iv_size], self._pending[self._iv_size :]
            self._cipher = self._new_cipher(iv)
        usable = len(self._pending) - self._held_back
        if usable > 0:
            self._plain += self._cipher.update(self._pending[:usable])
            self._pending = self._pending[usable:]

    def _new_cipher(self, iv: bytes) -> CipherContext:
        if self._gcm:
            return Cipher(algorithms.AES(self._key), modes.GCM(iv)).decryptor()
        if self._algorithm.uri == TRIPLEDES_CBC:
            return Cipher(TripleDES(self._key), modes.CBC(iv)).decryptor()
        return Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()

    def finish(self, fail: _Fail) -> bytes:
        try:
            plain = self._finish()
        except (ValueError, InvalidTag):
            plain = None
        if plain is None or not self._key_ok:
            self._plain.clear()
            raise fail(_UNDECRYPTABLE)
        return plain

    def _finish(self) -> bytes | None:
        if self._cipher is None or len(self._pending) != self._held_back:
            return None
        if self._gcm:
            assert isinstance(self._cipher, AEADDecryptionContext)
            self._plain += self._cipher.finalize_with_tag(self._pending)
            return bytes(self._plain)
        self._plain += self._cipher.finalize()
        block = self._iv_size
        pad = self._plain[-1] if self._plain else 0
        # XML Encryption §5.2: only the last octet (the pad length) is
        # meaningful; the other padding octets may hold anything.
        if not 1 <= pad <= block or len(self._plain) % block:
            return None
        del self._plain[-pad:]
        return bytes(self._plain)


# -- detecting unencrypted parts -----------------------------------------------------

_PROLOG = re.compile(rb"(?:\s+|<\?.*?\?>|<!--.*?-->)*", re.S)
_ROOT = re.compile(rb"<(?:([A-Za-z_][\w.-]*):)?EncryptedData[\s/>]")


def looks_encrypted(content_type: str | None, body_prefix: bytes) -> bool:
    """Whether a received part looks like an ``xenc:EncryptedData`` document.

    For the receiver of an "-e" profile: a payload that is not encrypted when
    the CPA says it must be is a ``SecurityFailure`` at ``cid:<id>``, as in
    ebms-core's ``EbMSMessageDecrypter`` (docs/security.md, "Receiving").
    ``content_type`` must be an XML media type and ``body_prefix`` (the first
    :data:`SNIFF_BYTES` of the body, or all of it)
    must start, after an XML declaration, comments and white space, with an
    ``EncryptedData`` element in the XML Encryption namespace.  This is a
    quick check; :func:`decrypt_part` is the real one.
    """
    if content_type is None or not _XML_MEDIA_TYPE.match(content_type):
        return False
    prefix = body_prefix[:SNIFF_BYTES]
    if prefix.startswith(b"\xef\xbb\xbf"):
        prefix = prefix[3:]
    prolog = _PROLOG.match(prefix)
    start = prolog.end() if prolog else 0
    root = _ROOT.match(prefix, start)
    if root is None:
        return False
    end = prefix.find(b">", root.start())
    start_tag = prefix[root.start() : end if end >= 0 else len(prefix)]
    namespace = re.escape(XENC_NS.encode("ascii"))
    declaration = rb"xmlns:" + re.escape(root.group(1)) if root.group(1) else rb"xmlns"
    return re.search(declaration + rb"\s*=\s*[\"']" + namespace + rb"[\"']", start_tag) is not None
