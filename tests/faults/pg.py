"""A throwaway PostgreSQL cluster a test can stop and start: ``initdb`` and ``pg_ctl``.

Debian's server binaries (/usr/lib/postgresql/*/bin) are used; initdb refuses to
run as root, so as root the cluster belongs to user ``postgres`` (as in
.ci/start-postgres).  The server listens on a unix socket in a directory of its
own only, so parallel tests never meet on a port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: [int(x) for x in p.parent.parent.name.split(".") if x.isdigit()],
    )
    return versions[-1].parent if versions else None


class Cluster:
    """One cluster in a fresh directory under /tmp; :meth:`remove` deletes it."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
        self.bin = bindir
        self.as_postgres = os.geteuid() == 0
        # Not under tmp_path: user postgres must be able to reach it, and a unix
        # socket path must stay short (108 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="dkgw-pg-"))
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.port = 5432
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "test", "--no-sync",
                  "-E", "UTF8")  # fmt: skip

    @property
    def dsn(self) -> str:
        return f"host={self.dir} port={self.port} user=test dbname=postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                  "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client at once, as a restart by an operator does."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
