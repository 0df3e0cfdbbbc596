"""SIGKILL of the sender and the receiver at random moments, also while they start up.

The back office keeps submitting over REST throughout, with MessageIds of its
own choosing, retrying every request until it gets an answer; the gateways are
killed mid-request, mid-delivery, mid-acknowledgment and mid-startup.  Each
accepted message must reach the receiving back office exactly once (ebMS 2.0
§6.4.1 duplicate elimination on the receiving side, §6.5 retries on the sending
side), and afterwards no delivery task is left pending or sending.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.conftest import SpecFactory
from tests.faults.conftest import (
    DRAIN_SECONDS,
    Footprint,
    Gateway,
    Receiver,
    Sender,
    Submitter,
    drain,
    fork,
    install_cpa,
    make_gateway,
    scaled,
    seeded,
    verdict,
)
from tests.gateways import free_port


def kill_and_restart(victims: list[Gateway], rng: random.Random) -> tuple[int, int]:
    """SIGKILL each victim, sometimes again while it starts up; restart it.

    Returns (kills, kills that came before the restarted process said it was up).
    """
    kills = starting = 0
    for gw in victims:
        gw.kill()
        kills += 1
    time.sleep(rng.uniform(0.0, 1.0))
    for gw in victims:
        if rng.random() < 0.4:
            gw.spawn()  # killed again while starting up: opening the store, recovering
            time.sleep(rng.uniform(0.05, 1.5))
            starting += gw.kill()
            kills += 1
        gw.start()
    return kills, starting


@pytest.mark.parametrize("sync", [True, False], ids=["sync-acks", "async-acks"])
def test_random_sigkills_lose_and_duplicate_nothing(
    pki: Path, make_spec: SpecFactory, tmp_path: Path, gateways: list[Gateway], sync: bool
) -> None:
    rng = seeded(f"kills {'sync' if sync else 'async'}")
    messages, rounds = scaled(30), scaled(4)
    port_a, port_b = free_port(), free_port()
    stores = [f"sqlite:///{tmp_path / f'{side}.sqlite3'}" for side in ("a", "b")]
    cpa_id = f"faults-kill-{'sync' if sync else 'async'}"
    install_cpa(make_spec, stores, cpa_id=cpa_id, port_a=port_a, port_b=port_b, sync=sync)
    a = make_gateway(gateways, tmp_path, pki, "a", "gemeente-voorbeeld", port=port_a,
                     store=stores[0])  # fmt: skip
    b = make_gateway(gateways, tmp_path, pki, "b", "ggk-rinis-test", port=port_b,
                     store=stores[1])  # fmt: skip
    b.start()
    a.start()
    sender = Sender(a, cpa_id)
    submitter = Submitter(sender, messages, fork(rng), time.monotonic() + 300)
    kills = starting = 0
    with Receiver(b) as receiver:
        submitter.start()
        for _ in range(rounds):
            time.sleep(rng.uniform(0.3, 2.5))
            victims = rng.choice([[a], [b], [a, b]])
            done = kill_and_restart(victims, rng)
            kills, starting = kills + done[0], starting + done[1]
        submitter.join(timeout=300)
        assert submitter.failure is None, submitter.failure
        assert not submitter.is_alive()
        # The last incarnations are the long-lived ones: their footprint must stay put.
        prints = [Footprint(a), Footprint(b)]
        for p in prints:
            p.baseline()
        drain(sender, receiver, a, b, DRAIN_SECONDS)
        line = verdict("kills", sender, receiver, a, b, kills)
        for p in prints:
            p.check()
    print(
        f"  {starting} of the kills during startup; {sender.retries} REST retries, "
        f"{sender.answered_twice} answered 'already exists' (accepted before the kill)"
    )
    a.stop()
    b.stop()
    assert a.exits[-1] == 0 and b.exits[-1] == 0
    assert a.kills + b.kills == kills and line.endswith(f"kills={kills}")
