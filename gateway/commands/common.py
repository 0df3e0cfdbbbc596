"""Helpers shared by the ``dkgw`` subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.store.database import Database
from gateway.store.migrate import apply_migrations

STORE_FILE = "gateway.sqlite3"


def store_url(args: argparse.Namespace) -> str:
    """The store URL from ``--store``, else SQLite in the data directory."""
    if args.store:
        return str(args.store)
    return f"sqlite:///{(Path(args.data_dir) / STORE_FILE).resolve()}"


def open_store(args: argparse.Namespace) -> Database:
    """Open the store and bring its schema up to date."""
    db = Database.from_url(store_url(args))
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
