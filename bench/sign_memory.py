#!/usr/bin/env python3
"""Memory bench: sign and verify an ebMS message with a large payload, streaming.

Not a test (pytest never collects it).  See bench/README.md.  One process runs
all phases, so ``ru_maxrss`` (the peak resident set) covers all of them:

1. write a ``--size`` byte payload to disk (1 MiB random blocks);
2. sign: SHA-256 the payload from disk (``digest_stream``), build a WMO301
   envelope with ``build_envelope`` and sign it (``sign_envelope``);
3. package: ``build_swa`` with the payload as an open file, chunks written
   to a message file, so the payload goes disk to disk;
4. parse: ``SwaParser`` fed the message file in ``--feed`` byte chunks (it
   spools parts over 1 MiB to temporary files);
5. verify: ``verify_envelope`` with the spooled part as the stream.

The target is a peak under 150 MB for a 100 MB payload.  Exit status 0 when
the signature verified and the target was met, 2 when the peak was over it.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402

from gateway.ebms.envelope import Envelope, build_envelope  # noqa: E402
from gateway.ebms.mime import OutgoingPart, SwaMessage, SwaParser, build_swa  # noqa: E402
from gateway.ebms.model import (  # noqa: E402
    AckRequested,
    ManifestReference,
    MessageHeader,
    PartyId,
    Service,
)
from gateway.ebms.xmldsig import (  # noqa: E402
    RSA_SHA256,
    SHA256,
    SignaturePolicy,
    SigningKey,
    VerifiedSignature,
    cid_uri,
    digest_stream,
    sign_envelope,
    verify_envelope,
)

T = TypeVar("T")
MB = 1000 * 1000
TARGET_MB = 150
CONTENT_ID = "payload-1@gemeente.example"
GEMEENTE = ("gemeente-voorbeeld", "00000001001234567000")
NODE_OIN = "00000001007654321000"


def peak_mb() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def current_mb() -> float:
    """Resident set now, from /proc (0 where there is no /proc)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / MB


def git_revision() -> str:
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        return subprocess.run(
            [git, "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Phases:
    """Times each phase and prints the peak and current RSS after it."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float]] = []

    def run(self, name: str, work: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = work()
        elapsed = time.perf_counter() - start
        self.rows.append((name, elapsed, peak_mb(), current_mb()))
        figures = f"peak {peak_mb():6.1f} MB   now {current_mb():6.1f} MB"
        print(f"  {name:<34} {elapsed:7.2f} s   {figures}", file=sys.stderr)
        return result


def write_payload(path: Path, size: int) -> None:
    block = 1024 * 1024
    with path.open("wb") as out:
        remaining = size
        while remaining:
            n = min(block, remaining)
            out.write(os.urandom(n))
            remaining -= n


def envelope() -> bytes:
    header = MessageHeader(
        from_ids=(PartyId(GEMEENTE[1], "urn:osb:oin"),),
        to_ids=(PartyId(NODE_OIN, "urn:osb:oin"),),
        cpa_id="bench-cpa",
        conversation_id="bench-conversation",
        service=Service("GGK:iWmo:3.2", "urn:osb:services"),
        action="WMO301",
        message_id="bench-1@gemeente.example",
        timestamp=datetime.now(UTC),
        from_role="Gemeente",
        to_role="GGk",
        duplicate_elimination=True,
    )
    return build_envelope(
        Envelope(
            header=header,
            ack_requested=AckRequested(signed=False),
            manifest=(ManifestReference(cid_uri(CONTENT_ID)),),
        )
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100 * MB, help="payload bytes (default 100 MB)")
    p.add_argument("--feed", type=int, default=64 * 1024, help="parser chunk (default 64 KiB)")
    p.add_argument("--dir", type=Path, default=None, help="where the run directory goes")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    run_dir = Path(tempfile.mkdtemp(prefix="dkgw-sign-memory-", dir=args.dir))
    print(f"command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"date    : {datetime.now(UTC).isoformat(timespec='seconds')}  git {git_revision()}")
    print(f"python  : {platform.python_version()} on {platform.machine()}, run dir {run_dir}")
    print(f"payload : {args.size:,} bytes, parser fed {args.feed:,} byte chunks")
    phases = Phases()
    try:
        subprocess.run(
            [
                sys.executable,
                str(REPO / "certs-example" / "make-pki"),
                "--out",
                str(run_dir / "pki"),
                "--quiet",
            ],
            check=True,
        )
        party = run_dir / "pki" / GEMEENTE[0]
        key = SigningKey.from_pem(
            (party / "signing.key").read_bytes(), (party / "signing.pem").read_bytes()
        )
        certificate: x509.Certificate = key.certificate
        policy = SignaturePolicy(RSA_SHA256, SHA256)
        payload = run_dir / "payload.bin"
        message = run_dir / "message.mime"
        baseline = peak_mb()
        print(
            f"  {'after imports and key load':<34} {'':>9}   peak {baseline:6.1f} MB",
            file=sys.stderr,
        )

        phases.run("write payload to disk", lambda: write_payload(payload, args.size))

        def do_sign() -> bytes:
            with payload.open("rb") as f:
                digest = digest_stream(SHA256, f)
            return sign_envelope(envelope(), [(CONTENT_ID, digest)], key, policy)

        signed = phases.run("sign (streamed digest)", do_sign)

        def do_package() -> str:
            with payload.open("rb") as f, message.open("wb") as out:
                part = OutgoingPart(CONTENT_ID, "application/octet-stream", f)
                content_type, chunks, length = build_swa(signed, [part])
                for chunk in chunks:
                    out.write(chunk)
            assert message.stat().st_size == length
            return content_type

        content_type = phases.run("build SwA message file", do_package)

        def do_parse() -> SwaMessage:
            parser = SwaParser(content_type)
            with message.open("rb") as f:
                while chunk := f.read(args.feed):
                    parser.feed(chunk)
            parsed = parser.close()
            assert parsed.attachments[CONTENT_ID].size == args.size
            return parsed

        swa = phases.run("parse (SwaParser, spooled)", do_parse)

        def do_verify() -> VerifiedSignature:
            # The SOAP part is small (at most MAX_ENVELOPE_BYTES): read it whole.
            root = swa.root.read()
            parts = {cid: p.open for cid, p in swa.attachments.items()}
            return verify_envelope(root, parts, certificate, policy)

        result = phases.run("verify (streamed digest)", do_verify)
        swa.close()
    finally:
        if args.keep:
            print(f"kept    : {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)

    peak = peak_mb()
    print()
    print(f"{'phase':<34} {'seconds':>8} {'peak RSS':>10} {'RSS after':>10}")
    for name, elapsed, peak_after, now in phases.rows:
        print(f"{name:<34} {elapsed:8.2f} {peak_after:7.1f} MB {now:7.1f} MB")
    print()
    print(f"verified references : {[r.uri for r in result.references]}")
    print(f"peak RSS            : {peak:.1f} MB (after imports and key load: {baseline:.1f} MB)")
    met = peak < TARGET_MB
    print(f"target < {TARGET_MB} MB      : {'met' if met else 'not yet'}")
    return 0 if met else 2


if __name__ == "__main__":
    sys.exit(main())
