"""Certificate mappings in the store (gateway.store.certmap), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cpa.generate import make_cpa
from gateway.store.certmap import (
    delete_mapping,
    list_mappings,
    resolve_certificate,
    set_mapping,
)
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database, IntegrityConflict
from gateway.store.migrate import apply_migrations, load_migrations
from tests.conftest import SpecFactory, load_cert

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture
def db(store: Database, make_spec: SpecFactory) -> Database:
    """A store holding the CPAs the mappings below are scoped to (cpa-1, cpa-2)."""
    apply_migrations(store)
    registry = CpaRegistry(store)
    for cpa_id in ("cpa-1", "cpa-2"):
        registry.insert(make_cpa(make_spec(cpa_id=cpa_id)))
    return store


@pytest.fixture(scope="module")
def certs(pki: Path) -> dict[str, bytes]:
    """DER certificates: the CPA's (old), the renewed one (new), and another."""
    names = {
        "old": "gemeente-voorbeeld/tls-client.pem",
        "new": "negative/revoked.pem",  # same subject, another key: a renewal
        "other": "ggk-rinis-test/tls-client.pem",
        "server": "ggk-rinis-test/tls-server.pem",
    }
    return {k: load_cert(pki / v).public_bytes(Encoding.DER) for k, v in names.items()}


def test_migration_is_shipped_for_both_dialects(db: Database) -> None:
    shipped = load_migrations(db.dialect)
    (migration,) = [m for m in shipped if m.name.endswith("_certificate_mappings")]
    assert migration.filename == f"{migration.name}.{db.dialect}.sql"
    # Numbered after 0004_monitoring, which was committed first: a database that has
    # 0004 would refuse a new 0003 ("older than the applied version").
    assert migration.name == "0005_certificate_mappings"


def test_unmapped_certificate_resolves_to_itself(db: Database, certs: dict[str, bytes]) -> None:
    with db.transaction() as cur:
        assert resolve_certificate(cur, certs["old"], "cpa-1") == certs["old"]
        assert resolve_certificate(cur, certs["old"], None) == certs["old"]
        assert list_mappings(cur) == []


def test_global_mapping_applies_to_every_cpa(db: Database, certs: dict[str, bytes]) -> None:
    with db.transaction() as cur:
        mapping = set_mapping(cur, certs["old"], certs["new"], now=T0)
    assert mapping.cpa_id is None and mapping.created_at == mapping.updated_at == T0
    assert mapping.source_sha256 == hashlib.sha256(certs["old"]).hexdigest()
    with db.transaction() as cur:
        assert resolve_certificate(cur, certs["old"], "cpa-1") == certs["new"]
        assert resolve_certificate(cur, certs["old"], None) == certs["new"]
        assert resolve_certificate(cur, certs["other"], "cpa-1") == certs["other"]


def test_cpa_specific_mapping_wins_over_global(db: Database, certs: dict[str, bytes]) -> None:
    with db.transaction() as cur:
        set_mapping(cur, certs["old"], certs["new"], now=T0)
        set_mapping(cur, certs["old"], certs["server"], "cpa-2", now=T0)
    with db.transaction() as cur:
        assert resolve_certificate(cur, certs["old"], "cpa-2") == certs["server"]
        assert resolve_certificate(cur, certs["old"], "cpa-1") == certs["new"]
        assert resolve_certificate(cur, certs["old"], None) == certs["new"]
    # Only the CPA-specific one: other CPAs keep the CPA's certificate.
    with db.transaction() as cur:
        assert delete_mapping(cur, certs["old"]) is True
        assert resolve_certificate(cur, certs["old"], "cpa-1") == certs["old"]
        assert resolve_certificate(cur, certs["old"], "cpa-2") == certs["server"]


def test_setting_again_replaces_the_destination(db: Database, certs: dict[str, bytes]) -> None:
    later = T0 + timedelta(hours=1)
    with db.transaction() as cur:
        first = set_mapping(cur, certs["old"], certs["new"], "cpa-1", now=T0)
        second = set_mapping(cur, certs["old"], certs["server"], "cpa-1", now=later)
        global_ = set_mapping(cur, certs["old"], certs["new"], now=T0)
        again = set_mapping(cur, certs["old"], certs["other"], now=later)
    assert second.id == first.id and second.destination == certs["server"]
    assert second.created_at == T0 and second.updated_at == later
    assert again.id == global_.id != first.id
    with db.transaction() as cur:
        rows = list_mappings(cur)
    assert [(m.id, m.cpa_id, m.destination) for m in rows] == [
        (first.id, "cpa-1", certs["server"]),
        (global_.id, None, certs["other"]),
    ]
    assert all(m.source == certs["old"] for m in rows)


def test_delete_is_exact_per_scope(db: Database, certs: dict[str, bytes]) -> None:
    with db.transaction() as cur:
        set_mapping(cur, certs["old"], certs["new"], "cpa-1")
        assert delete_mapping(cur, certs["old"]) is False  # there is no global one
        assert delete_mapping(cur, certs["old"], "cpa-2") is False
        assert delete_mapping(cur, certs["other"], "cpa-1") is False
        assert delete_mapping(cur, certs["old"], "cpa-1") is True
        assert delete_mapping(cur, certs["old"], "cpa-1") is False
        assert list_mappings(cur) == []


def test_one_global_mapping_per_source(db: Database, certs: dict[str, bytes]) -> None:
    """NULL cpa_id rows must not repeat: the partial unique index holds on both dialects."""
    digest = hashlib.sha256(certs["old"]).hexdigest()
    stamp = "2026-11-23T09:00:00.000000Z"
    insert = (
        "INSERT INTO certificate_mapping (source_sha256, source, destination, cpa_id, "
        "created_at, updated_at) VALUES (?, ?, ?, NULL, ?, ?)"
    )
    with db.transaction() as cur:
        cur.execute(insert, (digest, certs["old"], certs["new"], stamp, stamp))
    with pytest.raises(IntegrityConflict), db.transaction() as cur:
        cur.execute(insert, (digest, certs["old"], certs["other"], stamp, stamp))


def test_bad_input_is_refused(db: Database, certs: dict[str, bytes]) -> None:
    with db.transaction() as cur:
        with pytest.raises(ValueError, match="source is not a DER X\\.509 certificate"):
            set_mapping(cur, b"not a certificate", certs["new"])
        with pytest.raises(ValueError, match="destination is not a DER X\\.509 certificate"):
            set_mapping(cur, certs["old"], b"\x30\x03\x02\x01\x01")
        with pytest.raises(ValueError, match="cpa_id must be a CPA id or None"):
            set_mapping(cur, certs["old"], certs["new"], "")
        with pytest.raises(TypeError, match="DER bytes, not str"):
            set_mapping(cur, "-----BEGIN CERTIFICATE-----", certs["new"])  # type: ignore[arg-type]
        assert list_mappings(cur) == []
