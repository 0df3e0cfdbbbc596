"""Run the fuzz targets of :mod:`tests.fuzz.targets` under atheris (libFuzzer).

One target::

    python -m tests.fuzz.run TARGET [--seconds S] [--runs N] [--corpus DIR] [--work DIR]
                                    [--seed N] [--rss-limit-mb M] [-- LIBFUZZER-ARGS...]

All targets, ``--seconds`` spread over them, one process each (``make fuzz``)::

    python -m tests.fuzz.run all --seconds 600 [--jobs 2]

New inputs go to ``--work`` (default: a temporary directory), never into the
committed seed corpus ``tests/fuzz/corpus/TARGET``; a crashing input is written
there as ``crash-<sha1>``.  ``atheris.Fuzz()`` ends the process, which is why
every target runs in a process of its own.  docs/fuzzing.md has the rest.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Not tests.fuzz.material: it imports the gateway, which must be imported
# under instrumentation first (atheris instruments modules as they load).
REPO = Path(__file__).resolve().parents[2]
CORPUS_DIR = REPO / "tests" / "fuzz" / "corpus"

#: The gateway's own packages: what gets coverage instrumentation.
INSTRUMENT = ["gateway", "adapters", "cpa"]
#: Modules a target reaches, imported under instrumentation before it runs.
MODULES: dict[str, tuple[str, ...]] = {
    "mime": ("gateway.ebms.mime",),
    "edge": ("gateway.ebms.mime", "gateway.http.server"),
    "envelope": ("gateway.ebms.envelope",),
    "xmldsig": ("gateway.ebms.xmldsig", "xmlsafe"),
    "xmlenc": ("gateway.ebms.xmlenc",),
    "cpa": ("cpa.parse", "cpa.validate", "cpa.model", "cpa.certificates"),
    "stuf_envelope": ("adapters.stuf.envelope",),
    "stuf_bare": ("adapters.stuf.bare", "adapters.stuf.catalogue"),
    "rest": ("adapters.api.rest",),
    "soap": ("adapters.api.soap_http", "adapters.api.soap_ebms", "adapters.api.soap_cpa"),
    "upload": ("adapters.upload",),
    "inbound": (
        "gateway.msh.inbound",
        "gateway.msh.screen",
        "gateway.msh.receive",
        "gateway.msh.refusals",
        "gateway.msh.replying",
        "gateway.msh.correlate",
        "gateway.msh.read",
        "gateway.msh.apply",
        "gateway.msh.security",
        "gateway.ebms.checks",
        "gateway.ebms.envelope",
        "gateway.ebms.xmldsig",
        "gateway.http.server",
        "cpa.resolve",
        "gateway.store.messages",
    ),
}
_STAT = re.compile(rb"stat::(\w+):\s*(\d+)")


def _fuzz_one(args: argparse.Namespace, extra: list[str]) -> None:
    """Set up and run one target in this process (does not return)."""
    import atheris

    if args.artifacts:
        # libFuzzer ends the process with exit(): no atexit handler removes the
        # targets' temporary files, so they go where the caller cleans up.
        scratch = Path(args.artifacts) / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        os.environ["DKGW_FUZZ_SCRATCH"] = str(scratch)
    with atheris.instrument_imports(include=INSTRUMENT):
        for module in MODULES[args.target]:
            importlib.import_module(module)
    from tests.fuzz.targets import TARGETS, check

    target = TARGETS[args.target]

    def one_input(data: bytes) -> None:
        check(target, data, strict=args.strict)

    if args.raw:
        # libFuzzer's own command line, as the minimiser's child runs are started.
        atheris.Setup([sys.argv[0], *extra], one_input)
        atheris.Fuzz()
    if args.minimize:
        # libFuzzer's crash minimiser starts this process again for every step,
        # by argv[0]: an executable wrapper that comes back here with --raw.
        wrapper = Path(args.minimize + ".minimize.sh")
        strict = " --strict" if args.strict else ""
        wrapper.write_text(
            f"#!/bin/sh\ncd {shlex.quote(str(REPO))} && exec {shlex.quote(sys.executable)} "
            f'-m tests.fuzz.run {target.name} --raw{strict} -- "$@"\n'
        )
        wrapper.chmod(0o755)
        out = args.minimize + ".min"
        atheris.Setup(
            [
                str(wrapper),
                "-minimize_crash=1",
                f"-runs={args.runs or 20000}",
                f"-exact_artifact_path={out}",
                f"-timeout={args.timeout}",
                *extra,
                args.minimize,
            ],
            one_input,
        )
        atheris.Fuzz()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    if target.seeds is not None:
        # Inputs that need this run's keys (signed, encrypted) or its CPA.
        for seed in target.seeds():
            (work / f"seed-{hashlib.sha256(seed).hexdigest()}").write_bytes(seed)
    corpus = Path(args.corpus) if args.corpus else CORPUS_DIR / target.name
    argv = [
        sys.argv[0],
        str(work),
        *([str(corpus)] if corpus.is_dir() else []),
        f"-artifact_prefix={args.artifacts or str(work)}/",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-timeout={args.timeout}",
        f"-seed={args.seed}",
        "-print_final_stats=1",
        *([f"-max_total_time={args.seconds}"] if args.seconds else []),
        *([f"-runs={args.runs}"] if args.runs is not None else []),
        *extra,
    ]

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


@dataclass
class Outcome:
    """What one target's run reported."""

    target: str
    returncode: int
    seconds: float
    stats: dict[str, int]
    crashes: list[Path]
    log: Path


def run_target(
    target: str,
    *,
    seconds: int,
    work: Path,
    seed: int = 1,
    rss_limit_mb: int = 1536,
    runs: int | None = None,
    env: dict[str, str] | None = None,
) -> Outcome:
    """One target in a subprocess; its libFuzzer output goes to ``work/fuzz.log``."""
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    log = work / "fuzz.log"
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run",
        target,
        f"--seconds={seconds}",
        f"--work={corpus}",
        f"--artifacts={work}",
        f"--seed={seed}",
        f"--rss-limit-mb={rss_limit_mb}",
        *([f"--runs={runs}"] if runs is not None else []),
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, check=False
        )
    text = log.read_bytes()
    stats = {k.decode(): int(v) for k, v in _STAT.findall(text)}
    crashes = sorted(p for p in work.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-")))
    return Outcome(target, done.returncode, time.monotonic() - started, stats, crashes, log)


def _fuzz_all(args: argparse.Namespace) -> int:
    from tests.fuzz.material import pki

    names = list(MODULES) if not args.only else args.only.split(",")
    each = max(1, int(args.seconds) // len(names))
    base = Path(args.work or tempfile.mkdtemp(prefix="fuzz-all-"))
    env = {**os.environ, "DKGW_FUZZ_PKI": str(pki())}
    print(f"fuzzing {len(names)} targets for {each} s each into {base}", flush=True)

    def one(name: str) -> Outcome:
        outcome = run_target(
            name,
            seconds=each,
            work=base / name,
            seed=args.seed,
            rss_limit_mb=args.rss_limit_mb,
            env=env,
        )
        execs = outcome.stats.get("number_of_executed_units", 0)
        print(
            f"{name:14} {execs:>10} execs  {execs / max(outcome.seconds, 1):8.0f}/s  "
            f"exit {outcome.returncode}  {len(outcome.crashes)} crash file(s)",
            flush=True,
        )
        return outcome

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(one, names))
    total = sum(o.stats.get("number_of_executed_units", 0) for o in outcomes)
    print(f"total {total} executions", flush=True)
    failed = [o for o in outcomes if o.returncode != 0 or o.crashes]
    for o in failed:
        print(f"FINDING in {o.target}: see {o.log}", flush=True)
        for crash in o.crashes:
            print(f"  {crash}", flush=True)
    if not args.keep and not failed:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("target", choices=[*MODULES, "all"])
    parser.add_argument("--seconds", type=int, default=0, help="time budget (all: in total)")
    parser.add_argument("--runs", type=int, default=None, help="stop after N inputs")
    parser.add_argument("--corpus", help="seed corpus (default tests/fuzz/corpus/TARGET)")
    parser.add_argument("--work", help="where new inputs go (default: a temporary directory)")
    parser.add_argument("--artifacts", help="where crash files go (default: --work)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--rss-limit-mb", type=int, default=1536)
    parser.add_argument("--timeout", type=int, default=25, help="seconds for one input")
    parser.add_argument(
        "--minimize", metavar="CRASH", help="shrink a crashing input into CRASH.min"
    )
    parser.add_argument(
        "--strict", action="store_true", help="report known findings too (tests/fuzz/known.py)"
    )
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=1, help="all: targets run at once")
    parser.add_argument("--only", help="all: a comma-separated subset of the targets")
    parser.add_argument("--keep", action="store_true", help="all: keep the work directory")
    args = parser.parse_args(argv)
    if args.target == "all":
        return _fuzz_all(args)
    _fuzz_one(args, extra)
    return 0  # not reached: atheris.Fuzz() exits


if __name__ == "__main__":
    sys.exit(main())
