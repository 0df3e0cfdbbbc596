"""The CPA registry on a real store (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import time

import pytest

from cpa.validate import ValidationOptions
from gateway.store.cpas import CpaExists, CpaInvalid, CpaNotFound, CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations


@pytest.fixture
def registry(store: Database) -> CpaRegistry:
    apply_migrations(store)
    return CpaRegistry(store)


def test_insert_get_list_delete(registry: CpaRegistry, cpa_xml) -> None:
    xml = cpa_xml(cpa_id="cpa-one")
    row, replaced, report = registry.insert(xml)
    assert not replaced and report.ok
    assert row.cpa_id == "cpa-one" and row.status == "agreed"
    assert row.summary["profiles"] == ["osb-rm-s"]
    assert [p["name"] for p in row.summary["parties"]] == ["Gemeente Voorbeeld", "GGk/RINIS test"]
    assert registry.get("cpa-one") == row
    registry.insert(cpa_xml(cpa_id="cpa-two", profile="osb-be"))
    assert [r.cpa_id for r in registry.list()] == ["cpa-one", "cpa-two"]
    assert registry.get_cpa("cpa-two").cpa_id == "cpa-two"
    registry.delete("cpa-one")
    assert [r.cpa_id for r in registry.list()] == ["cpa-two"]
    with pytest.raises(CpaNotFound):
        registry.get("cpa-one")
    with pytest.raises(CpaNotFound):
        registry.delete("cpa-one")


def test_xml_is_kept_byte_exact(registry: CpaRegistry, cpa_xml) -> None:
    # CRLF line ends, a comment, odd spacing and non-ASCII: all must come back as sent.
    xml = cpa_xml(cpa_id="exact").replace(b"\n", b"\r\n")
    xml = xml.replace(b"?>", b"?>\r\n<!-- Gemeente \xc3\xa9\xc3\xa9n  -->", 1)
    registry.insert(xml)
    assert registry.get_xml("exact") == xml


def test_existing_id_is_refused_unless_overwritten(registry: CpaRegistry, cpa_xml) -> None:
    first, _, _ = registry.insert(cpa_xml(cpa_id="same", profile="osb-be"))
    with pytest.raises(CpaExists, match="already exists"):
        registry.insert(cpa_xml(cpa_id="same", profile="osb-rm"))
    assert registry.get("same").summary["profiles"] == ["osb-be"]
    time.sleep(0.002)
    second, replaced, _ = registry.insert(cpa_xml(cpa_id="same", profile="osb-rm"), overwrite=True)
    assert replaced
    assert second.summary["profiles"] == ["osb-rm"]
    assert second.created_at == first.created_at < second.updated_at
    assert len(registry.list()) == 1


def test_overwrite_of_a_new_id_inserts(registry: CpaRegistry, cpa_xml) -> None:
    _, replaced, _ = registry.insert(cpa_xml(cpa_id="fresh"), overwrite=True)
    assert not replaced and registry.get("fresh")


def test_invalid_cpa_is_not_stored(registry: CpaRegistry, cpa_xml) -> None:
    xml = cpa_xml(cpa_id="bad").replace(b"https://localhost:18444", b"http://localhost:18444")
    with pytest.raises(CpaInvalid) as info:
        registry.insert(xml)
    assert any("https endpoint" in str(f) for f in info.value.report.errors)
    assert registry.list() == []
    insecure = CpaRegistry(registry.db, ValidationOptions(allow_insecure=True))
    insecure.insert(xml)
    assert [r.cpa_id for r in registry.list()] == ["bad"]


def test_failed_overwrite_keeps_the_stored_cpa(registry: CpaRegistry, cpa_xml) -> None:
    good = cpa_xml(cpa_id="keep")
    registry.insert(good)
    with pytest.raises(CpaInvalid):
        registry.insert(good.replace(b'value="agreed"', b'value="proposed"'), overwrite=True)
    assert registry.get_xml("keep") == good


def test_validate_only_stores_nothing(registry: CpaRegistry, cpa_xml) -> None:
    assert registry.validate(cpa_xml()).ok
    assert registry.list() == []
