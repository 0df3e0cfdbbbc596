"""Fixtures shared by the test modules: the example PKI and generated CPAs."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
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


PG_DSN = os.environ.get("DKGW_TEST_PG_DSN")

DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=pytest.mark.skipif(
            not PG_DSN, reason="DKGW_TEST_PG_DSN is not set: no PostgreSQL server to test on"
        ),
    ),
]

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
        assert PG_DSN is not None
        schema = f"dkgw_test_{uuid.uuid4().hex}"
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(pgsql.SQL("CREATE SCHEMA {}").format(pgsql.Identifier(schema)))
        conninfo = make_conninfo(PG_DSN, options=f"-csearch_path={schema}")

        def factory() -> Database:
            opened.append(Database.postgresql(conninfo))
            return opened[-1]

    try:
        yield factory
    finally:
        for db in opened:
            db.close()
        if request.param == "postgresql":
            with psycopg.connect(PG_DSN, autocommit=True) as admin:
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
