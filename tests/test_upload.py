"""Batch upload (adapters.upload): refusing a zip as a whole, processing and the report.

The zips are built here with :mod:`zipfile`.  The handler used for the 100-message upload
is a real (small) validator, :class:`HeenValidator`: it parses each file with
xmlsafe and checks the StUF-GGk Di01 envelope, so every rejection comes from
actually reading the file.  tests/test_stuf_cli.py reuses it with the store behind it.
"""

from __future__ import annotations

import re
import uuid
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.upload import (
    Accepted,
    Rejected,
    Report,
    UploadItem,
    UploadRefused,
    format_report,
    process_upload,
    read_upload,
)
from xmlsafe import UnsafeXmlError, parse_xml

GGK = "http://www.stufstandaarden.nl/koppelvlak/ggk0210"
STUF = "http://www.egem.nl/StUF/StUF0301"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
FUNCTIES = frozenset({"WMO301", "WMO315", "JW301", "JW315"})


def heen_message(
    *,
    referentienummer: str | None = None,
    functie: str = "WMO301",
    zender: str = "0363",
    ontvanger: str = "12345678",
    berichtcode: str = "Di01",
    root: str = "envelopHeenbericht-ggk_Di01",
) -> bytes:
    """A StUF-GGk Di01 envelope (StUF-GGk ggk0210 skeleton) around a dummy payload."""
    r = referentienummer if referentienummer is not None else str(uuid.uuid4())
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<GGK:{root} xmlns:GGK="{GGK}" xmlns:StUF="{STUF}">
  <GGK:stuurgegevens>
    <StUF:berichtcode>{berichtcode}</StUF:berichtcode>
    <StUF:zender><StUF:organisatie>{zender}</StUF:organisatie><StUF:applicatie>MijnSD</StUF:applicatie></StUF:zender>
    <StUF:ontvanger><StUF:organisatie>{ontvanger}</StUF:organisatie><StUF:applicatie>GGk</StUF:applicatie></StUF:ontvanger>
    <StUF:referentienummer>{r}</StUF:referentienummer>
    <StUF:tijdstipBericht>20261123090000</StUF:tijdstipBericht>
    <StUF:functie>{functie}</StUF:functie>
  </GGK:stuurgegevens>
  <GGK:parameters>
    <GGK:applicatieVersie>0001</GGK:applicatieVersie>
    <GGK:applicatieSubversie>0000</GGK:applicatieSubversie>
    <GGK:functieVersie>0003</GGK:functieVersie>
    <GGK:functieSubversie>0002</GGK:functieSubversie>
    <GGK:bericht><GGK:xmlBestand>PEJlcmljaHQvPg==</GGK:xmlBestand></GGK:bericht>
  </GGK:parameters>
</GGK:{root}>
""".encode()


class Parsed:
    """The envelope fields a validator read."""

    def __init__(self, referentienummer: str, functie: str, zender: str, ontvanger: str) -> None:
        self.referentienummer = referentienummer
        self.functie = functie
        self.zender = zender
        self.ontvanger = ontvanger


class HeenValidator:
    """Checks a Di01 heenbericht from a gemeente; ``reserve`` decides duplicates.

    ``reserve(parsed, name, size)`` returns False when the reference was used already
    (in memory here; tests/test_stuf_cli.py passes one that records in the store).
    """

    def __init__(self, reserve: Callable[[Parsed, str, int], bool] | None = None) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.reserve = reserve or self._reserve_in_memory

    def _reserve_in_memory(self, parsed: Parsed, name: str, size: int) -> bool:
        key = (parsed.zender, parsed.referentienummer)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def __call__(self, name: str, data: bytes) -> Accepted | Rejected:
        if not data.strip():
            return Rejected("empty", "the file is empty")
        try:
            root = parse_xml(data).getroot()
        except UnsafeXmlError as exc:
            return Rejected("xml", str(exc))
        if root.tag != f"{{{GGK}}}envelopHeenbericht-ggk_Di01":
            return Rejected("envelope", f"not a Di01 heenbericht envelope: {root.tag}")

        def field(path: str) -> str | None:
            node = root.find(path, {"G": GGK, "S": STUF})
            return None if node is None or node.text is None else node.text.strip()

        if field("G:stuurgegevens/S:berichtcode") != "Di01":
            return Rejected("IB240", "berichtcode must be Di01 in a heenbericht")
        r = field("G:stuurgegevens/S:referentienummer")
        if r is None:
            return Rejected("RIN001", "stuurgegevens has no referentienummer")
        functie = field("G:stuurgegevens/S:functie") or ""
        if not UUID4.fullmatch(r):
            return Rejected("IB009", f"referentienummer {r!r} is not a UUID v4", functie=functie)
        if functie not in FUNCTIES:
            return Rejected("IB004", f"functie {functie!r} is not supported", r, functie)
        zender = field("G:stuurgegevens/S:zender/S:organisatie") or ""
        if not re.fullmatch(r"[0-9]{4}", zender):
            return Rejected("IB213", f"zender {zender!r} is not a gemeentecode", r, functie)
        parsed = Parsed(
            r, functie, zender, field("G:stuurgegevens/S:ontvanger/S:organisatie") or ""
        )
        if not self.reserve(parsed, name, len(data)):
            return Rejected("duplicate", f"referentienummer {r} was used before", r, functie)
        return Accepted(r, functie)


def broken_messages() -> dict[str, bytes]:
    """Ten files each wrong in another way (name -> content)."""
    dup = str(uuid.uuid4())
    return {
        "b01-not-well-formed.xml": b"<GGK:envelop><unclosed>",
        "b02-doctype.xml": b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        "b03-wrong-root.xml": heen_message(root="envelopRetourbericht-ggk_Du01"),
        "b04-du01-code.xml": heen_message(berichtcode="Du01"),
        "b05-no-reference.xml": heen_message()
        .replace(b"<StUF:referentienummer>", b"<!--")
        .replace(b"</StUF:referentienummer>", b"-->"),
        "b06-not-uuid4.xml": heen_message(referentienummer="12345"),
        "b07-unknown-functie.xml": heen_message(functie="WMO399"),
        "b08-zender-agb.xml": heen_message(zender="12345678", ontvanger="0363"),
        "b09-empty.xml": b"",
        "b10-dup-first.xml": heen_message(referentienummer=dup),
        "b10-dup-second.xml": heen_message(referentienummer=dup),
    }


def hundred_files() -> dict[str, bytes]:
    """90 valid messages (one of them the first of the duplicate pair) and 10 broken."""
    files = {f"m{n:03d}.xml": heen_message(functie=sorted(FUNCTIES)[n % 4]) for n in range(89)}
    files.update(broken_messages())
    assert len(files) == 100
    return files


def make_zip(path: Path, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def refused(path: Path, **limits: int) -> UploadRefused:
    with pytest.raises(UploadRefused) as info:
        read_upload(path, **limits)
    return info.value


# -- the zip as a whole ----------------------------------------------------------------


def test_good_zip_gives_every_file_in_order(tmp_path: Path) -> None:
    files = {"b.xml": heen_message(), "a.XML": heen_message(), "c.xml": b"<x/>"}
    items = read_upload(make_zip(tmp_path / "up.zip", files))
    assert items == [UploadItem(n, d) for n, d in files.items()]


def _bad_crc(tmp_path: Path) -> Path:
    data = b"<x>" + b"y" * 100 + b"</x>"
    raw = bytearray(
        make_zip(tmp_path / "crc.zip", {"a.xml": data}, zipfile.ZIP_STORED).read_bytes()
    )
    at = raw.index(b"y" * 100)
    raw[at] = ord("z")  # the stored bytes change, the CRC in the headers does not
    (tmp_path / "crc.zip").write_bytes(bytes(raw))
    return tmp_path / "crc.zip"


def _encrypted(tmp_path: Path) -> Path:
    raw = bytearray(make_zip(tmp_path / "enc.zip", {"a.xml": b"<x/>"}).read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 8] |= 0x1  # the general purpose flag's "encrypted" bit
    local = raw.index(b"PK\x03\x04")
    raw[local + 6] |= 0x1
    (tmp_path / "enc.zip").write_bytes(bytes(raw))
    return tmp_path / "enc.zip"


def _duplicate(tmp_path: Path, second: str) -> Path:
    path = tmp_path / f"dup-{second}.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        zf.writestr("a.xml", b"<x/>")
        zf.writestr(second, b"<y/>")
    return path


def _with_folder(tmp_path: Path) -> Path:
    path = tmp_path / "folder.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.xml", b"<x/>")
        zf.writestr(zipfile.ZipInfo("berichten/"), b"")
    return path


def _truncated(tmp_path: Path) -> Path:
    whole = make_zip(tmp_path / "whole.zip", hundred_files()).read_bytes()
    (tmp_path / "truncated.zip").write_bytes(whole[: len(whole) // 2])
    return tmp_path / "truncated.zip"


def _bomb(tmp_path: Path) -> Path:
    # 64 MiB of blanks inside an XML element: deflates to about 64 KiB (ratio ~1000).
    bomb = b"<x>" + b" " * (64 << 20) + b"</x>"
    return make_zip(tmp_path / "bomb.zip", {"a.xml": b"<x/>", "bomb.xml": bomb})


CASES: dict[str, tuple[Callable[[Path], Path], dict[str, int], str]] = {
    # name: (build the zip, limits, expected reason text)
    "not-a-zip": (
        lambda d: _write(d / "msg.zip", heen_message()),
        {},
        "not a zip file",
    ),
    "truncated": (_truncated, {}, "the zip is damaged or truncated: it starts like a zip"),
    "damaged": (_bad_crc, {}, "Bad CRC-32"),
    "too-large": (
        lambda d: make_zip(d / "big.zip", {"a.xml": heen_message()}),
        {"max_bytes": 200},
        "more than the limit of 200 bytes",
    ),
    "empty": (lambda d: make_zip(d / "empty.zip", {}), {}, "contains no files"),
    "too-many-files": (
        lambda d: make_zip(d / "many.zip", {f"{n}.xml": b"<x/>" for n in range(4)}),
        {"max_entries": 3},
        "has 4 entries, the limit is 3",
    ),
    "folder": (_with_folder, {}, "'berichten/' is a folder; folders are not allowed"),
    "path": (
        lambda d: make_zip(d / "path.zip", {"berichten/a.xml": b"<x/>"}),
        {},
        "'berichten/a.xml' is inside a folder",
    ),
    "backslash-path": (
        lambda d: make_zip(d / "bs.zip", {"berichten\\a.xml": b"<x/>"}),
        {},
        "'berichten\\\\a.xml' is inside a folder",
    ),
    "unsafe-path": (
        lambda d: make_zip(d / "up.zip", {"../x.xml": b"<x/>"}),
        {},
        "'../x.xml' points outside the zip",
    ),
    "bad-name": (
        lambda d: make_zip(d / "colon.zip", {"C:x.xml": b"<x/>"}),
        {},
        "'C:x.xml' is not a usable file name",
    ),
    "not-xml": (
        lambda d: make_zip(d / "txt.zip", {"a.xml": b"<x/>", "leesmij.txt": b"hallo"}),
        {},
        "'leesmij.txt' is not an .xml file",
    ),
    "duplicate": (lambda d: _duplicate(d, "a.xml"), {}, "'a.xml' is in the zip twice"),
    "duplicate-case": (lambda d: _duplicate(d, "A.xml"), {}, "'A.xml' is in the zip twice"),
    "encrypted": (_encrypted, {}, "'a.xml' is encrypted"),
    "unsupported": (
        lambda d: make_zip(d / "bz.zip", {"a.xml": b"<x/>"}, zipfile.ZIP_BZIP2),
        {},
        "'a.xml' uses compression method 12",
    ),
    "zip-bomb": (_bomb, {}, "'bomb.xml' unpacks from"),
    "too-large-unpacked": (
        lambda d: make_zip(
            d / "sum.zip", {f"{n}.xml": b"<x>" + b"1" * 500 + b"</x>" for n in range(3)}
        ),
        {"max_uncompressed": 1000},
        "the files unpack to more than 1000 bytes together",
    ),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_zip_is_refused_as_a_whole(tmp_path: Path, case: str) -> None:
    build, limits, reason = CASES[case]
    exc = refused(build(tmp_path), **limits)
    expected_code = {
        "truncated": "damaged",
        "backslash-path": "path",
        "duplicate-case": "duplicate",
    }
    assert exc.code == expected_code.get(case, case)
    assert reason in exc.reason
    assert str(exc) == exc.reason


def test_every_refusal_has_its_own_reason(tmp_path: Path) -> None:
    reasons = {}
    for case, (build, limits, _) in CASES.items():
        where = tmp_path / case
        where.mkdir()
        reasons[case] = refused(build(where), **limits).reason
    assert len(set(reasons.values())) == len(CASES), reasons


def test_missing_file_is_refused_as_unreadable(tmp_path: Path) -> None:
    assert refused(tmp_path / "nothing.zip").code == "unreadable"
    assert refused(tmp_path).code == "unreadable"  # a directory


def test_bomb_is_refused_before_anything_is_unpacked(tmp_path: Path, monkeypatch) -> None:
    path = _bomb(tmp_path)

    def never(*args: object, **kw: object) -> None:
        raise AssertionError("an entry was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", never)
    assert refused(path).code == "zip-bomb"


# -- processing and the report ---------------------------------------------------------


def test_hundred_messages_ninety_accepted_ten_rejected_each_with_its_reason(
    tmp_path: Path,
) -> None:
    items = read_upload(make_zip(tmp_path / "aanlevering.zip", hundred_files()))
    seen: list[str] = []
    report = process_upload(items, HeenValidator(), on_result=lambda r: seen.append(r.name))

    assert seen == [i.name for i in items]  # on_result once per file, in order
    assert len(report.results) == 100
    assert len(report.accepted) == 90 and len(report.rejected) == 10
    rejected = {r.name: r.outcome for r in report.rejected}
    assert set(rejected) == set(broken_messages()) - {"b10-dup-first.xml"}
    codes = {name: o.code for name, o in rejected.items() if isinstance(o, Rejected)}
    assert codes == {
        "b01-not-well-formed.xml": "xml",
        "b02-doctype.xml": "xml",
        "b03-wrong-root.xml": "envelope",
        "b04-du01-code.xml": "IB240",
        "b05-no-reference.xml": "RIN001",
        "b06-not-uuid4.xml": "IB009",
        "b07-unknown-functie.xml": "IB004",
        "b08-zender-agb.xml": "IB213",
        "b09-empty.xml": "empty",
        "b10-dup-second.xml": "duplicate",
    }
    reasons = [o.reason for o in rejected.values() if isinstance(o, Rejected)]
    assert len(set(reasons)) == 10  # the two XML refusals differ in their reason
    assert "DOCTYPE is not allowed" in rejected["b02-doctype.xml"].reason  # type: ignore[union-attr]

    text = format_report(report, title="verwerkingsverslag aanlevering.zip")
    lines = text.splitlines()
    assert lines[0] == "verwerkingsverslag aanlevering.zip"
    assert lines[-1] == "100 files: 90 accepted, 10 rejected"
    body = lines[1:-1]
    assert len(body) == 100
    assert sum(" accepted  " in line for line in body) == 90
    assert sum(" rejected  [" in line for line in body) == 10
    by_name = {line.split()[0]: line for line in body}
    assert by_name["b07-unknown-functie.xml"].endswith(
        "rejected  [IB004] functie 'WMO399' is not supported"
    )
    first = report.results[0]
    assert isinstance(first.outcome, Accepted)
    assert by_name["m000.xml"].endswith(
        f"accepted  {first.outcome.functie:<6}  {first.outcome.referentienummer}"
    )


def test_a_handler_that_raises_rejects_that_file_only() -> None:
    def handle(name: str, data: bytes) -> Accepted | Rejected:
        if name == "boom.xml":
            raise RuntimeError("store went away\nfor a moment")
        return Accepted(str(uuid.uuid4()), "WMO301")

    items = [UploadItem("a.xml", b"1"), UploadItem("boom.xml", b"22"), UploadItem("c.xml", b"3")]
    report = process_upload(items, handle)
    assert [r.name for r in report.accepted] == ["a.xml", "c.xml"]
    (failed,) = report.rejected
    assert failed.outcome == Rejected("error", "RuntimeError: store went away\nfor a moment")
    assert failed.size == 2
    # One line per file, even when a reason has line breaks.
    assert "boom.xml  rejected  [error] RuntimeError: store went away for a moment" in (
        format_report(report)
    )


def test_report_of_one_file_says_file() -> None:
    report = Report(process_upload([UploadItem("a.xml", b"")], HeenValidator()).results)
    assert format_report(report).splitlines() == [
        "a.xml  rejected  [empty] the file is empty",
        "1 file: 0 accepted, 1 rejected",
    ]
