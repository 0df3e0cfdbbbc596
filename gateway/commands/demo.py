"""``dkgw demo``: show what the gateway does on this machine, end to end.

Today that is the foundation: a throwaway PKI, a Digikoppeling CPA generated
for a municipality and the GGk node, validated and imported on both sides.
The two-gateway ebMS exchange joins it when the message service handler lands.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cpa.generate import ActionSpec, CpaSpec, PartySpec, make_cpa
from cpa.registry import CpaRegistry
from gateway.commands.common import load_party
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations

REPO = Path(__file__).resolve().parents[2]
PKI_SCRIPT = REPO / "certs-example" / "make-pki"

MUNICIPALITY = (
    "gemeente-voorbeeld",
    "Gemeente Voorbeeld",
    "00000001001234567000",
    "Gemeente",
    "https://localhost:18443/ebms",
)
NODE = (
    "ggk-rinis-test",
    "GGk/RINIS test",
    "00000001007654321000",
    "GGk",
    "https://localhost:18444/ebms",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the top-level parser."""
    p = sub.add_parser("demo", help="run the demonstration on loopback")
    p.set_defaults(handler=cmd_demo)


def example_party(pki: Path, slug: str, name: str, oin: str, role: str, endpoint: str) -> PartySpec:
    """A party of the example PKI (``MUNICIPALITY`` or ``NODE``) for the CPA generator."""
    return load_party(pki / slug, name=name, party_id=oin, role=role, endpoint=endpoint)


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate PKI and CPA, import it into a municipality and a node store."""
    if not PKI_SCRIPT.exists():
        print("dkgw demo runs from a source checkout (certs-example/ is missing)", file=sys.stderr)
        return 1
    base = Path(args.data_dir) / "demo"
    pki = base / "pki"
    print(f"1. example PKI (TEST only) in {pki}")
    subprocess.run([sys.executable, str(PKI_SCRIPT), "--out", str(pki)], check=True)

    start = datetime.now(UTC).replace(microsecond=0)
    spec = CpaSpec(
        a=example_party(pki, *MUNICIPALITY),
        b=example_party(pki, *NODE),
        service="GGK:iWmo:3.2",
        actions=(ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b")),
        profile="osb-rm-s",
        start=start,
        end=start + timedelta(days=365),
        cpa_id="GGK_iWmo_3_2_00000001001234567000_00000001007654321000_demo",
    )
    cpa_file = base / "cpa.xml"
    cpa_file.write_bytes(make_cpa(spec))
    print(f"2. generated CPA {spec.cpa_id} ({spec.profile}) in {cpa_file}")

    for side in ("gemeente", "node"):
        db = Database.sqlite(base / f"{side}.sqlite3")
        apply_migrations(db)
        row, replaced, report = CpaRegistry(db).insert(cpa_file.read_bytes(), overwrite=True)
        db.close()
        print(
            f"3. {side}: {'replaced' if replaced else 'imported'} {row.cpa_id}, valid until "
            f"{row.end:%Y-%m-%d}, {len(report.warnings)} warnings"
        )
        for action in report.actions:
            print(
                f"     {action.from_party} -> {action.to_party}  {action.service}  "
                f"{action.action}  {action.profile}  to {action.endpoint}"
            )
    print(
        "4. the two-gateway ebMS exchange (Ping/Pong, reliable messaging over mutual TLS) "
        "is not there yet: it arrives with the message service handler."
    )
    print(
        f"   inspect: dkgw --store sqlite:///{(base / 'gemeente.sqlite3').resolve()} "
        f"cpa show {spec.cpa_id}"
    )
    return 0
