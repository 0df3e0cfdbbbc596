"""The files in ``deploy/``: the systemd unit and the example configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.config import _SECTIONS, load_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "dkgw.service"
EXAMPLE = DEPLOY / "example.toml"
#: Where the unit expects the installed console script.
INSTALLED_DKGW = "/opt/dkgw/bin/dkgw"


def _dkgw() -> str:
    found = shutil.which("dkgw", path=str(Path(sys.executable).parent)) or shutil.which("dkgw")
    assert found, "the dkgw console script is not installed"
    return found


@pytest.fixture
def example_tree(tmp_path: Path, pki: Path) -> Path:
    """deploy/example.toml next to a certs-example/out of the test PKI, as in the repository."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "deploy" / "example.toml")
    (tmp_path / "certs-example").mkdir()
    (tmp_path / "certs-example" / "out").symlink_to(pki)
    return tmp_path / "deploy" / "example.toml"


def test_the_example_config_passes_serve_check(example_tree: Path) -> None:
    done = subprocess.run(
        [_dkgw(), "serve", "--config", str(example_tree), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "is valid" in done.stdout


def test_the_example_config_names_every_option_with_its_default(example_tree: Path) -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    for section, options in _SECTIONS.items():
        assert section in data, f"[{section}] missing from the example"
        tables = data[section] if isinstance(data[section], list) else [data[section]]
        missing = set(options) - {key for table in tables for key in table}
        assert not missing, f"[{section}] lacks {sorted(missing)}"
    # Every option is explained: a comment line precedes each section's first option.
    text = EXAMPLE.read_text(encoding="utf-8")
    for section in _SECTIONS:
        header = f"[[{section}]]" if f"[[{section}]]" in text else f"[{section}]"
        after = text.split(header, 1)[1].lstrip("\n")
        assert after.startswith("#"), f"[{section}] has no explanation"
    config = load_config(example_tree)
    assert config.admin.host == "127.0.0.1" and config.admin.port == 8080
    assert config.monitoring.ping_interval == 300.0


systemd_analyze = shutil.which("systemd-analyze")


@pytest.mark.skipif(
    systemd_analyze is None,
    reason="systemd-analyze not installed: independent unit-file oracle absent",
)
def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    # verify insists that ExecStart exists; point it at this checkout's console script.
    unit = tmp_path / "dkgw.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(INSTALLED_DKGW, _dkgw()))
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}
    done = subprocess.run(
        [str(systemd_analyze), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "dkgw.service" not in done.stderr, done.stderr
    # The exposure score systemd computes from the sandboxing options (0 best, 10 worst).
    done = subprocess.run(
        [str(systemd_analyze), "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    text = UNIT.read_text(encoding="utf-8")
    for needed in (
        "User=dkgw",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=dkgw",
        "ExecStart=/opt/dkgw/bin/dkgw serve --config /etc/dkgw/dkgw.toml",
    ):
        assert needed in text
