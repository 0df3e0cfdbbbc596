"""``dkgw upload`` through the relay: a zip of 100 messages, 90 valid and 10 broken.

The command runs as a subprocess against a gemeente-role config and its store
(with the CPA imported); what it accepts is logged and queued for the running
gateway to deliver, what it refuses is reported with its reason.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from adapters.stuf.bare import read_bare, wrap_bare
from adapters.stuf.envelope import Parameters, Stuurgegevens, wrap
from cpa.generate import make_cpa
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import SpecFactory
from tests.gateways import tls_toml
from tests.test_stuf_relay import ACTIONS, CPA_ID, FIXTURES, SERVICE


def sample(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


def with_identificatie(data: bytes, n: int) -> bytes:
    # Each message its own BerichtIdentificatie (1-12 characters), as a back office makes.
    return re.sub(rb"<(\w+):Identificatie>[^<]*<", rb"<\1:Identificatie>UP%05d<" % n, data, count=1)


def envelope_of(data: bytes, **changes: object) -> bytes:
    env = wrap_bare(
        read_bare(data, max_bytes=1 << 25),
        applicatie="Backoffice",
        applicatie_versie="0001",
        applicatie_subversie="0000",
        cross_ref=lambda b: None,
    )
    sg = {k: v for k, v in changes.items() if k in Stuurgegevens.__dataclass_fields__}
    pa = {k: v for k, v in changes.items() if k in Parameters.__dataclass_fields__}
    from dataclasses import replace

    return wrap(
        replace(
            env,
            stuurgegevens=replace(env.stuurgegevens, **sg),
            parameters=replace(env.parameters, **pa),
        )
    )


def broken() -> dict[str, bytes]:
    """Ten files refused for ten different reasons."""
    jw301 = sample("ijw/3.2/JW301.xml")
    duplicate = envelope_of(with_identificatie(jw301, 99))
    return {
        "not-xml.xml": b"this is no XML",
        "bom.xml": b"\xef\xbb\xbf" + with_identificatie(jw301, 91),
        "aanbieder.xml": sample("ijw/3.2/JW315.xml"),
        "other-gemeente.xml": with_identificatie(jw301, 92).replace(b">0384<", b">0599<", 1),
        "release-2-3.xml": sample("ijw/2.3/JW301.xml"),
        "bad-date.xml": re.sub(
            rb"Dagtekening>[^<]*<", b"Dagtekening>2023-02-30<", with_identificatie(jw301, 93)
        ),
        "unknown-type.xml": with_identificatie(jw301, 94).replace(b"jw301/schema", b"jw399/schema"),
        "bad-reference.xml": envelope_of(with_identificatie(jw301, 95), referentienummer="ABC"),
        "versions.xml": envelope_of(with_identificatie(jw301, 96), functie_subversie="0001"),
        "zz-duplicate.xml": duplicate,
        "aa-original.xml": duplicate,
    }


def test_upload_of_100_messages_sends_90_and_reports_10_reasons(
    pki: Path, make_spec: SpecFactory, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite3"
    db = Database.from_url(f"sqlite:///{store}")
    try:
        apply_migrations(db)
        CpaRegistry(db).insert(
            make_cpa(make_spec(profile="osb-rm", actions=ACTIONS, cpa_id=CPA_ID)), overwrite=True
        )
    finally:
        db.close()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""[gateway]
data_dir = "{tmp_path / "data"}"
store = "sqlite:///{store}"
node_id = "upload-test"

{tls_toml(pki, "gemeente-voorbeeld")}
[stuf]
role = "gemeente"
cpa_id = "{CPA_ID}"
gemeentecodes = ["0384", "1916"]
services = {{ iwmo = "{SERVICE}", ijw = "{SERVICE}" }}
""",
        encoding="utf-8",
    )
    bad = broken()
    valid = {}
    for n in range(89):
        source = "iwmo/3.2/WMO301.xml" if n % 2 else "ijw/3.2/JW301.xml"
        valid[f"bericht-{n:03d}.xml"] = with_identificatie(sample(source), n)
    # The original of the duplicate pair is the 90th valid one (zip order: aa- first).
    upload = tmp_path / "aanlevering.zip"
    with zipfile.ZipFile(upload, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted({**valid, **bad}.items()):
            z.writestr(name, data)
    assert len(valid) + len(bad) == 100

    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "upload", str(upload), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    report = done.stdout
    rejected = {
        line.split()[0]: line
        for line in report.splitlines()
        if line.split() and line.split()[0].endswith(".xml") and " rejected " in line
    }
    assert sorted(rejected) == sorted(set(bad) - {"aa-original.xml"}), report
    reasons = {name: line.split("rejected", 1)[1].strip() for name, line in rejected.items()}
    assert len(set(reasons.values())) == 10, reasons
    expected_codes = {
        "not-xml.xml": "GW001",
        "bom.xml": "GW001",
        "aanbieder.xml": "IB240",
        "other-gemeente.xml": "IB002",
        "release-2-3.xml": "GW004",
        "bad-date.xml": "StUF055",
        "unknown-type.xml": "GW002",
        "bad-reference.xml": "IB009",
        "versions.xml": "GW003",
        "zz-duplicate.xml": "IB216",
    }
    for name, code in expected_codes.items():
        assert code in reasons[name], (name, reasons[name])
    assert re.search(r"\b90 accepted\b", report) and re.search(r"\b10 rejected\b", report), report

    # 90 ebMS messages queued for the gateway, and the batch in the message log.
    db = Database.from_url(f"sqlite:///{store}")
    try:
        with db.transaction() as cur:
            queued = cur.execute(
                "SELECT COUNT(*) FROM ebms_message m JOIN delivery_task t ON t.message_pk = m.id "
                "WHERE m.direction = 'out' AND t.state = 'pending'"
            ).fetchone()
            statuses = dict(
                cur.execute("SELECT status, COUNT(*) FROM stuf_message GROUP BY status").fetchall()
            )
    finally:
        db.close()
    assert queued == (90,)
    assert statuses == {"sent": 90, "rejected": 10}
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "report", "1", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    batch = json.loads(shown.stdout)
    assert (batch["batch"]["accepted"], batch["batch"]["rejected"]) == (90, 10)
