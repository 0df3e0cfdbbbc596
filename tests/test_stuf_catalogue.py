"""The message catalogue (docs/stuf.md): codes, directions, header positions."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from adapters.stuf.catalogue import (
    CATALOGUE,
    Party,
    Standard,
    allowed,
    message_type,
    namespace,
    payload_id,
)

SAMPLES = Path(__file__).resolve().parent / "fixtures" / "stuf"
PAYLOADS = sorted(p for p in SAMPLES.glob("*/*/*.xml"))

EXPECTED_TYPES = [
    *(f"{p}{n}" for p in ("WMO", "JW") for n in (301, 302, 305, 306, 307, 308, 315, 316)),
    *(f"{p}{n}" for p in ("WMO", "JW") for n in (317, 318, 319, 320, 323, 325)),
    *(f"{p}{n}" for p in ("WMO", "JW") for n in (303, 304)),
    "WMO401",
    "WMO402",
    "WMO403",
    "WMO404",
]


def test_every_expected_message_type_is_present() -> None:
    assert set(EXPECTED_TYPES) <= set(CATALOGUE)
    assert set(CATALOGUE) - set(EXPECTED_TYPES) == {"Dummy"}


def test_berichtcodes_of_the_istandaarden() -> None:
    expected = {
        "WMO301": (414,), "JW301": (436,), "WMO302": (415,), "JW302": (437,),
        "WMO303": (416, 448), "JW303": (432, 450), "WMO304": (417, 449), "JW304": (433, 451),
        "WMO317": (480,), "JW317": (486,), "WMO323": (484,), "JW323": (490,),
        "WMO325": (485,), "JW325": (491,), "WMO401": (470,), "WMO404": (473,),
    }  # fmt: skip
    for name, codes in expected.items():
        mt = message_type(name)
        assert mt is not None and mt.berichtcodes == codes, name


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_samples_agree_with_the_catalogue(path: Path) -> None:
    root = etree.parse(str(path)).getroot()
    pid = payload_id(etree.QName(root).namespace)
    assert pid is not None and pid.functie == path.stem
    assert pid.standard.value == path.parent.parent.name
    assert pid.release == path.parent.name
    mt = message_type(pid.functie)
    assert mt is not None and pid.release in mt.releases
    ns = etree.QName(root).namespace
    header = root.find(f"{{{ns}}}Header")
    assert int(header.findtext(f"{{{ns}}}BerichtCode")) in mt.berichtcodes
    # The gemeentecode sits where the catalogue says, as 4 digits (LDT_Gemeente
    # in the iStandaarden basisschema).
    assert mt.gemeente_element is not None
    code = header.findtext(f"{{{ns}}}{mt.gemeente_element}")
    assert code is not None and len(code) == 4 and code.isdigit()


def test_heen_retour_pairs_are_consistent() -> None:
    for mt in CATALOGUE.values():
        if mt.answered_by is not None:
            retour = CATALOGUE[mt.answered_by]
            assert retour.answers == mt.name
            assert retour.sender is mt.receiver and retour.receiver is mt.sender
            assert mt.envelopes == {"Di01"}
            assert "Du01" in retour.envelopes
            assert retour.releases == mt.releases
        if mt.answers is not None:
            assert CATALOGUE[mt.answers].answered_by == mt.name


def test_declaratie_antwoord_takes_either_envelope() -> None:
    # Not settled by the specifications: both Di01 and Du01 accepted
    # (docs/stuf.md, "Decisions").
    for name in ("WMO325", "JW325"):
        assert allowed(name, "Di01", Party.GEMEENTE) is None
        assert allowed(name, "Du01", Party.GEMEENTE) is None


def test_releases() -> None:
    for name in ("WMO303", "WMO304", "JW303", "JW304"):
        assert all(r.startswith("2.") for r in CATALOGUE[name].releases)
    for name in ("WMO317", "JW320", "WMO323", "JW325"):
        assert all(r.startswith("3.") for r in CATALOGUE[name].releases)
    assert CATALOGUE["WMO401"].releases == ("1.0",)
    assert CATALOGUE["WMO401"].standard is Standard.IEB


MATRIX = [
    (name, code, party)
    for name in sorted(CATALOGUE)
    for code in ("Di01", "Du01")
    for party in (Party.GEMEENTE, Party.AANBIEDER, Party.CAK)
]


@pytest.mark.parametrize(("functie", "berichtcode", "party"), MATRIX)
def test_allowed_matrix(functie: str, berichtcode: str, party: Party) -> None:
    mt = CATALOGUE[functie]
    expected = berichtcode in mt.envelopes and party is mt.sender
    result = allowed(functie, berichtcode, party)
    assert (result is None) == expected
    if result is not None:
        assert result.code == "IB240"


def test_retour_in_a_di01_is_ib240() -> None:
    # The example of IB240 in [FC18]: WMO302 in a Di01.
    rejection = allowed("WMO302", "Di01", "aanbieder")
    assert rejection is not None and rejection.code == "IB240"


@pytest.mark.parametrize("functie", ["WMO399", "", "wmo301", "JW321"])
def test_unknown_functie_is_ib004(functie: str) -> None:
    rejection = allowed(functie, "Di01", Party.GEMEENTE)
    assert rejection is not None and rejection.code == "IB004"
    assert message_type(functie) is None


def test_payload_namespaces() -> None:
    pid = payload_id("http://www.istandaarden.nl/ijw/3_2/jw301/schema")
    assert pid is not None and (pid.standard, pid.release, pid.functie) == (
        Standard.IJW,
        "3.2",
        "JW301",
    )
    old = payload_id("http://www.istandaarden.nl/iwmo/2_0/wmo315/schema/2_0")
    assert old is not None and (old.release, old.functie) == ("2.0", "WMO315")
    ieb = payload_id("http://www.istandaarden.nl/ieb/1_0/wmo401/schema")
    assert ieb is not None and ieb.functie == "WMO401"
    for junk in (
        "http://www.istandaarden.nl/iwmo/3_2/basisschema/schema",
        "http://www.istandaarden.nl/iwmo/3_2/wmo301/schema/extra",
        "urn:x",
        "",
    ):
        assert payload_id(junk) is None
    assert namespace("iwmo", "3.2", "WMO301") == "http://www.istandaarden.nl/iwmo/3_2/wmo301/schema"
