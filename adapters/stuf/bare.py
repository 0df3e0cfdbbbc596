"""From a bare iWmo/iJw/iEb message to the envelope it travels in.

A back office hands the gateway the iStandaarden XML itself; the gateway reads
what the envelope needs from the payload's ``Header`` and wraps it
[GGk21 §2.2, §2.6, §3.2-§3.3; the ``Header`` of the iStandaarden XSDs in
``wsdl/xsd/istandaarden``; :mod:`adapters.stuf.catalogue`]:

* ``functie`` from the root namespace (``.../ijw/3_2/jw301/schema`` → JW301);
* ``functieVersie``/``-Subversie`` from ``BerichtVersie``/``BerichtSubversie``,
  as four digits;
* zender/ontvanger ``organisatie``: the gemeentecode from the header element
  the catalogue names for the type, the other party (AGB code, or ``CAK`` for
  iEb) from the other one;
* berichtcode Di01 for a heen message, Du01 for a retour, whose
  crossRefnummer is the referentienummer of the Di01 it answers (looked up by
  the caller: only the message log knows it).

No I/O; parsing goes through :mod:`xmlsafe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree

from adapters.stuf.catalogue import MessageType, Party, message_type, payload_id
from adapters.stuf.codes import Rejection
from adapters.stuf.envelope import Envelope, Systeem
from xmlsafe import UnsafeXmlError, parse_xml

__all__ = ["GGK_APPLICATIE", "BareError", "BareMessage", "read_bare", "wrap_bare"]

#: ontvanger/applicatie towards the node is fixed [GGk21 §3].
GGK_APPLICATIE = "GGk"
#: A local code: the chain has none for "this is not an iStandaarden message".
NOT_A_MESSAGE = "GW002"
UNREADABLE = "GW001"


class BareError(ValueError):
    """The document is not an iStandaarden message the gateway can wrap."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.code}: {rejection.text}")
        self.rejection = rejection


@dataclass(frozen=True)
class BareMessage:
    """What the header of a bare message says (never the client data)."""

    functie: str
    standard: str
    release: str
    message_type: MessageType
    gemeente: str
    counterpart: str  # AGB code, or the fixed word (CAK) for iEb
    identificatie: str  # BerichtIdentificatie/Identificatie of this message (or of the heen)
    berichtversie: str
    berichtsubversie: str
    payload: bytes = field(repr=False)


def _own_text(node: etree._Element) -> str:
    """The element's character content, however comments and PIs split it.

    ``node.text`` stops at the first comment or processing instruction, so
    ``<Afzender>03<!-- -->63</Afzender>`` would read as "03"; the value the
    schema sees is the text children joined (XML Information Set §2.6).
    """
    return "".join(str(t) for t in node.xpath("text()")).strip()


def _text(header: etree._Element, ns: str, name: str) -> str | None:
    node = header.find(f"{{{ns}}}{name}")
    if node is None or not node.xpath("text()"):
        return None
    return _own_text(node)


def _four(value: str | None, what: str) -> str:
    # ASCII digits only: str.isdigit() also takes "٣" and "²".
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 4:
        raise BareError(Rejection(UNREADABLE, f"the header's {what} is missing or not a number"))
    return value.zfill(4)


def read_bare(payload: bytes, *, max_bytes: int) -> BareMessage:
    """Read the header of a bare iStandaarden message; :class:`BareError` if it is none."""
    if payload.startswith(b"\xef\xbb\xbf"):
        raise BareError(Rejection(UNREADABLE, "the message starts with a byte order mark"))
    try:
        root = parse_xml(payload, max_bytes=max_bytes, huge_text=True).getroot()
    except UnsafeXmlError as exc:
        text = f"the message is not acceptable XML: {exc}"
        raise BareError(Rejection(UNREADABLE, text)) from None
    ns = etree.QName(root).namespace or ""
    pid = payload_id(ns)
    mt = message_type(pid.functie) if pid else None
    if pid is None or mt is None or etree.QName(root).localname != "Bericht":
        raise BareError(
            Rejection(NOT_A_MESSAGE, "the document is not an iWmo, iJw or iEb message (root)")
        )
    header = root.find(f"{{{ns}}}Header")
    if header is None:
        raise BareError(Rejection(UNREADABLE, "the message has no Header"))
    element = mt.gemeente_element or "Afzender"
    gemeente = _text(header, ns, element)
    other = "Ontvanger" if element == "Afzender" else "Afzender"
    if element == "Gemeente":  # 2.x declaratie/factuur: Gemeente + Aanbieder
        other = "Aanbieder"
    counterpart = _text(header, ns, other)
    if counterpart is None and Party.CAK in (mt.receiver, mt.sender):
        counterpart = "CAK"  # iEb: the header has no Ontvanger; the envelope names the CAK
    if not gemeente or not counterpart:
        raise BareError(
            Rejection(UNREADABLE, f"the header lacks {element} or {other} (gemeente, aanbieder)")
        )
    ident_parent = header.find(f"{{{ns}}}BerichtIdentificatie")
    identificatie = ""
    if ident_parent is not None:
        # Element children only: a comment or processing instruction has no QName.
        for child in ident_parent.iterchildren(etree.Element):
            if etree.QName(child).localname == "Identificatie" and _own_text(child):
                identificatie = _own_text(child)
    return BareMessage(
        functie=pid.functie,
        standard=pid.standard.value,
        release=pid.release,
        message_type=mt,
        gemeente=gemeente,
        counterpart=counterpart,
        identificatie=identificatie,
        berichtversie=_four(_text(header, ns, "BerichtVersie"), "BerichtVersie"),
        berichtsubversie=_four(_text(header, ns, "BerichtSubversie"), "BerichtSubversie"),
        payload=payload,
    )


def wrap_bare(
    bare: BareMessage,
    *,
    applicatie: str,
    applicatie_versie: str,
    applicatie_subversie: str,
    cross_ref: Callable[[BareMessage], str | None],
    now: datetime | None = None,
) -> Envelope:
    """The Di01 (heen) or Du01 (retour) ``bare`` travels in, from its sender.

    ``cross_ref(bare)`` gives the referentienummer of the Di01 a retour answers
    (None when unknown: the Du01 is then built without one and the rules
    refuse it with the envelope's XSD finding).
    """
    mt = bare.message_type
    cross = None if mt.heen else cross_ref(bare)
    # WMO325/JW325 may go either way (docs/stuf.md, "Decisions"): Du01 when it
    # answers a known Di01.
    di01 = mt.heen or (cross is None and "Di01" in mt.envelopes)
    berichtcode = "Di01" if di01 else "Du01"
    # The gemeente sends 301/319/306/...; an aanbieder (or the CAK) the others.  The
    # ontvanger/applicatie is the node's fixed name either way: the node relays.
    if mt.sender is Party.GEMEENTE:
        zender, ontvanger = bare.gemeente, bare.counterpart
    else:
        zender, ontvanger = bare.counterpart, bare.gemeente
    return Envelope.new(
        bare.payload,
        functie=bare.functie,
        zender=Systeem(zender, applicatie),
        ontvanger=Systeem(ontvanger, GGK_APPLICATIE),
        functie_versie=bare.berichtversie,
        functie_subversie=bare.berichtsubversie,
        cross_refnummer=cross if berichtcode == "Du01" else None,
        berichtcode=berichtcode,
        applicatie_versie=applicatie_versie,
        applicatie_subversie=applicatie_subversie,
        now=now,
    )
