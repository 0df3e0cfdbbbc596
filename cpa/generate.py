"""Generate Digikoppeling ebMS2 CPAs (ebXML CPPA 2.0 documents) from a compact spec.

A CPA describes one ebMS collaboration between exactly two parties (CPPA 2.0).
Operators, the demo and the tests build CPAs with :func:`make_cpa` instead of editing XML
by hand.  The output is valid against ``cpp-cpa-2_0.xsd`` and follows the conventions of
the Digikoppeling CPA Register ("CPA creatievoorziening", §6.5): PartyId type
``urn:osb:oin``, Service type ``urn:osb:services``, the fixed DK-BP values for
BusinessTransactionCharacteristics, HTTP 1.1 over TLS, ``NotGuaranteed`` message order and
the DK-BP reliable-messaging defaults (8 retries, every 3 hours, persist one day).

Every identifier in the document is derived from the party's position ("A" or "B") so the
same spec always yields the same bytes (given a fixed ``cpa_id``)::

    A_channel_osb-rm-s   business DeliveryChannel     A_channel_msh   default MSH channel
    A_docExchange_...    DocExchange per channel      A_transport     shared Transport
    A_TLSClientCert ...  Certificate                  A_S_<action> / A_R_<action>  bindings

:func:`make_cpa` is pure: it reads nothing and writes nothing.  The only non-determinism is
the UUID in a defaulted ``cpa_id``.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from lxml.builder import ElementMaker

__all__ = [
    "PROFILES",
    "ActionSpec",
    "CpaSpec",
    "CpaSpecError",
    "PartySpec",
    "default_cpa_id",
    "format_duration",
    "make_cpa",
    "validate_spec",
]

PROFILES = ("osb-be", "osb-rm", "osb-be-s", "osb-rm-s", "osb-be-e", "osb-rm-e")
"""The six Digikoppeling ebMS2 profiles by their CPA-creation names (§2.1)."""

TNS = "http://www.oasis-open.org/committees/ebxml-cppa/schema/cpp-cpa-2_0.xsd"
DS = "http://www.w3.org/2000/09/xmldsig#"
XLINK = "http://www.w3.org/1999/xlink"
_NSMAP = {"tns": TNS, "ds": DS, "xlink": XLINK}
_XLINK_HREF = f"{{{XLINK}}}href"

_E = ElementMaker(namespace=TNS, nsmap=_NSMAP)
_DSE = ElementMaker(namespace=DS, nsmap=_NSMAP)

_CPA_VERSION = "2_0b"  # the schema version; RI warns on anything else (§6.3)
_TO_PARTY_MSH = "urn:oasis:names:tc:ebxml-msg:actor:toPartyMSH"
_MSG_HEADER_XSD = "http://www.oasis-open.org/committees/ebxml-msg/schema/msg-header-2_0.xsd"
_XMLDSIG_PROTOCOL = "http://www.w3.org/2000/09/xmldsig#"
_MSH_PACKAGE = "MshSignalPackage"
_MESSAGE_PACKAGE = "XMLMessagePackage"

# Effective key strength and OID of the XML Encryption block ciphers DK allows (§5.4,
# DK ENC001-ENC003).  CPPA 2.0 makes both attributes optional; the RI CPAs carry them.
_AES_OID = "2.16.840.1.101.3.4.1"
_CIPHERS: Mapping[str, tuple[int, str]] = {
    "http://www.w3.org/2009/xmlenc11#aes128-gcm": (128, f"{_AES_OID}.6"),
    "http://www.w3.org/2009/xmlenc11#aes192-gcm": (192, f"{_AES_OID}.26"),
    "http://www.w3.org/2009/xmlenc11#aes256-gcm": (256, f"{_AES_OID}.46"),
    "http://www.w3.org/2001/04/xmlenc#aes128-cbc": (128, f"{_AES_OID}.2"),
    "http://www.w3.org/2001/04/xmlenc#aes192-cbc": (192, f"{_AES_OID}.22"),
    "http://www.w3.org/2001/04/xmlenc#aes256-cbc": (256, f"{_AES_OID}.42"),
}

# Characters that may stand in an xsd:ID (NCName) or, per DK-BP, in a CPAId.
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_NOT_CPAID_CHAR = re.compile(r"[^A-Za-z0-9_-]")
_WHITESPACE = re.compile(r"\s")
# RFC 3986 reserved and unreserved characters: kept as they are when a name goes into a URI.
_URI_SAFE = ":/?#[]@!$&'()*+,;=-._~"


class CpaSpecError(ValueError):
    """An inconsistent :class:`CpaSpec`; the message starts with the offending field."""


@dataclass(frozen=True)
class PartySpec:
    """One of the two parties of a CPA (becomes a ``PartyInfo``)."""

    name: str
    """``partyName``, e.g. "Gemeente Voorbeeld"."""
    party_id: str
    """PartyId, e.g. the 20-digit OIN "00000001001234567000"."""
    role: str
    """``Role/@name``, e.g. "Gemeente" (no whitespace)."""
    endpoint: str
    """Full http(s) URL of this party's ebMS endpoint."""
    tls_client_cert: x509.Certificate
    tls_server_cert: x509.Certificate
    signing_cert: x509.Certificate | None = None
    """Required for the -s and -e profiles."""
    encryption_cert: x509.Certificate | None = None
    """Required for the -e profiles."""
    party_id_type: str = "urn:osb:oin"


@dataclass(frozen=True)
class ActionSpec:
    """A business action of the service and which party sends it."""

    name: str
    """The ebMS Action (no whitespace)."""
    sender: Literal["a", "b", "both"]
    """The party that sends it (``CanSend``); the other one receives it (``CanReceive``).

    ``"both"``: each party may send it to the other (a StUF Fo01 goes either way).
    """


@dataclass(frozen=True)
class CpaSpec:
    """Everything that varies between Digikoppeling CPAs; the rest follows from the profile."""

    a: PartySpec
    b: PartySpec
    service: str
    """Service, ``[organisatie]:[service]:[versie]``, e.g. "GGK:iWmo:3.2" (no whitespace)."""
    actions: tuple[ActionSpec, ...]
    profile: str
    """One of :data:`PROFILES`."""
    start: datetime
    """Start of validity (timezone-aware)."""
    end: datetime
    """End of validity (timezone-aware)."""
    cpa_id: str | None = None
    """Default ``{service}_{a.party_id}_{b.party_id}_{uuid4}``, unsafe characters as "_"."""
    service_type: str = "urn:osb:services"
    process_name: str | None = None
    """ProcessSpecification name; default: the service."""
    retries: int = 8
    retry_interval: timedelta = timedelta(hours=3)
    persist_duration: timedelta = timedelta(days=1)
    sync_reply: bool = False
    """``syncReplyMode="mshSignalsOnly"``; only with a reliable-messaging profile."""
    ack_signed: bool = False
    """``ackSignatureRequested="always"``; only with osb-rm-s / osb-rm-e."""
    hash_function: str = "http://www.w3.org/2001/04/xmlenc#sha256"
    signature_algorithm: str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    encryption_algorithm: str = "http://www.w3.org/2009/xmlenc11#aes256-gcm"
    time_to_perform: timedelta = timedelta(days=2)


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class _Profile:
    name: str
    reliable: bool
    signed: bool
    encrypted: bool


def _profile(name: str) -> _Profile:
    # §2.1: "-rm" adds acks + duplicate elimination; "-s" signs; "-e" signs *and* encrypts.
    return _Profile(
        name=name,
        reliable=name.startswith("osb-rm"),
        signed=name.endswith(("-s", "-e")),
        encrypted=name.endswith("-e"),
    )


# --------------------------------------------------------------------------- values


def format_duration(td: timedelta) -> str:
    """Format a timedelta as xsd:duration: ``PT3H``, ``P1D``, ``PT5M``, ``PT0.5S``, ``P1DT2H``.

    Days are not folded into months or years, which have no fixed length.
    """
    if td < timedelta(0):
        return "-" + format_duration(-td)
    hours, rest = divmod(td.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    date_part = f"{td.days}D" if td.days else ""
    time_part = "".join(f"{value}{unit}" for value, unit in ((hours, "H"), (minutes, "M")) if value)
    if seconds or td.microseconds:
        time_part += _decimal_seconds(seconds, td.microseconds) + "S"
    if not date_part and not time_part:
        return "PT0S"
    return "P" + date_part + (f"T{time_part}" if time_part else "")


def _decimal_seconds(seconds: int, microseconds: int) -> str:
    if not microseconds:
        return str(seconds)
    return f"{seconds}.{microseconds:06d}".rstrip("0")


def _format_datetime(value: datetime) -> str:
    # ebMS 2.0 and the RI expect UTC with a "Z" designator.
    utc = value.astimezone(UTC).replace(tzinfo=None)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    if utc.microsecond:
        text = text.rstrip("0")
    return text + "Z"


def _uri_part(text: str) -> str:
    return quote(text, safe=_URI_SAFE)


def _cert_base64(cert: x509.Certificate) -> str:
    # One line of base64 DER: no wrapping that a reader would have to strip.
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")


def default_cpa_id(spec: CpaSpec) -> str:
    """A fresh CPAId ``[ServiceID]_[PartyId-A]_[PartyId-B]_[uuid4]`` (§6.5).

    Characters other than ``[A-Za-z0-9_-]`` become "_": some adapters use the CPAId as a
    file name, so DK-BP advises against dots and other odd characters.
    """
    parts = (spec.service, spec.a.party_id, spec.b.party_id, str(uuid.uuid4()))
    return "_".join(_NOT_CPAID_CHAR.sub("_", part) for part in parts)


# --------------------------------------------------------------------------- validation


def _fail(field: str, problem: str) -> CpaSpecError:
    return CpaSpecError(f"{field}: {problem}")


def _require_token(value: str, field: str) -> None:
    """Refuse empty values and whitespace (DK: Service, Action, Role, ids carry none)."""
    if not value:
        raise _fail(field, "must not be empty")
    if _WHITESPACE.search(value):
        raise _fail(field, f"must not contain whitespace: {value!r}")


def _require_positive(value: timedelta, field: str) -> None:
    if value <= timedelta(0):
        raise _fail(field, f"must be a positive duration, got {value!r}")


def _check_endpoint(url: str, field: str) -> None:
    _require_token(url, field)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError as exc:
        raise _fail(field, f"not a valid URL: {url!r} ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(field, f"must be an http(s) URL with a host, got {url!r}")


def _check_party(party: PartySpec, field: str) -> None:
    if not party.name.strip():
        raise _fail(f"{field}.name", "must not be empty")
    _require_token(party.party_id, f"{field}.party_id")
    _require_token(party.party_id_type, f"{field}.party_id_type")
    _require_token(party.role, f"{field}.role")
    _check_endpoint(party.endpoint, f"{field}.endpoint")
    for attr in ("tls_client_cert", "tls_server_cert"):
        if not isinstance(getattr(party, attr), x509.Certificate):
            raise _fail(f"{field}.{attr}", "must be an x509.Certificate")


def _check_parties(spec: CpaSpec) -> None:
    _check_party(spec.a, "a")
    _check_party(spec.b, "b")
    # §6.2: messages are resolved to a PartyInfo by PartyId; two equal ones are ambiguous.
    if (spec.a.party_id_type, spec.a.party_id) == (spec.b.party_id_type, spec.b.party_id):
        raise _fail("b.party_id", f"must differ from a.party_id ({spec.a.party_id!r})")


def _check_period(spec: CpaSpec) -> None:
    for field, value in (("start", spec.start), ("end", spec.end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _fail(field, f"must be timezone-aware, got {value.isoformat()}")
    if spec.start >= spec.end:
        raise _fail("end", f"must be after start ({spec.start} >= {spec.end})")


def _check_actions(actions: Sequence[ActionSpec]) -> None:
    if not actions:
        raise _fail("actions", "at least one action is required")
    seen: set[str] = set()
    for index, action in enumerate(actions):
        field = f"actions[{index}]"
        _require_token(action.name, f"{field}.name")
        if action.sender not in ("a", "b", "both"):
            raise _fail(f"{field}.sender", f"must be 'a', 'b' or 'both', got {action.sender!r}")
        if action.name in seen:
            raise _fail(f"{field}.name", f"duplicate action {action.name!r}")
        seen.add(action.name)


def _check_certificates(spec: CpaSpec, profile: _Profile) -> None:
    for key, party in (("a", spec.a), ("b", spec.b)):
        # §5.3: the verifier takes the signing key from the CPA, never from the message.
        if profile.signed and party.signing_cert is None:
            raise _fail(f"{key}.signing_cert", f"required for profile {profile.name}")
        # §5.4: the sender encrypts for the receiver's EncryptionCertificateRef.
        if profile.encrypted and party.encryption_cert is None:
            raise _fail(f"{key}.encryption_cert", f"required for profile {profile.name}")


def _check_messaging(spec: CpaSpec, profile: _Profile) -> None:
    # §2.4: synchronous signals exist only in the RM profiles (DK-BP EB015).
    if spec.sync_reply and not profile.reliable:
        raise _fail("sync_reply", f"only allowed with an RM profile, not {profile.name}")
    # §2.2/§4.4: a signed acknowledgment needs an acknowledgment and a signature.
    if spec.ack_signed and not (profile.reliable and profile.signed):
        raise _fail("ack_signed", f"only allowed with osb-rm-s or osb-rm-e, not {profile.name}")
    if isinstance(spec.retries, bool) or not isinstance(spec.retries, int) or spec.retries < 0:
        raise _fail("retries", f"must be an integer >= 0, got {spec.retries!r}")
    _require_positive(spec.retry_interval, "retry_interval")
    _require_positive(spec.persist_duration, "persist_duration")
    _require_positive(spec.time_to_perform, "time_to_perform")


def _check_names(spec: CpaSpec) -> None:
    _require_token(spec.service, "service")
    _require_token(spec.service_type, "service_type")
    if spec.cpa_id is not None:
        _require_token(spec.cpa_id, "cpa_id")
    if spec.process_name is not None and not spec.process_name.strip():
        raise _fail("process_name", "must not be empty")
    for field in ("hash_function", "signature_algorithm", "encryption_algorithm"):
        _require_token(getattr(spec, field), field)


def validate_spec(spec: CpaSpec) -> None:
    """Raise :class:`CpaSpecError` for the first inconsistency found in ``spec``."""
    if spec.profile not in PROFILES:
        raise _fail("profile", f"unknown profile {spec.profile!r}; expected one of {PROFILES}")
    profile = _profile(spec.profile)
    _check_names(spec)
    _check_parties(spec)
    _check_period(spec)
    _check_actions(spec.actions)
    _check_certificates(spec, profile)
    _check_messaging(spec, profile)


# --------------------------------------------------------------------------- identifiers


@dataclass(frozen=True)
class _Ids:
    """The xsd:ID values of one PartyInfo, all prefixed with the party's letter."""

    prefix: str
    profile: str

    @property
    def business_channel(self) -> str:
        return f"{self.prefix}_channel_{self.profile}"

    @property
    def msh_channel(self) -> str:
        return f"{self.prefix}_channel_msh"

    @property
    def business_doc_exchange(self) -> str:
        return f"{self.prefix}_docExchange_{self.profile}"

    @property
    def msh_doc_exchange(self) -> str:
        return f"{self.prefix}_docExchange_msh"

    @property
    def transport(self) -> str:
        return f"{self.prefix}_transport"

    @property
    def transport_security(self) -> str:
        return f"{self.prefix}_TransportSecurity"

    @property
    def message_security(self) -> str:
        return f"{self.prefix}_MessageSecurity"

    def cert(self, kind: str) -> str:
        return f"{self.prefix}_{kind}Cert"

    def send_binding(self, token: str) -> str:
        return f"{self.prefix}_S_{token}"

    def receive_binding(self, token: str) -> str:
        return f"{self.prefix}_R_{token}"


def _action_tokens(actions: Sequence[ActionSpec]) -> dict[str, str]:
    """Map each action name to the NCName-safe suffix of its binding ids.

    Action names may hold characters an xsd:ID cannot (":" for one); those become "_",
    and a suffix keeps two names that collapse to the same token apart.
    """
    tokens: dict[str, str] = {}
    used: set[str] = set()
    for action in actions:
        base = _NOT_ID_CHAR.sub("_", action.name)
        token, counter = base, 1
        while token in used:
            counter += 1
            token = f"{base}_{counter}"
        used.add(token)
        tokens[action.name] = token
    return tokens


# --------------------------------------------------------------------------- XML helpers


def _a(**attrs: str) -> dict[str, str]:
    """Attributes in the CPPA namespace (the schema has attributeFormDefault="qualified")."""
    return {f"{{{TNS}}}{name}": value for name, value in attrs.items()}


def _href(uri: str) -> dict[str, str]:
    return {_XLINK_HREF: uri}


def _bool(value: bool) -> str:
    return "true" if value else "false"


# --------------------------------------------------------------------------- the builder


@dataclass(frozen=True)
class _Context:
    """A validated spec plus what is derived from it once."""

    spec: CpaSpec
    profile: _Profile
    tokens: Mapping[str, str]

    @property
    def process_uri(self) -> str:
        return f"urn:osb:process:{_uri_part(self.spec.service)}"


@dataclass(frozen=True)
class _Side:
    """One party seen from its own PartyInfo: who it is and who the other party is."""

    key: Literal["a", "b"]
    party: PartySpec
    ids: _Ids
    other: _Ids


def _sides(ctx: _Context) -> tuple[_Side, _Side]:
    a_ids = _Ids("A", ctx.profile.name)
    b_ids = _Ids("B", ctx.profile.name)
    return (
        _Side("a", ctx.spec.a, a_ids, b_ids),
        _Side("b", ctx.spec.b, b_ids, a_ids),
    )


def _business_characteristics(ctx: _Context) -> etree._Element:
    # §2.2: the DK-BP fixed values, raised to "transient-and-persistent" where the profile
    # adds message-level security (signature: authenticity/integrity; encryption: secrecy).
    signed, encrypted = ctx.profile.signed, ctx.profile.encrypted
    message_level = "transient-and-persistent"
    return _E.BusinessTransactionCharacteristics(
        _a(
            isNonRepudiationRequired=_bool(signed),
            isNonRepudiationReceiptRequired=_bool(signed),
            isConfidential=message_level if encrypted else "transient",
            isAuthenticated=message_level if signed else "transient",
            isTamperProof=message_level if signed else "transient",
            isAuthorizationRequired="true",
            isIntelligibleCheckRequired="false",
            timeToPerform=format_duration(ctx.spec.time_to_perform),
        )
    )


def _action_binding(
    ctx: _Context, side: _Side, action: ActionSpec, sending: bool
) -> etree._Element:
    token = ctx.tokens[action.name]
    if sending:
        this_id, other_id = side.ids.send_binding(token), side.other.receive_binding(token)
    else:
        this_id, other_id = side.ids.receive_binding(token), side.other.send_binding(token)
    this = _E.ThisPartyActionBinding(
        _a(id=this_id, action=action.name, packageId=_MESSAGE_PACKAGE),
        _business_characteristics(ctx),
        _E.ChannelId(side.ids.business_channel),
    )
    wrapper = _E.CanSend if sending else _E.CanReceive
    # §6.2: the sender's CanSend and the receiver's CanReceive point at each other.
    return wrapper(this, _E.OtherPartyActionBinding(other_id))


def _service_binding(ctx: _Context, side: _Side) -> etree._Element:
    sends = [a for a in ctx.spec.actions if a.sender in (side.key, "both")]
    receives = [a for a in ctx.spec.actions if a.sender != side.key]
    # Schema order: Service, all CanSend, then all CanReceive.
    return _E.ServiceBinding(
        _E.Service(_a(type=ctx.spec.service_type), ctx.spec.service),
        *(_action_binding(ctx, side, action, sending=True) for action in sends),
        *(_action_binding(ctx, side, action, sending=False) for action in receives),
    )


def _collaboration_role(ctx: _Context, side: _Side) -> etree._Element:
    # §6.1 / DK: one Role per party per CPA, hence one CollaborationRole.
    spec = ctx.spec
    return _E.CollaborationRole(
        _E.ProcessSpecification(
            _a(name=spec.process_name or spec.service, version="1.0", uuid=ctx.process_uri),
            _href(ctx.process_uri),
        ),
        _E.Role(_a(name=side.party.role), _href(f"{ctx.process_uri}#{_uri_part(side.party.role)}")),
        _service_binding(ctx, side),
    )


def _certificates_of(ctx: _Context, side: _Side) -> Iterator[tuple[str, x509.Certificate]]:
    """The (certId, certificate) pairs the profile uses, in document order."""
    party = side.party
    yield side.ids.cert("TLSClient"), party.tls_client_cert
    yield side.ids.cert("TLSServer"), party.tls_server_cert
    if ctx.profile.signed and party.signing_cert is not None:
        yield side.ids.cert("Signing"), party.signing_cert
    if ctx.profile.encrypted and party.encryption_cert is not None:
        yield side.ids.cert("Encryption"), party.encryption_cert


def _certificate(cert_id: str, cert: x509.Certificate) -> etree._Element:
    return _E.Certificate(
        _a(certId=cert_id),
        _DSE.KeyInfo(_DSE.X509Data(_DSE.X509Certificate(_cert_base64(cert)))),
    )


def _security_details(ctx: _Context, side: _Side) -> Iterator[etree._Element]:
    # As in the RI CPAs: one set of trust anchors for TLS, one for message-level security.
    ids = side.ids
    transport = (ids.cert("TLSClient"), ids.cert("TLSServer"))
    yield _trust_anchors(ids.transport_security, transport)
    if ctx.profile.signed:
        message = [ids.cert("Signing")]
        if ctx.profile.encrypted:
            message.append(ids.cert("Encryption"))
        yield _trust_anchors(ids.message_security, message)


def _trust_anchors(security_id: str, cert_ids: Sequence[str]) -> etree._Element:
    return _E.SecurityDetails(
        _a(securityId=security_id),
        _E.TrustAnchors(*(_E.AnchorCertificateRef(_a(certId=c)) for c in cert_ids)),
    )


def _sync_reply_mode(ctx: _Context) -> str:
    # §2.4: only "none" or (RM, bilateral) "mshSignalsOnly" are allowed.
    return "mshSignalsOnly" if ctx.spec.sync_reply else "none"


def _business_channel(ctx: _Context, side: _Side) -> etree._Element:
    # §2.2: RM = acknowledgments + duplicate elimination, always, to the To party's MSH.
    reliable = "always" if ctx.profile.reliable else "never"
    return _E.DeliveryChannel(
        _a(
            channelId=side.ids.business_channel,
            transportId=side.ids.transport,
            docExchangeId=side.ids.business_doc_exchange,
        ),
        _E.MessagingCharacteristics(
            _a(
                syncReplyMode=_sync_reply_mode(ctx),
                ackRequested=reliable,
                ackSignatureRequested="always" if ctx.spec.ack_signed else "never",
                duplicateElimination=reliable,
                actor=_TO_PARTY_MSH,
            )
        ),
    )


def _msh_channel(ctx: _Context, side: _Side) -> etree._Element:
    # §6.5: the default MSH channel carries the signals (Acknowledgment, MessageError,
    # Ping/Pong).  Signals are never acknowledged themselves (§3.1), but travel the same way
    # (sync or async) as the business channel's acknowledgments and are signed alike.
    return _E.DeliveryChannel(
        _a(
            channelId=side.ids.msh_channel,
            transportId=side.ids.transport,
            docExchangeId=side.ids.msh_doc_exchange,
        ),
        _E.MessagingCharacteristics(
            _a(
                syncReplyMode=_sync_reply_mode(ctx),
                ackRequested="never",
                ackSignatureRequested="never",
                duplicateElimination="never",
                actor=_TO_PARTY_MSH,
            )
        ),
    )


def _tls(version: str = "1.2") -> etree._Element:
    # DK forbids SSLv3 and TLS 1.0/1.1 (§2.5); TLS 1.2 is the floor.
    return _E.TransportSecurityProtocol(_a(version=version), "TLS")


def _http() -> etree._Element:
    # §6.5: TransportProtocol HTTP version 1.1.
    return _E.TransportProtocol(_a(version="1.1"), "HTTP")


def _transport(side: _Side) -> etree._Element:
    # §2.3: security profile 3, two-way TLS: a client certificate on every sender.
    ids = side.ids
    return _E.Transport(
        _a(transportId=ids.transport),
        _E.TransportSender(
            _http(),
            _E.TransportClientSecurity(
                _tls(),
                _E.ClientCertificateRef(_a(certId=ids.cert("TLSClient"))),
                _E.ServerSecurityDetailsRef(_a(securityId=ids.transport_security)),
            ),
        ),
        _E.TransportReceiver(
            _http(),
            _E.Endpoint(_a(uri=side.party.endpoint, type="allPurpose")),
            _E.TransportServerSecurity(
                _tls(),
                _E.ServerCertificateRef(_a(certId=ids.cert("TLSServer"))),
                _E.ClientSecurityDetailsRef(_a(securityId=ids.transport_security)),
            ),
        ),
    )


def _reliable_messaging(ctx: _Context) -> list[etree._Element]:
    # §4.1 / §6.5: DK-BP defaults 8 retries every 3 hours, persist 1 day; order not kept.
    spec = ctx.spec
    return [
        _E.ReliableMessaging(
            _E.Retries(str(spec.retries)),
            _E.RetryInterval(format_duration(spec.retry_interval)),
            _E.MessageOrderSemantics("NotGuaranteed"),
        ),
        _E.PersistDuration(format_duration(spec.persist_duration)),
    ]


def _signature_algorithms(ctx: _Context) -> list[etree._Element]:
    # §5.3: the receiver rejects a signature whose algorithms differ from these.
    return [
        _E.NonRepudiationProtocol(_XMLDSIG_PROTOCOL),
        _E.HashFunction(ctx.spec.hash_function),
        _E.SignatureAlgorithm(ctx.spec.signature_algorithm),
    ]


def _encryption_algorithm(ctx: _Context) -> list[etree._Element]:
    # §5.4: XMLENC 1.0; readers take @w3c when present, else the text.
    algorithm = ctx.spec.encryption_algorithm
    attrs = {"w3c": algorithm}
    if algorithm in _CIPHERS:
        strength, oid = _CIPHERS[algorithm]
        attrs.update(minimumStrength=str(strength), oid=oid)
    return [
        _E.DigitalEnvelopeProtocol(_a(version="1.0"), "XMLENC"),
        _E.EncryptionAlgorithm(_a(**attrs), algorithm),
    ]


def _sender_binding(ctx: _Context, side: _Side, business: bool) -> etree._Element:
    ids = side.ids
    children: list[etree._Element] = []
    if business and ctx.profile.reliable:
        children += _reliable_messaging(ctx)
    if ctx.profile.signed:
        children.append(
            _E.SenderNonRepudiation(
                *_signature_algorithms(ctx),
                _E.SigningCertificateRef(_a(certId=ids.cert("Signing"))),
            )
        )
    if business and ctx.profile.encrypted:
        children.append(
            _E.SenderDigitalEnvelope(
                *_encryption_algorithm(ctx),
                _E.EncryptionSecurityDetailsRef(_a(securityId=ids.message_security)),
            )
        )
    return _E.ebXMLSenderBinding(_a(version="2.0"), *children)


def _receiver_binding(ctx: _Context, side: _Side, business: bool) -> etree._Element:
    ids = side.ids
    children: list[etree._Element] = []
    if business and ctx.profile.reliable:
        children += _reliable_messaging(ctx)
    if ctx.profile.signed:
        children.append(
            _E.ReceiverNonRepudiation(
                *_signature_algorithms(ctx),
                _E.SigningSecurityDetailsRef(_a(securityId=ids.message_security)),
            )
        )
    # §5.4: only payloads are encrypted; signals carry none, so the MSH channel has no envelope.
    if business and ctx.profile.encrypted:
        children.append(
            _E.ReceiverDigitalEnvelope(
                *_encryption_algorithm(ctx),
                _E.EncryptionCertificateRef(_a(certId=ids.cert("Encryption"))),
            )
        )
    return _E.ebXMLReceiverBinding(_a(version="2.0"), *children)


def _doc_exchange(ctx: _Context, side: _Side, business: bool) -> etree._Element:
    doc_exchange_id = side.ids.business_doc_exchange if business else side.ids.msh_doc_exchange
    return _E.DocExchange(
        _a(docExchangeId=doc_exchange_id),
        _sender_binding(ctx, side, business),
        _receiver_binding(ctx, side, business),
    )


def _party_info(ctx: _Context, side: _Side) -> etree._Element:
    party = side.party
    # Schema order: PartyId, PartyRef, CollaborationRole, Certificate, SecurityDetails,
    # DeliveryChannel, Transport, DocExchange.
    return _E.PartyInfo(
        _a(
            partyName=party.name,
            defaultMshChannelId=side.ids.msh_channel,
            defaultMshPackageId=_MSH_PACKAGE,
        ),
        _E.PartyId(_a(type=party.party_id_type), party.party_id),
        _E.PartyRef(_href(f"{party.party_id_type}:{_uri_part(party.party_id)}")),
        _collaboration_role(ctx, side),
        *(_certificate(cert_id, cert) for cert_id, cert in _certificates_of(ctx, side)),
        *_security_details(ctx, side),
        _business_channel(ctx, side),
        _msh_channel(ctx, side),
        _transport(side),
        _doc_exchange(ctx, side, business=True),
        _doc_exchange(ctx, side, business=False),
    )


def _simple_parts() -> list[etree._Element]:
    return [
        _E.SimplePart(
            _a(id="MsgHdr", mimetype="text/xml"),
            _E.NamespaceSupported(_a(location=_MSG_HEADER_XSD, version="2.0"), _MSG_HEADER_XSD),
        ),
        _E.SimplePart(_a(id="XMLMsg", mimetype="application/xml")),
    ]


def _packaging(package_id: str, composite_id: str, parts: Sequence[str]) -> etree._Element:
    return _E.Packaging(
        _a(id=package_id),
        _E.ProcessingCapabilities(_a(parse="true", generate="true")),
        _E.CompositeList(
            _E.Composite(
                _a(id=composite_id, mimetype="multipart/related", mimeparameters="type=text/xml"),
                *(_E.Constituent(_a(idref=part)) for part in parts),
            )
        ),
    )


def _cpa(ctx: _Context, cpa_id: str) -> etree._Element:
    spec = ctx.spec
    side_a, side_b = _sides(ctx)
    return _E.CollaborationProtocolAgreement(
        _a(cpaid=cpa_id, version=_CPA_VERSION),
        # §6.3: a "proposed" CPA is refused at import; a generated one is agreed.
        _E.Status(_a(value="agreed")),
        _E.Start(_format_datetime(spec.start)),
        _E.End(_format_datetime(spec.end)),
        _party_info(ctx, side_a),
        _party_info(ctx, side_b),
        *_simple_parts(),
        _packaging(_MSH_PACKAGE, "MshSignal", ["MsgHdr"]),
        _packaging(_MESSAGE_PACKAGE, "Message", ["MsgHdr", "XMLMsg"]),
    )


def make_cpa(spec: CpaSpec) -> bytes:
    """Build the CPA described by ``spec`` as a pretty-printed UTF-8 XML document.

    Raises :class:`CpaSpecError` when the spec is inconsistent (see :func:`validate_spec`).
    """
    validate_spec(spec)
    ctx = _Context(spec=spec, profile=_profile(spec.profile), tokens=_action_tokens(spec.actions))
    cpa_id = spec.cpa_id if spec.cpa_id is not None else default_cpa_id(spec)
    document: bytes = etree.tostring(
        _cpa(ctx, cpa_id), xml_declaration=True, encoding="UTF-8", pretty_print=True
    )
    return document
