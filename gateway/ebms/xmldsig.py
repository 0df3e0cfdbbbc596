"""XML Signature of ebMS 2.0 messages, strictly as Digikoppeling profiles it.

ebMS 2.0 §4.1.3 signs a message with one ``ds:Signature``, a child of
``SOAP:Header``, holding:

* a ``Reference URI=""`` over the envelope with the transforms
  enveloped-signature, the XPath filter below and C14N, in that order;
* one ``Reference URI="cid:…"`` per payload, without transforms, whose digest
  is over the part's octets (§4.1.4.1);
* SignatureMethod and DigestMethod as the sender's ``SenderNonRepudiation`` in
  the CPA says; SHA-2 only [DK SIGN001-004], SHA-1 only for a partner marked
  legacy (ebMS 2.0 §4.1; docs/security.md).

The XPath filter only ever removes whole subtrees (elements whose
``SOAP:actor`` is nextMSH or next, with everything in them), so "enveloped +
XPath + C14N" equals "remove the Signature and those elements, keeping their
tail text, then canonicalise the document".  That is what this module does,
with lxml's C14N and ``cryptography``: linear in the envelope, unlike
libxmlsec1's XPath transform (toolchain notes §3).  Because we implement that
one expression and no other, the verifier accepts exactly the profile and
refuses everything else; a generic library would say "valid" for a signature
over ``<XPath>false()</XPath>`` or one that leaves a payload out (pitfall 6).

Verification uses the signing certificate from the CPA, never the
``KeyInfo`` of the message.  Whether that certificate was valid when the
message was sent, its chain and its revocation are checked elsewhere; this
module only hands out the message Timestamp to check it at.

Every failure raises :class:`SignatureError`, which carries the ebMS error
code ``SecurityFailure`` and a location in the style of ebms-core.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from cpa.model import NonRepudiation
from cpa.xsdtypes import parse_datetime
from gateway.ebms.envelope import MAX_ENVELOPE_BYTES
from gateway.ebms.model import (
    DS_NS,
    EB_NS,
    NEXT_MSH,
    SOAP_ACTOR_NEXT,
    SOAP_NS,
    XML_NS,
    EbmsError,
    ErrorCode,
)
from xmlsafe import UnsafeXmlError, parse_xml

__all__ = [
    "C14N_EXCLUSIVE",
    "C14N_INCLUSIVE",
    "CHUNK_SIZE",
    "EBMS_XPATH",
    "RSA_SHA1",
    "RSA_SHA256",
    "RSA_SHA384",
    "RSA_SHA512",
    "SHA1",
    "SHA224",
    "SHA256",
    "SHA384",
    "SHA512",
    "TRANSFORM_ENVELOPED",
    "TRANSFORM_XPATH",
    "ByteSource",
    "PartOpener",
    "Readable",
    "SignatureError",
    "SignaturePolicy",
    "SignedReference",
    "SigningKey",
    "VerifiedSignature",
    "check_ack_references",
    "cid_uri",
    "digest_stream",
    "keyinfo_certificates",
    "message_timestamp",
    "read_references",
    "sign_envelope",
    "signature_references",
    "verify_envelope",
]

# -- algorithm identifiers --------------------------------------------------------------

C14N_EXCLUSIVE = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N_INCLUSIVE = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
TRANSFORM_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
TRANSFORM_XPATH = "http://www.w3.org/TR/1999/REC-xpath-19991116"

SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
SHA224 = "http://www.w3.org/2001/04/xmldsig-more#sha224"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA384 = "http://www.w3.org/2001/04/xmldsig-more#sha384"
SHA512 = "http://www.w3.org/2001/04/xmlenc#sha512"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA384 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
RSA_SHA512 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"

#: DigestMethod → (hashlib name, legacy only).  SHA-224 and SHA-1 are what
#: cpa.validate calls legacy digests [DK SIGN001-004].
_DIGESTS: dict[str, tuple[str, bool]] = {
    SHA256: ("sha256", False),
    SHA384: ("sha384", False),
    SHA512: ("sha512", False),
    SHA224: ("sha224", True),
    SHA1: ("sha1", True),
}
#: SignatureMethod → (hash of the PKCS #1 v1.5 signature, legacy only).
_SIGNATURES: dict[str, tuple[type[hashes.HashAlgorithm], bool]] = {
    RSA_SHA256: (hashes.SHA256, False),
    RSA_SHA384: (hashes.SHA384, False),
    RSA_SHA512: (hashes.SHA512, False),
    RSA_SHA1: (hashes.SHA1, True),
}

#: ebMS 2.0 §4.1.3, verbatim.  The ``SOAP`` prefix is bound on ``ds:XPath``.
EBMS_XPATH = (
    f'not(ancestor-or-self::node()[@SOAP:actor="{NEXT_MSH}"] | '
    f'ancestor-or-self::node()[@SOAP:actor="{SOAP_ACTOR_NEXT}"])'
)
#: The same expression after :func:`_normalise_xpath`, with any prefix and
#: either kind of quotes; the prefixes must map to the SOAP 1.1 namespace.
_XPATH_ACCEPTED = re.compile(
    r"not\(ancestor-or-self::node\(\)\[@(?P<p1>[A-Za-z_][\w.\-]*):actor="
    r"(?P<q1>[\"'])" + re.escape(NEXT_MSH) + r"(?P=q1)\]"
    r"\|ancestor-or-self::node\(\)\[@(?P<p2>[A-Za-z_][\w.\-]*):actor="
    r"(?P<q2>[\"'])" + re.escape(SOAP_ACTOR_NEXT) + r"(?P=q2)\]\)"
)
#: A QName's prefix in an XPath expression, and the string literals to skip first.
_QNAME_PREFIX = re.compile(r"([A-Za-z_][\w.\-]*):[A-Za-z_]")
_LITERAL = re.compile(r"\"[^\"]*\"|'[^']*'")
_UNSIGNED_ACTORS = frozenset({NEXT_MSH, SOAP_ACTOR_NEXT})
#: The only header blocks that may carry those actors (ebMS 2.0 §4.3, §6.3.1).
_UNSIGNED_BLOCKS = frozenset({f"{{{EB_NS}}}AckRequested", f"{{{EB_NS}}}SyncReply"})

#: Attachments are hashed in reads of this many bytes.
CHUNK_SIZE = 1024 * 1024

_SOAP_ACTOR = f"{{{SOAP_NS}}}actor"
_EXC_NS = C14N_EXCLUSIVE  # the namespace of ec:InclusiveNamespaces
# RFC 3986 sub-delims, ":" and "@" stay readable in a cid: URL; the rest is %-escaped.
_CID_SAFE = "@!$&'()*+,;=:-._~"

# -- error locations (ebms-core style) ------------------------------------------------

_LOC_SIGNATURE = "//Header/Signature"
_LOC_SIGNED_INFO = f"{_LOC_SIGNATURE}/SignedInfo"
_LOC_C14N = f"{_LOC_SIGNED_INFO}/CanonicalizationMethod/@Algorithm"
_LOC_SIGNATURE_METHOD = f"{_LOC_SIGNED_INFO}/SignatureMethod/@Algorithm"
_LOC_SIGNATURE_VALUE = f"{_LOC_SIGNATURE}/SignatureValue"
_LOC_KEY_INFO = f"{_LOC_SIGNATURE}/KeyInfo"
_LOC_ACK = "//Header/Acknowledgment"


def _loc_ref(uri: str) -> str:
    return f"{_LOC_SIGNED_INFO}/Reference[@URI='{uri}']"


# -- public data ----------------------------------------------------------------------


class SignatureError(Exception):
    """A signature is missing, outside the profile or does not verify.

    ``description`` and ``location`` are what the ebMS MessageError says;
    the code is always ``SecurityFailure`` (ebMS 2.0 §4.2.3.4.1).
    """

    code = ErrorCode.SECURITY_FAILURE

    def __init__(self, description: str, location: str) -> None:
        super().__init__(f"{description} ({location})")
        self.description = description
        self.location = location

    def to_error(self) -> EbmsError:
        """The ``eb:Error`` reporting this failure."""
        return EbmsError(code=self.code, location=self.location, description=self.description)


@dataclass(frozen=True)
class SignaturePolicy:
    """The algorithms a signature must use: the sender's ``SenderNonRepudiation``.

    ``legacy`` admits SHA-1 (and SHA-224 digests) for a partner whose CPA
    still names them; Digikoppeling forbids them otherwise [DK SIGN001-004].
    """

    signature_method: str
    digest_method: str
    legacy: bool = False

    @classmethod
    def from_cpa(cls, non_repudiation: NonRepudiation, *, legacy: bool = False) -> SignaturePolicy:
        """The policy of one sending channel."""
        return cls(
            signature_method=non_repudiation.signature_algorithm.strip(),
            digest_method=non_repudiation.hash_function.strip(),
            legacy=legacy,
        )


@dataclass(frozen=True)
class SigningKey:
    """Our signing key and its certificate, loaded once (an RSA load costs ~45 ms)."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, rsa.RSAPrivateKey):
            raise TypeError("the profile signs with RSA keys only")
        if _spki(self.private_key.public_key()) != _spki(self.certificate.public_key()):
            raise ValueError("the private key does not belong to the certificate")

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, password: bytes | None = None) -> SigningKey:
        """Load a PEM private key and the PEM certificate that goes with it."""
        key = serialization.load_pem_private_key(key_pem, password)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("the profile signs with RSA keys only")
        return cls(key, x509.load_pem_x509_certificate(cert_pem))


@dataclass(frozen=True)
class SignedReference:
    """One ``ds:Reference`` as signed: its URI, DigestMethod and raw digest."""

    uri: str
    digest_method: str
    digest_value: bytes


@dataclass(frozen=True)
class VerifiedSignature:
    """What a verified signature covers.

    ``references`` are in document order, the envelope (``URI=""``) first.
    ``signed_at`` is the signed ``eb:MessageHeader`` Timestamp, the moment at
    which the CPA certificate must have been valid (ebMS 2.0 §4.1; docs/security.md), or
    None when the envelope has none.
    """

    references: tuple[SignedReference, ...]
    canonicalization: str
    signature_method: str
    signed_at: datetime | None


@runtime_checkable
class Readable(Protocol):
    """A binary file or anything else with ``read(size)``."""

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes; empty at the end."""
        ...


#: What :func:`digest_stream` hashes: bytes, a binary file or an iterable of chunks.
ByteSource = bytes | bytearray | memoryview | Readable | Iterable[bytes]
#: Gives the content of one received part, e.g. ``ReceivedPart.open``.
PartOpener = Callable[[], Readable | Iterable[bytes]]


# -- digests --------------------------------------------------------------------------


def _hash_name(algorithm: str, *, legacy: bool) -> str:
    entry = _DIGESTS.get(algorithm)
    if entry is None:
        raise ValueError(f"unknown DigestMethod {algorithm!r}")
    name, legacy_only = entry
    if legacy_only and not legacy:
        raise ValueError(f"DigestMethod {algorithm} is only allowed for legacy partners")
    return name


def _signature_hash(algorithm: str, *, legacy: bool) -> hashes.HashAlgorithm:
    entry = _SIGNATURES.get(algorithm)
    if entry is None:
        raise ValueError(f"unknown SignatureMethod {algorithm!r}")
    hash_type, legacy_only = entry
    if legacy_only and not legacy:
        raise ValueError(f"SignatureMethod {algorithm} is only allowed for legacy partners")
    return hash_type()


def digest_stream(algorithm: str, source: ByteSource) -> bytes:
    """The raw digest of ``source`` under the DigestMethod URI ``algorithm``.

    A file is read in :data:`CHUNK_SIZE` pieces from where it stands, never
    whole, and is not closed.  Any known digest is computed, SHA-1 included:
    whether it may be used is the caller's policy.
    """
    digest = hashlib.new(_hash_name(algorithm, legacy=True))
    if isinstance(source, bytes | bytearray | memoryview):
        digest.update(source)
    elif isinstance(source, Readable):
        while chunk := source.read(CHUNK_SIZE):
            digest.update(chunk)
    else:
        for chunk in source:
            digest.update(chunk)
    return digest.digest()


def cid_uri(content_id: str) -> str:
    """The ``cid:`` URL of a Content-ID (RFC 2392: %-escape what a URL cannot hold)."""
    return "cid:" + quote(content_id, safe=_CID_SAFE)


# -- canonicalisation -----------------------------------------------------------------


@dataclass(frozen=True)
class _C14n:
    """A CanonicalizationMethod or C14N transform: algorithm and exc-c14n PrefixList."""

    algorithm: str
    prefixes: tuple[str, ...] = ()

    def apply(self, node: etree._Element | etree._ElementTree) -> bytes:
        """The canonical form of ``node``; :class:`SignatureError` when it has none.

        libxml2 refuses to canonicalise a document with a relative namespace
        URI in scope (``xmlns:x="rel"``), as C14N 1.0 §2 allows: the W3C XML
        Plenary decision makes such documents an error for canonicalisation.
        The partner controls the envelope, so that is a refused signature,
        not a crash.
        """
        exclusive = self.algorithm == C14N_EXCLUSIVE
        try:
            out: bytes = etree.tostring(
                node,
                method="c14n",
                exclusive=exclusive,
                with_comments=False,
                inclusive_ns_prefixes=list(self.prefixes) if exclusive and self.prefixes else None,
            )
        except etree.C14NError:
            raise SignatureError(
                "the document cannot be canonicalised (a relative namespace URI?)",
                _LOC_SIGNATURE,
            ) from None
        return out


def _canonical_signed_info(signed_info: etree._Element, c14n: _C14n) -> bytes:
    """C14N of SignedInfo in its document context.

    lxml canonicalises a subtree with its in-scope namespaces but without the
    ``xml:*`` attributes that inclusive C14N 1.0 §2.4 carries down from
    ancestors outside the node-set; put them on the apex for the duration.
    """
    if c14n.algorithm != C14N_INCLUSIVE:
        return c14n.apply(signed_info)
    inherited: dict[str, str] = {}
    for ancestor in signed_info.iterancestors():
        for name, value in ancestor.attrib.items():
            if name.startswith(f"{{{XML_NS}}}") and name not in signed_info.attrib:
                inherited.setdefault(name, value)
    for name, value in inherited.items():
        signed_info.set(name, value)
    try:
        return c14n.apply(signed_info)
    finally:
        for name in inherited:
            del signed_info.attrib[name]


def _remove_keeping_tail(element: etree._Element) -> None:
    """Detach ``element``; its tail is text of the parent and stays (lxml would drop it)."""
    parent = element.getparent()
    if parent is None:
        raise SignatureError("the document element cannot be left out", _LOC_SIGNATURE)
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _is_unsigned(element: etree._Element) -> bool:
    """Dropped from the envelope reference: the Signature itself and nextMSH/next blocks."""
    return bool(element.tag == _ds("Signature") or element.get(_SOAP_ACTOR) in _UNSIGNED_ACTORS)


def _envelope_digest(root: etree._Element, c14n: _C14n, hash_name: str) -> bytes:
    """Digest of ``Reference URI=""``: enveloped-signature, the ebMS XPath, then C14N.

    The XPath keeps every node that has no ancestor-or-self with a nextMSH or
    next ``SOAP:actor``, i.e. it drops those elements as whole subtrees.  The
    callers have made sure the root is not one of them.
    """
    tree = copy.deepcopy(root.getroottree())
    doomed = []
    pending = [tree.getroot()]
    while pending:  # outermost matches only: their descendants go with them
        element = pending.pop()
        if _is_unsigned(element):
            doomed.append(element)
        else:
            pending.extend(child for child in element if isinstance(child.tag, str))
    for element in doomed:
        _remove_keeping_tail(element)
    return hashlib.new(hash_name, c14n.apply(tree)).digest()


# -- shared readers -------------------------------------------------------------------


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _ds(name: str) -> str:
    return _q(DS_NS, name)


def _spki(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    out: bytes = public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None, what: str, location: str) -> bytes:
    # Senders wrap base64 at 76 columns (often with &#13;): drop all white space.
    cleaned = "".join((text or "").split())
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what} is not base64", location) from None


def _path(element: etree._Element) -> str:
    """``//Header/X`` style location of ``element`` (below the Envelope)."""
    names: list[str] = []
    node: etree._Element | None = element
    while node is not None and node.getparent() is not None:
        names.append(etree.QName(node).localname)
        node = node.getparent()
    return "//" + "/".join(reversed(names))


def _parse(data: bytes) -> etree._ElementTree:
    if len(data) > MAX_ENVELOPE_BYTES:
        raise SignatureError(
            f"envelope of {len(data)} bytes is over the limit of {MAX_ENVELOPE_BYTES}",
            _LOC_SIGNATURE,
        )
    try:
        return parse_xml(data, max_bytes=MAX_ENVELOPE_BYTES)
    except UnsafeXmlError as exc:
        raise SignatureError(f"envelope refused: {exc}", _LOC_SIGNATURE) from None


def _root(document: bytes | etree._ElementTree | etree._Element) -> etree._Element:
    if isinstance(document, bytes | bytearray):
        root: etree._Element = _parse(bytes(document)).getroot()
        return root
    if isinstance(document, etree._ElementTree):
        return document.getroot()
    return document.getroottree().getroot()


def _header(root: etree._Element) -> etree._Element | None:
    if root.tag != _q(SOAP_NS, "Envelope"):
        return None
    return root.find(_q(SOAP_NS, "Header"))


def _signatures(root: etree._Element) -> list[etree._Element]:
    return list(root.iter(_ds("Signature")))


def _header_signature(root: etree._Element) -> etree._Element | None:
    """The one ``ds:Signature`` child of ``SOAP:Header``, None when there is none.

    Raises :class:`SignatureError` for more than one or one elsewhere.
    """
    signatures = _signatures(root)
    if not signatures:
        return None
    if len(signatures) > 1:
        raise SignatureError(
            f"{len(signatures)} ds:Signature elements; the profile has exactly one",
            _LOC_SIGNATURE,
        )
    signature = signatures[0]
    header = _header(root)
    if header is None or signature.getparent() is not header:
        raise SignatureError("ds:Signature is not a child of SOAP:Header", _path(signature))
    return signature


def _unsigned_elements(root: etree._Element, header: etree._Element) -> list[etree._Element]:
    """Elements the XPath filter leaves unsigned, other than the known header blocks.

    ebMS 2.0 §4.1.3 leaves eb:SyncReply and a nextMSH eb:AckRequested out of
    the signature so that intermediaries may change them; anything else with
    those actors would be an unsigned hole in a signed message.
    """
    return [
        el
        for el in root.iter(etree.Element)
        if el.get(_SOAP_ACTOR) in _UNSIGNED_ACTORS
        and not (el.getparent() is header and el.tag in _UNSIGNED_BLOCKS)
    ]


def _elements(parent: etree._Element, location: str) -> list[etree._Element]:
    """The element children of a structural ds element; text between them is refused."""
    if (parent.text or "").strip():
        raise SignatureError(f"text inside {etree.QName(parent).localname}", location)
    children = []
    for child in parent:
        if (child.tail or "").strip():
            raise SignatureError(f"text inside {etree.QName(parent).localname}", location)
        if isinstance(child.tag, str):
            children.append(child)
    return children


def _read_reference(reference: etree._Element, base: str) -> SignedReference:
    """URI, DigestMethod and DigestValue of one ds:Reference, no profile rules.

    ``base`` is the location of the element holding the Reference.
    """
    uri = reference.get("URI")
    if uri is None:
        raise SignatureError("ds:Reference without URI", f"{base}/Reference")
    location = f"{base}/Reference[@URI='{uri}']"
    method = reference.find(_ds("DigestMethod"))
    value = reference.find(_ds("DigestValue"))
    if method is None or value is None or len(value):
        raise SignatureError("ds:Reference without a DigestMethod and DigestValue", location)
    return SignedReference(
        uri=uri,
        digest_method=str(method.get("Algorithm") or ""),
        digest_value=_unb64(value.text, "DigestValue", f"{location}/DigestValue"),
    )


# -- signing --------------------------------------------------------------------------


def _own_tree(envelope: bytes | etree._ElementTree | etree._Element) -> etree._ElementTree:
    """A parsed copy of the envelope to sign; the caller's tree is left alone."""
    if isinstance(envelope, etree._Element):
        envelope = envelope.getroottree()
    if isinstance(envelope, etree._ElementTree):
        envelope = etree.tostring(envelope)
    return parse_xml(envelope, max_bytes=MAX_ENVELOPE_BYTES)


def _check_content_id(content_id: str) -> None:
    if not content_id or content_id != content_id.strip() or "<" in content_id or ">" in content_id:
        raise ValueError(f"not a Content-ID without angle brackets: {content_id!r}")


def _ds_sub(parent: etree._Element, name: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, _ds(name), attrs)


def sign_envelope(
    envelope: bytes | etree._ElementTree | etree._Element,
    attachments: Sequence[tuple[str, bytes]],
    key: SigningKey,
    policy: SignaturePolicy,
    *,
    c14n: str = C14N_EXCLUSIVE,
) -> bytes:
    """The envelope with a profile ``ds:Signature`` appended to ``SOAP:Header``.

    ``attachments`` are ``(content_id, digest)`` pairs in Manifest order, the
    digest computed with :func:`digest_stream` under ``policy.digest_method``,
    so a payload is never held in memory here.  ``c14n`` is
    :data:`C14N_EXCLUSIVE` (what Digikoppeling cites) or
    :data:`C14N_INCLUSIVE` (what ebms-core sends; docs/security.md).

    The result is deterministic (PKCS #1 v1.5 is), but a message is signed
    once and its bytes kept: a resend repeats them (ebMS 2.0 §6.5.3).
    Raises ValueError for a policy outside the profile, an envelope that is
    already signed or that carries elements the signature would leave out.
    """
    hash_name = _hash_name(policy.digest_method, legacy=policy.legacy)
    signature_hash = _signature_hash(policy.signature_method, legacy=policy.legacy)
    if c14n not in (C14N_EXCLUSIVE, C14N_INCLUSIVE):
        raise ValueError(f"unsupported canonicalization {c14n!r}")
    method = _C14n(c14n)
    digest_size = hashlib.new(hash_name).digest_size
    seen: set[str] = set()
    for content_id, digest in attachments:
        _check_content_id(content_id)
        if content_id in seen:
            raise ValueError(f"Content-ID {content_id!r} given twice")
        seen.add(content_id)
        if len(digest) != digest_size:
            raise ValueError(f"digest of {content_id!r} is not a {policy.digest_method} digest")

    tree = _own_tree(envelope)
    root = tree.getroot()
    header = _header(root)
    if header is None:
        raise ValueError("not a SOAP 1.1 Envelope with a Header")
    if _signatures(root):
        raise ValueError("the envelope is already signed")
    if unsigned := _unsigned_elements(root, header):
        raise ValueError(f"{_path(unsigned[0])} carries a SOAP:actor the signature leaves out")
    try:
        envelope_digest = _envelope_digest(root, method, hash_name)
    except SignatureError as exc:
        raise ValueError(exc.description) from None

    signature = etree.SubElement(header, _ds("Signature"), nsmap={"ds": DS_NS})
    info = _ds_sub(signature, "SignedInfo")
    _ds_sub(info, "CanonicalizationMethod", Algorithm=c14n)
    _ds_sub(info, "SignatureMethod", Algorithm=policy.signature_method)
    reference = _ds_sub(info, "Reference", URI="")
    transforms = _ds_sub(reference, "Transforms")
    _ds_sub(transforms, "Transform", Algorithm=TRANSFORM_ENVELOPED)
    xpath_transform = _ds_sub(transforms, "Transform", Algorithm=TRANSFORM_XPATH)
    # The prefix in the expression must be in scope on ds:XPath (ebMS 2.0 §4.1.3).
    xpath = etree.SubElement(xpath_transform, _ds("XPath"), nsmap={"SOAP": SOAP_NS})
    xpath.text = EBMS_XPATH
    _ds_sub(transforms, "Transform", Algorithm=c14n)
    _ds_sub(reference, "DigestMethod", Algorithm=policy.digest_method)
    _ds_sub(reference, "DigestValue").text = _b64(envelope_digest)
    for content_id, digest in attachments:
        # ebMS 2.0 §4.1.4.1: a payload reference has no transforms.
        part = _ds_sub(info, "Reference", URI=cid_uri(content_id))
        _ds_sub(part, "DigestMethod", Algorithm=policy.digest_method)
        _ds_sub(part, "DigestValue").text = _b64(digest)
    _ds_sub(signature, "SignatureValue")
    key_info = _ds_sub(signature, "KeyInfo")
    certificate_der = key.certificate.public_bytes(serialization.Encoding.DER)
    _ds_sub(_ds_sub(key_info, "X509Data"), "X509Certificate").text = _b64(certificate_der)

    # Sign SignedInfo as a receiver will canonicalise it: from the parsed
    # bytes.  An lxml-built tree can hold namespace nodes that a parsed one
    # does not, and C14N sees the difference.
    draft = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    tree = parse_xml(draft, max_bytes=len(draft))
    signature = tree.getroot().find(f"{_q(SOAP_NS, 'Header')}/{_ds('Signature')}")
    assert signature is not None
    info = signature[0]
    value = key.private_key.sign(
        _canonical_signed_info(info, method), padding.PKCS1v15(), signature_hash
    )
    signature[1].text = _b64(value)
    out: bytes = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    return out


# -- verifying ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    """A Signature that passed the structural and algorithm checks."""

    signed_info: etree._Element
    signed_info_c14n: _C14n
    signature_method: str
    signature_value: bytes
    envelope_c14n: _C14n
    references: tuple[SignedReference, ...]


def _normalise_xpath(text: str) -> str:
    # White space between XPath tokens carries no meaning; inside a name it
    # does, so it is only dropped around punctuation.
    text = " ".join(text.split())
    return re.sub(r"\s*(::|[()\[\]|=@])\s*", r"\1", text)


def _read_c14n(element: etree._Element, location: str) -> _C14n:
    algorithm = element.get("Algorithm")
    if algorithm not in (C14N_EXCLUSIVE, C14N_INCLUSIVE):
        raise SignatureError(f"canonicalization {algorithm!r} is not C14N 1.0", location)
    children = _elements(element, location)
    if algorithm == C14N_INCLUSIVE or not children:
        if children:
            raise SignatureError("unexpected content in an inclusive C14N method", location)
        return _C14n(algorithm)
    # exc-c14n §3: an optional InclusiveNamespaces PrefixList (used by some MSHs).
    if len(children) != 1 or children[0].tag != _q(_EXC_NS, "InclusiveNamespaces"):
        raise SignatureError("unexpected content in an exclusive C14N method", location)
    prefixes = str(children[0].get("PrefixList") or "").split()
    return _C14n(algorithm, tuple(prefixes))


def _check_xpath(transform: etree._Element, location: str) -> None:
    children = _elements(transform, location)
    if len(children) != 1 or children[0].tag != _ds("XPath"):
        raise SignatureError("the XPath transform must hold one ds:XPath", location)
    xpath = children[0]
    if len(xpath):
        raise SignatureError("ds:XPath must hold only the expression", f"{location}/XPath")
    match = _XPATH_ACCEPTED.fullmatch(_normalise_xpath(xpath.text or ""))
    if match is None:
        raise SignatureError("the XPath is not the ebMS 2.0 actor filter", f"{location}/XPath")
    # Exclusive C14N drops this binding from the signed SignedInfo (the prefix
    # is only used in text), so it must be checked here (toolchain pitfall 7).
    for prefix in {match["p1"], match["p2"]}:
        if xpath.nsmap.get(prefix) != SOAP_NS:
            raise SignatureError(
                f"prefix {prefix!r} of the XPath is not bound to the SOAP namespace",
                f"{location}/XPath",
            )


def _check_envelope_transforms(reference: etree._Element) -> _C14n:
    """The transforms of ``Reference URI=""``: exactly enveloped, XPath, C14N."""
    location = f"{_loc_ref('')}/Transforms"
    transforms_el = reference.find(_ds("Transforms"))
    if transforms_el is None:
        raise SignatureError("the envelope reference has no transforms", location)
    transforms = _elements(transforms_el, location)
    algorithms = [t.get("Algorithm") for t in transforms]
    if (
        len(transforms) != 3
        or any(t.tag != _ds("Transform") for t in transforms)
        or algorithms[0] != TRANSFORM_ENVELOPED
        or algorithms[1] != TRANSFORM_XPATH
        or algorithms[2] not in (C14N_EXCLUSIVE, C14N_INCLUSIVE)
    ):
        raise SignatureError(
            "the envelope reference must have exactly the transforms enveloped-signature, "
            f"XPath, C14N; it has {algorithms}",
            location,
        )
    if _elements(transforms[0], f"{location}/Transform"):
        raise SignatureError("unexpected content in the enveloped-signature transform", location)
    _check_xpath(transforms[1], f"{location}/Transform")
    return _read_c14n(transforms[2], f"{location}/Transform")


_ENVELOPE_REFERENCE = [_ds("Transforms"), _ds("DigestMethod"), _ds("DigestValue")]
_PAYLOAD_REFERENCE = [_ds("DigestMethod"), _ds("DigestValue")]


def _check_reference(
    reference: etree._Element, first: bool, policy: SignaturePolicy
) -> tuple[SignedReference, _C14n | None]:
    """One Reference: URI, children, DigestMethod and, for the envelope, transforms."""
    uri = reference.get("URI")
    location = _loc_ref(uri or "")
    if first and uri != "":
        raise SignatureError('the first ds:Reference must have URI=""', location)
    if not first and (uri is None or uri[:4].lower() != "cid:" or len(uri) == 4):
        raise SignatureError("every ds:Reference after the first must be a cid: URI", location)
    children = _elements(reference, location)
    # ebMS 2.0 §4.1.4.1: payload references have no transforms.
    expected = _ENVELOPE_REFERENCE if first else _PAYLOAD_REFERENCE
    if [c.tag for c in children] != expected:
        names = [etree.QName(c).localname for c in children]
        raise SignatureError(f"ds:Reference holds {names}, not what the profile says", location)
    signed = _read_reference(reference, _LOC_SIGNED_INFO)
    method_location = f"{location}/DigestMethod/@Algorithm"
    if signed.digest_method != policy.digest_method:
        raise SignatureError("Invalid DigestMethod.", method_location)
    try:
        hash_name = _hash_name(signed.digest_method, legacy=policy.legacy)
    except ValueError as exc:
        raise SignatureError(str(exc), method_location) from None
    if _elements(children[-2], method_location):
        raise SignatureError("unexpected content in DigestMethod", method_location)
    if len(signed.digest_value) != hashlib.new(hash_name).digest_size:
        raise SignatureError("DigestValue has the wrong length", f"{location}/DigestValue")
    c14n = _check_envelope_transforms(reference) if first else None
    return signed, c14n


def _check_profile(signature: etree._Element, policy: SignaturePolicy) -> _Profile:
    """Everything about the Signature that needs no key: structure and algorithms."""
    parts = _elements(signature, _LOC_SIGNATURE)
    names = [c.tag for c in parts]
    if names not in (
        [_ds("SignedInfo"), _ds("SignatureValue")],
        [_ds("SignedInfo"), _ds("SignatureValue"), _ds("KeyInfo")],
    ):
        raise SignatureError(
            "ds:Signature must hold SignedInfo, SignatureValue and optionally KeyInfo",
            _LOC_SIGNATURE,
        )
    signed_info, signature_value = parts[0], parts[1]
    children = _elements(signed_info, _LOC_SIGNED_INFO)
    if (
        len(children) < 3
        or children[0].tag != _ds("CanonicalizationMethod")
        or children[1].tag != _ds("SignatureMethod")
        or any(c.tag != _ds("Reference") for c in children[2:])
    ):
        raise SignatureError(
            "SignedInfo must hold CanonicalizationMethod, SignatureMethod and References",
            _LOC_SIGNED_INFO,
        )
    c14n = _read_c14n(children[0], _LOC_C14N)
    signature_method = str(children[1].get("Algorithm") or "")
    if signature_method != policy.signature_method:
        raise SignatureError("Invalid SignatureMethod.", _LOC_SIGNATURE_METHOD)
    try:
        _signature_hash(signature_method, legacy=policy.legacy)
    except ValueError as exc:
        raise SignatureError(str(exc), _LOC_SIGNATURE_METHOD) from None
    if _elements(children[1], _LOC_SIGNATURE_METHOD):
        raise SignatureError("unexpected content in SignatureMethod", _LOC_SIGNATURE_METHOD)
    references: list[SignedReference] = []
    envelope_c14n: _C14n | None = None
    for index, element in enumerate(children[2:]):
        signed, transform_c14n = _check_reference(element, index == 0, policy)
        references.append(signed)
        envelope_c14n = envelope_c14n or transform_c14n
    assert envelope_c14n is not None
    return _Profile(
        signed_info=signed_info,
        signed_info_c14n=c14n,
        signature_method=signature_method,
        signature_value=_unb64(signature_value.text, "SignatureValue", _LOC_SIGNATURE_VALUE),
        envelope_c14n=envelope_c14n,
        references=tuple(references),
    )


def _signed_content_ids(references: Sequence[SignedReference]) -> dict[str, SignedReference]:
    """Payload references by Content-ID (the URI %-decoded, RFC 2392)."""
    by_cid: dict[str, SignedReference] = {}
    for reference in references[1:]:
        content_id = unquote(reference.uri[4:])
        if content_id in by_cid:
            raise SignatureError("two references to one payload", _loc_ref(reference.uri))
        by_cid[content_id] = reference
    return by_cid


def _check_parts(signed: Mapping[str, SignedReference], parts: Mapping[str, PartOpener]) -> None:
    # ebms-core: one reference per payload, no more and no less; a part left
    # out of the signature could be swapped unnoticed (toolchain pitfall 6).
    for content_id, reference in signed.items():
        if content_id not in parts:
            raise SignatureError(
                f"signed payload {content_id!r} was not received", _loc_ref(reference.uri)
            )
    for content_id in parts:
        if content_id not in signed:
            raise SignatureError(f"payload {content_id!r} is not signed", cid_uri(content_id))


def keyinfo_certificates(
    document: bytes | etree._ElementTree | etree._Element,
) -> tuple[x509.Certificate, ...]:
    """The X509Certificates in the signature's KeyInfo (informational, never trusted).

    ``document`` is an envelope or its ``ds:Signature`` element.
    """
    if isinstance(document, etree._Element) and document.tag == _ds("Signature"):
        signature: etree._Element | None = document
    else:
        signature = _header_signature(_root(document))
    if signature is None:
        return ()
    found = []
    for element in signature.iterfind(
        f"{_ds('KeyInfo')}/{_ds('X509Data')}/{_ds('X509Certificate')}"
    ):
        der = _unb64(element.text, "X509Certificate", _LOC_KEY_INFO)
        try:
            found.append(x509.load_der_x509_certificate(der))
        except (ValueError, x509.InvalidVersion):
            # InvalidVersion is not a ValueError: a version field other than v1-v3.
            raise SignatureError("KeyInfo holds an unreadable certificate", _LOC_KEY_INFO) from None
    return tuple(found)


def _offered_key(certificate: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo of a KeyInfo certificate, in DER.

    cryptography reads the key only now, so a broken key (truncated, a curve
    it does not know) surfaces here rather than when the certificate loads.
    """
    try:
        return _spki(certificate.public_key())
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError(
            "KeyInfo holds a certificate with an unreadable key", _LOC_KEY_INFO
        ) from None


def _check_key_info(signature: etree._Element, certificate: x509.Certificate) -> None:
    # The CPA certificate verifies; KeyInfo is only compared with it, by public
    # key, so a renewed certificate over the same key still passes.  KeyInfo
    # lies outside SignedInfo: anyone on the path may change it, so every
    # certificate in it is treated as hostile input (ebMS 2.0 §4.1.3).
    offered = keyinfo_certificates(signature)
    wanted = _spki(certificate.public_key())
    if offered and not any(_offered_key(c) == wanted for c in offered):
        raise SignatureError(
            "KeyInfo names another key than the signing certificate in the CPA", _LOC_KEY_INFO
        )


def _check_signature_value(
    profile: _Profile, certificate: x509.Certificate, policy: SignaturePolicy
) -> None:
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureError("the CPA signing certificate has no RSA key", _LOC_SIGNATURE)
    data = _canonical_signed_info(profile.signed_info, profile.signed_info_c14n)
    signature_hash = _signature_hash(profile.signature_method, legacy=policy.legacy)
    try:
        public_key.verify(profile.signature_value, data, padding.PKCS1v15(), signature_hash)
    except InvalidSignature:
        raise SignatureError("Invalid Signature.", _LOC_SIGNATURE_VALUE) from None


def _check_digest(reference: SignedReference, actual: bytes) -> None:
    if not hmac.compare_digest(reference.digest_value, actual):
        raise SignatureError(
            "digest does not match the content", f"{_loc_ref(reference.uri)}/DigestValue"
        )


def message_timestamp(document: bytes | etree._ElementTree | etree._Element) -> datetime | None:
    """``eb:MessageHeader/eb:MessageData/eb:Timestamp``, or None when absent or invalid.

    The signing certificate is judged at this moment (ebMS 2.0 §4.1; docs/security.md).
    """
    header = _header(_root(document))
    if header is None:
        return None
    path = "/".join(_q(EB_NS, n) for n in ("MessageHeader", "MessageData", "Timestamp"))
    element = header.find(path)
    if element is None or not element.text:
        return None
    try:
        return parse_datetime(element.text)
    except ValueError:
        return None


def verify_envelope(
    envelope: bytes,
    parts: Mapping[str, PartOpener],
    certificate: x509.Certificate,
    policy: SignaturePolicy,
) -> VerifiedSignature:
    """Verify a message signed as the profile says, or raise :class:`SignatureError`.

    ``envelope`` is the SOAP part; ``parts`` maps the Content-ID of every
    received payload to a callable giving its content, e.g.
    ``{cid: p.open for cid, p in swa.attachments.items()}``: the content is
    hashed in chunks and the stream is not closed.  ``certificate`` is the
    sender's signing certificate from the CPA and ``policy`` its
    ``SenderNonRepudiation``.  Order of the checks as ebms-core and toolchain
    notes §3: size and DOCTYPE, one Signature in the Header, no unsigned
    blocks, the profile and algorithms, the set of payloads, the key, the
    SignatureValue, then the digests.
    """
    root = _parse(envelope).getroot()
    header = _header(root)
    if header is None:
        raise SignatureError("not a SOAP 1.1 Envelope with a Header", _LOC_SIGNATURE)
    signature = _header_signature(root)
    if signature is None:
        raise SignatureError("Signature not found.", _LOC_SIGNATURE)
    if unsigned := _unsigned_elements(root, header):
        raise SignatureError(
            f"{etree.QName(unsigned[0]).localname} carries a SOAP:actor the signature leaves out",
            _path(unsigned[0]),
        )
    profile = _check_profile(signature, policy)
    signed_parts = _signed_content_ids(profile.references)
    _check_parts(signed_parts, parts)
    _check_key_info(signature, certificate)
    _check_signature_value(profile, certificate, policy)
    hash_name = _hash_name(policy.digest_method, legacy=policy.legacy)
    _check_digest(profile.references[0], _envelope_digest(root, profile.envelope_c14n, hash_name))
    for content_id, reference in signed_parts.items():
        _check_digest(reference, digest_stream(policy.digest_method, parts[content_id]()))
    return VerifiedSignature(
        references=profile.references,
        canonicalization=profile.signed_info_c14n.algorithm,
        signature_method=profile.signature_method,
        signed_at=message_timestamp(root),
    )


# -- signed acknowledgments -------------------------------------------------------------


def _signed_info_references(
    document: bytes | etree._ElementTree | etree._Element,
) -> list[etree._Element]:
    signature = _header_signature(_root(document))
    if signature is None:
        return []
    return list(signature.iterfind(f"{_ds('SignedInfo')}/{_ds('Reference')}"))


def read_references(
    document: bytes | etree._ElementTree | etree._Element,
) -> tuple[SignedReference, ...]:
    """The references of a message's signature as data, without verifying anything.

    The sender reads them from the bytes it signed and sent, to compare them
    with a signed acknowledgment (:func:`check_ack_references`).
    """
    return tuple(_read_reference(r, _LOC_SIGNED_INFO) for r in _signed_info_references(document))


def signature_references(
    document: bytes | etree._ElementTree | etree._Element,
) -> tuple[bytes, ...]:
    """Copies of the message signature's ``ds:Reference`` elements for a signed ack.

    ebMS 2.0 §6.3.2.5: the acknowledgment carries one ds:Reference per
    Reference of the message's SignedInfo.  The copies are standalone XML, as
    :func:`gateway.ebms.signals.acknowledgment` takes them.  They are
    exclusive C14N with the prefixes used inside ``ds:XPath`` kept in scope,
    so the copied XPath still means what it meant.  Empty when the message is
    not signed; :class:`SignatureError` when a Reference cannot be
    canonicalised (a relative namespace URI in scope).
    """
    copies = []
    for reference in _signed_info_references(document):
        prefixes = {
            prefix
            for xpath in reference.iter(_ds("XPath"))
            for prefix in re.findall(_QNAME_PREFIX, _LITERAL.sub("", xpath.text or ""))
            if prefix in xpath.nsmap
        }
        copies.append(_C14n(C14N_EXCLUSIVE, tuple(sorted(prefixes))).apply(reference))
    return tuple(copies)


def check_ack_references(
    acknowledgment: bytes | etree._ElementTree | etree._Element,
    original: Sequence[SignedReference],
) -> None:
    """Check that a signed ack's ds:References are those of the original message.

    ``original`` comes from :func:`read_references` on the message as sent.
    As ebms-core does, URI and digest must match one for one (ebMS 2.0
    §6.3.2); raises :class:`SignatureError` otherwise.  The ack's own
    signature is verified separately with :func:`verify_envelope`.
    """
    header = _header(_root(acknowledgment))
    acks = [] if header is None else header.findall(_q(EB_NS, "Acknowledgment"))
    if len(acks) != 1:
        raise SignatureError("not one eb:Acknowledgment in the SOAP Header", _LOC_ACK)
    received = [_read_reference(r, _LOC_ACK) for r in acks[0].findall(_ds("Reference"))]
    expected = Counter(original)
    for reference in received:
        if expected[reference] <= 0:
            raise SignatureError(
                "ds:Reference does not match the signature of the message",
                f"{_LOC_ACK}/Reference[@URI='{reference.uri}']",
            )
        expected[reference] -= 1
    missing = [r.uri for r in original if expected[r] > 0]
    if missing:
        raise SignatureError(f"acknowledgment lacks the ds:Reference for {missing[0]!r}", _LOC_ACK)
