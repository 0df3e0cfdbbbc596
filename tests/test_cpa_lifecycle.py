"""Deleting a CPA with messages pending on it: refused with the count, or forced.

On the real store (SQLite, and PostgreSQL when ``DKGW_TEST_PG_DSN`` is set),
through the registry the CLI uses and the back-office service behind the REST
and SOAP APIs.
"""

from __future__ import annotations

from typing import Any

import pytest

from adapters.api.service import BackOffice, Conflict
from cpa.model import Service
from gateway.msh.outbound import Queued, parse_party, send_message, send_ping
from gateway.store.cpas import CpaInUse, CpaNotFound, CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import GEMEENTE_OIN, NODE_OIN

SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")
GEMEENTE = parse_party(f"urn:osb:oin:{GEMEENTE_OIN}")
NODE = parse_party(NODE_OIN)


@pytest.fixture
def registry(store: Database, cpa_xml) -> CpaRegistry:
    apply_migrations(store)
    registry = CpaRegistry(store)
    for cpa_id in ("life-cpa", "other-cpa"):
        registry.insert(cpa_xml(cpa_id=cpa_id, profile="osb-rm"), overwrite=True)
    return registry


def send(registry: CpaRegistry, cpa_id: str) -> Queued:
    return send_message(
        registry.db,
        registry,
        cpa_id=cpa_id,
        from_party=GEMEENTE,
        from_role="Gemeente",
        to_party=NODE,
        to_role="GGk",
        service=SERVICE,
        action="WMO301",
    )


def rows(db: Database, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with db.transaction() as cur:
        return cur.execute(sql, params).fetchall()


def state(db: Database, message_id: str) -> tuple[Any, ...]:
    """(message status, task state, task last_error) of an outbound message."""
    ((found),) = rows(
        db,
        "SELECT m.status, t.state, t.last_error FROM ebms_message m "
        "JOIN delivery_task t ON t.message_pk = m.id "
        "WHERE m.message_id = ? AND m.direction = 'out'",
        message_id,
    )
    return tuple(found)


def test_delete_is_refused_while_messages_are_pending(registry: CpaRegistry) -> None:
    queued = [send(registry, "life-cpa"), send(registry, "life-cpa")]
    send_ping(registry.db, registry, cpa_id="life-cpa", from_party=GEMEENTE, to_party=NODE)
    with pytest.raises(CpaInUse) as refused:
        registry.delete("life-cpa")
    assert refused.value.pending == 3
    assert str(refused.value) == "CPA life-cpa has 3 pending messages"
    # Nothing changed: the CPA is there, the messages still wait.
    assert registry.get("life-cpa").cpa_id == "life-cpa"
    for q in queued:
        assert state(registry.db, q.message_id) == ("CREATED", "pending", None)


def test_forced_delete_fails_the_pending_messages_with_reason_and_event(
    registry: CpaRegistry,
) -> None:
    queued = [send(registry, "life-cpa"), send(registry, "life-cpa")]
    ping = send_ping(registry.db, registry, cpa_id="life-cpa", from_party=GEMEENTE, to_party=NODE)
    other = send(registry, "other-cpa")

    assert registry.delete("life-cpa", force=True) == 3

    with pytest.raises(CpaNotFound):
        registry.get("life-cpa")
    reason = "CPA deleted by operator."
    for q in queued:
        assert state(registry.db, q.message_id) == ("DELIVERY_FAILED", "failed", reason)
        assert rows(
            registry.db,
            "SELECT event_type, error_code, error_text FROM message_event WHERE message_id = ?",
            q.message_id,
        ) == [("FAILED", "DeliveryFailure", reason)]
        ((history,),) = rows(
            registry.db,
            "SELECT h.reason FROM status_history h JOIN ebms_message m ON m.id = h.message_pk "
            "WHERE m.message_id = ? AND h.status = 'DELIVERY_FAILED'",
            q.message_id,
        )
        assert history == reason
    # The ping (a signal, no status) has its task ended too.
    assert state(registry.db, ping.message_id) == (None, "failed", reason)
    # Another CPA's message is untouched.
    assert state(registry.db, other.message_id) == ("CREATED", "pending", None)


def test_delete_without_pending_messages_needs_no_force(registry: CpaRegistry) -> None:
    done = send(registry, "life-cpa")
    with registry.db.transaction() as cur:
        cur.execute("UPDATE delivery_task SET state = 'done'")
    assert registry.delete("life-cpa") == 0
    assert state(registry.db, done.message_id) == ("CREATED", "done", None)
    with pytest.raises(CpaNotFound):
        registry.delete("life-cpa", force=True)


def test_the_api_refuses_with_409_and_the_count(registry: CpaRegistry) -> None:
    send(registry, "life-cpa")
    backoffice = BackOffice(registry.db, registry)
    with pytest.raises(Conflict) as refused:
        backoffice.delete_cpa("life-cpa")
    assert refused.value.status == 409
    assert str(refused.value) == (
        "CPA life-cpa has 1 pending message; wait for them, or fail them with "
        "'dkgw cpa delete --force life-cpa'"
    )
    assert registry.get("life-cpa").cpa_id == "life-cpa"
