"""Schema-driven fuzzing of the REST API: schemathesis against our own OpenAPI document.

The gateway runs as a real ``dkgw serve`` process with its API listener and a
CPA; schemathesis (its command-line runner, an independent tool) reads
``/service/rest/v19/openapi.json`` from it and sends generated valid and
invalid requests to every operation.  The test fails on any 5xx, and on any
answer whose status, content type or body the document does not allow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from cpa.generate import make_cpa
from cpa.registry import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.conftest import SpecFactory
from tests.gateways import free_port

SCHEMATHESIS = Path(sys.executable).parent / "st"
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    )
)


@pytest.fixture
def api(pki: Path, make_spec: SpecFactory, tmp_path: Path) -> Iterator[str]:
    port, api_port = free_port(), free_port()
    store = tmp_path / "store.sqlite3"
    db = Database.from_url(f"sqlite:///{store}")
    try:
        apply_migrations(db)
        spec = make_spec(profile="osb-rm", cpa_id="fuzz-cpa")
        # The partner is never up: a generated ping must not wait long for it.
        spec = replace(spec, b=replace(spec.b, endpoint=f"https://localhost:{free_port()}/ebms"))
        CpaRegistry(db).insert(make_cpa(spec), overwrite=True)
    finally:
        db.close()
    party, ca = pki / "gemeente-voorbeeld", pki / "ca"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""[gateway]
data_dir = "{tmp_path / "data"}"
store = "sqlite:///{store}"
node_id = "fuzz"

[http]
listen = "127.0.0.1:{port}"

[tls]
certificate = "{party / "tls-server.pem"}"
key = "{party / "tls-server.key"}"
client_certificate = "{party / "tls-client.pem"}"
client_key = "{party / "tls-client.key"}"
chain = "{ca / "intermediate.pem"}"
trust_anchors = "{ca / "root.pem"}"

[monitoring]
pings = false

[delivery]
connect_timeout = 1.0

[api]
listen = "127.0.0.1:{api_port}"
max_request_bytes = 1048576
wait_timeout = 1.0
""",
        encoding="utf-8",
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "event=started" not in log.read_text(errors="replace"):
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{api_port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")
def test_schemathesis_finds_no_server_error(api: str, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{api}/service/rest/v19/openapi.json",
            "--url",
            f"{api}/service/rest/v19",
            "--checks",
            CHECKS,
            "--max-examples",
            os.environ.get("DKGW_FUZZ_EXAMPLES", "50"),
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "2",
            "--seed",
            os.environ.get("DKGW_FUZZ_SEED", str(int(time.time()))),
            "--request-timeout",
            "10",
            "--no-color",
            "--generation-database",
            "none",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    # A run that tested nothing would pass too: every operation must have been called.
    assert report.exists()
    tested = json.loads(report.read_text())
    assert "not_a_server_error" in json.dumps(tested)
    shutil.rmtree(tmp_path / "data", ignore_errors=True)
