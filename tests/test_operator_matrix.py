"""The operator's mistakes and bad days, through the real ``dkgw`` command line.

Every case runs ``python -m gateway.cli`` as a subprocess against a store that
already holds a CPA, and must end in one line naming the problem (``dkgw: ...``),
exit code 1, no traceback, and the store unharmed: it still opens and still
holds its CPA (docs/operations.md, "When something fails").
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations
from tests.gateways import free_port, store_url, tls_toml


def dkgw(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_failure(done: subprocess.CompletedProcess[str], expected: str) -> str:
    """The command failed with exit 1 and ended in one ``dkgw:`` line holding ``expected``."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("dkgw: ") and expected in last, done.stderr
    return last


@dataclass
class Store:
    """A store holding one CPA, with the means to check it is still whole."""

    url: str
    path: Path | None  # the SQLite file, None on PostgreSQL

    def intact(self) -> None:
        # In-process, through the store's own code: cheaper than another subprocess.
        with Database.from_url(self.url) as db, db.transaction() as cur:
            rows = cur.execute("SELECT cpa_id FROM cpa").fetchall()
        assert ("matrix-cpa",) in rows
        if self.path is not None:
            with sqlite3.connect(self.path) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def seeded(url: str, path: Path | None, cpa_file: Path) -> Store:
    with Database.from_url(url) as db:
        apply_migrations(db)
        CpaRegistry(db).insert(cpa_file.read_bytes())
    store = Store(url, path)
    store.intact()
    return store


@pytest.fixture
def cpa_file(tmp_path: Path, cpa_xml: Callable[..., bytes]) -> Path:
    path = tmp_path / "matrix-cpa.xml"
    path.write_bytes(cpa_xml(cpa_id="matrix-cpa"))
    return path


@pytest.fixture
def sqlite_store(tmp_path: Path, cpa_file: Path) -> Store:
    path = tmp_path / "var" / "gateway.sqlite3"
    return seeded(f"sqlite:{path}", path, cpa_file)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, cpa_file: Path) -> Store:
    if request.param == "sqlite":
        path = tmp_path / "var" / "gateway.sqlite3"
        return seeded(f"sqlite:{path}", path, cpa_file)
    return seeded(store_url("postgresql", tmp_path, "matrix"), None, cpa_file)


def config_for(tmp_path: Path, pki: Path, store: Store, *, port: int = 0, extra: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "var"}"\nstore = "{store.url}"\n'
        f'[http]\nlisten = "127.0.0.1:{port or free_port()}"\n'
        "[monitoring]\npings = false\n" + tls_toml(pki, "gemeente-voorbeeld") + extra
    )
    return config


# -- configuration mistakes: serve and serve --check ------------------------------------

NEG = "negative"
PARTY = "gemeente-voorbeeld"


@pytest.mark.parametrize(
    ("edit", "expected", "loads"),
    [
        pytest.param(
            ("[monitoring]", "[monitoring]\nping_intervall = 5.0"),
            "unknown option 'ping_intervall' in [monitoring]",
            False,
            id="typo-in-key",
        ),
        pytest.param(("[http]", "[htp]"), "unknown section [htp]", False, id="typo-in-section"),
        pytest.param(
            ("tls-server.pem", "tls-server.pm"),
            "tls-server.pm does not exist",
            False,
            id="wrong-path",
        ),
        pytest.param(
            ("tls-server.key", "tls-client.key"),
            "does not belong to the certificate",
            True,
            id="key-of-another-certificate",
        ),
        pytest.param(
            (f"{PARTY}/tls-client.", f"{NEG}/expired."),
            "[tls] client_certificate: certificate expired on ",
            True,
            id="expired-certificate",
        ),
        pytest.param(
            (f"{PARTY}/tls-client.", f"{NEG}/foreign-client."),
            "error: [tls] client_certificate: ",
            True,
            id="untrusted-certificate",
        ),
    ],
)
@pytest.mark.parametrize("check", [True, False], ids=["check", "serve"])
def test_config_mistakes(
    pki: Path,
    tmp_path: Path,
    sqlite_store: Store,
    edit: tuple[str, str],
    expected: str,
    loads: bool,
    check: bool,
) -> None:
    """A config that does not load is one line; one that loads is checked (all findings)."""
    config = config_for(tmp_path, pki, sqlite_store)
    config.write_text(config.read_text().replace(*edit))  # certificate and key together
    done = dkgw("serve", "--config", str(config), *(["--check"] if check else []), timeout=30)
    if loads and check:
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert any(expected in line for line in done.stderr.splitlines()), done.stderr
        assert done.stderr.strip().splitlines()[-1].endswith("error(s), see above")
    else:
        one_line_failure(done, expected)
    sqlite_store.intact()


def test_config_file_that_does_not_exist(tmp_path: Path) -> None:
    done = dkgw("serve", "--config", str(tmp_path / "nope.toml"))
    one_line_failure(done, f"cannot read {tmp_path / 'nope.toml'}: No such file or directory")


def test_port_in_use(pki: Path, tmp_path: Path, any_store: Store) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = config_for(tmp_path, pki, any_store, port=port)
        done = dkgw("serve", "--config", str(config), timeout=30)
    one_line_failure(done, f"cannot listen on 127.0.0.1:{port}: address already in use")
    any_store.intact()


# -- store problems ---------------------------------------------------------------------


def test_corrupt_sqlite_store(pki: Path, tmp_path: Path, sqlite_store: Store) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"\x00garbage, not SQLite\x00" * 500)
    before = junk.read_bytes()
    done = dkgw("--store", f"sqlite:{junk}", "cpa", "list")
    one_line_failure(done, f"cannot open the store sqlite:{junk}: file is not a database")
    store = Store(f"sqlite:{junk}", junk)
    config = config_for(tmp_path, pki, store)
    one_line_failure(dkgw("serve", "--config", str(config), timeout=30), "file is not a database")
    assert junk.read_bytes() == before  # not "repaired", not truncated
    sqlite_store.intact()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://db/dkgw", "unsupported store URL (sqlite: or postgresql:): 'mysql://db/dkgw'"),
        ("sqlite://host/x.db", "sqlite URL with a host part is not supported"),
        ("sqlite:x.db?mode=ro", "sqlite URL must be sqlite:///abs/path or sqlite:rel/path"),
        ("postgresql://a b", "invalid PostgreSQL connection string"),
    ],
)
def test_bad_store_url(url: str, expected: str) -> None:
    one_line_failure(dkgw("--store", url, "cpa", "list"), expected)


def test_postgresql_unreachable(pki: Path, tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    url = f"postgresql://dkgw@127.0.0.1:{port}/dkgw?connect_timeout=5"
    line = one_line_failure(
        dkgw("--store", url, "cpa", "list"), "cannot open the store postgresql:"
    )
    assert f"port {port} failed: Connection refused" in line
    config = config_for(tmp_path, pki, Store(url, None))
    one_line_failure(dkgw("serve", "--config", str(config), timeout=30), "Connection refused")


def test_store_newer_than_the_code(any_store: Store, tmp_path: Path, pki: Path) -> None:
    if any_store.path is not None:
        with sqlite3.connect(any_store.path) as conn:
            conn.execute(
                "INSERT INTO schema_migration (version, name, checksum, applied_at) "
                "VALUES (9999, '9999_future', 'x', '2030-01-01T00:00:00.000000Z')"
            )
    else:
        import psycopg

        # The store URL carries the schema in its options.
        with psycopg.connect(any_store.url) as conn:
            conn.execute(
                "INSERT INTO schema_migration (version, name, checksum, applied_at) "
                "VALUES (9999, '9999_future', 'x', '2030-01-01T00:00:00.000000Z')"
            )
    done = dkgw("--store", any_store.url, "cpa", "list")
    one_line_failure(done, "the database has migration(s) 9999_future that this gateway does not")
    config = config_for(tmp_path, pki, any_store)
    one_line_failure(
        dkgw("serve", "--config", str(config), timeout=30), "the store has schema version 9999"
    )


def test_data_dir_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    done = dkgw("--data-dir", str(afile), "urlmap", "set", "https://a.test/", "https://b.test/")
    one_line_failure(done, f"cannot create the SQLite store {afile / 'gateway.sqlite3'}: ")
    done = dkgw("--data-dir", str(afile), "cpa", "list")
    one_line_failure(done, f"no store at {afile / 'gateway.sqlite3'}: {afile} is not a directory")


def test_unreadable_input_file(sqlite_store: Store, tmp_path: Path) -> None:
    done = dkgw("--store", sqlite_store.url, "cpa", "import", str(tmp_path / "missing.xml"))
    one_line_failure(done, "missing.xml: No such file or directory")
    sqlite_store.intact()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs to fill up needs root: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk(small_disk: Path, cpa_file: Path, cpa_xml: Callable[..., bytes]) -> None:
    path = small_disk / "gateway.sqlite3"
    store = seeded(f"sqlite:{path}", path, cpa_file)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # full
    finally:
        os.close(fd)
    another = small_disk.parent / "another.xml"
    another.write_bytes(cpa_xml(cpa_id="matrix-cpa-2"))
    done = dkgw("--store", store.url, "cpa", "import", str(another))
    line = one_line_failure(done, "dkgw: ")
    assert "disk" in line or "No space left" in line, line
    filler.unlink()
    store.intact()
    with Database.from_url(store.url) as db, db.transaction() as cur:
        assert cur.execute("SELECT cpa_id FROM cpa").fetchall() == [("matrix-cpa",)]


# -- --debug ----------------------------------------------------------------------------


def test_debug_shows_the_traceback_as_well(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"garbage" * 1000)
    done = dkgw("--debug", "--store", f"sqlite:{junk}", "cpa", "list")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("file is not a database")
