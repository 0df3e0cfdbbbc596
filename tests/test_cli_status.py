"""``dkgw status``: the operator's first screen, on a store with real content."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.commands.common import version
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.messages import Direction, MessageRecord, insert_message, set_status
from gateway.store.migrate import apply_migrations
from tests.conftest import GEMEENTE_OIN, NODE_OIN, SpecFactory
from tests.gateways import free_port


@pytest.fixture
def answering() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _seed(store: Path, make_spec: SpecFactory) -> None:
    from cpa.generate import make_cpa

    db = Database.sqlite(store)
    apply_migrations(db)
    now = datetime.now(UTC)
    try:
        registry = CpaRegistry(db)
        registry.insert(make_cpa(make_spec(cpa_id="year-cpa", profile="osb-rm")))
        registry.insert(
            make_cpa(make_spec(cpa_id="ending-cpa", profile="osb-rm", end=now + timedelta(days=10)))
        )
        with db.transaction() as cur:
            for n, status in enumerate(("FAILED", "DELIVERED", "EXPIRED")):
                pk = insert_message(
                    cur,
                    MessageRecord(
                        message_id=f"m{n}@status-test",
                        direction=Direction.OUT,
                        cpa_id="year-cpa",
                        conversation_id="c",
                        from_party=f"urn:osb:oin:{GEMEENTE_OIN}",
                        to_party=f"urn:osb:oin:{NODE_OIN}",
                        service="urn:osb:services:GGK:iWmo:3.2",
                        action="WMO301",
                        sent_at=now,
                        content_type="text/xml",
                        envelope=b"<x/>",
                        status="CREATED",
                    ),
                    (),
                    now=now,
                )
                set_status(cur, pk, status, now=now, reason=f"reason {n}")
    finally:
        db.close()


def _dkgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_shows_store_listeners_cpas_failures_and_expiries(
    write: Callable[[str], Path], tmp_path: Path, make_spec: SpecFactory, answering: int
) -> None:
    store = tmp_path / "gw.sqlite3"
    _seed(store, make_spec)
    closed = free_port()
    config = write(
        f'[gateway]\ndata_dir = "{tmp_path}"\nstore = "sqlite:///{store}"\nnode_id = "gw-1"\n'
        f'[http]\nlisten = "127.0.0.1:{closed}"\n[api]\nlisten = "127.0.0.1:{answering}"\n'
    )
    done = _dkgw("--config", str(config), "status")
    assert done.returncode == 1, done.stderr  # the ebMS listener does not answer
    screen = done.stdout.splitlines()
    assert screen[0].startswith(f"dkgw {version()}  node gw-1  ")
    assert screen[1] == f"store      sqlite:{store}"
    assert (
        f"ebms 127.0.0.1:{closed} NOT ANSWERING (connection refused); "
        f"api 127.0.0.1:{answering} answering" in screen[2]
    )
    assert "CPAs       2 stored, 2 active" in screen
    assert "failures   2 in the last 24 h:" in screen
    failed = [line for line in screen if "m0@status-test" in line or "m2@status-test" in line]
    assert len(failed) == 2 and "FAILED" in failed[1] and failed[1].endswith("reason 0")
    assert not any("m1@status-test" in line for line in screen)  # delivered
    assert any(line.startswith("  WARNING CPA ending-cpa expires in 10 days") for line in screen), (
        screen
    )

    as_json = json.loads(_dkgw("--config", str(config), "status", "--json").stdout)
    assert as_json["version"] == version() and as_json["node"] == "gw-1"
    assert [item["answering"] for item in as_json["listeners"]] == [False, True]
    assert {f["message_id"] for f in as_json["recent_failures"]} == {
        "m0@status-test",
        "m2@status-test",
    }
    assert next(e["what"] for e in as_json["expiries"]) == "CPA ending-cpa"
    assert {c["cpa_id"] for c in as_json["cpas"]} == {"year-cpa", "ending-cpa"}


def test_status_without_config_reads_the_named_store(
    tmp_path: Path, make_spec: SpecFactory
) -> None:
    store = tmp_path / "gw.sqlite3"
    _seed(store, make_spec)
    done = _dkgw("--store", f"sqlite:///{store}", "status")
    assert done.returncode == 0, done.stderr  # nothing expired, no listener to probe
    assert "listeners  unknown (give --config to check them)" in done.stdout
    assert "queue      0 pending (oldest -), 0 sending;" in done.stdout
