"""A partner that misbehaves, one way after another, then gets fixed.

The sender (``dkgw serve``) keeps trying every message through each
misbehaviour; each failure is stored as the plain sentence an operator reads in
``dkgw message show``.  No attempt may hang on past its lease.  Then the real
partner gateway takes the port over and every message is delivered exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import SpecFactory
from tests.faults.conftest import (
    DRAIN_SECONDS,
    Footprint,
    Gateway,
    Receiver,
    Sender,
    drain,
    install_cpa,
    make_gateway,
    payload,
    query,
    scaled,
    seeded,
    verdict,
)
from tests.faults.partner import FAULT_TEXT, MODES, MisbehavingPartner
from tests.gateways import free_port

READ_TIMEOUT = 3.0
LEASE = 20.0


def expected_sentences(port: int) -> dict[str, str]:
    """What ``dkgw message show`` must say as the last failure, per misbehaviour."""
    where = f"localhost:{port}"
    return {
        "silent": f"no response within {READ_TIMEOUT:g} s",
        "half-headers": f"no response within {READ_TIMEOUT:g} s",
        "half-body": f"no response within {READ_TIMEOUT:g} s",
        "reset": f"{where} closed the connection in the middle of its answer",
        "500": f"HTTP 500 from partner: {FAULT_TEXT}",
        "503": "HTTP 503 from partner",
        "foreign-ca": "partner's server certificate is not trusted",
        "wrong-party": "partner's server certificate is not the one in the CPA",
    }


def last_failure(store: str, message_id: str) -> str:
    """The ``last failure`` line of ``dkgw message show``, run as an operator would."""
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--store", store, "message", "show", message_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    [line] = [x for x in shown.splitlines() if x.strip().startswith("last failure")]
    return line.split("last failure", 1)[1].strip()


def attempts_of(store: str, message_id: str) -> list[tuple[str | None, str]]:
    return [
        (r[0], r[1])
        for r in query(
            store,
            "SELECT a.error, a.outcome FROM delivery_attempt a JOIN delivery_task t ON "
            "t.id = a.task_id JOIN ebms_message m ON m.id = t.message_pk "
            "WHERE m.message_id = ? ORDER BY a.attempt",
            message_id,
        )
    ]


def overdue_leases(store: str) -> list[tuple[object, ...]]:
    """Tasks still in ``sending`` although their lease ran out a while ago."""
    return query(
        store,
        "SELECT t.id, t.lease_until, t.attempts FROM delivery_task t WHERE t.state = 'sending' "
        "AND t.lease_until < ?",
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 5)),
    )


def test_every_message_arrives_once_the_misbehaving_partner_is_fixed(
    pki: Path, make_spec: SpecFactory, tmp_path: Path, gateways: list[Gateway]
) -> None:
    rng = seeded("misbehaving partner")
    port_a, port_b = free_port(), free_port()
    stores = [f"sqlite:///{tmp_path / f'{side}.sqlite3'}" for side in ("a", "b")]
    cpa_id = "faults-partner"
    install_cpa(make_spec, stores, cpa_id=cpa_id, port_a=port_a, port_b=port_b, sync=True,
                retries=500, retry_interval=1.0)  # fmt: skip
    a = make_gateway(gateways, tmp_path, pki, "a", "gemeente-voorbeeld", port=port_a,
                     store=stores[0], read_timeout=READ_TIMEOUT, lease_seconds=LEASE)  # fmt: skip
    b = make_gateway(gateways, tmp_path, pki, "b", "ggk-rinis-test", port=port_b,
                     store=stores[1])  # fmt: skip
    partner = MisbehavingPartner(port_b, pki, tmp_path / "partner")
    try:
        a.start()
        footprint = Footprint(a)
        footprint.baseline()
        sender = Sender(a, cpa_id)
        expected = expected_sentences(port_b)
        shown: dict[str, str] = {}
        rounds = scaled(1)
        n = 0
        for _ in range(rounds):
            for mode in MODES:
                partner.mode = mode
                first = len(sender.accepted)
                for _ in range(2):
                    sender.submit(n, payload(n, rng), time.monotonic() + 60)
                    n += 1
                probe = list(sender.accepted)[first]
                # Behind the messages already waiting: with the timeout modes each
                # attempt holds one of the 8 delivery slots for the read timeout.
                deadline = time.monotonic() + 60 + len(sender.accepted) * READ_TIMEOUT / 4
                # Wait for an attempt of the new message that met this misbehaviour.
                while not attempts_of(a.store, probe):
                    a.assert_alive()
                    assert not overdue_leases(a.store), overdue_leases(a.store)
                    assert time.monotonic() < deadline, f"{mode}: no attempt recorded"
                    time.sleep(0.2)
                shown[mode] = last_failure(a.store, probe)
                assert expected[mode] in shown[mode], (mode, shown[mode])
                assert all(outcome == "retry" for _, outcome in attempts_of(a.store, probe))
        for mode, sentence in shown.items():
            print(f"  {mode:13} {sentence}")
        # Every attempt has ended: none hangs on with its lease long over.
        assert not overdue_leases(a.store), overdue_leases(a.store)
    finally:
        partner.close()

    # Fixed: the real partner gateway takes the port over.
    b.start()
    footprint_b = Footprint(b)
    footprint_b.baseline()
    with Receiver(b) as receiver:
        drain(sender, receiver, a, b, DRAIN_SECONDS)
        verdict("misbehaving partner", sender, receiver, a, b, kills=0)
    print(f"  {footprint.check()}; {footprint_b.check()}; {partner.connections} connections")
    a.stop()
    b.stop()
    assert a.exits == [0] and b.exits == [0]
