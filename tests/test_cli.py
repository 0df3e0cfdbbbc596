"""The ``dkgw`` command line: exit codes and output of every cpa subcommand."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.conftest import GEMEENTE_OIN, NODE_OIN

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


@pytest.fixture
def dkgw(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """Run dkgw in-process against a private data directory; returns (code, out, err)."""

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(["--data-dir", str(tmp_path / "var"), *args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def make_args(pki: Path, out: Path, *extra: str, profile: str = "osb-rm-s") -> list[str]:
    return [
        "cpa",
        "make",
        "--profile",
        profile,
        "--service",
        "GGK:iWmo:3.2",
        "--a-name",
        "Gemeente Voorbeeld",
        "--a-id",
        GEMEENTE_OIN,
        "--a-role",
        "Gemeente",
        "--a-endpoint",
        "https://localhost:18443/ebms",
        "--a-certs",
        str(pki / "gemeente-voorbeeld"),
        "--b-name",
        "GGk/RINIS test",
        "--b-id",
        NODE_OIN,
        "--b-role",
        "GGk",
        "--b-endpoint",
        "https://localhost:18444/ebms",
        "--b-certs",
        str(pki / "ggk-rinis-test"),
        "--action",
        "a:WMO301",
        "--action",
        "b:WMO302",
        "-o",
        str(out),
        *extra,
    ]


def test_full_cpa_lifecycle(dkgw, pki: Path, tmp_path: Path) -> None:
    cpa_file = tmp_path / "cpa.xml"
    code, _, err = dkgw(*make_args(pki, cpa_file, "--cpa-id", "demo-cpa"))
    assert code == EXIT_OK, err
    assert "demo-cpa (osb-rm-s)" in err

    code, out, _ = dkgw("cpa", "validate", str(cpa_file))
    assert code == EXIT_OK
    assert "CPA demo-cpa: valid" in out
    assert (
        "Gemeente Voorbeeld (Gemeente) -> GGk/RINIS test (GGk)  urn:osb:services:GGK:iWmo:3.2"
        "  WMO301  osb-rm-s" in out
    )

    code, out, _ = dkgw("cpa", "import", str(cpa_file))
    assert (code, out.split()[0:2]) == (EXIT_OK, ["imported", "demo-cpa"])

    code, _, err = dkgw("cpa", "import", str(cpa_file))
    assert code == EXIT_INVALID and "already exists" in err
    code, out, _ = dkgw("cpa", "import", str(cpa_file), "--overwrite")
    assert code == EXIT_OK and out.startswith("replaced demo-cpa")

    code, out, _ = dkgw("cpa", "list")
    assert code == EXIT_OK
    assert out.startswith("demo-cpa  agreed  until ")
    assert f"urn:osb:oin:{GEMEENTE_OIN}" in out and "osb-rm-s" in out

    code, out, _ = dkgw("cpa", "show", "demo-cpa")
    assert code == EXIT_OK
    for expected in (
        "CPA demo-cpa",
        "status    agreed",
        "Party 'Gemeente Voorbeeld'  role Gemeente",
        f"party ids  urn:osb:oin:{NODE_OIN}",
        "endpoint   https://localhost:18444/ebms",
        "reliable   retries 8, interval PT3H, persist P1D",
        "(TLS client)",
        "(signing)",
        f"OIN {GEMEENTE_OIN}, expires ",
        "GGk/RINIS test (GGk) -> Gemeente Voorbeeld (Gemeente)",
    ):
        assert expected in out, expected

    code, _, _ = dkgw("cpa", "show", "demo-cpa", "--xml")
    assert code == EXIT_OK  # byte-exact output is checked through a subprocess below

    code, out, _ = dkgw("cpa", "delete", "demo-cpa")
    assert (code, out.strip()) == (EXIT_OK, "deleted demo-cpa")
    code, _, err = dkgw("cpa", "show", "demo-cpa")
    assert code == EXIT_INVALID and "no CPA 'demo-cpa'" in err
    code, _, err = dkgw("cpa", "delete", "demo-cpa")
    assert code == EXIT_INVALID
    code, out, _ = dkgw("cpa", "list")
    assert (code, out.strip()) == (EXIT_OK, "no CPAs stored")


def test_json_output(dkgw, pki: Path, tmp_path: Path) -> None:
    cpa_file = tmp_path / "cpa.xml"
    assert dkgw(*make_args(pki, cpa_file, "--cpa-id", "j", profile="osb-be-e"))[0] == EXIT_OK
    code, out, _ = dkgw("cpa", "validate", "--json", str(cpa_file))
    report = json.loads(out)
    assert (code, report["cpaId"], report["valid"], report["profiles"]) == (
        EXIT_OK,
        "j",
        True,
        ["osb-be-e"],
    )
    assert {a["action"] for a in report["actions"]} == {"WMO301", "WMO302"}
    dkgw("cpa", "import", str(cpa_file))
    listed = json.loads(dkgw("cpa", "list", "--json")[1])
    assert [c["cpaId"] for c in listed] == ["j"] and listed[0]["daysLeft"] in (363, 364)
    shown = json.loads(dkgw("cpa", "show", "--json", "j")[1])
    certs = {c["certId"]: c for p in shown["parties"] for c in p["certificates"]}
    assert certs["A_EncryptionCert"]["uses"] == ["encryption"]
    assert certs["B_TLSServerCert"]["oin"] == NODE_OIN


def test_invalid_cpa_exits_1_with_located_errors(dkgw, pki: Path, tmp_path: Path) -> None:
    cpa_file = tmp_path / "cpa.xml"
    dkgw(*make_args(pki, cpa_file))
    bad = tmp_path / "bad.xml"
    bad.write_bytes(cpa_file.read_bytes().replace(b'value="agreed"', b'value="proposed"'))
    code, out, _ = dkgw("cpa", "validate", str(bad))
    assert code == EXIT_INVALID
    assert "INVALID (1 errors" in out
    assert "error: line " in out and "Status/@value: status is 'proposed'" in out
    code, _, err = dkgw("cpa", "import", str(bad))
    assert code == EXIT_INVALID and "CPA not imported" in err
    assert dkgw("cpa", "list")[1].strip() == "no CPAs stored"


def test_insecure_and_legacy_flags(dkgw, tmp_path: Path) -> None:
    fixtures = Path(__file__).parent / "fixtures" / "cpa"
    http = str(fixtures / "cpaStubEBF.be.http.unsigned.xml")
    assert dkgw("cpa", "validate", http)[0] == EXIT_INVALID
    assert dkgw("cpa", "validate", "--allow-insecure", http)[0] == EXIT_OK
    cv = str(fixtures / "cpa-cv-https.xml")
    assert dkgw("cpa", "validate", cv)[0] == EXIT_INVALID
    code, out, _ = dkgw("cpa", "validate", "--legacy-crypto", cv)
    assert code == EXIT_OK, out


def test_unreadable_file_exits_1(dkgw, tmp_path: Path) -> None:
    code, _, err = dkgw("cpa", "validate", str(tmp_path / "missing.xml"))
    assert code == EXIT_INVALID and "cannot read" in err
    assert dkgw("cpa", "import", str(tmp_path / "missing.xml"))[0] == EXIT_INVALID


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["cpa"],
        ["cpa", "frobnicate"],
        ["cpa", "validate"],
        ["cpa", "import"],
        ["cpa", "show"],
        ["cpa", "make", "--profile", "osb-xx"],
        ["--no-such-option"],
    ],
)
def test_usage_errors_exit_2(dkgw, args: list[str]) -> None:
    assert dkgw(*args)[0] == EXIT_USAGE


def test_make_refuses_bad_input(dkgw, pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.xml"
    code, _, err = dkgw(*make_args(pki, out, "--action", "c:WMO303"))
    assert code == EXIT_INVALID and "SIDE:ACTION" in err
    code, _, err = dkgw(*make_args(pki / "nowhere", out))
    assert code == EXIT_INVALID and "cannot read certificate" in err
    code, _, err = dkgw(*make_args(pki, out, "--sync-reply", profile="osb-be"))
    assert code == EXIT_INVALID and "sync_reply" in err
    assert not out.exists()


def test_console_script_round_trips_xml_byte_exact(pki: Path, tmp_path: Path) -> None:
    """Through the installed entry point: import from stdin, show --xml gives the bytes back."""
    dkgw_bin = shutil.which("dkgw", path=str(Path(sys.executable).parent))
    assert dkgw_bin, "the dkgw console script is not installed in this environment"
    cpa_file = tmp_path / "cpa.xml"
    base = [dkgw_bin, "--data-dir", str(tmp_path / "var")]
    subprocess.run([*base, *make_args(pki, cpa_file, "--cpa-id", "exact")], check=True)
    xml = cpa_file.read_bytes().replace(b"\n", b"\r\n")
    done = subprocess.run([*base, "cpa", "import", "-"], input=xml, capture_output=True)
    assert done.returncode == 0, done.stderr
    shown = subprocess.run([*base, "cpa", "show", "exact", "--xml"], capture_output=True)
    assert shown.returncode == 0 and shown.stdout == xml
    assert (tmp_path / "var" / "gateway.sqlite3").exists()
    missing = subprocess.run([*base, "cpa", "show", "nope"], capture_output=True)
    assert missing.returncode == 1
    usage = subprocess.run([*base, "cpa"], capture_output=True)
    assert usage.returncode == 2


def test_store_url_option(dkgw, pki: Path, tmp_path: Path) -> None:
    cpa_file = tmp_path / "cpa.xml"
    dkgw(*make_args(pki, cpa_file, "--cpa-id", "elsewhere"))
    url = f"sqlite:///{tmp_path / 'other' / 'store.db'}"
    assert dkgw("--store", url, "cpa", "import", str(cpa_file))[0] == EXIT_OK
    assert (tmp_path / "other" / "store.db").exists()
    assert "elsewhere" in dkgw("--store", url, "cpa", "list")[1]
    # The data directory was never used: its store is not there and not made.
    code, _, err = dkgw("cpa", "list")
    assert code == EXIT_INVALID and err.startswith("dkgw: no store at ")
    assert not (tmp_path / "var" / "gateway.sqlite3").exists()


def test_demo_runs_and_exits_0(dkgw, tmp_path: Path) -> None:
    code, out, _ = dkgw("demo")
    assert code == EXIT_OK, out
    assert "imported GGK_iWmo_3_2_" in out and "(osb-rm)" in out
    assert out.count("     Pong ") == 2  # both ways
    assert re.search(r"gemeente \(sender\): +\S+ DELIVERED", out)
    assert re.search(r"node \(receiver\): +\S+ RECEIVED", out)
    assert "payload" in out and "1048576 bytes" in out and "2048 bytes" in out
    # The demo's thresholds are 200 and 1000 ms: a loaded machine may make the verdict
    # WARNING or CRITICAL, but the link is up either way.
    verdict = r"     (OK|WARNING|CRITICAL) cpa=\S+ from=\S+ to=\S+ up, round trip [\d.]+ ms \| rtt="
    assert re.search(verdict, out), out
    assert re.search(r"     ebms_ping_up\{.*\} 1\.0", out)
    assert "gemeente gateway stopped (exit 0)" in out and "node gateway stopped (exit 0)" in out
    assert (tmp_path / "var" / "demo" / "gemeente.sqlite3").exists()
    assert dkgw("demo")[0] == EXIT_OK  # a rerun starts from fresh stores


def test_cpa_diff_and_overwrite_show_what_changes(dkgw, pki: Path, tmp_path: Path) -> None:
    old, new = tmp_path / "old.xml", tmp_path / "new.xml"
    assert dkgw(*make_args(pki, old, "--cpa-id", "diff-cpa"))[0] == EXIT_OK
    args = make_args(pki, new, "--cpa-id", "diff-cpa")
    args[args.index("https://localhost:18444/ebms")] = "https://node.example.nl/ebms"
    assert dkgw(*args)[0] == EXIT_OK
    assert dkgw("cpa", "import", str(old))[0] == EXIT_OK

    code, out, _ = dkgw("cpa", "diff", str(old))
    assert (code, out.strip()) == (EXIT_OK, "no changes")
    code, out, _ = dkgw("cpa", "diff", str(new))
    assert code == EXIT_OK
    assert f"~ party urn:osb:oin:{NODE_OIN} transport " in out, out
    assert "https://localhost:18444/ebms -> https://node.example.nl/ebms" in out, out
    code, _, err = dkgw("cpa", "diff", str(new), "--against", "nope")
    assert code == EXIT_INVALID and "no CPA 'nope'" in err

    code, out, _ = dkgw("cpa", "import", "--overwrite", str(new))
    assert code == EXIT_OK and out.startswith("replaced diff-cpa"), out
    assert "https://localhost:18444/ebms -> https://node.example.nl/ebms" in out, out
