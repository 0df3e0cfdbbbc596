"""The iWmo / iJw / iEb message types as data: who sends them, in which envelope.

Source: the iWmo/iJw releases and iEb 1.0 of the iStandaarden: each message
XSD fixes its ``BerichtCode`` (codes from the Vektis list COD002, which the
basisschema names), and the header positions were checked against every
sample in ``tests/fixtures/stuf``.  Heen messages travel in a Di01, retour
messages in a Du01 [GGk21 §2.2, §3.2-§3.3].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from adapters.stuf.codes import DIRECTION, FUNCTIE_UNKNOWN, Rejection


class Standard(StrEnum):
    """The iStandaard a message type belongs to."""

    IWMO = "iwmo"
    IJW = "ijw"
    IEB = "ieb"
    #: Non-XML files for the CBS Monitor Sociaal Domein [GGk21 §1, §3 functie "Dummy"].
    CBS = "cbs"


class Party(StrEnum):
    """Who produces a message type."""

    GEMEENTE = "gemeente"
    AANBIEDER = "aanbieder"
    CAK = "cak"
    CBS = "cbs"


#: Releases per family (iStandaarden: 2.x until 2020, 3.x since 2021; iEb 1.0).
#: Only 2.3, 3.2 and iEb 1.0 have XSDs here (``wsdl/xsd/istandaarden``).
_R2 = ("2.0", "2.1", "2.3")
_R3 = ("3.0", "3.1", "3.2")
_ALL = _R2 + _R3
_IEB = ("1.0",)


@dataclass(frozen=True)
class MessageType:
    """One message type of the catalogue.

    ``gemeente_element`` is the payload ``Header`` child that holds the CBS
    gemeentecode: retour headers copy the heen header, so the code stays where
    the heen put it (e.g. ``Afzender`` is the gemeente in both JW301 and JW302,
    ``wsdl/xsd/istandaarden/ijw/3.2``); 2.x 303/304 use ``Gemeente``.
    ``None`` for non-XML payloads.
    """

    name: str
    standard: Standard
    berichtcodes: tuple[int, ...]
    sender: Party
    receiver: Party
    envelopes: frozenset[str]
    gemeente_element: str | None
    releases: tuple[str, ...]
    answered_by: str | None = None
    answers: str | None = None
    xml: bool = True

    @property
    def heen(self) -> bool:
        """True for an initial (heen) message, False for a retour."""
        return self.answers is None


_DI = frozenset({"Di01"})
_DU = frozenset({"Du01"})
#: WMO325/JW325: Di01 or Du01 is not settled; both accepted (docs/stuf.md, "Decisions").
_BOTH = frozenset({"Di01", "Du01"})
_G, _A, _C = Party.GEMEENTE, Party.AANBIEDER, Party.CAK
_AFZ, _ONT = "Afzender", "Ontvanger"

# (number, wmo code(s), jw code(s), sender, envelopes, gemeente element, releases,
#  answered_by / answers number)
_PAIRS: tuple[
    tuple[int, tuple[int, ...], tuple[int, ...], Party, frozenset[str], str, tuple[str, ...]],
    ...,
] = (
    (301, (414,), (436,), _G, _DI, _AFZ, _ALL),
    (302, (415,), (437,), _A, _DU, _AFZ, _ALL),
    (303, (416, 448), (432, 450), _A, _DI, "Gemeente", _R2),
    (304, (417, 449), (433, 451), _G, _DU, "Gemeente", _R2),
    (305, (418,), (438,), _A, _DI, _ONT, _ALL),
    (306, (419,), (439,), _G, _DU, _ONT, _ALL),
    (307, (420,), (440,), _A, _DI, _ONT, _ALL),
    (308, (421,), (441,), _G, _DU, _ONT, _ALL),
    (315, (444,), (446,), _A, _DI, _ONT, _ALL),
    (316, (445,), (447,), _G, _DU, _ONT, _ALL),
    (317, (480,), (486,), _A, _DI, _ONT, _R3),
    (318, (481,), (487,), _G, _DU, _ONT, _R3),
    (319, (482,), (488,), _G, _DI, _AFZ, _R3),
    (320, (483,), (489,), _A, _DU, _AFZ, _R3),
    (323, (484,), (490,), _A, _DI, _ONT, _R3),
    (325, (485,), (491,), _G, _BOTH, _AFZ, _R3),
)
#: heen number -> its retour number (the iStandaarden pair each heen message with
#: its retour; 325 is the declaratie-antwoord to 323).
_ANSWER = {301: 302, 303: 304, 305: 306, 307: 308, 315: 316, 317: 318, 319: 320, 323: 325}
_OTHER = {_G: _A, _A: _G}


def _build() -> dict[str, MessageType]:
    types: dict[str, MessageType] = {}
    retour_of = {v: k for k, v in _ANSWER.items()}
    for number, wmo, jw, sender, envs, element, releases in _PAIRS:
        for prefix, standard, codes in (("WMO", Standard.IWMO, wmo), ("JW", Standard.IJW, jw)):
            answered = _ANSWER.get(number)
            answers = retour_of.get(number)
            types[f"{prefix}{number}"] = MessageType(
                name=f"{prefix}{number}",
                standard=standard,
                berichtcodes=codes,
                sender=sender,
                receiver=_OTHER[sender],
                envelopes=envs,
                gemeente_element=element,
                releases=releases,
                answered_by=f"{prefix}{answered}" if answered else None,
                answers=f"{prefix}{answers}" if answers else None,
            )
    # iEb: gemeente <-> CAK; the header has an Afzender (the gemeente, copied
    # into the retour) and no Ontvanger [``wsdl/xsd/istandaarden/ieb/1.0``; the
    # samples in ``tests/fixtures/stuf/ieb/1.0``].
    for heen, retour, heen_code in (("WMO401", "WMO402", 470), ("WMO403", "WMO404", 472)):
        types[heen] = MessageType(
            heen, Standard.IEB, (heen_code,), _G, _C, _DI, _AFZ, _IEB, answered_by=retour
        )
        types[retour] = MessageType(
            retour, Standard.IEB, (heen_code + 1,), _C, _G, _DU, _AFZ, _IEB, answers=heen
        )
    # CBS Monitor files: a tekstBestand with functie "Dummy" [GGk21 §1, §3].
    types["Dummy"] = MessageType("Dummy", Standard.CBS, (), _G, Party.CBS, _DI, None, (), xml=False)
    return types


#: Every message type by its ``functie`` value.
CATALOGUE: dict[str, MessageType] = _build()


def message_type(functie: str) -> MessageType | None:
    """The catalogue entry for an envelope ``functie`` (e.g. ``"WMO301"``), or None."""
    return CATALOGUE.get(functie)


def allowed(functie: str, berichtcode: str, sender_role: Party | str) -> Rejection | None:
    """Whether ``sender_role`` may send ``functie`` in a ``berichtcode`` envelope.

    None when allowed; otherwise IB004 (unknown functie) or IB240 (heen types
    only in a Di01 from their producer, retour types only in a Du01 — the
    example of IB240 is "WMO302 in a Di01" [FC18]).
    """
    mt = CATALOGUE.get(functie)
    if mt is None:
        return Rejection(FUNCTIE_UNKNOWN, f"functie {functie!r} is not a supported message type")
    if berichtcode not in mt.envelopes:
        return Rejection(
            DIRECTION,
            f"{functie} is not sent in a {berichtcode} envelope "
            f"(allowed: {', '.join(sorted(mt.envelopes))})",
        )
    if Party(sender_role) is not mt.sender:
        return Rejection(
            DIRECTION, f"{functie} is sent by the {mt.sender.value}, not by the {sender_role}"
        )
    return None


@dataclass(frozen=True)
class PayloadId:
    """What a payload root namespace says: standard, release and message type."""

    standard: Standard
    release: str
    functie: str


# http://www.istandaarden.nl/{iwmo|ijw|ieb}/{3_2}/{wmo301}/schema, with the
# 2.0/2.1 form ".../schema/2_0" (the targetNamespace of the iStandaarden XSDs;
# iWmo 2.0/2.1 appended the release after ``schema``).
_NS = re.compile(
    r"http://www\.istandaarden\.nl/(iwmo|ijw|ieb)/([0-9]+)_([0-9]+)/(wmo|jw)([0-9]{3})/schema"
    r"(?:/[0-9]+_[0-9]+)?"
)


def payload_id(namespace: str) -> PayloadId | None:
    """Parse an iStandaarden message namespace; None if it is not one."""
    m = _NS.fullmatch(namespace)
    if m is None:
        return None
    standard, major, minor, prefix, number = m.groups()
    return PayloadId(Standard(standard), f"{major}.{minor}", f"{prefix.upper()}{number}")


def namespace(standard: Standard | str, release: str, functie: str) -> str:
    """The message namespace for a release, e.g. ``(ijw, "3.2", "JW301")``."""
    return (
        f"http://www.istandaarden.nl/{Standard(standard).value}/"
        f"{release.replace('.', '_')}/{functie.lower()}/schema"
    )
