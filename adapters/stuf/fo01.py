"""StUF ``Fo01Bericht``: the asynchronous functional error of the ISD chain.

The only StUF error a gemeente receives, and the one it sends back when an
incoming payload fails its XSD (``StUF055``) [GGk21 §2.3, §3.1].
``crossRefnummer`` is the refused envelope's ``referentienummer``; ``detailsXML``
carries the original envelope un-encoded "if possible" (no base64, no CDATA).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from adapters.stuf.envelope import (
    DEFAULT_MAX_BYTES,
    STUF_NS,
    Envelope,
    EnvelopeError,
    Stuurgegevens,
    Systeem,
    from_tree,
    new_referentienummer,
    parse,
    read_stuurgegevens,
    stuurgegevens_into,
    tijdstip,
    to_element,
)

FO01_ROOT = "Fo01Bericht"
#: Field lengths of StUF Foutbericht [stuf0301.xsd Foutcode/-omschrijving/-details].
_CODE_MAX, _OMSCHRIJVING_MAX, _DETAILS_MAX = 7, 200, 1000
_REF = re.compile(rb"referentienummer>\s*([0-9A-Za-z-]{1,40})\s*<")


@dataclass(frozen=True)
class Fo01:
    """A parsed or built Fo01.  ``details_xml`` is the serialised content of
    ``detailsXML`` (kept out of ``repr``: it may hold a whole message)."""

    stuurgegevens: Stuurgegevens
    code: str
    plek: str
    omschrijving: str
    details: str | None = None
    details_xml: bytes | None = field(default=None, repr=False)


def _s(name: str) -> str:
    return f"{{{STUF_NS}}}{name}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _original(refused: Envelope | bytes) -> tuple[Stuurgegevens | None, etree._Element | None]:
    """The refused message's stuurgegevens and root element, as far as readable."""
    if isinstance(refused, Envelope):
        return refused.stuurgegevens, to_element(refused)
    try:
        tree = parse(refused, max_bytes=max(DEFAULT_MAX_BYTES, len(refused)))
    except EnvelopeError:
        return None, None
    root = tree.getroot()
    try:
        return from_tree(tree).stuurgegevens, root
    except EnvelopeError:
        pass
    node = root.find(".//{*}stuurgegevens")
    if node is not None:
        try:
            return read_stuurgegevens(node), root
        except EnvelopeError:
            pass
    return None, root


def fo01_for(
    refused: Envelope | bytes,
    code: str,
    omschrijving: str,
    *,
    zender: Systeem | None = None,
    ontvanger: Systeem | None = None,
    cross_refnummer: str | None = None,
    plek: str = "client",
    details: str | None = None,
    referentienummer: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """Build the Fo01 answering ``refused`` (an envelope or the raw bytes received).

    By default the Fo01 goes back to the refused message's zender and comes
    from its ontvanger; crossRefnummer is its referentienummer [GGk21 §3.1].
    When ``refused`` is not readable those must be passed explicitly, else
    ``ValueError``.  ``omschrijving``/``details`` are clipped to the StUF
    lengths; the caller must not put payload values in them.
    """
    original, root = _original(refused)
    if cross_refnummer is None and original is not None:
        cross_refnummer = original.referentienummer
    if cross_refnummer is None and isinstance(refused, bytes):
        m = _REF.search(refused)
        cross_refnummer = m.group(1).decode("ascii") if m else None
    zender = zender or (original.ontvanger if original else None)
    ontvanger = ontvanger or (original.zender if original else None)
    if cross_refnummer is None or zender is None or ontvanger is None:
        raise ValueError("refused message unreadable: pass zender, ontvanger and cross_refnummer")
    if len(code) > _CODE_MAX:
        raise ValueError(f"Fo01 code {code!r} is longer than {_CODE_MAX} characters")
    sg = Stuurgegevens(
        berichtcode="Fo01",
        zender=zender,
        ontvanger=ontvanger,
        referentienummer=referentienummer or new_referentienummer(),
        tijdstip_bericht=tijdstip(now),
        functie="",  # Fo01 stuurgegevens have no functie [stuf0301.xsd Fo01Bericht]
        cross_refnummer=cross_refnummer,
    )
    out = etree.Element(_s(FO01_ROOT), nsmap={"StUF": STUF_NS})
    stuurgegevens_into(out, sg, STUF_NS)
    body = etree.SubElement(out, _s("body"))
    etree.SubElement(body, _s("code")).text = code
    etree.SubElement(body, _s("plek")).text = plek
    etree.SubElement(body, _s("omschrijving")).text = _clip(omschrijving, _OMSCHRIJVING_MAX)
    if details:
        etree.SubElement(body, _s("details")).text = _clip(details, _DETAILS_MAX)
    if root is not None:
        etree.SubElement(body, _s("detailsXML")).append(_copy(root))
    return bytes(etree.tostring(out, xml_declaration=True, encoding="UTF-8"))


def _copy(root: etree._Element) -> etree._Element:
    # A copy so the caller's tree is not moved into the Fo01.
    return copy.deepcopy(root)


def parse_fo01(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Fo01:
    """Read a ``StUF:Fo01Bericht``; raises :class:`EnvelopeError` if it is not one."""
    root = parse(data, max_bytes=max_bytes).getroot()
    if etree.QName(root).text != _s(FO01_ROOT):
        raise EnvelopeError("root element is not StUF:Fo01Bericht", root.sourceline)
    sg_node, body = root.find(_s("stuurgegevens")), root.find(_s("body"))
    if sg_node is None or body is None:
        raise EnvelopeError("Fo01 needs stuurgegevens and body", root.sourceline)
    sg = read_stuurgegevens(sg_node)
    if sg.berichtcode != "Fo01" or sg.cross_refnummer is None:
        raise EnvelopeError("Fo01 stuurgegevens need berichtcode Fo01 and a crossRefnummer")

    def text(name: str) -> str | None:
        node = body.find(_s(name))
        return None if node is None else (node.text or "").strip()

    code, plek, omschrijving = text("code"), text("plek"), text("omschrijving")
    if code is None or plek is None or omschrijving is None:
        raise EnvelopeError("Fo01 body needs code, plek and omschrijving", body.sourceline)
    dx = body.find(_s("detailsXML"))
    details_xml = None
    if dx is not None and len(dx):
        details_xml = b"".join(bytes(etree.tostring(child, with_tail=False)) for child in dx)
    return Fo01(sg, code, plek, omschrijving, text("details"), details_xml)
