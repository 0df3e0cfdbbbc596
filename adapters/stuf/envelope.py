"""The StUF-GGk envelope ggk0210 (v2.1.04): dataclasses, ``wrap`` and ``unwrap``.

Plain functions without I/O: bytes in, dataclasses out.  The payload travels
base64-encoded in ``parameters/bericht/xmlBestand`` (XML) or ``tekstBestand``
with a ``bestandsnaam`` (other files) [GGk21 §2.2, §2.7, §3.2-§3.3]; its
bytes are kept exactly as given, so ``unwrap(wrap(e)).payload == e.payload``.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lxml import etree

from xmlsafe import UnsafeXmlError, parse_xml

GGK_NS = "http://www.stufstandaarden.nl/koppelvlak/ggk0210"
STUF_NS = "http://www.egem.nl/StUF/StUF0301"
#: Older StUF-GGk envelope namespaces and their versions [Specificaties GGk0310
#: v2.1.03 and StUF-GGk0310 v2.0, VNG Realisatie 2016; the 2.1.03 sample
#: ``tests/fixtures/stuf/envelopes/ggk0310-Di01.xml``].
LEGACY_NS = {
    "http://www.stufstandaarden.nl/sectormodel/ggk/0210": "2.1.02/2.1.03 (ggk0310_21)",
    "http://www.egem.nl/StUF/sector/ggk/0310": "2.0/2.1.01 (ggk0310)",
}
DI01_ROOT = "envelopHeenbericht-ggk_Di01"
DU01_ROOT = "envelopRetourbericht-ggk_Du01"
_ROOTS = {DI01_ROOT: "Di01", DU01_ROOT: "Du01"}

#: Chain limit for the whole envelope including the base64 [GGk21 §2.2].
DEFAULT_MAX_BYTES = 25 * 1024 * 1024


class EnvelopeError(ValueError):
    """The bytes are not a readable ggk0210 envelope.

    ``line`` and ``path`` locate the problem when known.  The message never
    quotes payload content.
    """

    def __init__(self, message: str, line: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.path = path


@dataclass(frozen=True)
class Systeem:
    """``zender`` / ``ontvanger`` (Systeem_ggkberichten) [GGk21 §3]."""

    organisatie: str
    applicatie: str
    administratie: str | None = None
    gebruiker: str | None = None


@dataclass(frozen=True)
class Stuurgegevens:
    """Routing and tracking data; ``cross_refnummer`` only in a Du01 [GGk21 §3]."""

    berichtcode: str
    zender: Systeem
    ontvanger: Systeem
    referentienummer: str
    tijdstip_bericht: str
    functie: str
    cross_refnummer: str | None = None


@dataclass(frozen=True)
class Parameters:
    """The four 4-digit version fields of ``parameters`` [GGk21 §3]."""

    applicatie_versie: str
    applicatie_subversie: str
    functie_versie: str
    functie_subversie: str


@dataclass(frozen=True)
class Envelope:
    """A ggk0210 Di01 or Du01 with its decoded payload.

    ``bestandsnaam`` is None for an ``xmlBestand`` and set for a
    ``tekstBestand``.  The payload is kept out of ``repr`` so that logging an
    envelope never logs citizens' data.
    """

    stuurgegevens: Stuurgegevens
    parameters: Parameters
    payload: bytes = field(repr=False)
    bestandsnaam: str | None = None

    @property
    def berichtcode(self) -> str:
        """``Di01`` or ``Du01``."""
        return self.stuurgegevens.berichtcode

    @property
    def functie(self) -> str:
        """The message type, e.g. ``WMO301``."""
        return self.stuurgegevens.functie

    @property
    def referentienummer(self) -> str:
        """This envelope's UUID v4."""
        return self.stuurgegevens.referentienummer

    @classmethod
    def new(
        cls,
        payload: bytes,
        *,
        functie: str,
        zender: Systeem,
        ontvanger: Systeem,
        functie_versie: str,
        functie_subversie: str,
        cross_refnummer: str | None = None,
        berichtcode: str | None = None,
        applicatie_versie: str = "0001",
        applicatie_subversie: str = "0000",
        bestandsnaam: str | None = None,
        referentienummer: str | None = None,
        now: datetime | None = None,
    ) -> Envelope:
        """A fresh envelope: new referentienummer and tijdstipBericht.

        The berichtcode defaults to Du01 when answering (``cross_refnummer``
        given) and Di01 otherwise [GGk21 §2.2].
        """
        return cls(
            Stuurgegevens(
                berichtcode=berichtcode or ("Du01" if cross_refnummer else "Di01"),
                zender=zender,
                ontvanger=ontvanger,
                referentienummer=referentienummer or new_referentienummer(),
                tijdstip_bericht=tijdstip(now),
                functie=functie,
                cross_refnummer=cross_refnummer,
            ),
            Parameters(applicatie_versie, applicatie_subversie, functie_versie, functie_subversie),
            payload,
            bestandsnaam,
        )


def new_referentienummer() -> str:
    """A lower-case UUID v4, as the ggk0210 pattern demands [GGk21 §2.7]."""
    return str(uuid.uuid4())


def _amsterdam() -> ZoneInfo | None:
    try:
        return ZoneInfo("Europe/Amsterdam")
    except ZoneInfoNotFoundError:  # pragma: no cover - minimal images without tzdata
        return None


def tijdstip(now: datetime | None = None) -> str:
    """``yyyyMMddHHmmssSSS`` (StUF Tijdstip ``[0-9]{8,17}``), Dutch local time."""
    moment = now or datetime.now(_amsterdam())
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


# -- writing ---------------------------------------------------------------------


def _g(name: str) -> str:
    return f"{{{GGK_NS}}}{name}"


def _s(name: str) -> str:
    return f"{{{STUF_NS}}}{name}"


def _systeem(parent: etree._Element, name: str, systeem: Systeem) -> None:
    node = etree.SubElement(parent, _s(name))
    # Order is fixed by Systeem_ggkberichten [GGk21 §3].
    for child in ("organisatie", "applicatie", "administratie", "gebruiker"):
        value = getattr(systeem, child)
        if value is not None:
            etree.SubElement(node, _s(child)).text = value


def stuurgegevens_into(parent: etree._Element, sg: Stuurgegevens, ns: str) -> None:
    """Append a ``stuurgegevens`` element (in ``ns``) holding ``sg``; also used by Fo01."""
    node = etree.SubElement(parent, f"{{{ns}}}stuurgegevens")
    etree.SubElement(node, _s("berichtcode")).text = sg.berichtcode
    _systeem(node, "zender", sg.zender)
    _systeem(node, "ontvanger", sg.ontvanger)
    etree.SubElement(node, _s("referentienummer")).text = sg.referentienummer
    etree.SubElement(node, _s("tijdstipBericht")).text = sg.tijdstip_bericht
    if sg.cross_refnummer is not None:
        etree.SubElement(node, _s("crossRefnummer")).text = sg.cross_refnummer
    if sg.functie:
        etree.SubElement(node, _s("functie")).text = sg.functie


def to_element(env: Envelope) -> etree._Element:
    """The envelope as an lxml element (for embedding, e.g. in a Fo01)."""
    code = env.stuurgegevens.berichtcode
    root_name = DU01_ROOT if code == "Du01" else DI01_ROOT
    root = etree.Element(_g(root_name), nsmap={"GGK": GGK_NS, "StUF": STUF_NS})
    stuurgegevens_into(root, env.stuurgegevens, GGK_NS)
    params = etree.SubElement(root, _g("parameters"))
    p = env.parameters
    for name, value in (
        ("applicatieVersie", p.applicatie_versie),
        ("applicatieSubversie", p.applicatie_subversie),
        ("functieVersie", p.functie_versie),
        ("functieSubversie", p.functie_subversie),
    ):
        etree.SubElement(params, _g(name)).text = value
    bericht = etree.SubElement(params, _g("bericht"))
    # Base64 in one unbroken line, like the published samples
    # (``tests/fixtures/stuf/envelopes``).
    encoded = base64.b64encode(env.payload).decode("ascii")
    if env.bestandsnaam is None:
        etree.SubElement(bericht, _g("xmlBestand")).text = encoded
    else:
        node = etree.SubElement(bericht, _g("tekstBestand"), bestandsnaam=env.bestandsnaam)
        node.text = encoded
    return root


def wrap(env: Envelope) -> bytes:
    """Serialise ``env`` as a ggk0210 document (UTF-8, with XML declaration)."""
    return bytes(etree.tostring(to_element(env), xml_declaration=True, encoding="UTF-8"))


# -- reading ---------------------------------------------------------------------


def _text(parent: etree._Element, ns: str, name: str, *, required: bool = True) -> str | None:
    node = parent.find(f"{{{ns}}}{name}")
    if node is None:
        if required:
            raise EnvelopeError(
                f"missing element {name}", parent.sourceline, _local_path(parent) + "/" + name
            )
        return None
    if _has_elements(node):
        raise EnvelopeError(f"element {name} must hold text only", node.sourceline)
    return _own_text(node).strip()


def _has_elements(node: etree._Element) -> bool:
    # len() counts comments and processing instructions too, which simple content may hold.
    return next(node.iterchildren(etree.Element), None) is not None


def _own_text(node: etree._Element) -> str:
    """The element's character content, however comments and PIs split it.

    ``node.text`` stops at the first comment or processing instruction; the
    value the schema sees is the text children joined (XML Information Set §2.6).
    """
    if len(node) == 0:
        return node.text or ""
    return "".join(str(t) for t in node.xpath("text()"))


def _local_path(node: etree._Element) -> str:
    parts = []
    cur: etree._Element | None = node
    while cur is not None:
        parts.append(etree.QName(cur).localname)
        cur = cur.getparent()
    return "/" + "/".join(reversed(parts))


def _read_systeem(parent: etree._Element, name: str) -> Systeem:
    node = parent.find(_s(name))
    if node is None:
        raise EnvelopeError(f"missing element {name}", parent.sourceline, _local_path(parent))
    return Systeem(
        organisatie=_req(node, "organisatie"),
        applicatie=_req(node, "applicatie"),
        administratie=_text(node, STUF_NS, "administratie", required=False),
        gebruiker=_text(node, STUF_NS, "gebruiker", required=False),
    )


def _req(parent: etree._Element, name: str, ns: str = STUF_NS) -> str:
    value = _text(parent, ns, name)
    assert value is not None  # required=True never returns None
    return value


def read_stuurgegevens(node: etree._Element) -> Stuurgegevens:
    """Read a StUF ``stuurgegevens`` element (ggk0210 or Fo01 flavour)."""
    return Stuurgegevens(
        berichtcode=_req(node, "berichtcode"),
        zender=_read_systeem(node, "zender"),
        ontvanger=_read_systeem(node, "ontvanger"),
        referentienummer=_req(node, "referentienummer"),
        tijdstip_bericht=_req(node, "tijdstipBericht"),
        functie=_text(node, STUF_NS, "functie", required=False) or "",
        cross_refnummer=_text(node, STUF_NS, "crossRefnummer", required=False),
    )


def decode_base64(text: str) -> bytes:
    """Decode ``xs:base64Binary`` content, tolerating white space and line breaks."""
    # XSD base64Binary allows whitespace [XML Schema Part 2 §3.2.16]; anything
    # else that is not the base64 alphabet is an error, never silently dropped.
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"payload is not valid base64: {exc}") from None


def from_tree(tree: etree._ElementTree) -> Envelope:
    """Read an already parsed ggk0210 envelope.

    Lenient about what the XSD checks (lengths, patterns) — run
    :func:`adapters.stuf.schemas.validate_envelope` for those — but every field
    the dataclasses need must be present.  Raises :class:`EnvelopeError`.
    """
    root = tree.getroot()
    qname = etree.QName(root)
    if qname.namespace in LEGACY_NS:
        raise EnvelopeError(
            f"StUF-GGk envelope {LEGACY_NS[qname.namespace]} is not ggk0210", root.sourceline
        )
    if qname.namespace != GGK_NS or qname.localname not in _ROOTS:
        raise EnvelopeError(f"root element {qname.localname!r} is not a ggk0210 envelope", 1)
    sg_node = root.find(_g("stuurgegevens"))
    params = root.find(_g("parameters"))
    if sg_node is None or params is None:
        raise EnvelopeError(
            "missing stuurgegevens or parameters", root.sourceline, "/" + qname.localname
        )
    sg = read_stuurgegevens(sg_node)
    if not sg.functie:
        raise EnvelopeError("missing element functie", sg_node.sourceline, "stuurgegevens/functie")
    if sg.berichtcode != _ROOTS[qname.localname]:
        raise EnvelopeError(
            f"berichtcode {sg.berichtcode!r} does not match {qname.localname}", sg_node.sourceline
        )
    parameters = Parameters(
        applicatie_versie=_req(params, "applicatieVersie", GGK_NS),
        applicatie_subversie=_req(params, "applicatieSubversie", GGK_NS),
        functie_versie=_req(params, "functieVersie", GGK_NS),
        functie_subversie=_req(params, "functieSubversie", GGK_NS),
    )
    bericht = params.find(_g("bericht"))
    if bericht is None:
        raise EnvelopeError("missing bericht", params.sourceline, _local_path(params) + "/bericht")
    xml_node, text_node = bericht.find(_g("xmlBestand")), bericht.find(_g("tekstBestand"))
    if (xml_node is None) == (text_node is None):
        raise EnvelopeError(
            "bericht must hold exactly one of xmlBestand or tekstBestand", bericht.sourceline
        )
    node = xml_node if xml_node is not None else text_node
    if _has_elements(node):
        raise EnvelopeError("the payload element must hold base64 text only", node.sourceline)
    bestandsnaam = None
    if text_node is not None:
        bestandsnaam = text_node.get("bestandsnaam")
        if not bestandsnaam:
            raise EnvelopeError("tekstBestand needs a bestandsnaam", text_node.sourceline)
    try:
        payload = decode_base64(_own_text(node))
    except EnvelopeError as exc:
        raise EnvelopeError(str(exc), node.sourceline, _local_path(node)) from None
    return Envelope(sg, parameters, payload, bestandsnaam)


def parse(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._ElementTree:
    """Parse envelope bytes safely; raises :class:`EnvelopeError`."""
    try:
        # huge_text: the base64 payload is one text node that may pass
        # libxml2's 10 MB node limit; max_bytes still bounds the document.
        return parse_xml(data, max_bytes=max_bytes, huge_text=True)
    except UnsafeXmlError as exc:
        raise EnvelopeError(str(exc), exc.line) from None


def unwrap(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Parse a ggk0210 Di01/Du01 and decode its payload.

    Raises :class:`EnvelopeError` (and nothing else) for any input that is not
    such an envelope.
    """
    return from_tree(parse(data, max_bytes=max_bytes))
