"""Retention of the store for ``dkgw purge`` (the ebMS part; the StUF log is in stuf.py).

``dkgw purge`` applies the StUF message log's retention (gateway/commands/stuf.py) and
then the general one (gateway/store/retention.py), and prints per kind the rows and
bytes that went, or with ``--dry-run`` would go.
"""

from __future__ import annotations

import argparse

from gateway.config import load_config
from gateway.store.database import Database
from gateway.store.retention import (
    KINDS,
    PurgeReport,
    RetentionSettings,
    purge,
    reclaim_space,
    store_bytes,
)
from gateway.store.timeutil import utcnow

__all__ = ["report_lines", "retention_settings", "run_purge"]


def retention_settings(args: argparse.Namespace) -> RetentionSettings:
    """``[retention]`` of ``--config`` when one is given, else the defaults."""
    config = getattr(args, "config", None)
    return load_config(config).retention if config is not None else RetentionSettings()


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
