"""``dkgw urlmap ...``: set, delete and list URL mappings (:mod:`gateway.store.urlmap`).

The mappings live in the store, so a change made here applies to the running
gateway's next delivery attempt (on every node of the store) without a restart.
"""

from __future__ import annotations

import argparse
import json

from gateway.commands.common import fail, open_store
from gateway.store.urlmap import delete_url_mapping, list_url_mappings, set_url_mapping


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``urlmap`` and its subcommands to the top-level parser."""
    urlmap = sub.add_parser(
        "urlmap",
        help="send to another URL than a CPA endpoint (forward proxy, test stub)",
        description="Map a CPA endpoint URL (SOURCE, exactly as the CPA has it) to the URL "
        "the delivery worker posts to instead (DESTINATION). The server certificate "
        "required stays the one the CPA names for SOURCE.",
    )
    cmds = urlmap.add_subparsers(dest="urlmap_command", required=True, metavar="SUBCOMMAND")

    p = cmds.add_parser("set", help="add or replace the mapping of a CPA endpoint URL")
    p.add_argument("source", help="the endpoint URL as the CPA has it")
    p.add_argument("destination", help="the URL to post to instead")
    p.set_defaults(handler=cmd_set)

    p = cmds.add_parser("delete", help="remove the mapping of a CPA endpoint URL")
    p.add_argument("source", help="the endpoint URL as the CPA has it")
    p.set_defaults(handler=cmd_delete)

    p = cmds.add_parser("list", help="list the URL mappings")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_list)


def cmd_set(args: argparse.Namespace) -> int:
    """``dkgw urlmap set SOURCE DESTINATION``."""
    db = open_store(args, create=True)
    try:
        with db.transaction() as cur:
            mapping = set_url_mapping(cur, args.source, args.destination)
    except ValueError as exc:
        return fail(str(exc))
    finally:
        db.close()
    print(f"mapped {mapping.source} -> {mapping.destination}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    """``dkgw urlmap delete SOURCE``; exit code 1 when there was no such mapping."""
    db = open_store(args)
    try:
        with db.transaction() as cur:
            deleted = delete_url_mapping(cur, args.source)
    finally:
        db.close()
    if not deleted:
        return fail(f"no URL mapping for {args.source}")
    print(f"deleted the mapping of {args.source}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``dkgw urlmap list [--json]``."""
    db = open_store(args)
    try:
        with db.transaction() as cur:
            mappings = list_url_mappings(cur)
    finally:
        db.close()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "source": m.source,
                        "destination": m.destination,
                        "created": m.created_at.isoformat(),
                        "updated": m.updated_at.isoformat(),
                    }
                    for m in mappings
                ],
                indent=2,
            )
        )
        return 0
    if not mappings:
        print("no URL mappings")
    for m in mappings:
        print(f"{m.source} -> {m.destination}  (since {m.updated_at:%Y-%m-%d %H:%M:%S} UTC)")
    return 0
