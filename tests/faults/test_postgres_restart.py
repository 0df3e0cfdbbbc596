"""PostgreSQL stopped and started under both gateways while messages flow.

An operator restarting the database server (a minor-version update, a failover)
must not need to restart the gateways: they ride the outage out, the back
office's submissions are refused meanwhile (and retried by it), and once the
server is back everything accepted is delivered exactly once.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import psycopg
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
    payload,
    scaled,
    seeded,
    verdict,
)
from tests.faults.pg import Cluster
from tests.gateways import free_port


@pytest.fixture
def cluster() -> object:
    made = Cluster()
    made.start()
    yield made
    made.remove()


def database(cluster: Cluster, name: str) -> str:
    """A fresh database on the cluster, as a store URL."""
    with psycopg.connect(cluster.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return (
        f"postgresql:///{name}?host={quote(str(cluster.dir), safe='')}"
        f"&port={cluster.port}&user=test"
    )


def test_gateways_ride_out_a_postgresql_restart(
    pki: Path, make_spec: SpecFactory, tmp_path: Path, gateways: list[Gateway], cluster: Cluster
) -> None:
    rng = seeded("postgresql restart")
    messages, outages = scaled(40), scaled(2)
    port_a, port_b = free_port(), free_port()
    stores = [database(cluster, "dkgw_a"), database(cluster, "dkgw_b")]
    cpa_id = "faults-pg"
    install_cpa(make_spec, stores, cpa_id=cpa_id, port_a=port_a, port_b=port_b, sync=False)
    a = make_gateway(gateways, tmp_path, pki, "a", "gemeente-voorbeeld", port=port_a,
                     store=stores[0])  # fmt: skip
    b = make_gateway(gateways, tmp_path, pki, "b", "ggk-rinis-test", port=port_b,
                     store=stores[1])  # fmt: skip
    b.start()
    a.start()
    sender = Sender(a, cpa_id)
    prints = [Footprint(a), Footprint(b)]
    with Receiver(b) as receiver:
        for n in range(3):  # warm up: pools and caches at working size for the baseline
            sender.submit(-1 - n, payload(n, rng), time.monotonic() + 60)
        drain(sender, receiver, a, b, DRAIN_SECONDS)
        for p in prints:
            p.baseline()
        submitter = Submitter(sender, messages, fork(rng), time.monotonic() + 300)
        submitter.start()
        for n in range(outages):
            time.sleep(rng.uniform(0.5, 2.0))
            # "fast" is an operator's restart; "immediate" is the server crashing.
            cluster.stop("fast" if n % 2 == 0 else "immediate")
            time.sleep(rng.uniform(3.0, 6.0))
            a.assert_alive()
            b.assert_alive()
            cluster.start()
        submitter.join(timeout=300)
        assert submitter.failure is None, submitter.failure
        drain(sender, receiver, a, b, DRAIN_SECONDS)
        verdict("postgresql restart", sender, receiver, a, b, kills=0)
        footprint = [p.check() for p in prints]
    print("  " + "; ".join(footprint) + f"; {sender.retries} REST retries")
    assert a.starts == 1 and b.starts == 1  # rode it out: never restarted
    a.stop()
    b.stop()
    assert a.exits == [0] and b.exits == [0]
