"""``dkgw api ...``: the back-office API's users file and its OpenAPI document."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from adapters.api.auth import hash_password
from adapters.api.openapi import openapi_document
from gateway.commands.common import fail


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``api`` and its subcommands to the top-level parser."""
    api = sub.add_parser("api", help="back-office API: password hashes, OpenAPI document")
    cmds = api.add_subparsers(dest="api_command", required=True, metavar="SUBCOMMAND")

    p = cmds.add_parser(
        "hash-password",
        help="print a users-file line (NAME:HASH) for HTTP Basic on the API",
        description="Reads the password twice from the terminal, or once from stdin "
        "when it is not a terminal, and prints NAME:HASH for [api] users_file.",
    )
    p.add_argument("name", help="the user name the back office sends")
    p.set_defaults(handler=cmd_hash_password)

    p = cmds.add_parser("openapi", help="print the REST API's OpenAPI document (JSON)")
    p.set_defaults(handler=cmd_openapi)


def cmd_hash_password(args: argparse.Namespace) -> int:
    """``dkgw api hash-password NAME``."""
    if ":" in args.name or not args.name.strip():
        return fail("the name must not be empty or contain ':'")
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            return fail("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12:
        return fail("use a password of at least 12 characters")
    print(f"{args.name}:{hash_password(password)}")
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    """``dkgw api openapi``."""
    print(json.dumps(openapi_document(), indent=2))
    return 0
