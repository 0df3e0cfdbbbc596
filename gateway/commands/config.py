"""``dkgw config reference``: every configuration option with its default.

The text is generated from the sections' declarations
(:mod:`gateway.settings.reference`); ``--markdown`` gives docs/configuration.md.
"""

from __future__ import annotations

import argparse

from gateway.settings.reference import render_markdown, render_reference


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``config`` with its ``reference`` subcommand."""
    config = sub.add_parser("config", help="the configuration file's options")
    commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "reference", help="print every option with its kind, bounds, default and help"
    )
    p.add_argument(
        "--markdown", action="store_true", help="as docs/configuration.md (a Markdown page)"
    )
    p.set_defaults(handler=cmd_reference)


def cmd_reference(args: argparse.Namespace) -> int:
    """``dkgw config reference [--markdown]``."""
    print(render_markdown() if args.markdown else render_reference(), end="")
    return 0
