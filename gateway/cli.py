"""``dkgw``: the operator's command line.

Exit codes, for scripts and monitoring: 0 success, 1 invalid input (a CPA
that does not validate, an unknown id, an unreadable file), 2 usage errors
(argparse's own code).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.commands import api as api_commands
from gateway.commands import check as check_commands
from gateway.commands import cpa as cpa_commands
from gateway.commands import demo as demo_commands
from gateway.commands import msh as msh_commands
from gateway.commands import ops as ops_commands
from gateway.commands import stuf as stuf_commands
from gateway.commands import urlmap as urlmap_commands

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def default_data_dir() -> Path:
    """``$DKGW_DATA_DIR`` or ``./var``."""
    return Path(os.environ.get("DKGW_DATA_DIR", "var"))


def build_parser() -> argparse.ArgumentParser:
    """The full ``dkgw`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dkgw", description="Digikoppeling ebMS2 gateway for iWmo/iJw message exchange."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory (default: $DKGW_DATA_DIR or ./var)",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("DKGW_STORE"),
        help="store URL, sqlite:///path or postgresql://... "
        "(default: $DKGW_STORE or sqlite in the data directory)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cpa_commands.register(sub)
    msh_commands.register(sub)
    check_commands.register(sub)
    demo_commands.register(sub)
    urlmap_commands.register(sub)
    api_commands.register(sub)
    stuf_commands.register(sub)
    ops_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dkgw`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_dir is None:
        args.data_dir = default_data_dir()
    try:
        result: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dkgw cpa list | head`
        sys.stderr.close()
        return EXIT_OK
    return result


if __name__ == "__main__":
    sys.exit(main())
