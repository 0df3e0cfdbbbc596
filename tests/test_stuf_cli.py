"""``dkgw log``, ``report``, ``purge`` and ``upload`` (gateway.commands.stuf) on a SQLite store.

The store functions themselves are tested on both dialects in tests/test_stuf_store.py.
The upload handler here stands in for the relay (adapters.stuf.relay) and follows the
seam the relay must follow: it logs what it accepts with record_message in the batch of
the session, and a duplicate reference is refused by the store.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import uuid
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from adapters.stuf.store import (
    LogEntry,
    StufDirection,
    StufStatus,
    get_batch,
    query_log,
    record_message,
    update_status,
)
from adapters.upload import FileResult, Handler, Rejected, UploadSession
from gateway.cli import build_parser, main
from gateway.commands import stuf as stuf_commands
from gateway.commands.common import STORE_FILE
from gateway.commands.stuf import cmd_upload, parse_duration, parse_when, refusal_entry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from gateway.store.timeutil import utcnow
from tests.test_upload import HeenValidator, Parsed, heen_message, hundred_files, make_zip

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A gateway's state directory with its (empty) store: the commands never make one."""
    path = tmp_path / "var"
    store = Database.sqlite(path / STORE_FILE)
    apply_migrations(store)
    store.close()
    return path


@pytest.fixture
def db(data_dir: Path) -> Iterator[Database]:
    store = Database.sqlite(data_dir / STORE_FILE)
    apply_migrations(store)
    yield store
    store.close()


def dkgw(data_dir: Path, *argv: str) -> int:
    return main(["--data-dir", str(data_dir), *argv])


def seed(db: Database, ago: timedelta, **kw: object) -> int:
    values: dict[str, object] = {
        "direction": StufDirection.OUT,
        "status": StufStatus.SENT,
        "referentienummer": str(uuid.uuid4()),
        "berichtcode": "Di01",
        "functie": "WMO301",
        "gemeente": "0363",
        "counterpart": "12345678",
        "sender_org": "0363",
        "receiver_org": "12345678",
        "ebms_message_id": f"{uuid.uuid4()}@gw",
    }
    values.update(kw)
    with db.transaction() as cur:
        log_id = record_message(cur, LogEntry(**values), now=utcnow() - ago)  # type: ignore[arg-type]
    assert log_id is not None
    return log_id


# -- dkgw log ----------------------------------------------------------------------------


def test_log_lists_and_filters_as_text_and_json(
    db: Database, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recent = seed(db, HOUR, referentienummer="11111111-1111-4111-8111-111111111111")
    seed(db, 2 * DAY, functie="JW301", gemeente="0599", sender_org="0599", status=StufStatus.SENT)
    seed(db, 10 * DAY)  # outside --since 7d
    answer = seed(
        db,
        30 * 60 * timedelta(seconds=1),
        direction=StufDirection.IN,
        status=StufStatus.RECEIVED,
        berichtcode="Du01",
        functie="WMO302",
        sender_org="12345678",
        receiver_org="0363",
        cross_ref="11111111-1111-4111-8111-111111111111",
    )
    refused = seed(
        db,
        3 * DAY,
        status=StufStatus.REJECTED,
        ebms_message_id=None,
        reason_code="IB009",
        reason="referentienummer is not a UUID v4",
    )

    assert dkgw(data_dir, "log", "--since", "7d", "--type", "WMO301") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == stuf_commands.LOG_HEADER
    assert len(lines) == 3  # header, the recent one, the refused one (newest first)
    assert "  out  WMO301  Di01  0363  12345678     sent       11111111-1111-4111-8111" in lines[1]
    assert lines[2].endswith("[IB009] referentienummer is not a UUID v4")
    assert " rejected " in lines[2]

    assert dkgw(data_dir, "log", "--json") == 0
    everything = json.loads(capsys.readouterr().out)
    assert len(everything) == 5
    assert everything[0]["id"] == answer  # newest first
    assert set(everything[0]) >= {
        "referentienummer",
        "cross_ref",
        "berichtcode",
        "functie",
        "gemeente",
        "counterpart",
        "status",
        "reason",
        "created_at",
        "read_at",
    }
    assert everything[0]["status"] == "received" and everything[0]["direction"] == "in"
    assert everything[0]["created_at"].endswith("+00:00")

    def ids(*argv: str) -> list[int]:
        assert dkgw(data_dir, "log", "--json", *argv) == 0
        return [item["id"] for item in json.loads(capsys.readouterr().out)]

    assert ids("--gemeente", "0599", "--type", "JW301") != []
    assert ids("--gemeente", "0599", "--type", "WMO301") == []
    assert ids("--status", "rejected") == [refused]
    assert ids("--direction", "in") == [answer]
    assert ids("--ref", "11111111-1111-4111-8111-111111111111") == [answer, recent]
    assert ids("--since", "2000-01-01", "--until", "2000-01-02") == []

    assert dkgw(data_dir, "log", "--limit", "2") == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 3 and "showing the newest 2" in out.err

    assert dkgw(data_dir, "log", "--status", "read") == 0
    assert capsys.readouterr().out == "no messages\n"


@pytest.mark.parametrize(
    "argv",
    [
        ("--since", "last week"),
        ("--gemeente", "363"),
        ("--status", "lost"),
        ("--direction", "sideways"),
        ("--limit", "0"),
    ],
)
def test_log_usage_errors_exit_2(data_dir: Path, argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as exit_:
        dkgw(data_dir, "log", *argv)
    assert exit_.value.code == 2


def test_time_and_duration_arguments() -> None:
    now = utcnow()
    assert parse_when("7d", now=now) == now - 7 * DAY
    assert parse_when("24h", now=now) == now - DAY
    assert parse_when("2026-11-01").isoformat() == "2026-11-01T00:00:00+00:00"
    assert parse_when("2026-11-01T08:00+01:00").isoformat() == "2026-11-01T08:00:00+01:00"
    assert parse_duration("168h") == 7 * DAY
    assert parse_duration("90d") == 90 * DAY
    assert parse_duration("30m") == 30 * 60 * timedelta(seconds=1)
    for bad in ("0h", "h", "1y", "-1d"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)


# -- dkgw purge --------------------------------------------------------------------------


def test_purge_dry_run_counts_and_purge_deletes(
    db: Database, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read = seed(db, 200 * HOUR)
    with db.transaction() as cur:
        update_status(cur, read, StufStatus.DELIVERED, now=utcnow() - 199 * HOUR)
        update_status(cur, read, StufStatus.READ, now=utcnow() - 169 * HOUR)
    seed(db, 91 * DAY)
    kept = seed(db, 89 * DAY)

    assert dkgw(data_dir, "purge", "--dry-run") == 0
    # The first line is the StUF log's; the general retention's lines follow (test_retention).
    assert capsys.readouterr().out.splitlines()[0] == (
        "would purge 2 messages (1 read more than 168h ago, 1 older than 90d) and 0 batches"
    )
    with db.transaction() as cur:
        assert len(query_log(cur)) == 3

    assert dkgw(data_dir, "purge") == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "purged 2 messages (1 read more than 168h ago, 1 older than 90d) and 0 batches"
    )
    with db.transaction() as cur:
        assert [i.id for i in query_log(cur)] == [kept]

    assert dkgw(data_dir, "purge", "--max-age", "88d", "--read-after", "1h", "--dry-run") == 0
    assert capsys.readouterr().out.startswith("would purge 1 message (0 read more than 1h ago,")


# -- dkgw upload and dkgw report ---------------------------------------------------------


def store_handler(args: argparse.Namespace, session: UploadSession) -> Handler:
    """A handler following the relay's seam: log what it accepts, the store decides duplicates."""

    def reserve(parsed: Parsed, name: str, size: int) -> bool:
        with session.db.transaction() as cur:
            # The relay would queue the ebMS message in this same transaction.
            log_id = record_message(
                cur,
                LogEntry(
                    direction=StufDirection.OUT,
                    status=StufStatus.ACCEPTED,
                    referentienummer=parsed.referentienummer,
                    berichtcode="Di01",
                    functie=parsed.functie,
                    gemeente=parsed.zender,
                    counterpart=parsed.ontvanger,
                    sender_org=parsed.zender,
                    receiver_org=parsed.ontvanger,
                    file_name=name,
                    size=size,
                    batch_id=session.batch_id,
                ),
            )
        return log_id is not None

    return HeenValidator(reserve)


def upload(data_dir: Path, path: Path) -> int:
    args = build_parser().parse_args(["--data-dir", str(data_dir), "upload", str(path)])
    return cmd_upload(args, handler_factory=store_handler)


def test_upload_of_a_hundred_messages_reports_ninety_sent_and_ten_rejected(
    db: Database, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_zip(tmp_path / "aanlevering.zip", hundred_files())
    assert upload(data_dir, path) == 1  # some rejected
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("verwerkingsverslag aanlevering.zip (batch 1, node ")
    assert lines[-1] == "100 files: 90 accepted, 10 rejected"
    assert len(lines) == 102
    rejected = [line for line in lines if " rejected  [" in line]
    assert len(rejected) == 10
    assert len({line.split("]", 1)[1] for line in rejected}) == 10  # distinct reasons
    assert any(
        x.split()[:4] == ["b10-dup-second.xml", "rejected", "[duplicate]", "referentienummer"]
        for x in rejected
    )

    with db.transaction() as cur:
        batch = get_batch(cur, 1)
        items = query_log(cur, batch_id=1)
    assert batch is not None and batch.finished_at is not None
    assert (batch.accepted, batch.rejected, batch.name) == (90, 10, "aanlevering.zip")
    assert len(items) == 100 and {i.file_name for i in items} == set(hundred_files())
    assert sum(i.status is StufStatus.REJECTED for i in items) == 10
    (not_uuid,) = [i for i in items if i.file_name == "b06-not-uuid4.xml"]
    assert (not_uuid.reason_code, not_uuid.functie) == ("IB009", "WMO301")

    # The processing report again, from the store.
    assert dkgw(data_dir, "report", "1") == 0
    report = capsys.readouterr().out.splitlines()
    assert report[0].startswith('batch 1: upload "aanlevering.zip" on ')
    assert report[1] == "100 files: 90 accepted, 10 rejected"
    assert sum(" accepted   WMO" in line or " accepted   JW" in line for line in report) == 90
    assert "b09-empty.xml rejected [empty] the file is empty" in [
        " ".join(x.split()) for x in report
    ]
    assert dkgw(data_dir, "report", "1", "--json") == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["batch"]["accepted"] == 90 and len(as_json["items"]) == 100

    # The same zip again: every valid message is now a duplicate (the store remembers).
    assert upload(data_dir, path) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "100 files: 0 accepted, 100 rejected"
    assert dkgw(data_dir, "log", "--batch", "2", "--status", "rejected", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 100


def test_upload_with_every_file_accepted_exits_0(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_zip(tmp_path / "ok.zip", {f"{n}.xml": heen_message() for n in range(3)})
    assert upload(data_dir, path) == 0
    assert capsys.readouterr().out.endswith("3 files: 3 accepted, 0 rejected\n")


def test_refused_zip_is_a_clear_error_and_starts_no_batch(
    db: Database, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "map.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("wmo/0001.xml", heen_message())
    assert upload(data_dir, path) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (
        "dkgw: upload refused: map.zip: 'wmo/0001.xml' is inside a folder; "
        "put the files at the top of the zip\n"
    )
    not_a_zip = tmp_path / "bericht.zip"
    not_a_zip.write_bytes(heen_message())
    assert upload(data_dir, not_a_zip) == 1
    assert "upload refused: bericht.zip: not a zip file" in capsys.readouterr().err
    with db.transaction() as cur:
        assert get_batch(cur, 1) is None


def test_report_of_an_unknown_batch_exits_1(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert dkgw(data_dir, "report", "42") == 1
    assert capsys.readouterr().err == "dkgw: no batch 42\n"


# -- the relay seam ----------------------------------------------------------------------


def test_upload_without_the_relay_says_so_after_checking_the_zip(
    db: Database,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, stuf_commands.RELAY_MODULE, None)  # "not installed"
    path = make_zip(tmp_path / "ok.zip", {"a.xml": heen_message()})
    assert dkgw(data_dir, "upload", str(path)) == 1
    assert "sending uploaded messages is not available yet" in capsys.readouterr().err
    with db.transaction() as cur:
        assert get_batch(cur, 1) is None  # the batch opened for it is gone again
    # A refused zip is still reported as such.
    assert dkgw(data_dir, "upload", str(tmp_path / "missing.zip")) == 1
    assert "upload refused: missing.zip: cannot read" in capsys.readouterr().err


def test_upload_uses_the_relay_when_it_is_there(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[UploadSession] = []

    def upload_handler(args: argparse.Namespace, session: UploadSession) -> Handler:
        calls.append(session)
        assert args.file.name == "ok.zip"
        return lambda name, data: Rejected("relay", f"relay saw {name}")

    relay = types.ModuleType(stuf_commands.RELAY_MODULE)
    relay.upload_handler = upload_handler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, stuf_commands.RELAY_MODULE, relay)
    path = make_zip(tmp_path / "ok.zip", {"a.xml": heen_message()})
    assert dkgw(data_dir, "upload", str(path)) == 1
    assert "a.xml  rejected  [relay] relay saw a.xml" in capsys.readouterr().out
    (session,) = calls
    assert (session.batch_id, session.name) == (1, "ok.zip") and session.node


def test_a_broken_relay_import_is_not_mistaken_for_a_missing_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(name: str) -> types.ModuleType:
        raise ModuleNotFoundError("No module named 'lxml.nothing'", name="lxml.nothing")

    monkeypatch.setattr(stuf_commands.importlib, "import_module", broken)
    with pytest.raises(ModuleNotFoundError, match=r"lxml\.nothing"):
        stuf_commands.handler_from_config(argparse.Namespace(), None)  # type: ignore[arg-type]


def test_a_relay_that_cannot_start_leaves_no_batch(
    db: Database, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def factory(args: argparse.Namespace, session: UploadSession) -> Handler:
        raise ValueError("no CPA for the GGk in the store")

    path = make_zip(tmp_path / "ok.zip", {"a.xml": heen_message()})
    args = build_parser().parse_args(["--data-dir", str(data_dir), "upload", str(path)])
    assert cmd_upload(args, handler_factory=factory) == 1
    assert capsys.readouterr().err == "dkgw: no CPA for the GGk in the store\n"
    with db.transaction() as cur:
        assert get_batch(cur, 1) is None


def test_refusal_log_row_keeps_what_was_read_within_bounds() -> None:
    outcome = Rejected(
        "IB240",
        "berichtcode Du01 in a heenbericht",
        referentienummer="r" * 5000,
        functie="WMO301",
        berichtcode="Du01",
        sender_org="0363",
        receiver_org="12345678",
    )
    entry = refusal_entry(FileResult("a.xml", 10, outcome), outcome, 7)
    assert (entry.status, entry.batch_id, entry.file_name, entry.size) == (
        StufStatus.REJECTED,
        7,
        "a.xml",
        10,
    )
    assert (entry.gemeente, entry.counterpart, entry.berichtcode) == ("0363", "12345678", "Du01")
    assert entry.referentienummer == "r" * 200
    odd = Rejected("RIN001", "bad envelope", berichtcode="Xx99", sender_org="ABC")
    entry = refusal_entry(FileResult("b.xml", 1, odd), odd, 7)
    assert entry.berichtcode is None and entry.gemeente is None  # the log's CHECK holds
