"""Versioned SQL migrations, applied when the gateway starts.

Each package that owns tables keeps its migrations in a ``migrations/`` directory next to
its store module and declares that directory as a :class:`Traversable` named
``MIGRATIONS`` in the entry-point group ``dkgw.migrations`` (``pyproject.toml``):
``gateway.store`` (this module: the CPA registry, ebMS messages, monitoring, mappings,
idempotency), ``adapters.webhooks``, ``adapters.filedrop`` and ``adapters.stuf``. The
store reads the declarations, so it imports no package above it, and the directories ship
in the wheel as package data. In a directory:

* ``NNNN_description.sql`` holds SQL common to both dialects;
* ``NNNN_description.sqlite.sql`` / ``NNNN_description.postgresql.sql`` replace it on
  that dialect (e.g. ``BLOB`` vs ``BYTEA``). Every version needs a file for every dialect:
  a common one, or one variant for each dialect.

A file is a list of statements, each ended by ``;`` at the end of a line. That simple
rule is the whole parser: no ``;`` at a line end inside a string literal, no procedural
blocks. ``?`` and ``%`` should not appear either (they pass through the placeholder
rewrite on PostgreSQL, see :func:`~gateway.store.database.qmark_to_format`).

Versions are one sequence across all packages, and a version belongs to one package: a
new migration takes the next number above the highest in *any* package (the 0008 to 0010
of the adapters sit between the store's 0007 and 0011), and two packages with one
version are refused when the migrations are loaded. Migrations apply in version order
whatever package they come from, so one may rely on any table of a lower version.

Applied migrations are recorded in one ``schema_migration`` table with the name and a
checksum of the file; the directory a file lies in is recorded nowhere, so moving a
file unchanged to another package changes nothing for a database. A shipped migration
must never be edited, so a changed checksum stops the gateway, as does a version in the
database this code does not know (a newer gateway wrote it).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from importlib.resources import files
from importlib.resources.abc import Traversable

from gateway.store.database import Cursor, Database, Dialect, StoreError
from gateway.store.timeutil import to_db, utcnow

__all__ = [
    "ENTRY_POINT_GROUP",
    "MIGRATIONS",
    "Migration",
    "apply_migrations",
    "load_migrations",
    "migration_directories",
]

#: The store's own migrations (the tables of ``gateway.store``).
MIGRATIONS: Traversable = files("gateway.store").joinpath("migrations")

#: Where a package declares its ``migrations/`` directory (``pyproject.toml``).
ENTRY_POINT_GROUP = "dkgw.migrations"

# Key for pg_advisory_xact_lock(): any fixed 64-bit number works as long as nothing else
# uses it. These are the ASCII bytes of "dkgwmigr".
PG_MIGRATION_LOCK_KEY = 0x646B_6777_6D69_6772

_FILE_NAME = re.compile(
    r"(?P<version>\d{4})_(?P<description>[A-Za-z0-9_]+)(?:\.(?P<dialect>sqlite|postgresql))?\.sql"
)
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)

_CREATE_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migration (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration as it applies to one dialect."""

    version: int
    name: str
    """``NNNN_description``: the same on every dialect, recorded in ``schema_migration``."""
    filename: str
    """The file used for this dialect (common or dialect-specific)."""
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 hex digest of the SQL text (line endings normalised to LF)."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    def statements(self) -> list[str]:
        """The statements of the file, without their ``;`` and leaving out empty ones."""
        return [
            chunk.strip()
            for chunk in _STATEMENT_END.split(self.sql)
            if _COMMENT.sub("", chunk).strip()
        ]


def migration_directories() -> list[Traversable]:
    """The ``migrations/`` directory of every package that declares one, by entry-point name.

    Raises :class:`StoreError` when none is declared (the package metadata is missing:
    dkgw was not installed) or a declaration does not name a directory.
    """
    declared = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)
    if not declared:
        raise StoreError(
            f"no migrations are declared (entry points {ENTRY_POINT_GROUP!r}): "
            "the dkgw package metadata is missing; install dkgw (pip install -e . in a checkout)"
        )
    directories = []
    for point in declared:
        directory = point.load()
        if not isinstance(directory, Traversable):
            raise StoreError(f"{point.value} (entry point {point.name!r}) is not a directory")
        directories.append(directory)
    return directories


def load_migrations(
    dialect: Dialect, directory: Traversable | Sequence[Traversable] | None = None
) -> list[Migration]:
    """Read the migrations for *dialect*, in version order.

    *directory* is one ``migrations`` directory or several (one per package); it defaults
    to every declared one (:func:`migration_directories`). Raises :class:`StoreError` for
    a file name that does not follow the rules, two descriptions for one version, one
    version in two directories, a directory without migrations, or a version without a
    file for *dialect*.
    """
    if directory is None:
        roots = migration_directories()
    elif isinstance(directory, Sequence):
        roots = list(directory)
    else:
        roots = [directory]
    names: dict[int, str] = {}
    chosen: dict[int, Traversable | None] = {}
    owner: dict[int, Traversable] = {}
    for root in roots:
        for version, (name, entry) in _read_directory(root, dialect).items():
            if version in owner:
                raise StoreError(
                    f"migration version {version:04d} is taken twice: {names[version]} in "
                    f"{owner[version]} and {name} in {root}; a version belongs to one package, "
                    "so give the newer migration the next free number"
                )
            names[version], chosen[version], owner[version] = name, entry, root

    migrations = []
    for version in sorted(names):
        entry = chosen[version]
        if entry is None:
            name = names[version]
            raise StoreError(
                f"migration {name} has no file for {dialect}: "
                f"add {name}.sql or {name}.{dialect}.sql"
            )
        # Normalised so that a checkout with CRLF line endings has the same checksum.
        sql = entry.read_bytes().decode("utf-8").replace("\r\n", "\n")
        migrations.append(Migration(version, names[version], entry.name, sql))
    return migrations


def _read_directory(
    root: Traversable, dialect: Dialect
) -> dict[int, tuple[str, Traversable | None]]:
    """One directory's migrations: version -> (name, the file for *dialect* or None)."""
    names: dict[int, str] = {}
    common: dict[int, Traversable] = {}
    specific: dict[int, Traversable] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql") or not entry.is_file():
            continue
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            # Most likely a typo such as ".postgres.sql", which would otherwise be ignored.
            raise StoreError(
                f"migration file name not understood: {entry.name!r} (expected "
                "NNNN_description.sql or NNNN_description.<sqlite|postgresql>.sql)"
            )
        version = int(match["version"])
        name = f"{match['version']}_{match['description']}"
        if names.setdefault(version, name) != name:
            raise StoreError(f"two migrations numbered {version}: {names[version]} and {name}")
        if match["dialect"] is None:
            common[version] = entry
        elif match["dialect"] == dialect:
            specific[version] = entry
    if not names:
        # A package that declares a directory ships migrations in it; none means the data
        # files were not installed.
        raise StoreError(f"no migrations found in {root}")
    return {
        version: (name, specific.get(version) or common.get(version))
        for version, name in names.items()
    }


def apply_migrations(
    db: Database, directory: Traversable | Sequence[Traversable] | None = None
) -> list[str]:
    """Bring *db* up to date and return the names of the migrations applied (may be none).

    *directory* is as for :func:`load_migrations`: every declared package's by default.

    Each migration runs in its own transaction together with its bookkeeping row, so a
    failure leaves the database at the previous version. Several gateway nodes may call
    this at the same time: they take turns, and each migration is applied once. Raises
    :class:`StoreError` if the database was migrated by a newer gateway, or if a migration
    already applied differs from its file.
    """
    migrations = load_migrations(db.dialect, directory)
    known = {m.version: m for m in migrations}

    with db.transaction() as cur:
        _serialise(cur)
        cur.execute(_CREATE_BOOKKEEPING)
        done = _applied(cur)
        _check(done, known)
    pending = [m for m in migrations if m.version not in done]

    applied: list[str] = []
    for migration in pending:
        with db.transaction() as cur:
            _serialise(cur)
            # Another node may have applied it while we waited for the lock.
            done = _applied(cur)
            _check(done, known)
            if migration.version in done:
                continue
            for statement in migration.statements():
                cur.execute(statement)
            cur.execute(
                "INSERT INTO schema_migration (version, name, checksum, applied_at)"
                " VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, to_db(utcnow())),
            )
        applied.append(migration.name)
    return applied


def _serialise(cur: Cursor) -> None:
    """Make concurrent migration transactions run one after the other.

    SQLite needs nothing here: transaction() began with BEGIN IMMEDIATE, which already
    excludes other writers. On PostgreSQL, an advisory lock held until the transaction
    ends. READ COMMITTED is forced because under REPEATABLE READ the snapshot would be
    taken before the lock is granted, and the re-check after it would see stale data.
    """
    if cur.dialect == "postgresql":
        cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cur.execute("SELECT pg_advisory_xact_lock(?)", (PG_MIGRATION_LOCK_KEY,))


def _applied(cur: Cursor) -> dict[int, tuple[str, str]]:
    """Applied migrations in the database: version -> (name, checksum)."""
    rows = cur.execute("SELECT version, name, checksum FROM schema_migration").fetchall()
    return {int(version): (name, checksum) for version, name, checksum in rows}


def _check(done: dict[int, tuple[str, str]], known: dict[int, Migration]) -> None:
    """Refuse to run on a database this code cannot safely continue from."""
    unknown = sorted(set(done) - set(known))
    if unknown:
        raise StoreError(
            f"the database has migration(s) {', '.join(done[v][0] for v in unknown)} that this "
            f"gateway does not know (it knows up to {max(known):04d}); it was probably "
            "upgraded by a newer gateway version, and downgrading is not supported"
        )
    for version, (name, checksum) in sorted(done.items()):
        migration = known[version]
        if name != migration.name:
            raise StoreError(
                f"migration {version:04d} was applied as {name!r}, "
                f"but this gateway's migration {version:04d} is {migration.name!r}"
            )
        if checksum != migration.checksum:
            raise StoreError(
                f"migration {name} differs from the one applied to this database (checksum "
                f"{migration.checksum[:12]}... of {migration.filename}, {checksum[:12]}... "
                "recorded): applied migrations must not be edited; add a new migration instead"
            )
    if done:
        top = max(done)
        skipped = [m.name for v, m in sorted(known.items()) if v < top and v not in done]
        if skipped:
            # Applying them now would run them on a schema they were not written for.
            raise StoreError(
                f"migration(s) {', '.join(skipped)} are older than the applied version "
                f"{done[top][0]} but were never applied to this database"
            )
