"""A short run of the over-the-wire fuzzer against two real gateways (tests/fuzz/wire.py).

Gateways A and B run as ``dkgw serve`` processes over mutual TLS; up to
``FUZZ_WIRE_MUTATIONS`` (default 500) mutated ebMS messages, fixed seed, go to
B within ``FUZZ_WIRE_SECONDS`` (default 45 s of sending).  Every request must
be answered (or hung up by the mutation itself), no traceback may reach a
log, the store must pass ``PRAGMA integrity_check`` and a valid message must
still be accepted after every batch.  ``make fuzz-wire`` is the long run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fuzz.wire import run

MUTATIONS = int(os.environ.get("FUZZ_WIRE_MUTATIONS", "500"))
SECONDS = float(os.environ.get("FUZZ_WIRE_SECONDS", "45"))
SEED = 20261207


@pytest.mark.integration
def test_mutated_messages_over_the_wire(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DKGW_FUZZ_PKI", str(pki))
    report = run(
        mutations_total=MUTATIONS,
        seed=SEED,
        workers=4,
        batch=100,
        work=tmp_path,
        deadline=time.monotonic() + SECONDS,
    )
    print(report.summary())  # shown with -s or -rA: the footprint series and the counts
    assert not report.findings, report.summary()
    # Enough got through to mean something, even on a loaded machine.
    assert report.mutations >= min(MUTATIONS, 100), report.summary()
    assert set(report.integrity) == {"ok"}, report.summary()
