"""Tests for the store foundation: Database, Cursor, migrations and timestamps.

Every store test runs on SQLite, and on PostgreSQL too when DKGW_TEST_PG_DSN holds a
libpq connection string (each test then works in a schema of its own, dropped after).
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from gateway.store.database import Database, IntegrityConflict, StoreError, qmark_to_format
from gateway.store.migrate import Migration, apply_migrations, load_migrations
from gateway.store.timeutil import from_db, to_db, utcnow
from tests.conftest import DIALECTS, PG_DSN, StoreFactory

# Errors the drivers raise for SQL on a table that does not exist.
NO_SUCH_TABLE = (sqlite3.OperationalError, psycopg.errors.UndefinedTable)


@pytest.fixture
def db(open_store: StoreFactory) -> Database:
    return open_store()


@pytest.fixture
def items(db: Database) -> Database:
    """*db* with a simple table ``item(id, name)``."""
    with db.transaction() as cur:
        cur.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    return db


def count(db: Database, table: str) -> int:
    with db.transaction() as cur:
        row = cur.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


# --- migrations ----------------------------------------------------------------------


def test_migrations_apply_once_and_are_recorded(db: Database) -> None:
    before = utcnow()
    shipped = load_migrations(db.dialect)
    assert apply_migrations(db) == [m.name for m in shipped]
    assert shipped[0].name == "0001_cpa"
    assert apply_migrations(db) == []

    with db.transaction() as cur:
        rows = cur.execute(
            "SELECT version, name, checksum, applied_at FROM schema_migration"
        ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(m.version, m.name, m.checksum) for m in shipped]
    assert before <= from_db(rows[0][3]) <= utcnow()
    assert count(db, "cpa") == 0


def test_each_dialect_uses_its_own_cpa_migration(db: Database) -> None:
    migration = load_migrations(db.dialect)[0]
    expected = "0001_cpa.postgresql.sql" if db.dialect == "postgresql" else "0001_cpa.sql"
    assert migration.filename == expected
    binary_type = "BYTEA" if db.dialect == "postgresql" else "BLOB"
    assert f"xml        {binary_type} NOT NULL" in migration.sql


def test_second_node_sees_migrations_applied_by_first(open_store: StoreFactory) -> None:
    first = apply_migrations(open_store())
    assert first[0] == "0001_cpa"
    assert apply_migrations(open_store()) == []


def test_newer_database_version_refuses_to_start(db: Database) -> None:
    apply_migrations(db)
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO schema_migration (version, name, checksum, applied_at)"
            " VALUES (?, ?, ?, ?)",
            (9999, "9999_from_the_future", "0" * 64, to_db(utcnow())),
        )
    with pytest.raises(StoreError, match=r"9999_from_the_future.*newer gateway"):
        apply_migrations(db)


def test_changed_checksum_of_applied_migration_refuses_to_start(
    db: Database, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "migrations", {"0001_first.sql": "CREATE TABLE first (x TEXT);\n"}
    )
    assert apply_migrations(db, directory) == ["0001_first"]

    (directory / "0001_first.sql").write_text("CREATE TABLE first (x TEXT, y TEXT);\n")
    with pytest.raises(StoreError, match="0001_first differs"):
        apply_migrations(db, directory)


def test_changed_checksum_in_database_refuses_to_start(db: Database) -> None:
    apply_migrations(db)
    with db.transaction() as cur:
        cur.execute("UPDATE schema_migration SET checksum = ? WHERE version = 1", ("f" * 64,))
    with pytest.raises(StoreError, match="must not be edited"):
        apply_migrations(db)


def test_migrations_apply_in_order_and_new_ones_later(db: Database, tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {
            "0002_second.sql": "INSERT INTO first (x) VALUES ('from 2');\n",
            "0001_first.sql": "CREATE TABLE first (x TEXT);\n",
            "README.txt": "not a migration, ignored",
        },
    )
    assert apply_migrations(db, directory) == ["0001_first", "0002_second"]
    write_migrations(directory, {"0003_third.sql": "INSERT INTO first (x) VALUES ('from 3');"})
    assert apply_migrations(db, directory) == ["0003_third"]
    with db.transaction() as cur:
        assert cur.execute("SELECT x FROM first ORDER BY x").fetchall() == [
            ("from 2",),
            ("from 3",),
        ]


def test_failed_migration_leaves_previous_version(db: Database, tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE ok (x TEXT);\n",
            "0002_broken.sql": "CREATE TABLE half (x TEXT);\nINSERT INTO nowhere VALUES (1);\n",
        },
    )
    with pytest.raises(NO_SUCH_TABLE):
        apply_migrations(db, directory)
    with db.transaction() as cur:
        assert cur.execute("SELECT version FROM schema_migration").fetchall() == [(1,)]
    # DDL is transactional on both dialects: the first statement of 0002 is gone too.
    with pytest.raises(NO_SUCH_TABLE), db.transaction() as cur:
        cur.execute("SELECT * FROM half")


def test_dialect_specific_file_replaces_common_one(db: Database, tmp_path: Path) -> None:
    other = "sqlite" if db.dialect == "postgresql" else "postgresql"
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_t.sql": "CREATE TABLE t_common (x TEXT);\n",
            f"0001_t.{db.dialect}.sql": "CREATE TABLE t_mine (x TEXT);\n",
            f"0001_t.{other}.sql": "CREATE TABLE t_other (x TEXT);\n",
        },
    )
    assert apply_migrations(db, directory) == ["0001_t"]
    assert count(db, "t_mine") == 0
    for table in ("t_common", "t_other"):
        with pytest.raises(NO_SUCH_TABLE), db.transaction() as cur:
            cur.execute(f"SELECT * FROM {table}")


def test_migration_statements_split_on_semicolon_at_line_end() -> None:
    migration = load_migrations("sqlite", None)[0]  # the shipped one: one statement
    assert len(migration.statements()) == 1
    text = (
        "-- a comment; not the end of a statement\n"
        "CREATE TABLE a (x TEXT);\n"
        "\n"
        "/* block\n   comment; */\n"
        "CREATE TABLE b (y TEXT DEFAULT 'p;q') ;  \n"
        "-- trailing comment;\n"
    )
    statements = Migration(1, "0001_x", "0001_x.sql", text).statements()
    assert len(statements) == 2
    assert statements[0].endswith("CREATE TABLE a (x TEXT)")
    assert statements[1].endswith("CREATE TABLE b (y TEXT DEFAULT 'p;q')")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.postgres.sql": "SELECT 1;"}, "file name not understood"),
        ({"1_a.sql": "SELECT 1;"}, "file name not understood"),
        ({"0001_a.sql": "SELECT 1;", "0001_b.sql": "SELECT 1;"}, "two migrations numbered 1"),
        ({"0001_a.postgresql.sql": "SELECT 1;"}, "0001_a has no file for sqlite"),
        ({"notes.md": "nothing"}, "no migrations found"),
    ],
)
def test_bad_migration_directories_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    directory = write_migrations(tmp_path / "m", files)
    with pytest.raises(StoreError, match=message):
        load_migrations("sqlite", directory)


def test_migration_never_applied_below_applied_version_is_refused(
    db: Database, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"}
    )
    apply_migrations(db, directory)
    write_migrations(directory, {"0002_b.sql": "SELECT 1;"})
    with pytest.raises(StoreError, match="0002_b are older than the applied version 0003_c"):
        apply_migrations(db, directory)


def test_concurrent_nodes_apply_each_migration_once(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE TABLE a (x TEXT);\n",
            # The sleep widens the window in which a second node could slip in.
            "0002_b.postgresql.sql": "SELECT pg_sleep(0.05);\nCREATE TABLE b (x TEXT);\n",
            "0002_b.sqlite.sql": "CREATE TABLE b (x TEXT);\n",
            "0003_c.sql": "INSERT INTO a (x) VALUES ('once');\n",
        },
    )
    nodes = [open_store() for _ in range(4)]
    barrier = threading.Barrier(len(nodes))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def start(node: Database) -> None:
        barrier.wait()
        try:
            results.append(apply_migrations(node, directory))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(name for names in results for name in names) == ["0001_a", "0002_b", "0003_c"]
    assert count(nodes[0], "a") == 1
    assert count(nodes[0], "schema_migration") == 3


# --- transactions and errors -----------------------------------------------------------


def test_transaction_commits_on_success(open_store: StoreFactory) -> None:
    db = open_store()
    with db.transaction() as cur:
        cur.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    with db.transaction() as cur:
        assert cur.execute("INSERT INTO item VALUES (?, ?)", (1, "one")).rowcount == 1
    # Visible to another connection, so really committed.
    with open_store().transaction() as cur:
        assert cur.execute("SELECT id, name FROM item").fetchall() == [(1, "one")]


def test_transaction_rolls_back_on_exception(items: Database) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), items.transaction() as cur:
        cur.execute("INSERT INTO item VALUES (?, ?)", (1, "one"))
        assert cur.execute("SELECT count(*) FROM item").fetchone() == (1,)
        raise Boom
    assert count(items, "item") == 0
    # The connection is usable again afterwards.
    with items.transaction() as cur:
        cur.execute("INSERT INTO item VALUES (?, ?)", (1, "one"))
    assert count(items, "item") == 1


def test_primary_key_violation_is_integrity_conflict(items: Database) -> None:
    with items.transaction() as cur:
        cur.execute("INSERT INTO item VALUES (?, ?)", (1, "one"))
    with pytest.raises(IntegrityConflict) as caught, items.transaction() as cur:
        cur.execute("INSERT INTO item VALUES (?, ?)", (2, "two"))
        cur.execute("INSERT INTO item VALUES (?, ?)", (1, "again"))
    assert isinstance(caught.value, StoreError)
    assert isinstance(
        caught.value.__cause__, sqlite3.IntegrityError | psycopg.errors.UniqueViolation
    )
    with items.transaction() as cur:
        assert cur.execute("SELECT id, name FROM item").fetchall() == [(1, "one")]


def test_unique_violation_in_executemany_is_integrity_conflict(items: Database) -> None:
    with pytest.raises(IntegrityConflict), items.transaction() as cur:
        cur.executemany("INSERT INTO item VALUES (?, ?)", [(1, "a"), (2, "b"), (1, "c")])
    assert count(items, "item") == 0


def test_other_constraint_failures_are_not_conflicts(items: Database) -> None:
    not_null = (sqlite3.IntegrityError, psycopg.errors.NotNullViolation)
    with pytest.raises(not_null) as caught, items.transaction() as cur:
        cur.execute("INSERT INTO item VALUES (?, ?)", (1, None))
    assert not isinstance(caught.value, StoreError)


def test_swallowed_statement_error_does_not_commit_on_either_dialect(items: Database) -> None:
    with items.transaction() as cur:
        cur.execute("INSERT INTO item VALUES (?, ?)", (1, "one"))
    with pytest.raises(StoreError, match="rolled back"), items.transaction() as cur:
        cur.execute("INSERT INTO item VALUES (?, ?)", (2, "two"))
        with pytest.raises(IntegrityConflict):
            cur.execute("INSERT INTO item VALUES (?, ?)", (1, "dup"))
        with pytest.raises(StoreError, match="earlier statement"):
            cur.execute("INSERT INTO item VALUES (?, ?)", (3, "three"))
    with items.transaction() as cur:
        assert cur.execute("SELECT id FROM item").fetchall() == [(1,)]


def test_transactions_do_not_nest(db: Database) -> None:
    with db.transaction(), pytest.raises(StoreError, match="do not nest"), db.transaction():
        pass
    with db.transaction() as cur:  # and the flag is cleared again
        assert cur.execute("SELECT 1").fetchone() == (1,)


def test_closed_database_refuses_transactions(db: Database) -> None:
    with db.transaction() as cur:
        cur.execute("SELECT 1")
    db.close()
    with pytest.raises(StoreError, match="closed"), db.transaction():
        pass


def test_datetime_and_string_params_are_refused(db: Database) -> None:
    with db.transaction() as cur:
        with pytest.raises(TypeError, match="to_db"):
            cur.execute("SELECT ?", (utcnow(),))
        with pytest.raises(TypeError, match="sequence of values"):
            cur.execute("SELECT ?", "x")
        assert cur.execute("SELECT ?", (to_db(utcnow()),)).fetchone() is not None


def test_cursor_knows_its_dialect(db: Database) -> None:
    with db.transaction() as cur:
        assert cur.dialect == db.dialect


@pytest.mark.parametrize("open_store", [DIALECTS[1]], indirect=True)
def test_postgresql_connection_lost_is_replaced(db: Database) -> None:
    assert PG_DSN is not None
    with db.transaction() as cur:
        row = cur.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
    with pytest.raises(psycopg.OperationalError), db.transaction() as cur:
        cur.execute("SELECT 1")
    with db.transaction() as cur:
        assert cur.execute("SELECT pg_backend_pid()").fetchone() != row


# --- bytes ------------------------------------------------------------------------------


def insert_cpa(db: Database, cpa_id: str, xml: bytes) -> None:
    now = to_db(utcnow())
    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO cpa (cpa_id, xml, sha256, status, start_at, end_at, summary,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cpa_id, xml, hashlib.sha256(xml).hexdigest(), "agreed", now, now, "{}", now, now),
        )


@pytest.mark.parametrize(
    "xml",
    [
        pytest.param(bytes(range(256)), id="all-byte-values"),
        pytest.param(bytes(range(255, -1, -1)) * 3, id="reversed"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00", id="nul"),
        pytest.param(hashlib.shake_256(b"dkgw").digest(5 * 1024 * 1024), id="5MB"),
    ],
)
def test_bytes_round_trip_exactly(db: Database, xml: bytes) -> None:
    apply_migrations(db)
    insert_cpa(db, "cpa-1", xml)
    with db.transaction() as cur:
        row = cur.execute(
            "SELECT xml, length(xml), sha256 FROM cpa WHERE cpa_id = ?", ("cpa-1",)
        ).fetchone()
    assert row is not None
    stored, length, digest = row
    assert type(stored) is bytes
    assert stored == xml
    assert length == len(xml)  # stored as binary, not as text
    assert digest == hashlib.sha256(stored).hexdigest()


# --- placeholder conversion ------------------------------------------------------------


@pytest.mark.parametrize(
    ("qmark", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
        ("SELECT a FROM t WHERE b LIKE 'a%'", "SELECT a FROM t WHERE b LIKE 'a%%'"),
        ("WHERE b LIKE 'a%' AND c = ?", "WHERE b LIKE 'a%%' AND c = %s"),
        ("SELECT 7 % ?", "SELECT 7 %% %s"),
        ("SELECT '%s', ?", "SELECT '%%s', %s"),
        ("SELECT 'why?', \"odd?name\", ?", "SELECT 'why?', \"odd?name\", %s"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
        ("SELECT ? -- really? 100%\n, ?", "SELECT %s -- really? 100%%\n, %s"),
        ("SELECT /* ? % */ ?", "SELECT /* ? %% */ %s"),
        ("SELECT ?,?", "SELECT %s,%s"),
    ],
)
def test_qmark_to_format(qmark: str, expected: str) -> None:
    assert qmark_to_format(qmark) == expected


def test_percent_and_question_marks_in_sql_on_each_dialect(items: Database) -> None:
    with items.transaction() as cur:
        cur.executemany(
            "INSERT INTO item VALUES (?, ?)", [(1, "apple"), (2, "avocado"), (3, "banana")]
        )
        assert cur.rowcount == 3
        assert cur.execute(
            "SELECT name FROM item WHERE name LIKE 'a%' AND id > ? ORDER BY id", (1,)
        ).fetchall() == [("avocado",)]
        assert cur.execute("SELECT '100%', 'why?', ?", ("x",)).fetchone() == (
            "100%",
            "why?",
            "x",
        )
        assert cur.execute("SELECT id FROM item WHERE id = 99").fetchone() is None


# --- SQLite specifics ------------------------------------------------------------------


def test_sqlite_file_is_private_and_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "gateway.sqlite"
    old_umask = os.umask(0)  # so the 0600 is ours, not the umask's
    try:
        db = Database.sqlite(path)
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with db.transaction() as cur:
            cur.execute("CREATE TABLE t (x TEXT)")
        # SQLite gives its -wal and -shm files the database file's mode.
        wal = path.with_name(path.name + "-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        db.close()


def test_sqlite_existing_file_mode_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    path.touch(mode=0o640)
    path.chmod(0o640)
    with Database.sqlite(path) as db, db.transaction() as cur:
        cur.execute("SELECT 1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    with Database.sqlite(tmp_path / "s.sqlite") as db, db.transaction() as cur:
        assert cur.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert cur.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert cur.execute("PRAGMA busy_timeout").fetchone() == (5000,)
        assert cur.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_sqlite_memory_database_is_refused() -> None:
    with pytest.raises(StoreError, match="in-memory"):
        Database.sqlite(Path(":memory:"))


# --- concurrency -----------------------------------------------------------------------


def test_concurrent_writers_from_two_databases_and_threads(open_store: StoreFactory) -> None:
    """2 Database objects x 2 threads x 100 transactions, each a read-modify-write.

    On SQLite, without BEGIN IMMEDIATE the read would be followed by a failed lock upgrade
    ("database is locked"); with it, writers queue. PostgreSQL needs FOR UPDATE instead.
    """
    first, second = open_store(), open_store()
    with first.transaction() as cur:
        cur.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        cur.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        cur.execute("INSERT INTO counter (n) VALUES (0)")

    per_thread = 100
    workers = [(first, 0), (first, 1), (second, 2), (second, 3)]
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def work(db: Database, worker: int) -> None:
        barrier.wait()
        try:
            for i in range(per_thread):
                with db.transaction() as cur:
                    lock = " FOR UPDATE" if cur.dialect == "postgresql" else ""
                    row = cur.execute("SELECT n FROM counter" + lock).fetchone()
                    assert row is not None
                    cur.execute("UPDATE counter SET n = ?", (row[0] + 1,))
                    cur.execute(
                        "INSERT INTO item (id, name) VALUES (?, ?)",
                        (worker * per_thread + i, f"w{worker}"),
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=w) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert count(first, "item") == 400
    with second.transaction() as cur:
        assert cur.execute("SELECT n FROM counter").fetchone() == (400,)


# --- URLs ------------------------------------------------------------------------------


def test_from_url_sqlite_absolute(tmp_path: Path) -> None:
    path = tmp_path / "dir with space" / "gw.sqlite"
    url = "sqlite://" + str(path).replace(" ", "%20")
    with Database.from_url(url) as db:
        assert db.dialect == "sqlite"
        assert path.exists()


def test_from_url_sqlite_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Database.from_url("sqlite:var/gw.sqlite") as db:
        monkeypatch.chdir("/")  # the path was made absolute at construction
        with db.transaction() as cur:
            cur.execute("CREATE TABLE t (x TEXT)")
    assert (tmp_path / "var" / "gw.sqlite").stat().st_size > 0


@pytest.mark.parametrize(
    "url", ["postgresql://gw@db.example/dkgw", "postgres://gw:secret@db.example:6432/dkgw"]
)
def test_from_url_postgresql_connects_lazily_and_hides_password(url: str) -> None:
    db = Database.from_url(url)
    assert db.dialect == "postgresql"
    assert "secret" not in repr(db)
    assert "db.example" in repr(db)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x/y",
        "sqlite://host/x.sqlite",
        "sqlite:",
        "sqlite:///tmp/x.sqlite?mode=ro",
        "/plain/path.sqlite",
    ],
)
def test_from_url_refuses_what_it_does_not_understand(url: str) -> None:
    with pytest.raises(StoreError):
        Database.from_url(url)


def test_postgresql_invalid_conninfo_is_refused_early() -> None:
    with pytest.raises(StoreError, match="invalid PostgreSQL connection string"):
        Database.postgresql("bogus")


# --- timestamps ------------------------------------------------------------------------


def test_timestamps_round_trip() -> None:
    dt = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert to_db(dt) == "2024-03-01T12:00:00.123456Z"
    assert from_db(to_db(dt)) == dt
    assert from_db(to_db(dt)).tzinfo is UTC


def test_timestamps_are_converted_to_utc_and_fixed_width() -> None:
    amsterdam_summer = timezone(timedelta(hours=2))
    dt = datetime(2024, 7, 1, 1, 30, tzinfo=amsterdam_summer)
    assert to_db(dt) == "2024-06-30T23:30:00.000000Z"
    assert from_db(to_db(dt)) == dt
    assert to_db(datetime(5, 1, 2, tzinfo=UTC)) == "0005-01-02T00:00:00.000000Z"
    assert len(to_db(utcnow())) == len("YYYY-MM-DDTHH:MM:SS.ffffffZ")


def test_timestamp_text_sorts_like_time() -> None:
    rng = random.Random(7)  # noqa: S311 -- reproducible test data, not a secret
    zones = [timezone(timedelta(minutes=m)) for m in (-600, -30, 0, 60, 345, 840)]
    base = datetime(2000, 1, 1, tzinfo=UTC)
    moments = [
        (base + timedelta(microseconds=rng.randrange(10**16))).astimezone(rng.choice(zones))
        for _ in range(500)
    ]
    assert sorted(moments, key=to_db) == sorted(moments)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_db(datetime(2024, 3, 1, 12, 0))


@pytest.mark.parametrize(
    "text",
    [
        "2024-03-01T12:00:00Z",
        "2024-03-01T12:00:00.123456",
        "2024-03-01T12:00:00.123456+00:00",
        "2024-03-01 12:00:00.123456Z",
        "2024-13-01T12:00:00.123456Z",
    ],
)
def test_from_db_refuses_other_formats(text: str) -> None:
    with pytest.raises(ValueError):
        from_db(text)


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)
