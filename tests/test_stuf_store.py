"""The StUF message log (adapters.stuf.store) on both dialects: duplicates, queries, retention.

Retention runs on a fake clock: every timestamp is written and purged with an explicit
``now``, so "169 hours later" takes no time.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from adapters.stuf.store import (
    BatchSource,
    LogEntry,
    PurgeCounts,
    StufDirection,
    StufStatus,
    batch_report,
    delete_batch,
    finish_batch,
    get_batch,
    mark_by_ebms_id,
    open_batch,
    purge,
    query_log,
    record_message,
    reference_used,
    split_parties,
    update_status,
)
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations, load_migrations
from tests.conftest import StoreFactory

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
GEMEENTE = "0363"
AGB = "12345678"


@pytest.fixture
def db(store: Database) -> Database:
    apply_migrations(store)
    return store


def ref() -> str:
    return str(uuid.uuid4())


def entry(**kw: object) -> LogEntry:
    """An outbound WMO301 Di01 from the gemeente to an aanbieder; keyword overrides."""
    values: dict[str, object] = {
        "direction": StufDirection.OUT,
        "status": StufStatus.SENT,
        "referentienummer": ref(),
        "berichtcode": "Di01",
        "functie": "WMO301",
        "gemeente": GEMEENTE,
        "counterpart": AGB,
        "sender_org": GEMEENTE,
        "receiver_org": AGB,
        "ebms_message_id": f"{uuid.uuid4()}@gw",
        "cpa_id": "cpa-ggk",
        "size": 1234,
    }
    values.update(kw)
    return LogEntry(**values)  # type: ignore[arg-type]


def log(db: Database, now: datetime = T0, **kw: object) -> int:
    with db.transaction() as cur:
        log_id = record_message(cur, entry(**kw), now=now)
    assert log_id is not None
    return log_id


def test_migration_is_shipped_for_both_dialects(db: Database) -> None:
    (migration,) = [m for m in load_migrations(db.dialect) if m.name.endswith("_stuf")]
    assert migration.name == "0010_stuf"
    assert migration.filename == f"0010_stuf.{db.dialect}.sql"


def test_message_round_trips_with_every_field(db: Database) -> None:
    with db.transaction() as cur:
        batch_id = open_batch(cur, BatchSource.UPLOAD, name="a.zip", node="n1", now=T0)
    written = entry(
        cross_ref=ref(), file_name="0001.xml", reason_code="x", reason="y", batch_id=batch_id
    )
    with db.transaction() as cur:
        log_id = record_message(cur, written, now=T0)
    with db.transaction() as cur:
        (item,) = query_log(cur)
    assert item.id == log_id
    for name in LogEntry.__dataclass_fields__:
        assert getattr(item, name) == getattr(written, name), name
    assert item.created_at == item.updated_at == T0
    assert item.delivered_at is None and item.read_at is None


def test_gemeente_must_be_a_four_digit_code(db: Database) -> None:
    with db.transaction() as cur, pytest.raises(ValueError, match="4-digit"):
        record_message(cur, entry(gemeente="363"))


def test_split_parties_finds_the_gemeente_on_either_side() -> None:
    assert split_parties("0363", "12345678") == ("0363", "12345678")
    assert split_parties("12345678", "0363") == ("0363", "12345678")
    assert split_parties("IB", "0599") == ("0599", "IB")
    assert split_parties("CAK", "12345678") == (None, "12345678")


# -- duplicates ------------------------------------------------------------------------


def test_reference_used_by_the_same_sender_is_a_duplicate_in_either_direction(
    db: Database,
) -> None:
    r = ref()
    log(db, referentienummer=r)  # we sent it
    with db.transaction() as cur:
        # The same again, and the same sender's reference coming back in: duplicates.
        assert record_message(cur, entry(referentienummer=r)) is None
        assert (
            record_message(
                cur,
                entry(referentienummer=r, direction=StufDirection.IN, status=StufStatus.RECEIVED),
            )
            is None
        )
        # Another sender may use the same UUID (its own numbering).
        assert record_message(cur, entry(referentienummer=r, sender_org=AGB)) is not None
    with db.transaction() as cur:
        assert len(query_log(cur, referentienummer=r)) == 2


def test_reference_used_is_the_early_check(db: Database) -> None:
    r = ref()
    with db.transaction() as cur:
        assert not reference_used(cur, GEMEENTE, r)
    log(db, referentienummer=r, status=StufStatus.REJECTED, ebms_message_id=None)
    with db.transaction() as cur:
        assert not reference_used(cur, GEMEENTE, r)  # a refusal does not use it up
    log(db, referentienummer=r)
    with db.transaction() as cur:
        assert reference_used(cur, GEMEENTE, r)
        assert not reference_used(cur, AGB, r)


def test_received_reference_cannot_be_received_again(db: Database) -> None:
    r = ref()
    inbound = {"direction": StufDirection.IN, "status": StufStatus.RECEIVED}
    log(db, referentienummer=r, sender_org=AGB, receiver_org=GEMEENTE, **inbound)
    with db.transaction() as cur:
        again = entry(referentienummer=r, sender_org=AGB, receiver_org=GEMEENTE, **inbound)
        assert record_message(cur, again) is None


def test_rejected_messages_do_not_use_up_their_reference(db: Database) -> None:
    r = ref()
    rejected = {"status": StufStatus.REJECTED, "ebms_message_id": None, "reason_code": "xml"}
    log(db, referentienummer=r, **rejected)
    # Fixed and uploaded again: accepted, and the duplicate after it refused and logged.
    log(db, referentienummer=r)
    with db.transaction() as cur:
        assert record_message(cur, entry(referentienummer=r)) is None
    log(db, referentienummer=r, **{**rejected, "reason_code": "duplicate"})
    with db.transaction() as cur:
        items = query_log(cur, referentienummer=r)
    assert sorted(i.status.value for i in items) == ["rejected", "rejected", "sent"]


def test_two_nodes_racing_with_the_same_reference_log_it_once(open_store: StoreFactory) -> None:
    nodes = [open_store(), open_store()]
    apply_migrations(nodes[0])
    refs = [ref() for _ in range(40)]
    threads_per_node = 3
    barrier = threading.Barrier(2 * threads_per_node)
    wins: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(db: Database, direction: StufDirection) -> None:
        try:
            barrier.wait()
            for r in refs:
                status = StufStatus.SENT if direction is StufDirection.OUT else StufStatus.RECEIVED
                with db.transaction() as cur:
                    won = record_message(
                        cur, entry(referentienummer=r, direction=direction, status=status)
                    )
                if won is not None:
                    with lock:
                        wins.append(r)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(
            target=work, args=(nodes[i % 2], StufDirection.OUT if i % 3 else StufDirection.IN)
        )
        for i in range(2 * threads_per_node)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(wins) == sorted(refs)  # every reference won exactly once
    with nodes[1].transaction() as cur:
        assert len(query_log(cur)) == len(refs)


# -- status ----------------------------------------------------------------------------


def test_outbound_status_moves_and_guards(db: Database) -> None:
    log_id = log(db, status=StufStatus.ACCEPTED, ebms_message_id=None, cpa_id=None)
    with db.transaction() as cur, pytest.raises(ValueError, match="MessageId"):
        update_status(cur, log_id, StufStatus.SENT)
    with db.transaction() as cur:
        assert not update_status(cur, log_id, StufStatus.DELIVERED)  # not sent yet
        assert update_status(
            cur, log_id, StufStatus.SENT, ebms_message_id="m1@gw", cpa_id="c1", now=T0 + HOUR
        )
        assert not update_status(cur, log_id, StufStatus.SENT, ebms_message_id="m2@gw")
        assert update_status(cur, log_id, StufStatus.DELIVERED, now=T0 + 2 * HOUR)
        assert not update_status(cur, log_id, StufStatus.DELIVERED)  # once
        assert update_status(cur, log_id, StufStatus.READ, now=T0 + 3 * HOUR)
        (item,) = query_log(cur)
    assert (item.status, item.ebms_message_id, item.cpa_id) == (StufStatus.READ, "m1@gw", "c1")
    assert item.delivered_at == T0 + 2 * HOUR and item.read_at == T0 + 3 * HOUR
    assert item.updated_at == T0 + 3 * HOUR


def test_received_message_read_directly_counts_as_delivered(db: Database) -> None:
    log_id = log(db, direction=StufDirection.IN, status=StufStatus.RECEIVED)
    with db.transaction() as cur:
        assert update_status(cur, log_id, StufStatus.READ, now=T0 + HOUR)
        (item,) = query_log(cur)
    assert item.delivered_at == item.read_at == T0 + HOUR


def test_an_fo01_after_delivery_fails_the_message(db: Database) -> None:
    log_id = log(db, ebms_message_id="m@gw")
    with db.transaction() as cur:
        assert update_status(cur, log_id, StufStatus.DELIVERED, now=T0 + HOUR)
        assert update_status(cur, log_id, StufStatus.FAILED, reason_code="IB002", now=T0 + HOUR)
        (item,) = query_log(cur)
    assert (item.status, item.reason_code) == (StufStatus.FAILED, "IB002")


def test_rejected_is_final(db: Database) -> None:
    log_id = log(db, status=StufStatus.REJECTED, ebms_message_id=None)
    with db.transaction() as cur:
        for status in (StufStatus.DELIVERED, StufStatus.FAILED, StufStatus.READ):
            assert not update_status(cur, log_id, status)
        with pytest.raises(ValueError):
            update_status(cur, log_id, StufStatus.REJECTED)


def test_ebms_events_update_the_log_by_message_id(db: Database) -> None:
    delivered = log(db, ebms_message_id="ok@gw")
    failed = log(db, ebms_message_id="ko@gw")
    with db.transaction() as cur:
        assert mark_by_ebms_id(cur, "ok@gw", StufStatus.DELIVERED, now=T0 + HOUR) == 1
        assert mark_by_ebms_id(cur, "ok@gw", StufStatus.DELIVERED) == 0  # event seen twice
        assert (
            mark_by_ebms_id(
                cur, "ko@gw", StufStatus.FAILED, reason_code="expired", reason="TimeToLive passed"
            )
            == 1
        )
        assert mark_by_ebms_id(cur, "nobody@gw", StufStatus.DELIVERED) == 0
        with pytest.raises(ValueError):
            mark_by_ebms_id(cur, "ok@gw", StufStatus.SENT)
        by_id = {i.id: i for i in query_log(cur)}
    assert by_id[delivered].status is StufStatus.DELIVERED
    assert by_id[delivered].delivered_at == T0 + HOUR
    assert by_id[failed].status is StufStatus.FAILED
    assert (by_id[failed].reason_code, by_id[failed].reason) == ("expired", "TimeToLive passed")


# -- queries ---------------------------------------------------------------------------


def test_log_queries_by_period_type_gemeente_status_and_direction(db: Database) -> None:
    ids = {
        "old": log(db, now=T0 - 10 * DAY, functie="WMO301"),
        "wmo": log(db, now=T0 - 2 * DAY, functie="WMO301"),
        "jw": log(db, now=T0 - DAY, functie="JW301", gemeente="0599", sender_org="0599"),
        "in": log(
            db,
            now=T0 - HOUR,
            functie="WMO302",
            berichtcode="Du01",
            direction=StufDirection.IN,
            status=StufStatus.RECEIVED,
            sender_org=AGB,
            receiver_org=GEMEENTE,
        ),
        "bad": log(db, now=T0, functie="WMO301", status=StufStatus.REJECTED, ebms_message_id=None),
    }

    def q(**kw: object) -> list[int]:
        with db.transaction() as cur:
            return [i.id for i in query_log(cur, **kw)]  # type: ignore[arg-type]

    assert q() == [ids["bad"], ids["in"], ids["jw"], ids["wmo"], ids["old"]]  # newest first
    assert q(since=T0 - 7 * DAY) == [ids["bad"], ids["in"], ids["jw"], ids["wmo"]]
    assert q(since=T0 - 2 * DAY, until=T0 - DAY) == [ids["wmo"]]  # until is exclusive
    assert q(functie="WMO301") == [ids["bad"], ids["wmo"], ids["old"]]
    assert q(functie="WMO301", since=T0 - 7 * DAY, status=StufStatus.SENT) == [ids["wmo"]]
    assert q(gemeente="0599") == [ids["jw"]]
    assert q(gemeente=GEMEENTE, direction=StufDirection.IN) == [ids["in"]]
    assert q(direction=StufDirection.OUT, limit=2) == [ids["bad"], ids["jw"]]
    assert q(status=StufStatus.READ) == []
    with pytest.raises(ValueError):
        q(limit=0)


def test_reference_search_finds_the_answers_too(db: Database) -> None:
    heen = ref()
    first = log(db, now=T0, referentienummer=heen)
    answer = log(
        db,
        now=T0 + HOUR,
        referentienummer=ref(),
        cross_ref=heen,
        berichtcode="Du01",
        functie="WMO302",
        direction=StufDirection.IN,
        status=StufStatus.RECEIVED,
        sender_org=AGB,
        receiver_org=GEMEENTE,
    )
    log(db, now=T0 + HOUR)  # unrelated
    with db.transaction() as cur:
        assert [i.id for i in query_log(cur, referentienummer=heen)] == [answer, first]


# -- batches ---------------------------------------------------------------------------


def test_batch_counts_and_report(db: Database) -> None:
    with db.transaction() as cur:
        batch_id = open_batch(cur, BatchSource.UPLOAD, name="aanlevering.zip", node="n1", now=T0)
        batch = get_batch(cur, batch_id)
    assert batch is not None and batch.finished_at is None and batch.source is BatchSource.UPLOAD
    names = []
    for n in range(5):
        status = StufStatus.REJECTED if n in (1, 3) else StufStatus.SENT
        log(db, batch_id=batch_id, file_name=f"{n}.xml", status=status)
        names.append(f"{n}.xml")
    log(db)  # not in the batch
    with db.transaction() as cur:
        done = finish_batch(cur, batch_id, now=T0 + HOUR)
        report = batch_report(cur, batch_id)
        assert finish_batch(cur, 999_999) is None
        assert batch_report(cur, 999_999) is None
    assert done is not None and (done.accepted, done.rejected) == (3, 2)
    assert done.finished_at == T0 + HOUR and done.name == "aanlevering.zip" and done.node == "n1"
    assert report is not None and report.batch == done
    assert [i.file_name for i in report.items] == names  # upload order
    with db.transaction() as cur:  # explicit counts (what the operator was told) win
        again = finish_batch(cur, batch_id, accepted=4, rejected=1, now=T0 + HOUR)
    assert again is not None and (again.accepted, again.rejected) == (4, 1)


def test_only_an_empty_batch_can_be_deleted(db: Database) -> None:
    with db.transaction() as cur:
        empty = open_batch(cur, BatchSource.API)
        full = open_batch(cur, BatchSource.FILEDROP)
    log(db, batch_id=full)
    with db.transaction() as cur:
        assert delete_batch(cur, empty)
        assert not delete_batch(cur, full)
        assert get_batch(cur, empty) is None and get_batch(cur, full) is not None


# -- retention -------------------------------------------------------------------------


def _ids(db: Database) -> set[int]:
    with db.transaction() as cur:
        return {i.id for i in query_log(cur, limit=10_000)}


def _read(db: Database, at: datetime, **kw: object) -> int:
    """A message sent at ``at``, delivered and read one hour later."""
    log_id = log(db, now=at, **kw)
    with db.transaction() as cur:
        assert update_status(cur, log_id, StufStatus.DELIVERED, now=at + HOUR)
        assert update_status(cur, log_id, StufStatus.READ, now=at + HOUR)
    return log_id


def test_retention_on_a_fake_clock(db: Database) -> None:
    now = T0 + 200 * DAY
    read_167h = _read(db, now - 167 * HOUR - HOUR)  # read 167 h before now
    read_169h = _read(db, now - 169 * HOUR - HOUR)  # read 169 h before now
    delivered_unread = log(db, now=now - 89 * DAY)
    with db.transaction() as cur:
        assert update_status(cur, delivered_unread, StufStatus.DELIVERED, now=now - 89 * DAY)
    received_unread = log(
        db, now=now - 89 * DAY, direction=StufDirection.IN, status=StufStatus.RECEIVED
    )
    old = {
        log(db, now=now - 90 * DAY - HOUR, status=s, ebms_message_id=None)
        for s in (StufStatus.SENT, StufStatus.RECEIVED, StufStatus.REJECTED, StufStatus.FAILED)
    }
    old.add(_read(db, now - 91 * DAY))  # old and read: counted once, as expired
    before = _ids(db)

    with db.transaction() as cur:
        dry = purge(cur, now, dry_run=True)
    assert dry == PurgeCounts(read=1, expired=5, batches=0)
    assert _ids(db) == before  # a dry run deletes nothing
    with db.transaction() as cur:
        assert purge(cur, now) == dry
    assert _ids(db) == {read_167h, delivered_unread, received_unread}
    assert read_169h not in _ids(db) and not old & _ids(db)

    # Two hours later the other read item has passed 168 h too.
    with db.transaction() as cur:
        assert purge(cur, now + 2 * HOUR) == PurgeCounts(read=1, expired=0, batches=0)
    # Unread items stay until 90 days after they were logged, then everything goes.
    with db.transaction() as cur:
        assert purge(cur, now + DAY - HOUR).messages == 0
        assert purge(cur, now + DAY) == PurgeCounts(read=0, expired=2, batches=0)
    assert _ids(db) == set()


def test_retention_periods_are_configurable(db: Database) -> None:
    read = _read(db, T0)
    with db.transaction() as cur:
        assert purge(cur, T0 + 25 * HOUR, read_after=timedelta(hours=24)).read == 1
    assert read not in _ids(db)
    log(db, now=T0)
    with db.transaction() as cur:
        assert purge(cur, T0 + 8 * DAY, max_age=timedelta(days=7)).expired == 1
        with pytest.raises(ValueError):
            purge(cur, T0, read_after=timedelta(0))


def test_retention_removes_batches_left_empty(db: Database) -> None:
    now = T0 + 100 * DAY
    with db.transaction() as cur:
        emptied = open_batch(cur, BatchSource.UPLOAD, name="old.zip", now=now - 95 * DAY)
        partly = open_batch(cur, BatchSource.UPLOAD, name="mixed.zip", now=now - 10 * DAY)
        running = open_batch(cur, BatchSource.UPLOAD, name="busy.zip", now=now - HOUR)
        crashed = open_batch(cur, BatchSource.UPLOAD, name="died.zip", now=now - 91 * DAY)
    log(db, now=now - 95 * DAY, batch_id=emptied)
    _read(db, now - 10 * DAY, batch_id=partly)
    kept = log(db, now=now - 10 * DAY, batch_id=partly)
    with db.transaction() as cur:
        finish_batch(cur, emptied, now=now - 95 * DAY)
        finish_batch(cur, partly, now=now - 10 * DAY)

    with db.transaction() as cur:
        dry = purge(cur, now, dry_run=True)
        assert dry == PurgeCounts(read=1, expired=1, batches=2)  # emptied, crashed
    with db.transaction() as cur:
        assert purge(cur, now) == dry
        assert get_batch(cur, emptied) is None and get_batch(cur, crashed) is None
        assert get_batch(cur, running) is not None  # not finished, not old: an upload running
        report = batch_report(cur, partly)
    assert report is not None and [i.id for i in report.items] == [kept]
    assert (report.batch.accepted, report.batch.rejected) == (2, 0)  # the counts stay

    # When its last item goes, the finished batch goes too.
    with db.transaction() as cur:
        assert purge(cur, now + 81 * DAY) == PurgeCounts(read=0, expired=1, batches=1)
        assert get_batch(cur, partly) is None
