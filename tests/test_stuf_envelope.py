"""ggk0210 envelope wrap/unwrap and StUF Fo01 [GGk21 §2.2, §3.1-§3.3]."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from adapters.stuf.envelope import (
    GGK_NS,
    Envelope,
    EnvelopeError,
    Systeem,
    tijdstip,
    unwrap,
    wrap,
)
from adapters.stuf.fo01 import fo01_for, parse_fo01
from adapters.stuf.schemas import validate_envelope, validate_fo01

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stuf"
ENVELOPES = FIXTURES / "envelopes"
PAYLOADS = sorted(FIXTURES.glob("*/*/*.xml"))
GGK_SAMPLES = sorted(ENVELOPES.glob("envelop*-ggk_*.xml"))
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

GEMEENTE = Systeem("0384", "Wmo Applicatie", "Gemeente Voorbeeld")
NODE_GGK = Systeem("42420001", "GGk")


def _env(payload: bytes, **kw: object) -> Envelope:
    args: dict[str, object] = {
        "functie": "WMO301",
        "zender": GEMEENTE,
        "ontvanger": NODE_GGK,
        "functie_versie": "0003",
        "functie_subversie": "0002",
    }
    args.update(kw)
    return Envelope.new(payload, **args)  # type: ignore[arg-type]


def _tree(data: bytes) -> etree._ElementTree:
    return etree.ElementTree(etree.fromstring(data))


@pytest.mark.parametrize("path", PAYLOADS, ids=lambda p: f"{p.parent.parent.name}-{p.stem}")
def test_every_payload_sample_round_trips_byte_exact(path: Path) -> None:
    payload = path.read_bytes()
    data = wrap(_env(payload, functie=path.stem))
    assert validate_envelope(_tree(data)) == []
    back = unwrap(data)
    assert back.payload == payload
    assert back.functie == path.stem and back.bestandsnaam is None


@pytest.mark.parametrize("path", GGK_SAMPLES, ids=lambda p: p.stem)
def test_ggk0210_samples_unwrap_and_rewrap(path: Path) -> None:
    data = path.read_bytes()
    assert validate_envelope(_tree(data)) == []
    env = unwrap(data)
    again = wrap(env)
    assert validate_envelope(_tree(again)) == []
    assert unwrap(again) == env
    assert base64.b64encode(env.payload).decode() in data.decode()


def test_du01_sample_fields() -> None:
    env = unwrap((ENVELOPES / "envelopRetourbericht-ggk_Du01-v21.xml").read_bytes())
    sg = env.stuurgegevens
    assert (sg.berichtcode, sg.functie) == ("Du01", "WMO302")
    assert sg.cross_refnummer == "9c0f7b90-5c69-41e5-a837-0800200c9a66"
    assert sg.zender == Systeem("01023456", "Applicatie leverancier")
    assert env.parameters.functie_versie == "0002"


def test_tekst_sample_keeps_bestandsnaam() -> None:
    env = unwrap((ENVELOPES / "envelopHeenbericht-ggk_Di01_v21-tekst.xml").read_bytes())
    assert env.bestandsnaam == "AanleveringQ1.csv"
    assert b'<GGK:tekstBestand bestandsnaam="AanleveringQ1.csv">' in wrap(env)


def test_soap_sample_payload_is_the_wmo301_sample() -> None:
    # The messagestub Di01 (tests/fixtures/stuf/README.md) decodes to iwmo/2.3
    # WMO301 byte for byte.
    soap = etree.parse(str(ENVELOPES / "soap-envelope-di01.xml")).getroot()
    ggk = soap.find(f".//{{{GGK_NS}}}envelopHeenbericht-ggk_Di01")
    env = unwrap(etree.tostring(ggk))
    assert env.payload == (FIXTURES / "iwmo" / "2.3" / "WMO301.xml").read_bytes()


def test_base64_with_line_breaks_and_spaces_is_accepted() -> None:
    payload = bytes(range(256)) * 20
    data = wrap(_env(payload))
    encoded = base64.b64encode(payload).decode()
    wrapped = "\r\n ".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    mangled = data.replace(encoded.encode(), f"\n\t{wrapped}\n".encode())
    assert validate_envelope(_tree(mangled)) == []
    assert unwrap(mangled).payload == payload


def test_new_envelope_identifiers() -> None:
    env = _env(b"x")
    assert UUID4.fullmatch(env.referentienummer)
    assert re.fullmatch(r"[0-9]{17}", env.stuurgegevens.tijdstip_bericht)
    assert env.berichtcode == "Di01"
    answer = _env(b"y", functie="WMO302", cross_refnummer=env.referentienummer)
    assert answer.berichtcode == "Du01"
    assert answer.stuurgegevens.cross_refnummer == env.referentienummer
    assert validate_envelope(_tree(wrap(answer))) == []


def test_tijdstip_format() -> None:
    from datetime import datetime

    assert tijdstip(datetime(2025, 1, 2, 3, 4, 5, 678901)) == "20250102030405678"


def test_repr_never_shows_the_payload() -> None:
    env = _env(b"<Bsn>999900006</Bsn>")
    assert "999900006" not in repr(env)


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new)


VALID = (ENVELOPES / "envelopHeenbericht-ggk_Di01_v21-xml.xml").read_bytes()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not well-formed"),
        (b"not xml", "not well-formed"),
        (b"<x/>", "not a ggk0210 envelope"),
        (b"<!DOCTYPE x><x/>", "DOCTYPE"),
        (
            (ENVELOPES / "ggk0310-Di01.xml").read_bytes(),
            "2.1.02/2.1.03",
        ),
        ((ENVELOPES / "ggk0310-Du01-not-well-formed.xml").read_bytes(), "not well-formed"),
        (_replace(VALID, b"<StUF:functie>WMO301</StUF:functie>", b""), None),
        (_replace(VALID, b"SGllciBzdGFhdCBl", b"SGllciBzdGFhdCB!"), "base64"),
        (_replace(VALID, b"HQu</GGK:xmlBestand>", b"HQ</GGK:xmlBestand>"), "base64"),
        (_replace(VALID, b"<StUF:berichtcode>Di01", b"<StUF:berichtcode>Du01"), "berichtcode"),
        (
            _replace(
                VALID, b"</GGK:bericht>", b"<GGK:tekstBestand bestandsnaam='a.txt'/></GGK:bericht>"
            ),
            "exactly one",
        ),
        (_replace(VALID, b"<GGK:bericht>", b"<GGK:berichtX>"), "not well-formed"),
    ],
)
def test_unwrap_rejects(data: bytes, match: str | None) -> None:
    with pytest.raises(EnvelopeError, match=match):
        unwrap(data)


def test_unwrap_size_limit() -> None:
    with pytest.raises(EnvelopeError, match="limit"):
        unwrap(VALID, max_bytes=100)


# -- properties ----------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=4096), tekst=st.booleans())
def test_any_payload_round_trips(payload: bytes, tekst: bool) -> None:
    env = _env(payload, bestandsnaam="data.bin" if tekst else None)
    assert unwrap(wrap(env)) == env
    assert unwrap(wrap(env)).payload == payload


_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=3, max_size=50
).filter(lambda s: s.strip() == s and s.strip())


@settings(max_examples=50, deadline=None)
@given(organisatie=_TEXT, applicatie=_TEXT, administratie=st.none() | _TEXT)
def test_stuurgegevens_round_trip(
    organisatie: str, applicatie: str, administratie: str | None
) -> None:
    env = _env(b"p", zender=Systeem(organisatie, applicatie, administratie))
    assert unwrap(wrap(env)).stuurgegevens == env.stuurgegevens


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_raises_envelope_error_only(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        unwrap(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    st.integers(0, len(VALID)),
)
def test_mutated_envelope_parses_or_raises_envelope_error(
    edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(VALID)
    for pos, value in edits:
        data[pos] = value
    try:
        env = unwrap(bytes(data[:cut] if cut % 3 == 0 else data))
    except EnvelopeError:
        return
    assert isinstance(env, Envelope)


# -- Fo01 --------------------------------------------------------------------------


def test_fo01_for_an_envelope() -> None:
    refused = unwrap((ENVELOPES / "envelopRetourbericht-ggk_Du01-v21.xml").read_bytes())
    me = Systeem("0484", "Wmo Applicatie")
    data = fo01_for(refused, "StUF055", "Berichtbody is niet conform schema", zender=me)
    tree = _tree(data)
    assert validate_fo01(tree) == []
    fo = parse_fo01(data)
    assert fo.stuurgegevens.cross_refnummer == refused.referentienummer
    assert fo.stuurgegevens.ontvanger == refused.stuurgegevens.zender
    assert fo.stuurgegevens.zender == me
    assert (fo.code, fo.plek) == ("StUF055", "client")
    assert UUID4.fullmatch(fo.stuurgegevens.referentienummer)
    # detailsXML holds the original envelope un-encoded [GGk21 §3.1].
    assert fo.details_xml is not None
    assert unwrap(fo.details_xml) == refused


def test_fo01_for_raw_bytes_defaults_to_answering_the_sender() -> None:
    raw = (ENVELOPES / "envelopHeenbericht-ggk_Di01_v21-xml.xml").read_bytes()
    fo = parse_fo01(fo01_for(raw, "RIN001", "Envelop voldoet niet", details="regel 3"))
    assert fo.stuurgegevens.cross_refnummer == "9c0f7b90-5c69-41e5-a837-0800200c9a66"
    assert fo.stuurgegevens.ontvanger.organisatie == "0548"
    assert fo.stuurgegevens.zender.organisatie == "01023456"
    assert fo.details == "regel 3"
    assert fo.details_xml is not None and b"envelopHeenbericht-ggk_Di01" in fo.details_xml


def test_fo01_for_a_not_well_formed_message() -> None:
    raw = (ENVELOPES / "ggk0310-Du01-not-well-formed.xml").read_bytes()
    with pytest.raises(ValueError, match="unreadable"):
        fo01_for(raw, "RIN001", "Envelop niet well-formed")
    me, them = Systeem("0484", "Wmo Applicatie"), Systeem("01023456", "Leverancier")
    data = fo01_for(raw, "RIN001", "Envelop niet well-formed", zender=me, ontvanger=them)
    assert validate_fo01(_tree(data)) == []
    fo = parse_fo01(data)
    # The referentienummer is still found in the bytes.
    assert fo.stuurgegevens.cross_refnummer == "b6e9f182-bc44-4f27-9863-9a5ccc1e1cf0"
    assert fo.details_xml is None


def test_fo01_clips_and_limits() -> None:
    env = _env(b"p")
    data = fo01_for(env, "IB240", "x" * 500, details="y" * 5000)
    assert validate_fo01(_tree(data)) == []
    with pytest.raises(ValueError, match="longer than 7"):
        fo01_for(env, "TOOLONG1", "x")


def test_parse_the_published_fo01() -> None:
    fo = parse_fo01((ENVELOPES / "Fo01.xml").read_bytes())
    assert (fo.code, fo.plek, fo.details) == ("IB210", "client", "JW315-00010004")
    assert fo.stuurgegevens.zender == Systeem("IB", "GGK")
    assert fo.stuurgegevens.ontvanger.gebruiker == "gebruiker1"
    assert fo.details_xml == b"<root/>" or fo.details_xml is not None


@pytest.mark.parametrize(
    "data", [VALID, b"<StUF:Fo01Bericht xmlns:StUF='http://www.egem.nl/StUF/StUF0301'/>", b"<"]
)
def test_parse_fo01_rejects_other_documents(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_fo01(data)
