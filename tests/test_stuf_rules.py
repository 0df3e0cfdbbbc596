"""``check``: the rules of docs/stuf.md in order, one code each."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from adapters.stuf.catalogue import CATALOGUE, MessageType, Party, payload_id
from adapters.stuf.envelope import GGK_NS, Envelope, Systeem, unwrap, wrap
from adapters.stuf.rules import SIZE_10MB, SIZE_25MB, Role, Settings, Verdict, check

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stuf"
ENVELOPES = FIXTURES / "envelopes"
INVALID = {("ijw", "3.2", "JW315"), ("ijw", "3.2", "JW318")}
ALL_PAYLOADS = sorted(FIXTURES.glob("*/*/*.xml"))
VALID_PAYLOADS = [
    p for p in ALL_PAYLOADS if (p.parent.parent.name, p.parent.name, p.stem) not in INVALID
]
AGB = "42420001"
ALL_RELEASES = frozenset({"3.2", "2.3", "ieb/1.0"})
CODES = frozenset({"0384", "0363", "0548", "0484", "0861", "1916"})
SETTINGS = Settings(releases=ALL_RELEASES, gemeentecodes={"bo": CODES})


def _ids(p: Path) -> str:
    return f"{p.parent.parent.name}-{p.parent.name}-{p.stem}"


def _header(payload: bytes) -> tuple[MessageType, dict[str, str]]:
    root = etree.fromstring(payload)
    ns = etree.QName(root).namespace
    pid = payload_id(ns)
    assert pid is not None
    header = root.find(f"{{{ns}}}Header")
    fields = {etree.QName(c).localname: (c.text or "") for c in header if len(c) == 0}
    return CATALOGUE[pid.functie], fields


def envelope_for(
    payload: bytes,
    *,
    berichtcode: str | None = None,
    party: Party | None = None,
    functie: str | None = None,
    gemeente: str | None = None,
) -> tuple[bytes, Role]:
    """Wrap a payload the way its producer would, per the catalogue.

    ``party`` overrides the producer (for the direction matrix): the gemeente
    sends as itself to the node; an aanbieder or the CAK arrives via the node.
    """
    mt, header = _header(payload)
    assert mt.gemeente_element is not None
    code = gemeente or header[mt.gemeente_element]
    party = party or mt.sender
    other = "CAK" if party is Party.CAK or mt.receiver is Party.CAK else AGB
    if party is Party.GEMEENTE:
        zender, ontvanger, role = (
            Systeem(code, "Wmo Applicatie"),
            Systeem(other, "GGk"),
            Role.GEMEENTE,
        )
    else:
        zender, ontvanger, role = Systeem(other, "Leverancier"), Systeem(code, "GGk"), Role.NODE
    berichtcode = berichtcode or sorted(mt.envelopes)[0]
    env = Envelope.new(
        payload,
        functie=functie or mt.name,
        zender=zender,
        ontvanger=ontvanger,
        functie_versie=f"{int(header['BerichtVersie']):04d}",
        functie_subversie=f"{int(header['BerichtSubversie']):04d}",
        berichtcode=berichtcode,
        cross_refnummer="0e09a81f-64a0-4793-b946-d6538fb3f37e" if berichtcode == "Du01" else None,
    )
    return wrap(env), role


def _check(data: bytes, role: Role, **kw: object) -> Verdict:
    args: dict[str, object] = {"settings": SETTINGS}
    args.update(kw)
    return check(data, role=role, **args)  # type: ignore[arg-type]


# -- acceptance: the published samples ------------------------------------------------


@pytest.mark.parametrize("path", VALID_PAYLOADS, ids=_ids)
def test_every_valid_sample_passes_in_its_direction(path: Path) -> None:
    payload = path.read_bytes()
    mt, _ = _header(payload)
    for berichtcode in sorted(mt.envelopes):
        data, role = envelope_for(payload, berichtcode=berichtcode)
        verdict = _check(data, role)
        assert verdict.ok, verdict.rejections
        assert verdict.notes == ()
        assert verdict.payload == payload
        assert verdict.envelope is not None and verdict.envelope.functie == path.stem


_JW315_PATH = "/Bericht/Client/AangevraagdeProducten/AangevraagdProduct[1]/ToewijzingEinddatum"


@pytest.mark.parametrize(
    ("name", "line", "path"),
    [("JW315", 44, _JW315_PATH), ("JW318", 33, "/Bericht/Client/Verzoek/RetourCode")],
)
def test_invalid_samples_are_stuf055_with_location(name: str, line: int, path: str) -> None:
    data, role = envelope_for((FIXTURES / "ijw" / "3.2" / f"{name}.xml").read_bytes())
    verdict = _check(data, role)
    assert set(verdict.codes) == {"StUF055"}
    first = verdict.rejections[0]
    assert f"line {line}" in first.text and path in first.text
    assert first.location == f"line {line}, {path}"


def test_not_well_formed_0310_envelope_is_rin001_with_line() -> None:
    verdict = _check((ENVELOPES / "ggk0310-Du01-not-well-formed.xml").read_bytes(), Role.NODE)
    assert verdict.codes == ["RIN001"]
    assert "line 2" in verdict.rejections[0].text
    assert verdict.envelope is None and verdict.payload is None


def test_older_envelope_version_is_ib798() -> None:
    verdict = _check((ENVELOPES / "ggk0310-Di01.xml").read_bytes(), Role.GEMEENTE)
    assert verdict.codes == ["IB798"]


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("envelopHeenbericht-ggk_Di01_v21-xml.xml", Role.GEMEENTE),
        ("envelopRetourbericht-ggk_Du01-v21.xml", Role.NODE),
    ],
)
def test_ggk0210_samples_pass_every_envelope_rule(name: str, role: Role) -> None:
    # Their payload is placeholder text ("Hier staat een iWmo/iJw-heenbericht."),
    # so the only rejection is the unreadable payload.
    verdict = _check((ENVELOPES / name).read_bytes(), role)
    assert verdict.codes == ["GW001"]
    assert verdict.envelope is not None


def test_ggk0210_tekst_sample_passes() -> None:
    verdict = _check(
        (ENVELOPES / "envelopHeenbericht-ggk_Di01_v21-tekst.xml").read_bytes(), Role.GEMEENTE
    )
    assert verdict.ok, verdict.rejections
    assert verdict.envelope is not None and verdict.envelope.bestandsnaam == "AanleveringQ1.csv"


def test_soap_sample_sender_mismatch_is_cc09() -> None:
    soap = etree.parse(str(ENVELOPES / "soap-envelope-di01.xml")).getroot()
    ggk = soap.find(f".//{{{GGK_NS}}}envelopHeenbericht-ggk_Di01")
    verdict = _check(etree.tostring(ggk), Role.GEMEENTE)
    assert verdict.codes == ["CC09"]
    text = verdict.rejections[0].text
    assert "gemeentecode mismatch" in text and "0548" in text and "0384" in text


# -- the direction matrix ----------------------------------------------------------------


def _sample_for(mt: MessageType) -> bytes:
    """A valid payload of this type; iWmo 3.2 retours have no published sample,
    so they are made from their iJw twin (no XSD here, so only noted)."""
    for release in ("3.2", "2.3", "1.0"):
        for path in VALID_PAYLOADS:
            if path.stem == mt.name and path.parent.name == release:
                return path.read_bytes()
    twin = mt.name.replace("WMO", "JW")
    source = (FIXTURES / "ijw" / "3.2" / f"{twin}.xml").read_bytes()
    code = {"JW318": (487, 481), "JW320": (489, 483), "JW325": (491, 485)}[twin]
    text = source.decode().replace("ijw", "iwmo").replace(twin.lower(), mt.name.lower())
    return text.replace(f"BerichtCode>{code[0]}<", f"BerichtCode>{code[1]}<").encode()


MATRIX = [
    (name, code, party)
    for name in sorted(n for n in CATALOGUE if CATALOGUE[n].xml)
    for code in ("Di01", "Du01")
    for party in (Party.GEMEENTE, Party.AANBIEDER, Party.CAK)
]


@pytest.mark.parametrize(("functie", "berichtcode", "party"), MATRIX)
def test_direction_matrix(functie: str, berichtcode: str, party: Party) -> None:
    mt = CATALOGUE[functie]
    data, role = envelope_for(_sample_for(mt), berichtcode=berichtcode, party=party)
    verdict = _check(data, role)
    expected = berichtcode in mt.envelopes and party is mt.sender
    assert ("IB240" in verdict.codes) is not expected, verdict.rejections
    if expected:
        assert verdict.ok, verdict.rejections
    else:
        assert verdict.codes == ["IB240"]


# -- one negative test per code ---------------------------------------------------------

WMO301 = (FIXTURES / "iwmo" / "3.2" / "WMO301.xml").read_bytes()
GOOD, GOOD_ROLE = envelope_for(WMO301)


def _mutate(old: bytes, new: bytes, data: bytes = GOOD) -> bytes:
    assert old in data, old
    return data.replace(old, new, 1)


def _with_payload(payload: bytes, data: bytes = GOOD) -> bytes:
    env = unwrap(data)
    return wrap(Envelope(env.stuurgegevens, env.parameters, payload, env.bestandsnaam))


def test_good_envelope_passes() -> None:
    assert _check(GOOD, GOOD_ROLE).ok


def test_ib007_size_limit() -> None:
    verdict = _check(GOOD, Role.GEMEENTE, settings=Settings(max_bytes=len(GOOD) - 1))
    assert verdict.codes == ["IB007"] and verdict.envelope is None
    assert SIZE_25MB == 25 * 1024 * 1024 and SIZE_10MB == 10 * 1024 * 1024
    big = _with_payload(WMO301 + b"<!--" + b"x" * SIZE_10MB + b"-->")
    ten = Settings(max_bytes=SIZE_10MB, releases=ALL_RELEASES, gemeentecodes={"bo": CODES})
    assert _check(big, Role.GEMEENTE, settings=ten).codes == ["IB007"]
    assert _check(big, Role.GEMEENTE).ok


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        (b"<StUF:functie>", b"<StUF:functieX>", "line"),
        (b"<GGK:functieVersie>0003<", b"<GGK:functieVersie>3<", "/functieVersie"),
        (b"<StUF:applicatie>GGk<", b"<StUF:applicatie>G<", "/ontvanger/applicatie"),
        (b"<StUF:tijdstipBericht>", b"<StUF:tijdstipBericht>T", "/tijdstipBericht"),
    ],
)
def test_rin001_envelope_not_valid(old: bytes, new: bytes, where: str) -> None:
    data = _mutate(old, new)
    if b"functieX>" in data:
        data = data.replace(b"</StUF:functie>", b"</StUF:functieX>")
    verdict = _check(data, GOOD_ROLE)
    assert verdict.codes[0] == "RIN001" and set(verdict.codes) == {"RIN001"}
    assert where in verdict.rejections[0].text


def test_rin001_not_well_formed_and_doctype() -> None:
    assert _check(GOOD[:-20], GOOD_ROLE).codes == ["RIN001"]
    doctype = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "v">]><x>&e;</x>'
    assert _check(doctype, GOOD_ROLE).codes == ["RIN001"]


@pytest.mark.parametrize(
    "new_ref",
    [
        "9C0F7B90-5C69-41E5-A837-0800200C9A66",  # upper case
        "9c0f7b90-5c69-11e5-a837-0800200c9a66",  # version 1
        "not-a-uuid",
    ],
)
def test_ib009_referentienummer_not_uuid4(new_ref: str) -> None:
    ref = unwrap(GOOD).referentienummer
    verdict = _check(_mutate(ref.encode(), new_ref.encode()), GOOD_ROLE)
    assert verdict.codes == ["IB009"]
    assert "referentienummer" in verdict.rejections[0].text


def test_ib009_crossrefnummer_not_uuid4() -> None:
    payload = (FIXTURES / "ijw" / "3.2" / "JW302.xml").read_bytes()
    data, role = envelope_for(payload)
    data = _mutate(b"0e09a81f-64a0-4793", b"0e09a81f-64a0-1793", data)
    verdict = _check(data, role)
    assert verdict.codes == ["IB009"] and "crossRefnummer" in verdict.rejections[0].text


def test_ib210_ontvanger_applicatie_not_ggk() -> None:
    verdict = _check(_mutate(b"<StUF:applicatie>GGk<", b"<StUF:applicatie>Zorgsysteem<"), GOOD_ROLE)
    assert verdict.codes == ["IB210"]
    assert "GGk" in verdict.rejections[0].text


def test_ib210_receiver_is_not_an_agb_code() -> None:
    verdict = _check(_mutate(f">{AGB}<".encode(), b">CAK<"), GOOD_ROLE)
    assert verdict.codes == ["IB210"]


def test_ib004_unknown_functie() -> None:
    verdict = _check(_mutate(b">WMO301</StUF:functie>", b">WMO399</StUF:functie>"), GOOD_ROLE)
    assert verdict.codes == ["IB004"]


def test_ib240_retour_type_in_a_di01() -> None:
    payload = (FIXTURES / "iwmo" / "2.3" / "WMO302.xml").read_bytes()
    data, role = envelope_for(payload, berichtcode="Di01")
    verdict = _check(data, role)
    assert verdict.codes == ["IB240"]


def test_ib240_gemeente_sends_an_aanbieder_message() -> None:
    data, _ = envelope_for(
        (FIXTURES / "iwmo" / "3.2" / "WMO305.xml").read_bytes(), party=Party.GEMEENTE
    )
    assert _check(data, Role.GEMEENTE).codes == ["IB240"]


def test_ib234_functie_not_enabled() -> None:
    only_jw = Settings(
        releases=ALL_RELEASES, gemeentecodes={"bo": CODES}, enabled=frozenset({"JW301"})
    )
    verdict = _check(GOOD, GOOD_ROLE, settings=only_jw)
    assert verdict.codes == ["IB234"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\xef\xbb\xbf" + WMO301, "byte order mark"),
        (WMO301.replace(b"Wit", b"W\xefit"), "not UTF-8"),
        (b"Hier staat een bericht.", "not well-formed"),
        (b'<!DOCTYPE x [<!ENTITY e "v">]>' + WMO301, "DOCTYPE"),
    ],
)
def test_gw001_payload_unreadable(payload: bytes, fragment: str) -> None:
    verdict = _check(_with_payload(payload), GOOD_ROLE)
    assert verdict.codes == ["GW001"]
    assert fragment in verdict.rejections[0].text


def test_gw001_xml_type_sent_as_tekstbestand() -> None:
    env = unwrap(GOOD)
    data = wrap(Envelope(env.stuurgegevens, env.parameters, env.payload, "wmo301.xml"))
    assert _check(data, GOOD_ROLE).codes == ["GW001"]


def test_gw002_payload_is_another_message() -> None:
    jw301 = (FIXTURES / "ijw" / "3.2" / "JW301.xml").read_bytes()
    verdict = _check(_with_payload(jw301), GOOD_ROLE)
    assert verdict.codes == ["GW002"]
    assert "JW301" in verdict.rejections[0].text
    assert _check(_with_payload(b"<Bericht xmlns='urn:x'/>"), GOOD_ROLE).codes == ["GW002"]


def test_gw003_versions_differ() -> None:
    data = _mutate(b"<GGK:functieSubversie>0002<", b"<GGK:functieSubversie>0001<")
    verdict = _check(data, GOOD_ROLE)
    assert verdict.codes == ["GW003"]
    assert "BerichtSubversie" in verdict.rejections[0].text


def test_gw004_release_not_enabled() -> None:
    data, role = envelope_for((FIXTURES / "iwmo" / "2.3" / "WMO301.xml").read_bytes())
    verdict = check(data, role=role, settings=Settings(gemeentecodes={"bo": CODES}))
    assert verdict.codes == ["GW004"]
    only_ijw23 = Settings(gemeentecodes={"bo": CODES}, releases=frozenset({"ijw/2.3"}))
    assert check(data, role=role, settings=only_ijw23).codes == ["GW004"]
    jw, jw_role = envelope_for((FIXTURES / "ijw" / "2.3" / "JW301.xml").read_bytes())
    assert check(jw, role=jw_role, settings=only_ijw23).ok


def test_cc09_gemeentecode_mismatch_inbound() -> None:
    payload = (FIXTURES / "iwmo" / "3.2" / "WMO305.xml").read_bytes()
    data, role = envelope_for(payload, gemeente="0484")
    assert role is Role.NODE
    verdict = _check(data, role)
    assert verdict.codes == ["CC09"]
    assert "Header/Ontvanger 0363" in verdict.rejections[0].text


def test_cc09_2x_declaratie_uses_the_gemeente_element() -> None:
    payload = (FIXTURES / "iwmo" / "2.3" / "WMO303.xml").read_bytes()
    data, role = envelope_for(payload, gemeente="0363")
    verdict = _check(data, role)
    assert verdict.codes == ["CC09"] and "Header/Gemeente" in verdict.rejections[0].text


def test_ib002_not_authorised() -> None:
    assert _check(GOOD, GOOD_ROLE, sender="bo").ok
    narrow = Settings(
        releases=ALL_RELEASES, gemeentecodes={"bo": CODES, "other": frozenset({"0363"})}
    )
    verdict = _check(GOOD, GOOD_ROLE, settings=narrow, sender="other")
    assert verdict.codes == ["IB002"]
    assert _check(GOOD, GOOD_ROLE, sender="stranger").codes == ["IB002"]
    closed = Settings(releases=ALL_RELEASES)
    assert _check(GOOD, GOOD_ROLE, settings=closed).codes == ["IB002"]


def test_stuf055_payload_not_valid_never_quotes_values() -> None:
    bad = WMO301.replace(b"<wmo301:Bsn>999900006<", b"<wmo301:Bsn>99990000X<")
    verdict = _check(_with_payload(bad), GOOD_ROLE)
    assert verdict.codes == ["StUF055"]
    rejection = verdict.rejections[0]
    assert "99990000X" not in rejection.text
    assert "/Bericht/Client/Bsn" in rejection.text
    assert re.search(r"line \d+", rejection.text)


def test_stuf055_findings_are_capped() -> None:
    bad = WMO301.replace(b"<iwmo:Datum>", b"<iwmo:Datum>x")
    few = Settings(releases=ALL_RELEASES, gemeentecodes={"bo": CODES}, max_findings=1)
    assert _check(_with_payload(bad), GOOD_ROLE, settings=few).codes == ["StUF055"]


def test_gw005_schema_unavailable_only_when_required() -> None:
    wmo320 = _sample_for(CATALOGUE["WMO320"])
    data, role = envelope_for(wmo320)
    lenient = _check(data, role)
    assert lenient.ok and lenient.notes and "no schema" in lenient.notes[0]
    strict = Settings(
        releases=ALL_RELEASES, gemeentecodes={"bo": CODES}, require_payload_schema=True
    )
    assert _check(data, role, settings=strict).codes == ["GW005"]


def test_ib216_duplicate_referentienummer() -> None:
    calls: list[tuple[str, str]] = []

    def seen(org: str, ref: str) -> bool:
        calls.append((org, ref))
        return True

    verdict = _check(GOOD, GOOD_ROLE, seen=seen)
    assert verdict.codes == ["IB216"]
    assert calls == [("0384", unwrap(GOOD).referentienummer)]
    assert _check(GOOD, GOOD_ROLE, seen=lambda org, ref: False).ok


def test_seen_is_not_asked_without_a_trustworthy_reference() -> None:
    def seen(org: str, ref: str) -> bool:
        raise AssertionError("must not be called")

    assert _check(b"<x", GOOD_ROLE, seen=seen).codes == ["RIN001"]
    ref = unwrap(GOOD).referentienummer
    bad_ref = _mutate(ref.encode(), b"not-a-uuid")
    assert _check(bad_ref, GOOD_ROLE, seen=seen).codes == ["IB009"]


def test_rules_report_in_order_and_continue_after_non_structural() -> None:
    data = _mutate(b"<StUF:applicatie>GGk<", b"<StUF:applicatie>Zorg<")
    data = _mutate(b"<GGK:functieVersie>0003<", b"<GGK:functieVersie>0002<", data)
    verdict = check(data, role=GOOD_ROLE, settings=Settings(releases=ALL_RELEASES))
    assert verdict.codes == ["IB210", "GW003", "IB002"]


def test_verdict_repr_hides_the_payload() -> None:
    verdict = _check(GOOD, GOOD_ROLE)
    assert b"999900006" in (verdict.payload or b"")
    assert "999900006" not in repr(verdict)
    assert base64.b64encode(WMO301).decode()[:40] not in repr(verdict)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_check_never_raises_on_garbage(data: bytes) -> None:
    verdict = check(data, role=Role.NODE, settings=SETTINGS)
    assert not verdict.ok


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255))
def test_check_never_raises_on_mutations(pos: int, value: int) -> None:
    data = bytearray(GOOD)
    data[pos] = value
    verdict = check(bytes(data), role=GOOD_ROLE, settings=SETTINGS)
    assert isinstance(verdict, Verdict)


# -- the XSD registry ---------------------------------------------------------------------


def test_validate_payload_release_and_namespace_findings() -> None:
    from adapters.stuf.schemas import SchemaUnavailable, validate_payload

    assert validate_payload(WMO301, "3.2") == []
    [wrong] = validate_payload(WMO301, "2.3")
    assert "release 3.2, expected 2.3" in wrong.message and wrong.path == "/Bericht"
    [foreign] = validate_payload(b"<Bericht xmlns='urn:x'/>", "3.2")
    assert "not an iStandaarden" in foreign.message
    [broken] = validate_payload(b"<a>\n<b></a>", "3.2")
    assert broken.line == 2 and "not well-formed" in broken.message
    with pytest.raises(SchemaUnavailable):
        validate_payload(_sample_for(CATALOGUE["WMO318"]), "3.2")


def test_findings_mask_identity_constraint_values() -> None:
    from types import SimpleNamespace

    from adapters.stuf.schemas import _finding

    entry = SimpleNamespace(
        message="Element '{urn:x}a': Duplicate key-sequence ['999900006'] in unique 'u'.",
        path="/x:r/x:a[2]",
        line=3,
        column=0,
    )
    f = _finding(entry)
    assert "999900006" not in f.message and "urn:x" not in f.message
    assert (f.path, f.line, f.column, f.location) == ("/r/a[2]", 3, None, "line 3, /r/a[2]")


def test_schemas_resolve_only_inside_the_xsd_folder(tmp_path: Path) -> None:
    from adapters.stuf.schemas import XSD_ROOT, _LocalOnly

    outside = tmp_path / "evil.xsd"
    outside.write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>')
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(_LocalOnly())
    for location in ("http://example.invalid/x.xsd", str(outside), "../../../etc/hosts"):
        schema = (
            '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
            f'<xs:include schemaLocation="{location}"/></xs:schema>'
        )
        doc = etree.fromstring(schema.encode(), parser, base_url=str(XSD_ROOT / "x.xsd"))
        with pytest.raises(etree.XMLSchemaParseError):
            etree.XMLSchema(doc)


def test_concurrent_validation_keeps_errors_apart() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from adapters.stuf.schemas import validate_payload

    good = (FIXTURES / "ijw" / "3.2" / "JW301.xml").read_bytes()
    bad = (FIXTURES / "ijw" / "3.2" / "JW315.xml").read_bytes()
    jobs = [good, bad] * 40
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda d: len(validate_payload(d, "3.2")), jobs))
    assert results == [0, 2] * 40
