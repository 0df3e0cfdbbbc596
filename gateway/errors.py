"""Errors the operator must see as one line, and how a command line shows them.

``dkgw`` commands do not catch these one by one: :func:`gateway.cli.main` turns
every :class:`OperatorError` (and the driver errors :func:`describe` knows) into
``dkgw: <text>`` on standard error and exit code 1, never a traceback; the
global ``--debug`` flag shows the traceback as well (docs/operations.md, "When
something fails").  The text must name the cause and the file, URL or address
it concerns, and must never hold message content or a password.
"""

from __future__ import annotations

import sqlite3

import psycopg

from xmlsafe.schemas import SchemaCompileError


class OperatorError(Exception):
    """A problem the operator can fix (configuration, files, store); the text says which."""


class StartupError(OperatorError):
    """``dkgw serve`` could not start: a port, the store, a key or a directory."""


def describe(exc: BaseException) -> str | None:
    """The one-line text for an error an operator can act on, or None for a bug.

    Store driver errors that reach the command line are environment problems
    (a corrupt file, a full disk, a database server that does not answer), so
    they are described too; anything else is a programming error and keeps its
    traceback.
    """
    # A schema that does not compile is the installation's problem, worded for the
    # operator where it is raised (xmlsafe sits below the gateway, so not an OperatorError).
    if isinstance(exc, (OperatorError, SchemaCompileError)):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return f"store (SQLite): {_first_line(exc)}"
    if isinstance(exc, psycopg.Error):
        return f"store (PostgreSQL): {_first_line(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
