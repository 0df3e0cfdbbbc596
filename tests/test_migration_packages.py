"""Migrations that live in several packages: one sequence of versions, one bookkeeping table.

The store collects every package's ``migrations/`` directory (gateway/store/migrate.py).
A database migrated when all files lay in ``gateway/store/migrations/`` must see the
same versions, names and checksums, so it opens without applying anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapters.filedrop import store as filedrop_store
from adapters.stuf import store as stuf_store
from adapters.webhooks import store as webhook_store
from gateway.store import migrate
from gateway.store.database import Database, StoreError
from gateway.store.migrate import apply_migrations, load_migrations, migration_directories
from tests.conftest import StoreFactory

# (version, name, file, SHA-256 of the file) as shipped before the files moved to their
# packages: a database records name and checksum, so these must never change.
SHIPPED = {
    "sqlite": [
        (1, "0001_cpa", "0001_cpa.sql",
         "f1d66221f0de686e856f6e39dda0465b92f962d66ea84e851109ce21a0b7cbe0"),
        (2, "0002_messages", "0002_messages.sqlite.sql",
         "beaf15c2ffb5d0b132db808d76d79381a5c7b192db4243f46fa467c12829a8dd"),
        (4, "0004_monitoring", "0004_monitoring.sqlite.sql",
         "4d0e6a80d57c0b83f18d31be0cbc28a3857f84cc69f9f7fa12f0be010ca94b84"),
        (5, "0005_certificate_mappings", "0005_certificate_mappings.sqlite.sql",
         "471bf43becdff0791a4c99041029bd7869d14cd50b4919122db5963c9d5c29f5"),
        (6, "0006_payload_chunks", "0006_payload_chunks.sqlite.sql",
         "c1aeb60044b79836a5e267c44de2e1803c963c563a3d8263cb936a02be7910eb"),
        (7, "0007_url_mappings", "0007_url_mappings.sqlite.sql",
         "7fbfa92fcc4ff83e6a91c617fe46784d1f7ce6c85a2dca4740026fd4be6bfa51"),
        (8, "0008_webhooks", "0008_webhooks.sqlite.sql",
         "ae181c50609c0172852488c684e92fc7e08ed07f661aefc3d5bb3564a789590d"),
        (9, "0009_filedrop", "0009_filedrop.sqlite.sql",
         "a6250a99c560107dc01d6366c63696c57bca164a7ba6e55dbf12924bde34d3f1"),
        (10, "0010_stuf", "0010_stuf.sqlite.sql",
         "fd4f9ec6a559c81d826a85bf0d01dd756e6d3d51c69aa16e6c140173c7dd7ffb"),
        (11, "0011_event_errors", "0011_event_errors.sql",
         "a8a9cd7ed0e522018d16794b87f8fd771a78ad2d77cf6a495276b8e4c0249a6e"),
        (12, "0012_idempotency", "0012_idempotency.sqlite.sql",
         "271a791a96bb221c7ed04deaee9f6b31460a96f7c8134d3773cbb4d7baba560d"),
    ],
    "postgresql": [
        (1, "0001_cpa", "0001_cpa.postgresql.sql",
         "861cf93ba8aa0bb70a51b40d7ff06cba98873911c90eb3593e91f33a38d81518"),
        (2, "0002_messages", "0002_messages.postgresql.sql",
         "a3dc36836826af97437983445498c3c9f3c4169681e678a808c569141fe4feca"),
        (4, "0004_monitoring", "0004_monitoring.postgresql.sql",
         "b8512ea01f7375cb70c9443a4f681bde6dbdd824f058a164e094d75a587b182e"),
        (5, "0005_certificate_mappings", "0005_certificate_mappings.postgresql.sql",
         "ccc9e5d901d5e6556c678cb9f94c100a21759a1d5d7dca193dfc2508aa13c2aa"),
        (6, "0006_payload_chunks", "0006_payload_chunks.postgresql.sql",
         "08540c6fd8cd47efb73fd754988247d199a6f648b10c22f322f3db5c6dab5e30"),
        (7, "0007_url_mappings", "0007_url_mappings.postgresql.sql",
         "fad4c92485af81bcbbd3877408cbbf643866544a69452301f76bf820dc98e3e9"),
        (8, "0008_webhooks", "0008_webhooks.postgresql.sql",
         "7ee27dca76b1d0a815cb833741588ff081761b394b1f6ed792fc80dbd3a69989"),
        (9, "0009_filedrop", "0009_filedrop.postgresql.sql",
         "ec1c61a49129007e9438360bf4a1aa751c1bf34ff8b55c7fb12798b4da3ccf48"),
        (10, "0010_stuf", "0010_stuf.postgresql.sql",
         "83aea9dbce8ce5e17a1a1e780cd94392cf58d8bce952dc02964fee09f324a813"),
        (11, "0011_event_errors", "0011_event_errors.sql",
         "a8a9cd7ed0e522018d16794b87f8fd771a78ad2d77cf6a495276b8e4c0249a6e"),
        (12, "0012_idempotency", "0012_idempotency.postgresql.sql",
         "c2a25654be8580007ee9af88503c7d57daa0f33ff987226d63bdbee7df683952"),
    ],
}  # fmt: skip


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_packages_ship_the_migrations_shipped_before(dialect: str) -> None:
    loaded = load_migrations(dialect)  # type: ignore[arg-type]
    assert [(m.version, m.name, m.filename, m.checksum) for m in loaded] == SHIPPED[dialect]


def test_each_package_declares_its_own_directory() -> None:
    owners = {
        migrate.MIGRATIONS: {1, 2, 4, 5, 6, 7, 11, 12},
        webhook_store.MIGRATIONS: {8},
        filedrop_store.MIGRATIONS: {9},
        stuf_store.MIGRATIONS: {10},
    }
    declared = migration_directories()
    assert sorted(map(str, declared)) == sorted(map(str, owners))
    for directory, versions in owners.items():
        assert {m.version for m in load_migrations("sqlite", directory)} == versions
    assert str(stuf_store.MIGRATIONS).endswith(str(Path("adapters", "stuf", "migrations")))


def _package(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"0003_a.sql": "SELECT 1;"}, {"0003_b.sql": "SELECT 1;"}),
        # The same file in two packages is refused too: a version belongs to one package.
        ({"0003_a.sql": "SELECT 1;"}, {"0003_a.sql": "SELECT 1;"}),
        ({"0003_a.sqlite.sql": "SELECT 1;", "0003_a.postgresql.sql": "SELECT 1;"},
         {"0003_b.postgresql.sql": "SELECT 1;"}),
    ],
)  # fmt: skip
def test_two_packages_with_one_version_are_refused_at_load(
    tmp_path: Path, first: dict[str, str], second: dict[str, str]
) -> None:
    one = _package(tmp_path / "one", {"0001_x.sql": "SELECT 1;", **first})
    two = _package(tmp_path / "two", {"0002_y.sql": "SELECT 1;", **second})
    for dialect in ("sqlite", "postgresql"):
        with pytest.raises(StoreError, match="migration version 0003 is taken twice"):
            load_migrations(dialect, [one, two])  # type: ignore[arg-type]


def test_a_package_without_migrations_is_refused(tmp_path: Path) -> None:
    one = _package(tmp_path / "one", {"0001_x.sql": "SELECT 1;"})
    empty = _package(tmp_path / "empty", {})
    with pytest.raises(StoreError, match="no migrations found in"):
        load_migrations("sqlite", [one, empty])


def test_migrations_of_several_packages_apply_in_version_order(
    store: Database, tmp_path: Path
) -> None:
    # Each migration needs the table of the one before it, which lives in the other package.
    low = _package(
        tmp_path / "low",
        {"0001_a.sql": "CREATE TABLE a (x TEXT);", "0003_c.sql": "INSERT INTO b (y) VALUES ('3');"},
    )
    high = _package(tmp_path / "high", {"0002_b.sql": "CREATE TABLE b (y TEXT);"})
    assert apply_migrations(store, [high, low]) == ["0001_a", "0002_b", "0003_c"]
    assert apply_migrations(store, [low, high]) == []
    with store.transaction() as cur:
        rows = cur.execute("SELECT version, name FROM schema_migration ORDER BY version")
        assert rows.fetchall() == [(1, "0001_a"), (2, "0002_b"), (3, "0003_c")]


def test_a_store_migrated_from_one_directory_needs_nothing_after_the_move(
    open_store: StoreFactory, tmp_path: Path
) -> None:
    # The layout before the move: every file in one directory.
    single = tmp_path / "migrations"
    single.mkdir()
    for directory in migration_directories():
        for entry in directory.iterdir():
            if entry.name.endswith(".sql"):
                (single / entry.name).write_bytes(entry.read_bytes())
    before = apply_migrations(open_store(), single)
    assert len(before) == len(SHIPPED["sqlite"])
    assert apply_migrations(open_store()) == []


def test_a_package_missing_from_the_declarations_is_noticed(
    store: Database, tmp_path: Path
) -> None:
    # A database migrated with every package, opened by code that lost one of them
    # (the file drop's 0009): refused, never migrated around the gap.
    apply_migrations(store)
    without = [d for d in migration_directories() if str(d) != str(filedrop_store.MIGRATIONS)]
    with pytest.raises(StoreError, match="0009_filedrop that this gateway does not know"):
        apply_migrations(store, without)
    copy = tmp_path / "copy"
    shutil.copytree(str(filedrop_store.MIGRATIONS), copy)
    assert apply_migrations(store, [*without, copy]) == []
