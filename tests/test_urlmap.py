"""URL mappings: the store functions (gateway.store.urlmap) on both dialects, and ``dkgw urlmap``.

The delivery side (a mapped endpoint is what the worker posts to) is tested with two real
gateways in tests/test_integration.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.store.database import Database
from gateway.store.migrate import apply_migrations, load_migrations
from gateway.store.urlmap import (
    delete_url_mapping,
    list_url_mappings,
    resolve_url,
    set_url_mapping,
)

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
CPA_URL = "https://partner.example.nl:8443/ebms"
PROXY_URL = "http://proxy.internal:3128/partner/ebms"


@pytest.fixture
def db(store: Database) -> Database:
    apply_migrations(store)
    return store


def test_migration_is_shipped_for_both_dialects(db: Database) -> None:
    shipped = load_migrations(db.dialect)
    (migration,) = [m for m in shipped if m.name.endswith("_url_mappings")]
    assert migration.name == "0007_url_mappings"
    assert migration.filename == f"{migration.name}.{db.dialect}.sql"


def test_unmapped_url_resolves_to_itself(db: Database) -> None:
    with db.transaction() as cur:
        assert resolve_url(cur, CPA_URL) == CPA_URL
        assert list_url_mappings(cur) == []


def test_set_maps_the_exact_url_only(db: Database) -> None:
    with db.transaction() as cur:
        mapping = set_url_mapping(cur, CPA_URL, PROXY_URL, now=T0)
        assert (mapping.source, mapping.destination) == (CPA_URL, PROXY_URL)
        assert mapping.created_at == mapping.updated_at == T0
    with db.transaction() as cur:
        assert resolve_url(cur, CPA_URL) == PROXY_URL
        # Exact match on the whole URL: no prefix, trailing slash, case or port games.
        for other in (
            CPA_URL + "/",
            CPA_URL + "/sub",
            CPA_URL.replace("partner", "PARTNER"),
            "https://partner.example.nl/ebms",
        ):
            assert resolve_url(cur, other) == other


def test_set_again_replaces_the_destination(db: Database) -> None:
    with db.transaction() as cur:
        set_url_mapping(cur, CPA_URL, PROXY_URL, now=T0)
    later = T0 + timedelta(hours=1)
    with db.transaction() as cur:
        mapping = set_url_mapping(cur, CPA_URL, "https://stub.test/ebms", now=later)
        assert mapping.created_at == T0 and mapping.updated_at == later
    with db.transaction() as cur:
        assert resolve_url(cur, CPA_URL) == "https://stub.test/ebms"
        assert len(list_url_mappings(cur)) == 1


def test_delete_removes_only_that_mapping(db: Database) -> None:
    other = "https://other.example.nl/ebms"
    with db.transaction() as cur:
        set_url_mapping(cur, CPA_URL, PROXY_URL)
        set_url_mapping(cur, other, PROXY_URL)
    with db.transaction() as cur:
        assert delete_url_mapping(cur, CPA_URL) is True
        assert delete_url_mapping(cur, CPA_URL) is False
        assert delete_url_mapping(cur, "https://never.example.nl/ebms") is False
    with db.transaction() as cur:
        assert resolve_url(cur, CPA_URL) == CPA_URL
        assert resolve_url(cur, other) == PROXY_URL


def test_list_is_sorted_by_source_on_every_dialect(db: Database) -> None:
    sources = ["https://b.example.nl/ebms", "https://B.example.nl/ebms", "https://a.example.nl/x"]
    with db.transaction() as cur:
        for n, source in enumerate(sources):
            set_url_mapping(cur, source, f"http://stub.test/{n}")
    with db.transaction() as cur:
        listed = [(m.source, m.destination) for m in list_url_mappings(cur)]
    # Code point order (upper case first), the same on SQLite and PostgreSQL.
    assert listed == [
        ("https://B.example.nl/ebms", "http://stub.test/1"),
        ("https://a.example.nl/x", "http://stub.test/2"),
        ("https://b.example.nl/ebms", "http://stub.test/0"),
    ]


@pytest.mark.parametrize(
    ("source", "destination", "message"),
    [
        ("partner.example.nl/ebms", PROXY_URL, "source URL 'partner.example.nl/ebms' is not"),
        (CPA_URL, "ftp://stub.test/ebms", "destination URL 'ftp://stub.test/ebms' is not"),
        (CPA_URL, "/ebms", "destination URL '/ebms' is not an absolute"),
        (CPA_URL, "https:///ebms", "destination URL 'https:///ebms' has no host"),
        (CPA_URL, "https://stub.test:99999/ebms", "has an invalid port"),
        (CPA_URL, "https://stub.test/e bms", "contains white space"),
        ("", PROXY_URL, "source URL '' is empty"),
    ],
)
def test_set_refuses_what_is_not_an_http_url(
    db: Database, source: str, destination: str, message: str
) -> None:
    with db.transaction() as cur, pytest.raises(ValueError, match=re.escape(message)):
        set_url_mapping(cur, source, destination)
    with db.transaction() as cur:
        assert list_url_mappings(cur) == []


# -- dkgw urlmap ------------------------------------------------------------------------


def test_cli_set_list_delete_through_the_console_script(tmp_path: Path) -> None:
    dkgw_bin = shutil.which("dkgw", path=str(Path(sys.executable).parent))
    assert dkgw_bin, "the dkgw console script is not installed in this environment"
    base = [dkgw_bin, "--data-dir", str(tmp_path / "var")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, "urlmap", *args], capture_output=True, text=True)

    # No store yet: reading says so and makes none; setting a mapping makes it.
    missing = run("list")
    assert missing.returncode == 1 and missing.stderr.startswith("dkgw: no store at ")
    assert not (tmp_path / "var").exists()

    done = run("set", CPA_URL, PROXY_URL)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"mapped {CPA_URL} -> {PROXY_URL}\n"

    listed = run("list")
    assert listed.returncode == 0 and listed.stdout.startswith(f"{CPA_URL} -> {PROXY_URL}  (since ")
    as_json = json.loads(run("list", "--json").stdout)
    assert [(m["source"], m["destination"]) for m in as_json] == [(CPA_URL, PROXY_URL)]

    bad = run("set", CPA_URL, "stub.test:8080")
    assert bad.returncode == 1 and "destination URL 'stub.test:8080' is not" in bad.stderr
    assert json.loads(run("list", "--json").stdout)[0]["destination"] == PROXY_URL

    deleted = run("delete", CPA_URL)
    assert deleted.returncode == 0 and deleted.stdout == f"deleted the mapping of {CPA_URL}\n"
    unknown = run("delete", CPA_URL)
    assert unknown.returncode == 1 and f"no URL mapping for {CPA_URL}" in unknown.stderr
    assert run("list", "--json").stdout.strip() == "[]"
    assert run().returncode == 2  # usage: a subcommand is required
