"""``dkgw backup``, and the ebMS part of ``dkgw purge`` (the StUF log's is in stuf.py).

``dkgw purge`` applies the StUF message log's retention (gateway/commands/stuf.py) and
then the general one (gateway/store/retention.py), and prints per kind the rows and
bytes that went, or with ``--dry-run`` would go.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.commands.common import config_of, fail, open_store
from gateway.store.database import Database, StoreError
from gateway.store.retention import (
    KINDS,
    PurgeReport,
    RetentionSettings,
    purge,
    reclaim_space,
    store_bytes,
)
from gateway.store.timeutil import utcnow

__all__ = ["cmd_backup", "register", "report_lines", "retention_settings", "run_purge"]


def retention_settings(args: argparse.Namespace) -> RetentionSettings:
    """``[retention]`` of ``--config`` when one is given, else the defaults."""
    config = config_of(args)
    return config.retention if config is not None else RetentionSettings()


def run_purge(db: Database, settings: RetentionSettings, *, dry_run: bool) -> list[str]:
    """Apply retention now; the lines that report it (sizes before and after)."""
    with db.transaction() as cur:
        before = store_bytes(cur)
    report = purge(db, utcnow(), settings, dry_run=dry_run)
    vacuumed = False if dry_run else reclaim_space(db)
    with db.transaction() as cur:
        after = store_bytes(cur)
    lines = report_lines(report)
    lines.append(
        f"store: {before} bytes before, {after} after" + (" (vacuumed)" if vacuumed else "")
    )
    return lines


def report_lines(report: PurgeReport) -> list[str]:
    """One line per kind: ``messages: 3 rows, 1234 bytes``."""
    verb = "would purge" if report.dry_run else "purged"
    return [
        f"{verb} {kind}: {report.rows[kind]} rows, {report.bytes[kind]} bytes" for kind in KINDS
    ]


# -- dkgw backup -----------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``backup`` to the top-level parser (``purge`` is in gateway/commands/stuf.py)."""
    p = sub.add_parser(
        "backup",
        help="copy a running SQLite store consistently (PostgreSQL: use pg_dump)",
        description="Copy the store, as of one moment, into DEST with SQLite's online "
        "backup API; the gateway may go on running meanwhile.  See docs/operations.md.",
    )
    p.add_argument("dest", type=Path, help="the copy to write (refused if it exists)")
    p.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    p.set_defaults(handler=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    """``dkgw backup DEST [--force]``."""
    dest: Path = args.dest
    if dest.exists() and not args.force:
        return fail(f"{dest} exists; give --force to overwrite it")
    try:
        db = open_store(args)
    except StoreError as exc:
        return fail(str(exc))
    try:
        if db.dialect != "sqlite":
            print(
                "dkgw: the store is PostgreSQL: back it up with pg_dump -Fc "
                "(see docs/operations.md, Backup and restore)"
            )
            return 1
        with db.transaction() as cur:
            size = store_bytes(cur)
        db.backup_to(dest)
    except (OSError, StoreError) as exc:
        return fail(f"backup failed: {exc}")
    finally:
        db.close()
    print(f"backed up {size} bytes to {dest}")
    return 0
