"""Helpers shared by the ``dkgw`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509

from cpa.generate import PartySpec
from gateway.store.database import Database
from gateway.store.migrate import apply_migrations

STORE_FILE = "gateway.sqlite3"


def store_url(args: argparse.Namespace) -> str:
    """The store URL from ``--store``, else SQLite in the data directory."""
    if args.store:
        return str(args.store)
    return f"sqlite:///{(Path(args.data_dir) / STORE_FILE).resolve()}"


def open_store(args: argparse.Namespace) -> Database:
    """Open the store of ``--store``/``--data-dir`` and bring its schema up to date."""
    return open_store_at(store_url(args))


def open_store_at(url: str) -> Database:
    """Open the store at ``url`` (a config's ``store``) and bring its schema up to date."""
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
