"""``dkgw backup`` of a running gateway's SQLite store, and a gateway restored from it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from gateway.cli import main
from gateway.msh.outbound import Payload
from tests.gateways import Pair, Side, gateway_config, store_url, wait_until

DIGESTS = (
    "SELECT m.message_id, a.sha256, a.size FROM ebms_message m "
    "JOIN ebms_attachment a ON a.message_pk = m.id WHERE m.direction = 'out' "
    "ORDER BY m.message_id"
)


@pytest_twisted.ensureDeferred
async def test_backup_under_load_restores_every_message_and_resumes_deliveries(
    pki: Path, make_spec: Any, tmp_path: Path
) -> None:
    a = Side("a", gateway_config(pki, "gemeente-voorbeeld", tmp_path / "a",
                                 store_url("sqlite", tmp_path, "a")))  # fmt: skip
    b = Side("b", gateway_config(pki, "ggk-rinis-test", tmp_path / "b",
                                 store_url("sqlite", tmp_path, "b")))  # fmt: skip
    a.start()
    b.start()
    pair = Pair(a, b, "backup-cpa", make_spec, {"profile": "osb-rm"})
    pair.import_cpa(retries=30, retry_interval=timedelta(seconds=1))
    restored: Side | None = None
    try:
        delivered = [(await pair.send((Payload(b"<zorg>%d</zorg>" % n),))).message_id
                     for n in range(3)]  # fmt: skip
        await wait_until(lambda: all(a.status(m, "out") == "DELIVERED" for m in delivered))
        await b.stop()  # the partner is down: what a sends now stays pending
        pending = [(await pair.send((Payload(b"<zorg>later %d</zorg>" % n),))).message_id
                   for n in range(3)]  # fmt: skip
        # Under load: more messages are being queued while the copy is made.
        more = [Deferred.fromCoroutine(pair.send((Payload(b"<zorg>during %d</zorg>" % n),)))
                for n in range(5)]  # fmt: skip
        dest = tmp_path / "backup" / "copy.sqlite3"
        dest.parent.mkdir()
        assert main(["--store", a.config.store, "backup", str(dest)]) == 0
        assert main(["--store", a.config.store, "backup", str(dest)]) == 1  # never overwritten
        assert main(["--store", a.config.store, "backup", str(dest), "--force"]) == 0
        for d in more:
            await d
        copy = Side("copy", replace(a.config, store=f"sqlite:///{dest}"))
        in_copy = copy.rows(DIGESTS)
        copy.close()
        in_source = a.rows(DIGESTS)
        ids = {r[0] for r in in_copy}
        assert set(delivered) | set(pending) <= ids
        assert set(in_copy) <= set(in_source)  # each copied message intact: same digests
        await a.stop()
        a.close()

        # Restore: the copy in a fresh data directory, the same config otherwise.
        data_dir = tmp_path / "restored"
        data_dir.mkdir()
        (data_dir / "gateway.sqlite3").write_bytes(dest.read_bytes())
        restored_url = f"sqlite:///{data_dir / 'gateway.sqlite3'}"
        restored = Side("a2", replace(a.config, data_dir=data_dir, store=restored_url))
        restored.start()
        b.start()
        await wait_until(
            lambda: all(restored.status(m, "out") == "DELIVERED" for m in pending), timeout=20
        )
        received = {r[0] for r in b.rows("SELECT message_id FROM ebms_message WHERE "
                                         "direction = 'in' AND status IS NOT NULL")}  # fmt: skip
        assert set(pending) | set(delivered) <= received
        print(f"\nbackup: {len(in_copy)} messages copied, {len(pending)} pending resumed")
    finally:
        if restored is not None:
            await restored.stop()
            restored.close()
        await pair.stop()


def test_backup_of_a_postgresql_store_points_to_pg_dump(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = store_url("postgresql", tmp_path, "pg")
    assert main(["--store", url, "backup", str(tmp_path / "x")]) == 1
    assert "pg_dump" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()
