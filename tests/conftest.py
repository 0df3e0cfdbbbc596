"""Fixtures shared by the test modules: the example PKI and generated CPAs."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from cpa.generate import ActionSpec, CpaSpec, make_cpa
from gateway.commands.demo import MUNICIPALITY, NODE, example_party
from gateway.store.database import Database
from tests import pgserver

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MAKE_PKI = REPO / "certs-example" / "make-pki"

GEMEENTE_OIN = MUNICIPALITY[2]
NODE_OIN = NODE[2]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh example PKI (certs-example/make-pki) for this test session."""
    out = tmp_path_factory.mktemp("pki") / "out"
    subprocess.run([sys.executable, str(MAKE_PKI), "--out", str(out), "--quiet"], check=True)
    return out


def load_cert(path: Path) -> x509.Certificate:
    """A PEM certificate from disk."""
    return x509.load_pem_x509_certificate(path.read_bytes())


SpecFactory = Callable[..., CpaSpec]


@pytest.fixture(scope="session")
def make_spec(pki: Path) -> SpecFactory:
    """Build a CpaSpec for municipality (a) and node (b); keyword overrides apply."""
    gemeente = example_party(pki, *MUNICIPALITY)
    node = example_party(pki, *NODE)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def factory(**overrides: Any) -> CpaSpec:
        spec = CpaSpec(
            a=gemeente,
            b=node,
            service="GGK:iWmo:3.2",
            actions=(ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b")),
            profile="osb-rm-s",
            start=start,
            end=start + timedelta(days=365),
            cpa_id="test-cpa",
        )
        return replace(spec, **overrides)

    return factory


@pytest.fixture(scope="session")
def cpa_xml(make_spec: SpecFactory) -> Callable[..., bytes]:
    """Generated CPA bytes; keyword overrides go to the CpaSpec."""

    def factory(**overrides: Any) -> bytes:
        return make_cpa(make_spec(**overrides))

    return factory


def __getattr__(name: str) -> Any:
    """``PG_DSN``: the PostgreSQL server's libpq DSN, read when a test module imports it.

    Looked up late (PEP 562) because this file is imported before ``pytest_configure``
    has started the throwaway server (tests/pgserver.py).
    """
    if name == "PG_DSN":
        return pgserver.ensure_dsn()
    raise AttributeError(name)


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's PostgreSQL server unless ``DKGW_TEST_PG_DSN`` names one.

    Under pytest-xdist this runs in the controller before any worker exists, so all
    workers share one server through the inherited environment.
    """
    pgserver.ensure_dsn()
    config.add_cleanup(pgserver.stop)


def pytest_report_header(config: pytest.Config) -> str:
    """Which PostgreSQL the tests run on."""
    server = pgserver.started_here()
    if server is not None:
        return f"postgresql: started for this session ({server.kind}: {server.bindir})"
    return "postgresql: DKGW_TEST_PG_DSN"


#: The longest tests (``--durations``), handed out first under pytest-xdist so that no
#: worker picks one up near the end of the run.  Scheduling only: a stale entry costs
#: time, never correctness.
LONG_POLES = (
    "tests/test_api_fuzz.py::test_schemathesis_finds_no_server_error",
    "tests/test_filedrop.py::test_1000_files_are_delivered_exactly_once",
    "tests/test_cli.py::test_demo_runs_and_exits_0",
    "tests/test_message_commands.py::test_list_show_and_retry_commands",
    "tests/test_urlmap.py::test_cli_set_list_delete_through_the_console_script",
    "tests/test_envelope_property.py::",
    "tests/test_preflight.py::test_serve_check_refuses_a_corrupt_store",
    "tests/test_monitoring.py::test_scheduled_pings_follow_the_partner_down_and_up",
    "tests/test_pki.py::test_idempotent_and_force",
    "tests/test_mime.py::test_build_then_parse_round_trip",
    "tests/test_cli.py::test_console_script_round_trips_xml_byte_exact",
)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a pytest-xdist worker: the long poles first, and ``xdist_group`` honoured."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return

    def rank(item: pytest.Item) -> int:
        for index, prefix in enumerate(LONG_POLES):
            if item.nodeid.startswith(prefix):
                return index
        return len(LONG_POLES)

    items.sort(key=rank)  # stable: the rest keep their order
    if getattr(config.option, "loadgroup", False):
        restore_xdist_groups(items)


def restore_xdist_groups(items: list[pytest.Item]) -> None:
    """Make ``--dist loadgroup`` keep each ``xdist_group`` on one worker again.

    pytest-xdist 3.8 tells the scheduler a test's group by appending ``@name`` to
    ``item._nodeid``, which pytest 9.2 no longer reads: the node id is built from
    ``item._id`` (pytest-xdist issue #1386), so grouped tests were spread over all
    workers.  This appends the suffix to the structured id instead, as the fix
    proposed upstream does; a no-op where the suffix is already there.
    """
    from _pytest.nodeid import NodeId

    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        suffix = "@" + "_".join(sorted(names))
        if names and not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)  # type: ignore[attr-defined]


DIALECTS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]

StoreFactory = Callable[[], Database]


@pytest.fixture(params=DIALECTS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A fresh, empty store; each call opens another Database on it (another node).

    On PostgreSQL every test works in a schema of its own, dropped afterwards, so
    the suite can run repeatedly against one server.
    """
    opened: list[Database] = []
    if request.param == "sqlite":
        path = tmp_path / "var" / "gateway.sqlite"

        def factory() -> Database:
            opened.append(Database.sqlite(path))
            return opened[-1]
    else:
        dsn = pgserver.ensure_dsn()
        schema = f"dkgw_test_{uuid.uuid4().hex}"
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(schema)))
        conninfo = make_conninfo(dsn, options=f"-csearch_path={schema}")

        def factory() -> Database:
            opened.append(Database.postgresql(conninfo))
            return opened[-1]

    try:
        yield factory
    finally:
        for db in opened:
            db.close()
        if request.param == "postgresql":
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(pgsql.SQL("DROP SCHEMA {} CASCADE").format(pgsql.Identifier(schema)))


@pytest.fixture
def store(open_store: StoreFactory) -> Database:
    """One fresh, empty store (no migrations applied yet)."""
    return open_store()


@pytest.fixture
def write(pki: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Write a gateway config: the example municipality's [tls] plus ``extra`` TOML."""
    from tests.gateways import tls_toml

    head = tls_toml(pki, "gemeente-voorbeeld")

    def config(extra: str) -> Path:
        path = tmp_path / "gateway.toml"
        path.write_text(head + extra, encoding="utf-8")
        return path

    return config


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One line saying what was skipped and why (only an absent independent oracle may skip)."""
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if not reasons:
        terminalreporter.write_line("skipped: none")
        return
    parts = "; ".join(f"{count} × {reason}" for reason, count in sorted(reasons.items()))
    terminalreporter.write_line(f"skipped {sum(reasons.values())}: {parts}")
