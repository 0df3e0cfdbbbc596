"""``dkgw``: the operator's command line.

Exit codes, for scripts and monitoring: 0 success, 1 invalid input (a CPA
that does not validate, an unknown id, an unreadable file, no store named), 2
usage errors (argparse's own code).  Operator errors (store, configuration,
files) are one line, ``dkgw: ...``, with exit code 1; ``--debug`` adds the
traceback.

Every command that reads the store or keys takes ``--config`` (the gateway's
TOML file), before or after the command name; ``--store`` and ``--data-dir``
name a store directly.  Nothing falls back to a store in the current folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.commands import api as api_commands
from gateway.commands import check as check_commands
from gateway.commands import config as config_commands
from gateway.commands import cpa as cpa_commands
from gateway.commands import demo as demo_commands
from gateway.commands import message as message_commands
from gateway.commands import msh as msh_commands
from gateway.commands import ops as ops_commands
from gateway.commands import status as status_commands
from gateway.commands import stuf as stuf_commands
from gateway.commands import urlmap as urlmap_commands
from gateway.commands.common import version
from gateway.commands.examples import EXAMPLES
from gateway.errors import describe
from xmlsafe import schemas as xmlschemas

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


#: Commands that need neither a store nor keys: no ``--config`` is added to them.
NO_STORE_COMMANDS = frozenset(
    {
        ("demo",),
        ("cpa", "validate"),
        ("cpa", "make"),
        ("api", "hash-password"),
        ("api", "openapi"),
        ("config", "reference"),
    }
)


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable subcommand's parser, with its command words."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, but example lines are printed as written, unwrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _add_examples(parser: argparse.ArgumentParser, lines: Sequence[str]) -> None:
    parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
    parser.formatter_class = _HelpFormatter


def _add_config_option(parser: argparse.ArgumentParser) -> None:
    """``--config`` after the command name too, without hiding one given before it.

    A subcommand's default would overwrite the top-level value (argparse copies
    the subcommand's namespace over it), so its default is SUPPRESS.
    """
    for action in parser._actions:
        if "--config" in action.option_strings:
            if not action.required:
                action.default = argparse.SUPPRESS
            return
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="the gateway's TOML configuration: its store (and keys where needed)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full ``dkgw`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dkgw", description="Digikoppeling ebMS2 gateway for iWmo/iJw message exchange."
    )
    parser.add_argument("--version", action="version", version=f"dkgw {version()}")
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("DKGW_CONFIG") or None,
        help="the gateway's TOML configuration, for its store and keys (default: $DKGW_CONFIG)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory holding gateway.sqlite3 (default: $DKGW_DATA_DIR)",
    )
    parser.add_argument(
        "--store",
        default=None,
        help="store URL, sqlite:///path or postgresql://... (default: $DKGW_STORE)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the traceback after the one-line message",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cpa_commands.register(sub)
    msh_commands.register(sub)
    message_commands.register(sub)
    check_commands.register(sub)
    demo_commands.register(sub)
    urlmap_commands.register(sub)
    api_commands.register(sub)
    stuf_commands.register(sub)
    status_commands.register(sub)
    ops_commands.register(sub)
    config_commands.register(sub)
    for path, leaf in _leaves(parser):
        if path not in NO_STORE_COMMANDS:
            _add_config_option(leaf)
        if path in EXAMPLES:
            _add_examples(leaf, EXAMPLES[path])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dkgw`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # libxml2's XSD types are built here, in the main thread, before any
        # command starts threads that compile schemas (xmlsafe/schemas.py).
        xmlschemas.initialise()
        result: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dkgw cpa list | head`
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:
        # Store, configuration and file problems: one line naming the cause, exit 1,
        # whichever command met them (gateway/errors.py; docs/operations.md).
        text = describe(exc)
        if text is None:
            raise  # a bug: its traceback is what a report needs
        if getattr(args, "debug", False):
            traceback.print_exception(exc, file=sys.stderr)
        print(f"dkgw: {text}", file=sys.stderr)
        return EXIT_INVALID
    return result


if __name__ == "__main__":
    sys.exit(main())
