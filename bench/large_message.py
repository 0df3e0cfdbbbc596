#!/usr/bin/env python3
"""Peak memory of two ``dkgw serve`` processes carrying one large signed message.

Starts a municipality and a node gateway as real processes on 127.0.0.1 with
mutual TLS and ``[security]`` keys, queues one message with a payload of SIZE MB
through ``dkgw send --config`` on the given profile (default osb-rm-s), waits for
DELIVERED and prints each process's peak resident size (VmHWM) before and after.
This is the whole gateway path (MIME, store, signing, delivery), unlike
``bench/sign_memory.py`` which measures the signature code alone.

Usage: .venv/bin/python bench/large_message.py [--size MB] [--profile osb-rm-s]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cpa.generate import ActionSpec, CpaSpec, make_cpa  # noqa: E402
from gateway.commands.demo import MUNICIPALITY, NODE, SERVICE, DemoGateway, example_party  # noqa: E402
from gateway.store.cpas import CpaRegistry  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from gateway.store.migrate import apply_migrations  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_mb(process: subprocess.Popen[bytes] | None) -> float:
    assert process is not None
    status = Path(f"/proc/{process.pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) / 1024


def status_of(store: str, message_id: str) -> str | None:
    db = Database.from_url(store)
    try:
        with db.transaction() as cur:
            row = cur.execute(
                "SELECT status FROM ebms_message WHERE message_id = ? AND direction = 'out'",
                (message_id,),
            ).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="payload size in MB (10^6 bytes)")
    parser.add_argument("--profile", default="osb-rm-s")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dkgw-large-"))
    try:
        pki = base / "pki"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "certs-example" / "make-pki"),
                "--out",
                str(pki),
                "--quiet",
            ],
            check=True,
        )
        a = DemoGateway("gemeente", MUNICIPALITY[0], MUNICIPALITY[2], free_port(), base)
        b = DemoGateway("node", NODE[0], NODE[2], free_port(), base)
        now = datetime.now(UTC).replace(microsecond=0)
        spec = CpaSpec(
            a=example_party(pki, *MUNICIPALITY[:4], f"https://localhost:{a.port}/ebms"),
            b=example_party(pki, *NODE[:4], f"https://localhost:{b.port}/ebms"),
            service=SERVICE,
            actions=(ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b")),
            profile=args.profile,
            start=now - timedelta(minutes=5),
            end=now + timedelta(days=30),
            cpa_id="large",
            retries=2,
            retry_interval=timedelta(seconds=120),
            persist_duration=timedelta(hours=1),
        )
        xml = make_cpa(spec)
        limit = (args.size + 50) * 1_000_000
        for gw in (a, b):
            gw.write_config(pki)
            party = (pki / gw.slug).resolve()
            text = gw.config.read_text().replace(
                'path = "/ebms"\n', f'path = "/ebms"\nmax_request_bytes = {limit}\n'
            )
            text += (
                f'\n[security]\nsigning_certificate = "{party}/signing.pem"\n'
                f'signing_key = "{party}/signing.key"\n'
                f'encryption_certificate = "{party}/encryption.pem"\n'
                f'encryption_key = "{party}/encryption.key"\n'
            )
            gw.config.write_text(text)
            db = Database.from_url(gw.store)
            apply_migrations(db)
            CpaRegistry(db).insert(xml)
            db.close()
        payload = base / "payload.bin"
        with payload.open("wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(1_000_000))
        a.start()
        b.start()
        try:
            a.wait_listening()
            b.wait_listening()
            idle = (peak_mb(a.process), peak_mb(b.process))
            started = time.monotonic()
            sent = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "send", "large", "--from", a.oin,
                 "--from-role", "Gemeente", "--to", b.oin, "--to-role", "GGk",
                 "--service", f"urn:osb:services:{SERVICE}", "--action", "WMO301",
                 "--file", str(payload), "--content-type", "application/octet-stream",
                 "--config", str(a.config)],
                capture_output=True, text=True, cwd=REPO, check=False,
            )  # fmt: skip
            if sent.returncode != 0:
                print(sent.stderr, file=sys.stderr)
                return 1
            message_id = sent.stdout.strip()
            status = None
            while time.monotonic() - started < 300:
                status = status_of(a.store, message_id)
                if status != "CREATED":
                    break
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            after = (peak_mb(a.process), peak_mb(b.process))
        finally:
            a.stop()
            b.stop()
        print(f"command: .venv/bin/python bench/large_message.py --size {args.size} "
              f"--profile {args.profile}")  # fmt: skip
        print(f"payload {args.size} MB, {args.profile}: {status} after {elapsed:.1f} s")
        print(f"peak RSS idle:   sender {idle[0]:.0f} MB, receiver {idle[1]:.0f} MB")
        print(f"peak RSS after:  sender {after[0]:.0f} MB, receiver {after[1]:.0f} MB")
        return 0 if status == "DELIVERED" else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
