"""One store, on embedded SQLite or on PostgreSQL, behind one small synchronous API.

Store functions are plain functions that take a :class:`Cursor` and run inside one
transaction, so that Twisted code can later hand them to a thread pool (the
``twisted.enterprise.adbapi`` pattern) without knowing which database is underneath::

    def add_thing(cur: Cursor, key: str, blob: bytes) -> None:
        cur.execute("INSERT INTO thing (key, blob) VALUES (?, ?)", (key, blob))

    with db.transaction() as cur:
        add_thing(cur, "k", b"...")

SQL is written once, with ``?`` placeholders, in the subset both dialects understand;
where it really must differ a function can branch on ``cur.dialect``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote

import psycopg
import psycopg.conninfo
import psycopg.errors

from gateway.errors import OperatorError

__all__ = [
    "Cursor",
    "Database",
    "Dialect",
    "IntegrityConflict",
    "Params",
    "Row",
    "StoreError",
    "StoreUnavailable",
    "qmark_to_format",
]

Dialect: TypeAlias = Literal["sqlite", "postgresql"]
Row: TypeAlias = tuple[Any, ...]
Params: TypeAlias = Sequence[Any]

_RawConnection: TypeAlias = sqlite3.Connection | psycopg.Connection[Row]
_RawCursor: TypeAlias = sqlite3.Cursor | psycopg.Cursor[Row]

# Extended result codes SQLite uses for "this key already exists"; other integrity errors
# (NOT NULL, CHECK, FOREIGN KEY) are programming errors, not conflicts a caller can handle.
_SQLITE_UNIQUE_CODES = frozenset(
    {
        sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY,
        sqlite3.SQLITE_CONSTRAINT_UNIQUE,
        sqlite3.SQLITE_CONSTRAINT_ROWID,
    }
)

# Milliseconds a SQLite connection waits for another writer before giving up.
_SQLITE_BUSY_TIMEOUT_MS = 5000


class StoreError(OperatorError):
    """A problem with the store that is not a driver-level SQL error."""


class StoreUnavailable(StoreError):
    """The store cannot be opened: a corrupt or unreadable file, a server that does not answer."""


class IntegrityConflict(StoreError):
    """A unique or primary key constraint refused a row: it already exists.

    Raised the same way on both dialects, chained to the driver's exception.
    """


@functools.lru_cache(maxsize=512)
def qmark_to_format(sql: str) -> str:
    """Rewrite ``?``-placeholder SQL into the ``%s`` style psycopg expects.

    ``?`` becomes ``%s`` and every ``%`` becomes ``%%``, because psycopg treats ``%`` as
    the start of a placeholder anywhere in the text (so ``LIKE 'a%'`` must reach it as
    ``LIKE 'a%%'``). ``?`` inside single-quoted literals, double-quoted identifiers and
    comments is left alone. Not understood, and not to be used in store SQL:
    ``E'...'`` strings with backslash escapes, dollar-quoted strings, and PostgreSQL's
    ``?``-family jsonb operators (use ``jsonb_exists()`` and friends instead).
    """
    return _PG_TOKEN.sub(_convert_pg_token, sql)


# Quoted text and comments are matched whole, so a "?" inside them is never taken for a
# placeholder; lone "?" and "%" are matched so they can be rewritten.
_PG_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|--[^\n]*|/\*.*?\*/|[?%]""", re.DOTALL)


def _convert_pg_token(match: re.Match[str]) -> str:
    matched = match.group()
    if matched == "?":
        return "%s"
    return matched.replace("%", "%%")


def _is_unique_violation(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return exc.sqlite_errorcode in _SQLITE_UNIQUE_CODES
    return isinstance(exc, psycopg.errors.UniqueViolation)


def _check_params(params: Params) -> Row:
    # A str or bytes is a Sequence too, but passing one is always the "(x)" vs "(x,)" slip.
    if isinstance(params, str | bytes | bytearray | memoryview):
        raise TypeError(f"params must be a sequence of values, not {type(params).__name__}")
    values = tuple(params)
    for value in values:
        # Dates would be stored differently by each driver (and by neither in the store's
        # fixed-width text form), breaking comparisons; datetime is a subclass of date.
        if isinstance(value, date):
            raise TypeError(
                f"{type(value).__name__} parameter: store timestamps as text "
                "with gateway.store.timeutil.to_db()"
            )
    return values


def _plain_row(row: Sequence[Any]) -> Row:
    # Both drivers return bytes for BLOB/BYTEA today, but memoryview is a legal DB-API
    # answer; callers compare and hash these values, so never hand them a view.
    return tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)


class Cursor:
    """A DB-API cursor inside one transaction, with ``?`` placeholders on both dialects.

    Only :meth:`Database.transaction` creates these. After any statement fails, the
    cursor refuses further statements and the transaction is rolled back: PostgreSQL
    aborts the whole transaction on an error while SQLite carries on, and code tested on
    one must behave the same on the other. To insert-or-skip, use
    ``INSERT ... ON CONFLICT DO NOTHING`` (both dialects) rather than catching
    :class:`IntegrityConflict` and continuing.
    """

    def __init__(self, raw: _RawCursor, dialect: Dialect) -> None:
        self._raw = raw
        self._failed = False
        self._savepoints = 0
        self.dialect: Dialect = dialect
        """Which database runs this transaction, for the rare SQL that must differ."""

    @property
    def rowcount(self) -> int:
        """Rows changed by the last ``execute``/``executemany`` (-1 when not applicable)."""
        return self._raw.rowcount

    def execute(self, sql: str, params: Params = ()) -> Cursor:
        """Run one statement with ``?`` placeholders; returns this cursor to fetch from."""
        values = _check_params(params)
        with self._guard():
            self._raw.execute(self._sql(sql), values)
        return self

    def executemany(self, sql: str, seq_of_params: Iterable[Params]) -> Cursor:
        """Run one statement once for each parameter sequence."""
        rows = [_check_params(params) for params in seq_of_params]
        with self._guard():
            self._raw.executemany(self._sql(sql), rows)
        return self

    def fetchone(self) -> Row | None:
        """Return the next result row, or ``None`` when there are no more."""
        with self._guard():
            row = self._raw.fetchone()
        return None if row is None else _plain_row(row)

    def fetchall(self) -> list[Row]:
        """Return all remaining result rows."""
        with self._guard():
            rows = self._raw.fetchall()
        return [_plain_row(row) for row in rows]

    @contextmanager
    def savepoint(self) -> Iterator[Cursor]:
        """Run the block in a savepoint: on an error only its own statements are undone.

        The error is re-raised and the transaction may go on: a worker fails
        one task that cannot be prepared without losing the others it claimed
        in the same transaction.  Savepoints nest; both dialects have them.
        """
        self._savepoints += 1
        name = f"sp{self._savepoints}"
        self.execute(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            # Statements after a failed one are allowed again once it is undone.
            self._failed = False
            self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self.execute(f"RELEASE SAVEPOINT {name}")
            raise
        else:
            self.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._savepoints -= 1

    def _sql(self, sql: str) -> str:
        return qmark_to_format(sql) if self.dialect == "postgresql" else sql

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._failed:
            raise StoreError("an earlier statement in this transaction failed; it cannot go on")
        try:
            yield
        except Exception as exc:
            self._failed = True
            if _is_unique_violation(exc):
                raise IntegrityConflict(str(exc).strip()) from exc
            raise


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:`` store URL, None for any other scheme.

    ``sqlite:///abs/path`` or ``sqlite:relative/path``, percent-decoded; raises
    :class:`StoreError` for a malformed sqlite URL.
    """
    if not url.startswith("sqlite:"):
        return None
    rest = url.removeprefix("sqlite:")
    if rest.startswith("//"):
        if not rest.startswith("///"):
            raise StoreError(f"sqlite URL with a host part is not supported: {url!r}")
        rest = rest.removeprefix("//")
    # Query strings (sqlite "?mode=ro" etc.) are not supported; refusing beats
    # silently creating a file whose name ends in "?mode=ro".
    if not rest or "?" in rest or "#" in rest:
        raise StoreError(f"sqlite URL must be sqlite:///abs/path or sqlite:rel/path: {url!r}")
    # sqlite:////abs (SQLAlchemy's spelling) is the same file: one leading slash, not two.
    return Path("/" + unquote(rest).lstrip("/")) if rest.startswith("/") else Path(unquote(rest))


class Database:
    """One store: a SQLite file or a PostgreSQL database.

    Thread-safe: each thread gets its own connection, opened on first use and kept for
    the next transaction, which is what a fixed thread pool wants. Create instances with
    :meth:`sqlite`, :meth:`postgresql` or :meth:`from_url`.
    """

    def __init__(
        self, dialect: Dialect, connect: Callable[[], _RawConnection], *, description: str
    ) -> None:
        """Low-level constructor: *connect* opens one ready-to-use connection per call."""
        self.dialect: Dialect = dialect
        """``"sqlite"`` or ``"postgresql"``."""
        self._connect = connect
        self._description = description
        self._local = threading.local()
        self._lock = threading.Lock()
        self._writer = threading.Lock()
        self._connections: list[_RawConnection] = []
        self._closed = False

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        """A store in the SQLite file at *path*, created (mode 0600) with its directories."""
        if str(path) == ":memory:":
            # Every thread has its own connection, and so would have its own empty database.
            raise StoreError("an in-memory SQLite store is not supported; give a file path")
        # Absolute now, so a later chdir() cannot point new connections at another file.
        path = Path(path).absolute()
        if str(path).startswith("//"):  # "sqlite:////abs": one file, one name in messages
            path = Path("/" + str(path).lstrip("/"))
        try:
            if path.parent.exists() and not path.parent.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(path.parent))
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private_file(path)
        except OSError as exc:
            # e.g. the data directory is a file, or read-only: one line, naming the path.
            raise StoreUnavailable(
                f"cannot create the SQLite store {path}: {exc.strerror or exc}"
            ) from exc

        def connect() -> sqlite3.Connection:
            return _connect_sqlite(path)

        return cls("sqlite", connect, description=f"sqlite:{path}")

    @classmethod
    def postgresql(cls, conninfo: str) -> Database:
        """A store in the PostgreSQL database that libpq *conninfo* (or URI) points to."""
        # Parsing now turns a malformed setting into an error at start, not at first use.
        try:
            params = psycopg.conninfo.conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"invalid PostgreSQL connection string: {exc}") from exc
        # Never the full conninfo: it may hold a password.
        where = "/".join(str(params[k]) for k in ("host", "port", "dbname") if params.get(k))

        def connect() -> psycopg.Connection[Row]:
            # autocommit off: every statement runs inside the transaction psycopg opens
            # implicitly, ended by transaction()'s commit or rollback.
            return psycopg.connect(conninfo, autocommit=False)

        return cls("postgresql", connect, description=f"postgresql:{where}")

    @classmethod
    def from_url(cls, url: str) -> Database:
        """A store from a URL as found in configuration.

        ``sqlite:///abs/path``, ``sqlite:relative/path`` (both percent-decoded), or
        ``postgresql://...`` / ``postgres://...`` (handed to libpq unchanged).
        """
        if url.startswith(("postgresql://", "postgres://")):
            return cls.postgresql(url)
        path = sqlite_path(url)
        if path is not None:
            return cls.sqlite(path)
        raise StoreError(f"unsupported store URL (sqlite: or postgresql:): {url!r}")

    @property
    def description(self) -> str:
        """Where the store is, without secrets: ``sqlite:/path`` or ``postgresql:host/port/db``."""
        return self._description

    def __repr__(self) -> str:
        return f"<Database {self._description}>"

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """Run the block in one transaction: commit on normal exit, roll back on error.

        The exception that caused a rollback is re-raised. Transactions do not nest.
        On SQLite the write lock is taken at the start (``BEGIN IMMEDIATE``), so
        concurrent writers queue (up to 5 s) instead of failing halfway through.
        """
        if getattr(self._local, "active", False):
            raise StoreError("a transaction is already open in this thread; they do not nest")
        conn = self._connection()
        self._local.active = True
        # SQLite has one writer at a time.  Threads of this process queue on a
        # Python lock, which hands over the moment it is free; left to SQLite's
        # busy handler they would sleep in growing steps (a lock held 3.5 ms was
        # obtained after 8 ms).  busy_timeout still arbitrates between processes.
        writer = self._writer if isinstance(conn, sqlite3.Connection) else None
        if writer is not None:
            writer.acquire()
        try:
            if isinstance(conn, sqlite3.Connection):
                # A deferred BEGIN would read first and then try to upgrade to a write lock,
                # which fails at once with "database is locked" if another connection wrote
                # meanwhile; IMMEDIATE waits (busy_timeout) for the lock before reading.
                conn.execute("BEGIN IMMEDIATE")
            raw = conn.cursor()
            try:
                cursor = Cursor(raw, self.dialect)
                try:
                    yield cursor
                except BaseException:
                    self._rollback(conn)
                    raise
                if cursor._failed:
                    # The block swallowed a statement error; committing would keep only part
                    # of its work on SQLite (PostgreSQL would quietly roll it all back).
                    self._rollback(conn)
                    raise StoreError("transaction rolled back: a statement in it failed")
                self._commit(conn)
            finally:
                raw.close()
        finally:
            self._local.active = False
            if writer is not None:
                writer.release()

    def vacuum(self) -> None:
        """Rewrite a SQLite store to give free pages back to the file system (``VACUUM``).

        VACUUM cannot run inside a transaction; it takes the write lock like one.
        A no-op on PostgreSQL, whose autovacuum does this.
        """
        if getattr(self._local, "active", False):
            raise StoreError("VACUUM cannot run inside a transaction")
        conn = self._connection()
        if not isinstance(conn, sqlite3.Connection):
            return
        with self._writer:
            conn.execute("VACUUM")

    def backup_to(self, dest: Path) -> None:
        """Copy a SQLite store, consistent as of one moment, into the new file ``dest``.

        SQLite's online backup API reads one snapshot (WAL: writers go on meanwhile).
        The copy is written next to ``dest`` (mode 0600) and renamed into place, so a
        half-written copy never carries the name.  PostgreSQL stores use pg_dump.
        """
        conn = self._connection()
        if not isinstance(conn, sqlite3.Connection):
            raise StoreError("a PostgreSQL store is backed up with pg_dump (docs/operations.md)")
        dest = Path(dest).absolute()
        partial = dest.with_name(f".{dest.name}.partial")
        partial.unlink(missing_ok=True)
        _create_private_file(partial)
        target = sqlite3.connect(partial)
        try:
            # pages=-1: one step, so the copy is one snapshot, never restarted midway.
            conn.backup(target, pages=-1)
            # A self-contained file: no -wal beside it to copy along.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
        os.replace(partial, dest)

    def close(self) -> None:
        """Close every connection this store opened, in any thread; it cannot be reused.

        Call it when no transaction is running.
        """
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> _RawConnection:
        """This thread's connection, opened if there is none or the old one broke."""
        if self._closed:
            raise StoreError(f"{self!r} is closed")
        conn: _RawConnection | None = getattr(self._local, "conn", None)
        if isinstance(conn, psycopg.Connection) and (conn.closed or conn.broken):
            # The server went away (restart, failover): start over rather than fail forever.
            self._discard(conn)
            conn = None
        if conn is None:
            try:
                conn = self._connect()
            except (sqlite3.Error, psycopg.Error, OSError) as exc:
                # One line for the operator (docs/operations.md); the driver's text says
                # why (not a database, connection refused), ours says which store.
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise StoreUnavailable(
                    f"cannot open the store {self._description}: {reason}"
                ) from exc
            with self._lock:
                closed = self._closed
                if not closed:
                    self._connections.append(conn)
            if closed:
                conn.close()
                raise StoreError(f"{self!r} is closed")
            self._local.conn = conn
        return conn

    def _commit(self, conn: _RawConnection) -> None:
        try:
            if isinstance(conn, sqlite3.Connection):
                conn.execute("COMMIT")
            else:
                conn.commit()
        except Exception as exc:
            self._rollback(conn)
            # Deferred constraints are checked only now.
            if _is_unique_violation(exc):
                raise IntegrityConflict(str(exc).strip()) from exc
            raise

    def _rollback(self, conn: _RawConnection) -> None:
        try:
            if isinstance(conn, sqlite3.Connection):
                # SQLite may already have rolled back by itself (e.g. on SQLITE_FULL).
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.rollback()
        except Exception:
            # The connection is in an unknown state (server gone, disk gone). Drop it so the
            # next transaction in this thread starts clean; the caller gets the original error.
            self._discard(conn)

    def _discard(self, conn: _RawConnection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        if getattr(self._local, "conn", None) is conn:
            del self._local.conn
        with contextlib.suppress(Exception):
            conn.close()


def _create_private_file(path: Path) -> None:
    """Create *path* empty with mode 0600 unless it exists (an empty file is a valid db).

    SQLite would create it with 0644 minus umask; the store will hold personal data.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """Set WAL mode, retrying while another connection holds the file.

    Changing the journal mode of a new database takes an exclusive lock and SQLite
    returns SQLITE_BUSY for it at once, without consulting the busy handler, when
    another node opens the same file at that moment.  Once the file is in WAL mode
    (a persistent property) the pragma needs no lock.
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return str(mode)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the sqlite3 module must not open transactions behind our back;
    # transaction() issues BEGIN/COMMIT itself. check_same_thread=False: close() may run in
    # another thread than the one that opened the connection.
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=_SQLITE_BUSY_TIMEOUT_MS / 1000,
    )
    try:
        # busy_timeout first: switching to WAL needs a lock, and another node or thread may
        # be opening the same file right now.
        conn.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        mode = _switch_to_wal(conn)
        if str(mode).lower() != "wal":
            # Without WAL readers block the writer; some file systems (network mounts) cannot
            # do it, and such a place is not fit for this store anyway.
            raise StoreError(f"SQLite could not switch {path} to WAL mode (got {mode!r})")
        # FULL, not NORMAL: the gateway acknowledges a message once it is committed, so a
        # commit must survive a power loss too, not only a process crash (ebMS 2.0 §6.5:
        # persist before acknowledging).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn
