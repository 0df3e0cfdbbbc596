"""The built wheel is the whole gateway: installed outside the checkout, it checks and pings.

`deploy/dkgw.service` prescribes a ``pip install`` of the package, so the wheel
must carry every file the code reads at run time (the WSDLs and XSDs in
``wsdl/``, the store migrations).  This test builds the wheel from the checkout,
installs it with its pinned dependencies into a new virtualenv in a temporary
folder, and runs that install from a folder outside the checkout: ``serve
--check``, two ``dkgw serve`` processes, a Ping between them, and a WSDL served
by the back-office API.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from cpa.generate import make_cpa
from gateway.store.migrate import load_migrations, migration_directories
from tests.conftest import GEMEENTE_OIN, NODE_OIN, REPO, SpecFactory
from tests.gateways import free_port, start_serve, stop_serve, tls_toml

# One worker builds and installs the wheel once for both tests (pytest-xdist --dist loadgroup).
pytestmark = pytest.mark.xdist_group("wheel")


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh virtualenv with the built wheel installed."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy without the checkout's build/ and egg-info: setuptools reuses
    # build/lib, so a file moved or deleted since an earlier build would still ship.
    source = base / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "var", ".tox"
        ),
    )
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", base / "dist",
                 source, cwd=base)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("dkgw-*.whl")
    made = _run(sys.executable, "-m", "venv", base / "venv", cwd=base)
    assert made.returncode == 0, made.stderr
    bin_dir = base / "venv" / "bin"
    done = _run(bin_dir / "python", "-m", "pip", "install", "-q", wheel, cwd=base)
    assert done.returncode == 0, done.stderr
    return bin_dir


def test_the_install_runs_its_own_copy(installed: Path, tmp_path: Path) -> None:
    where = _run(installed / "python", "-c",
                 "import gateway, wsdl; print(gateway.__file__); print(wsdl.XSD_DIR)",
                 cwd=tmp_path)  # fmt: skip
    assert where.returncode == 0, where.stderr
    module, xsd = (Path(line) for line in where.stdout.splitlines())
    venv = installed.parent
    assert module.is_relative_to(venv) and xsd.is_relative_to(venv)
    assert not module.is_relative_to(REPO)
    wheel_xsds = {p.relative_to(xsd) for p in xsd.rglob("*.xsd")}
    repo_xsds = {
        p.relative_to(REPO / "wsdl" / "xsd") for p in (REPO / "wsdl" / "xsd").rglob("*.xsd")
    }
    assert wheel_xsds == repo_xsds


_LIST_MIGRATIONS = """
from gateway.store.migrate import load_migrations, migration_directories
for directory in migration_directories():
    print("dir", directory)
for dialect in ("sqlite", "postgresql"):
    for m in load_migrations(dialect):
        print(dialect, m.version, m.name, m.filename, m.checksum)
"""


def test_the_install_carries_every_package_s_migrations(installed: Path, tmp_path: Path) -> None:
    # Each package's migrations/ is package data and declared by an entry point; a
    # wheel without them would start on a store without the file drop's or StUF's tables.
    listed = _run(installed / "python", "-c", _LIST_MIGRATIONS, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    directories = [Path(line.removeprefix("dir ")) for line in lines if line.startswith("dir ")]
    assert len(directories) == len(migration_directories()) == 4
    assert all(d.is_relative_to(installed.parent) for d in directories)
    expected = [
        f"{dialect} {m.version} {m.name} {m.filename} {m.checksum}"
        for dialect in ("sqlite", "postgresql")
        for m in load_migrations(dialect)  # type: ignore[arg-type]
    ]
    assert [line for line in lines if not line.startswith("dir ")] == expected


def _config(base: Path, pki: Path, slug: str, port: int, api_port: int) -> Path:
    config = base / f"{slug}.toml"
    config.write_text(
        f"""[gateway]
data_dir = "{base / slug}"
store = "sqlite:///{base / slug}.sqlite3"
node_id = "wheel-{slug}"

[http]
listen = "127.0.0.1:{port}"

{tls_toml(pki, slug)}
[monitoring]
pings = false

[delivery]
connect_timeout = 2.0
poll_interval = 0.2

[api]
listen = "127.0.0.1:{api_port}"
""",
        encoding="utf-8",
    )
    return config


def test_the_installed_gateway_checks_serves_and_pings(
    installed: Path, pki: Path, make_spec: SpecFactory, tmp_path: Path
) -> None:
    dkgw = installed / "dkgw"
    ports = {slug: (free_port(), free_port()) for slug in ("gemeente-voorbeeld", "ggk-rinis-test")}
    spec = make_spec(profile="osb-rm", cpa_id="wheel-cpa")
    spec = replace(
        spec,
        a=replace(spec.a, endpoint=f"https://127.0.0.1:{ports['gemeente-voorbeeld'][0]}/ebms"),
        b=replace(spec.b, endpoint=f"https://localhost:{ports['ggk-rinis-test'][0]}/ebms"),
    )
    cpa_file = tmp_path / "wheel-cpa.xml"
    cpa_file.write_bytes(make_cpa(spec))
    configs = {slug: _config(tmp_path, pki, slug, *ports[slug]) for slug in ports}
    for slug, config in configs.items():
        checked = _run(dkgw, "serve", "--config", config, "--check", cwd=tmp_path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        imported = _run(dkgw, "--store", f"sqlite:///{tmp_path / slug}.sqlite3",
                        "cpa", "import", cpa_file, cwd=tmp_path)  # fmt: skip
        assert imported.returncode == 0, imported.stderr
    processes = []
    try:
        for slug, config in configs.items():
            processes.append(
                start_serve(config, tmp_path / f"{slug}.log", command=(str(dkgw),), cwd=tmp_path)
            )
        pinged = _run(dkgw, "--store", f"sqlite:///{tmp_path / 'gemeente-voorbeeld'}.sqlite3",
                      "ping", "wheel-cpa", "--from", GEMEENTE_OIN, "--to", NODE_OIN,
                      "--timeout", "20", cwd=tmp_path, timeout=60)  # fmt: skip
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
        assert pinged.stdout.startswith("Pong ")
        # The SOAP services read their WSDLs from the installed package.
        api = ports["ggk-rinis-test"][1]
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/service/ebms?wsdl", timeout=10) as r:
            assert b"EbMSMessageService" in r.read()
    finally:
        for process in processes:
            stop_serve(process)
