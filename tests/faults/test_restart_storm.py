"""Restart storm: ``dkgw serve`` SIGKILLed and started again, deliveries due at every start.

A start used to come up broken now and then (a few in a hundred restarts):
the delivery worker compiled the CPA schema in a pool thread while the
reactor compiled the SOAP services' WSDL schemas, libxml2's lazily built
schema types were damaged by the overlap, and from then on every schema
compilation in the process failed -- the API listener not open, ``claiming
tasks failed`` five times a second, inbound messages answered 500 -- while
``/health`` said ok.  xmlsafe/schemas.py compiles every schema at the
start, in the main thread, under one lock.

Each checked start must come up healthy (tests/restarts.py: API listener
validating, ``/ready`` 200, deliveries attempted, with the partner up
delivered, nothing broken in the log); every third start is killed blind at
a random moment of its start-up instead, leaving leased tasks behind.  The
count is ``DKGW_RESTARTS`` (default 20, split over partner down and up;
``make faults`` runs 300).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.restarts import BrokenStart, Storm

RESTARTS = int(os.environ.get("DKGW_RESTARTS", "20"))


@pytest.mark.parametrize("partner", ["down", "up"])
def test_every_start_after_a_kill_comes_up_healthy(pki: Path, tmp_path: Path, partner: str) -> None:
    count = max(2, RESTARTS // 2)
    rng = random.Random(f"{partner}-{count}")  # noqa: S311 - kill moments, not secrets
    storm = Storm(pki, tmp_path, partner)
    broken: list[str] = []
    checked = blind = 0
    started = time.monotonic()
    try:
        for n in range(count):
            if n % 3 == 2:
                # Killed somewhere in its start-up: claims and leases cut off.
                storm.kill_during_start(rng.uniform(0.2, 1.5))
                blind += 1
                continue
            try:
                storm.start()
                checked += 1
            except BrokenStart as exc:
                broken.append(str(exc))
            finally:
                storm.kill()
    finally:
        storm.close()
    elapsed = time.monotonic() - started
    print(
        f"\nrestart storm, partner {partner}: {count} restarts ({checked} checked healthy, "
        f"{blind} killed blind during start-up), {len(broken)} broken, "
        f"{storm.delivered} delivered, {elapsed:.1f} s"
    )
    assert broken == [], f"{len(broken)} of {count - blind} checked starts broken:\n" + (
        "\n---\n".join(broken[:3])
    )
