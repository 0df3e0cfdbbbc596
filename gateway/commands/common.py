"""Helpers shared by the ``dkgw`` subcommands."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path

from cryptography import x509

from cpa.generate import PartySpec
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.errors import OperatorError
from gateway.store.database import Database, StoreError, sqlite_path
from gateway.store.migrate import apply_migrations

STORE_FILE = "gateway.sqlite3"

NO_STORE = (
    "no store named: give --config FILE, --store URL or --data-dir DIR "
    "(or set DKGW_CONFIG, DKGW_STORE or DKGW_DATA_DIR)"
)


class CommandError(OperatorError):
    """An operator's mistake on the command line, reported in one line (exit code 1)."""


def version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("dkgw")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def default_data_dir() -> Path:
    """``$DKGW_DATA_DIR`` or ``./var``: where ``dkgw demo`` keeps its files."""
    return Path(os.environ.get("DKGW_DATA_DIR", "var"))


def config_of(args: argparse.Namespace) -> GatewayConfig | None:
    """The gateway configuration named by ``--config`` (or ``$DKGW_CONFIG``), if any."""
    path = getattr(args, "config", None)
    if path is None:
        return None
    try:
        return load_config(Path(path))
    except ConfigError as exc:
        raise CommandError(str(exc)) from exc


def store_url(args: argparse.Namespace) -> str:
    """The store the operator named, most explicit first.

    ``--store``, then the store of ``--config``, then SQLite in ``--data-dir``,
    then the same from ``$DKGW_STORE`` and ``$DKGW_DATA_DIR``.  Naming none is an
    error: a command run in the wrong folder must not quietly use (or make) a
    store there.
    """
    if args.store:
        return str(args.store)
    config = config_of(args)
    if config is not None:
        return config.store
    data_dir = args.data_dir
    if data_dir is None:
        if os.environ.get("DKGW_STORE"):
            return os.environ["DKGW_STORE"]
        if os.environ.get("DKGW_DATA_DIR"):
            data_dir = os.environ["DKGW_DATA_DIR"]
    if data_dir is None:
        raise CommandError(NO_STORE)
    return f"sqlite://{(Path(data_dir) / STORE_FILE).resolve()}"


def open_store(args: argparse.Namespace, *, create: bool = False) -> Database:
    """Open the store the operator named and bring its schema up to date.

    An SQLite store that does not exist yet is made only when ``create`` is
    set (commands that set a gateway up, such as ``cpa import``); the others
    say there is none, so a mistyped path never leaves an empty store behind.
    """
    return open_store_at(store_url(args), create=create)


def open_store_at(url: str, *, create: bool = True) -> Database:
    """Open the store at ``url`` (a config's ``store``) and bring its schema up to date."""
    try:
        path = sqlite_path(url)
    except StoreError as exc:
        raise CommandError(str(exc)) from exc
    if path is not None and not create and not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise CommandError(f"no store at {path}: {path.parent} is not a directory")
        raise CommandError(
            f"no store at {path} (dkgw serve or dkgw cpa import creates one; "
            "check --config, --store or --data-dir)"
        )
    db = Database.from_url(url)
    apply_migrations(db)
    return db


def read_input(path: str) -> bytes:
    """Read a file argument; ``-`` is standard input."""
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def fail(message: str) -> int:
    """Print an operator-facing error and return the 'invalid input' exit code."""
    print(f"dkgw: {message}", file=sys.stderr)
    return 1


def load_party(
    cert_dir: Path,
    *,
    name: str,
    party_id: str,
    role: str,
    endpoint: str,
    party_id_type: str = "urn:osb:oin",
) -> PartySpec:
    """A party for the CPA generator, with certificates from ``cert_dir``.

    The directory has the layout certs-example/make-pki writes: ``tls-client.pem``,
    ``tls-server.pem`` and, when present, ``signing.pem`` and ``encryption.pem``.
    The generator leaves out certificates the profile does not use.
    """

    def cert(kind: str, *, required: bool) -> x509.Certificate | None:
        path = cert_dir / f"{kind}.pem"
        if not required and not path.exists():
            return None
        return x509.load_pem_x509_certificate(path.read_bytes())

    client, server = cert("tls-client", required=True), cert("tls-server", required=True)
    assert client is not None and server is not None
    return PartySpec(
        name=name,
        party_id=party_id,
        party_id_type=party_id_type,
        role=role,
        endpoint=endpoint,
        tls_client_cert=client,
        tls_server_cert=server,
        signing_cert=cert("signing", required=False),
        encryption_cert=cert("encryption", required=False),
    )
