"""The fuzz targets in the suite: a short coverage-guided run each, and every regression input.

A short run (``FUZZ_SUITE_SECONDS``, default 2 s per target, fixed libFuzzer
seed) proves each target still starts, its seed corpus passes and a few
thousand mutations find nothing; ``make fuzz`` is the long run
(docs/fuzzing.md).  Every file in ``tests/fuzz/regressions/<target>/`` is a
minimised input that once escaped a target's contract; it is replayed here as
a plain test, so a fixed finding stays fixed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz import known
from tests.fuzz.material import CORPUS_DIR, REGRESSIONS_DIR
from tests.fuzz.run import MODULES, run_target
from tests.fuzz.targets import TARGETS, check

SECONDS = int(os.environ.get("FUZZ_SUITE_SECONDS", "2"))
#: libFuzzer's seed for the suite's runs: the same mutations on every machine.
SEED = 20261207


@pytest.fixture
def fuzz_pki(pki: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session PKI, for the targets in this process and in their subprocesses."""
    monkeypatch.setenv("DKGW_FUZZ_PKI", str(pki))
    return pki


def test_every_target_has_a_seed_corpus_and_a_runner_entry() -> None:
    assert set(MODULES) == set(TARGETS)
    for name in TARGETS:
        assert any((CORPUS_DIR / name).iterdir()), f"no seeds for {name}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_fuzz_run_finds_nothing(name: str, fuzz_pki: Path, tmp_path: Path) -> None:
    outcome = run_target(
        name,
        seconds=SECONDS,
        work=tmp_path,
        seed=SEED,
        rss_limit_mb=1536,
        env={**os.environ, "DKGW_FUZZ_PKI": str(fuzz_pki)},
    )
    log = outcome.log.read_text(errors="replace")
    assert outcome.returncode == 0 and not outcome.crashes, (
        f"fuzz target {name} found something ({outcome.crashes}):\n{log[-6000:]}"
    )
    # Every seed ran (on a loaded machine the time may be up right after them).
    corpus_size = len(list((CORPUS_DIR / name).iterdir()))
    assert outcome.stats.get("number_of_executed_units", 0) >= corpus_size, log[-3000:]


def _regressions() -> list[pytest.param]:
    found = []
    for path in sorted(REGRESSIONS_DIR.glob("*/*")):
        if path.is_file() and path.parent.name in TARGETS:
            found.append(pytest.param(path, id=f"{path.parent.name}/{path.name}"))
    return found


@pytest.mark.parametrize("path", _regressions())
def test_regression_input_stays_within_the_contract(path: Path, fuzz_pki: Path) -> None:
    check(TARGETS[path.parent.name], path.read_bytes())


def test_every_accepted_finding_is_still_reproduced(fuzz_pki: Path) -> None:
    """An accepted finding must still happen; once fixed, its entry goes from known.py.

    One test over the whole list (empty once every finding is fixed), so an
    empty list is no skipped test.
    """
    stale = []
    for entry in known.KNOWN:
        if not _reproduced(entry):
            stale.append(
                f"no input in tests/fuzz/regressions/{entry.target}/ raises {entry.exception} "
                f"at {entry.where} any more: remove this entry from tests/fuzz/known.py "
                f"({entry.what})"
            )
    assert stale == []


def _reproduced(entry: known.Known) -> bool:
    target = TARGETS[entry.target]
    for path in sorted((REGRESSIONS_DIR / entry.target).glob("*")):
        try:
            target.run(path.read_bytes())
        except Exception as exc:
            if known.accepted(entry.target, exc) == entry:
                return True
    return False
