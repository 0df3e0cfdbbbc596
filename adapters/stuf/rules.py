"""Content-layer checks on one ggk0210 envelope, in the order of docs/stuf.md.

``check`` takes the envelope bytes as received (from the back office or from
the node) and returns a :class:`Verdict`: the unwrapped envelope, the payload
and every rejection, each with its own code.  Checks stop at the first
structural failure after which later rules cannot run (too large, not
parseable, unknown functie, unreadable payload); the others are all reported.
No I/O: the duplicate store is injected as ``seen``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from lxml import etree

from adapters.stuf import codes
from adapters.stuf.catalogue import MessageType, Party, allowed, message_type, payload_id
from adapters.stuf.codes import Rejection
from adapters.stuf.envelope import (
    LEGACY_NS,
    Envelope,
    EnvelopeError,
    from_tree,
    parse,
)
from adapters.stuf.schemas import (
    Finding,
    SchemaUnavailable,
    validate_envelope,
    validate_payload_tree,
)
from xmlsafe import UnsafeXmlError, parse_xml

MB = 1024 * 1024
#: The chain's limit for the whole envelope incl. base64 [GGk21 §2.2; FC18 IB007].
SIZE_25MB = 25 * MB
#: The stricter limit of the 2.0 envelope, selectable per exchange [GGk20].
SIZE_10MB = 10 * MB
#: Fixed ontvanger/applicatie towards the node [GGk21 §3].
GGK_APPLICATIE = "GGk"
_UUID_FIELDS = ("referentienummer", "crossRefnummer")
_BOM = b"\xef\xbb\xbf"


class Role(StrEnum):
    """Who hands the envelope to the gateway."""

    #: The gemeente's back office sends towards the node (outbound).
    GEMEENTE = "gemeente"
    #: The node forwards a message of an aanbieder or the CAK (inbound).
    NODE = "node"


@dataclass(frozen=True)
class Settings:
    """Per-exchange configuration of the checks.

    ``releases``: payload releases accepted, e.g. ``"3.2"`` (any standard) or
    ``"ijw/2.3"`` (one standard).  ``enabled``: functies enabled (None: all in
    the catalogue).  ``gemeentecodes``: per sender identity (API client, ebMS
    party) the gemeentecodes it may send for (outbound) or deliver to
    (inbound); without a ``sender`` the union is used.  Empty means no
    gemeente is authorised (fail closed).  ``require_payload_schema``: reject
    a payload whose XSD this gateway lacks instead of noting it.
    """

    max_bytes: int = SIZE_25MB
    releases: frozenset[str] = frozenset({"3.2", "ieb/1.0"})
    enabled: frozenset[str] | None = None
    gemeentecodes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    require_payload_schema: bool = False
    max_findings: int = 10

    def release_allowed(self, standard: str, release: str) -> bool:
        """Whether payloads of ``standard`` at ``release`` are accepted."""
        return release in self.releases or f"{standard}/{release}" in self.releases

    def authorised(self, sender: str | None) -> frozenset[str]:
        """The gemeentecodes ``sender`` may use."""
        if sender is not None:
            return self.gemeentecodes.get(sender, frozenset())
        return frozenset().union(*self.gemeentecodes.values())


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check`; ``ok`` when there is no rejection."""

    envelope: Envelope | None
    payload: bytes | None = field(repr=False)
    rejections: tuple[Rejection, ...]
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no rule rejected the message."""
        return not self.rejections

    @property
    def codes(self) -> list[str]:
        """The rejection codes, in rule order."""
        return [r.code for r in self.rejections]


class _Stop(Exception):
    """A structural failure: later rules cannot run."""


@dataclass
class _Run:
    rejections: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def reject(self, code: str, text: str, location: str | None = None) -> None:
        self.rejections.append(Rejection(code, text, location))

    def stop(self, code: str, text: str, location: str | None = None) -> _Stop:
        self.reject(code, text, location)
        return _Stop()

    def finding(self, code: str, what: str, f: Finding) -> None:
        self.reject(code, f"{what}: {f}", f.location)


def check(
    envelope_bytes: bytes,
    *,
    role: Role,
    settings: Settings,
    sender: str | None = None,
    seen: Callable[[str, str], bool] | None = None,
) -> Verdict:
    """Run the docs/stuf.md checks on one envelope; never raises for bad input.

    ``role`` says who hands it over (:class:`Role`); ``sender`` is the
    identity the transport authenticated, used for authorisation;
    ``seen(zender_organisatie, referentienummer)`` tells whether that pair was
    accepted before (IB216).
    """
    run = _Run()
    env: Envelope | None = None
    try:
        env = _envelope_rules(envelope_bytes, run, settings)
        mt = _routing_rules(env, run, role, settings)
        _payload_rules(env, mt, run, role, settings, sender)
    except _Stop:
        pass
    if (
        env is not None
        and seen is not None
        and _structurally_sound(run)
        and seen(env.stuurgegevens.zender.organisatie, env.referentienummer)
    ):
        run.reject(
            codes.DUPLICATE,
            f"referentienummer {env.referentienummer} was already used by "
            f"{env.stuurgegevens.zender.organisatie} [IB216]",
        )
    return Verdict(env, env.payload if env else None, tuple(run.rejections), tuple(run.notes))


def _structurally_sound(run: _Run) -> bool:
    # Without a trustworthy referentienummer the duplicate check means nothing.
    return not any(
        r.code in (codes.TOO_LARGE, codes.ENVELOPE_INVALID, codes.STUF_VERSION, codes.NOT_UUID4)
        for r in run.rejections
    )


# -- 1-3: size, envelope XSD, UUIDs -------------------------------------------------


def _envelope_rules(data: bytes, run: _Run, settings: Settings) -> Envelope:
    max_bytes = settings.max_bytes
    if len(data) > max_bytes:
        raise run.stop(
            codes.TOO_LARGE,
            f"envelope is {len(data)} bytes, the limit is {max_bytes} [GGk21 §2.2]",
        )
    try:
        tree = parse(data, max_bytes=max_bytes)
    except EnvelopeError as exc:
        loc = f"line {exc.line}" if exc.line else None
        raise run.stop(codes.ENVELOPE_INVALID, f"envelope not readable: {exc}", loc) from None
    ns = etree.QName(tree.getroot()).namespace
    if ns in LEGACY_NS:
        raise run.stop(
            codes.STUF_VERSION,
            f"StUF-GGk envelope {LEGACY_NS[ns]} received; this exchange uses ggk0210 (2.1.04)",
        )
    findings = validate_envelope(tree)
    uuid_findings = [f for f in findings if _is_uuid_field(f)]
    other = [f for f in findings if not _is_uuid_field(f)]
    for f in uuid_findings:
        run.finding(codes.NOT_UUID4, "not a lower-case UUID v4 [GGk21 §2.7]", f)
    if other:
        for f in other[: settings.max_findings]:
            run.finding(codes.ENVELOPE_INVALID, "envelope not valid against ggk0210", f)
        raise _Stop()
    try:
        return from_tree(tree)
    except EnvelopeError as exc:  # XSD-valid yet unreadable: defence in depth
        raise run.stop(codes.ENVELOPE_INVALID, f"envelope not readable: {exc}") from None


def _is_uuid_field(f: Finding) -> bool:
    return f.path is not None and f.path.rsplit("/", 1)[-1] in _UUID_FIELDS


# -- 4-6: receiver, direction, functie ---------------------------------------------


def _routing_rules(env: Envelope, run: _Run, role: Role, settings: Settings) -> MessageType:
    sg = env.stuurgegevens
    if role is Role.GEMEENTE and sg.ontvanger.applicatie != GGK_APPLICATIE:
        run.reject(
            codes.RECEIVER_UNKNOWN,
            f"ontvanger/applicatie is {sg.ontvanger.applicatie!r}, must be 'GGk' [GGk21 §3]",
            "stuurgegevens/ontvanger/applicatie",
        )
    mt = message_type(sg.functie)
    if mt is None:
        raise run.stop(
            codes.FUNCTIE_UNKNOWN,
            f"functie {sg.functie!r} is not a supported message type",
            "stuurgegevens/functie",
        )
    direction = allowed(sg.functie, sg.berichtcode, _sender_party(role, sg.zender.organisatie))
    if direction is not None:
        run.reject(direction.code, direction.text, "stuurgegevens/berichtcode")
    elif role is Role.GEMEENTE and not _receiver_shape_ok(mt, sg.ontvanger.organisatie):
        run.reject(
            codes.RECEIVER_UNKNOWN,
            f"ontvanger/organisatie does not identify a {mt.receiver.value} [GGk21 §3]",
            "stuurgegevens/ontvanger/organisatie",
        )
    if settings.enabled is not None and sg.functie not in settings.enabled:
        run.reject(
            codes.FUNCTIE_NOT_ENABLED,
            f"functie {sg.functie} is not enabled for this exchange",
            "stuurgegevens/functie",
        )
    return mt


def _sender_party(role: Role, zender_organisatie: str) -> Party:
    if role is Role.GEMEENTE:
        return Party.GEMEENTE
    # Through the node the sender is an aanbieder (AGB code) or a fixed word
    # such as CAK [GGk21 §3 organisatie].
    return Party.CAK if zender_organisatie == "CAK" else Party.AANBIEDER


def _receiver_shape_ok(mt: MessageType, organisatie: str) -> bool:
    # AGB code 8 digits; fixed words for CAK/CBS [GGk21 §3 organisatie].
    if mt.receiver is Party.AANBIEDER:
        return len(organisatie) == 8 and organisatie.isascii() and organisatie.isdigit()
    return organisatie == mt.receiver.value.upper()


# -- 7-10: payload, gemeentecode, authorisation, payload XSD -------------------------


def _payload_rules(
    env: Envelope,
    mt: MessageType,
    run: _Run,
    role: Role,
    settings: Settings,
    sender: str | None,
) -> None:
    sg = env.stuurgegevens
    gemeente = sg.zender.organisatie if role is Role.GEMEENTE else sg.ontvanger.organisatie
    if not mt.xml:
        if env.bestandsnaam is None:
            run.reject(codes.PAYLOAD_UNREADABLE, f"{mt.name} is sent as a tekstBestand")
        _authorisation(gemeente, run, settings, sender)
        return
    if env.bestandsnaam is not None:
        raise run.stop(
            codes.PAYLOAD_UNREADABLE, f"{mt.name} must be an xmlBestand, not a tekstBestand"
        )
    tree = _payload_tree(env.payload, run, settings.max_bytes)
    root = tree.getroot()
    qname = etree.QName(root)
    pid = payload_id(qname.namespace or "")
    if pid is None or qname.localname != "Bericht" or pid.functie != sg.functie:
        found = pid.functie if pid else f"{{{qname.namespace}}}{qname.localname}"
        raise run.stop(
            codes.PAYLOAD_NOT_FUNCTIE,
            f"payload is {found}, functie says {sg.functie}",
            f"line {root.sourceline}, /{qname.localname}",
        )
    if not settings.release_allowed(pid.standard.value, pid.release):
        raise run.stop(
            codes.RELEASE_NOT_ALLOWED,
            f"{pid.standard.value} release {pid.release} is not enabled for this exchange",
            f"line {root.sourceline}, /Bericht",
        )
    header = root.find(f"{{{qname.namespace}}}Header")
    _versions(env, header, qname.namespace or "", run)
    _gemeentecode(gemeente, mt, header, qname.namespace or "", run)
    _authorisation(gemeente, run, settings, sender)
    _payload_schema(tree, pid.standard.value, pid.release, run, settings)


def _payload_tree(payload: bytes, run: _Run, max_bytes: int) -> etree._ElementTree:
    if payload.startswith(_BOM):
        raise run.stop(
            codes.PAYLOAD_UNREADABLE, "payload starts with a byte order mark [GGk21 §2.2]"
        )
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise run.stop(
            codes.PAYLOAD_UNREADABLE, f"payload is not UTF-8 (byte {exc.start}) [GGk21 §2.2]"
        ) from None
    try:
        return parse_xml(payload, max_bytes=max_bytes, huge_text=True)
    except UnsafeXmlError as exc:
        loc = f"payload line {exc.line}" if exc.line else None
        raise run.stop(codes.PAYLOAD_UNREADABLE, f"payload: {exc}", loc) from None


def _header_text(header: etree._Element | None, ns: str, name: str) -> str | None:
    if header is None:
        return None
    node = header.find(f"{{{ns}}}{name}")
    if node is None or not node.xpath("text()"):
        return None
    # The text children joined: a comment or PI inside the value splits node.text.
    return "".join(str(t) for t in node.xpath("text()")).strip()


def _versions(env: Envelope, header: etree._Element | None, ns: str, run: _Run) -> None:
    # functieVersie/-Subversie are the payload message's version, 4 digits
    # ("0003"/"0002" for 3.2) [GGk21 §2.6, §3.2-§3.3].
    p = env.parameters
    for element, envelope_value in (
        ("BerichtVersie", p.functie_versie),
        ("BerichtSubversie", p.functie_subversie),
    ):
        value = _header_text(header, ns, element)
        if (
            value is None
            or not (value.isascii() and value.isdigit())
            or int(value) != int(envelope_value)
        ):
            run.reject(
                codes.VERSION_MISMATCH,
                f"payload Header/{element} differs from functie"
                f"{element.removeprefix('Bericht')} {envelope_value}",
                f"/Bericht/Header/{element}",
            )


def _gemeentecode(
    gemeente: str, mt: MessageType, header: etree._Element | None, ns: str, run: _Run
) -> None:
    # The envelope's gemeente (zender when the gemeente sends, ontvanger when
    # it receives) must sit in the payload header position of this message
    # type [GGk21 §3.2-§3.3: organisatie is the CBS gemeentecode; FC17 CC09;
    # positions in :mod:`adapters.stuf.catalogue`].
    assert mt.gemeente_element is not None
    in_payload = _header_text(header, ns, mt.gemeente_element)
    if in_payload != gemeente:
        # Both are organisation codes, not personal data: safe to name.
        run.reject(
            codes.GEMEENTE_MISMATCH,
            f"gemeentecode mismatch: envelope {gemeente}, payload "
            f"Header/{mt.gemeente_element} {in_payload or '(absent)'}",
            f"/Bericht/Header/{mt.gemeente_element}",
        )


def _authorisation(gemeente: str, run: _Run, settings: Settings, sender: str | None) -> None:
    if gemeente not in settings.authorised(sender):
        who = sender if sender is not None else "this gateway"
        run.reject(
            codes.NOT_AUTHORISED,
            f"{who} is not authorised for gemeentecode {gemeente} [FC18 IB002]",
        )


def _payload_schema(
    tree: etree._ElementTree, standard: str, release: str, run: _Run, settings: Settings
) -> None:
    try:
        findings = validate_payload_tree(tree, release)
    except SchemaUnavailable as exc:
        if settings.require_payload_schema:
            run.reject(codes.SCHEMA_UNAVAILABLE, str(exc))
        else:
            run.notes.append(f"payload XSD not checked: {exc}")
        return
    for f in findings[: settings.max_findings]:
        run.finding(codes.PAYLOAD_INVALID, "berichtbody is niet conform schema (StUF055)", f)
