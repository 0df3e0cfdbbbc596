"""``dkgw check ping``: a Nagios/Icinga check over the scheduled Pings.

It reads the verdicts the running gateway keeps in the store (any node's), so it
sends nothing itself and answers at once.  One line per link, then the exit code of
the worst link: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the monitoring plugin
convention).  A verdict older than ``--max-age`` is UNKNOWN: a stopped gateway must
not keep reporting the last good news.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.commands.common import CommandError, config_of, open_store
from gateway.store.pings import LinkStatus, link_statuses
from gateway.store.timeutil import to_db, utcnow

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
#: Which code wins when links disagree: any CRITICAL makes the whole check CRITICAL.
SEVERITY = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}


@dataclass(frozen=True)
class LinkCheck:
    """The verdict on one link."""

    code: int
    line: str


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``check`` with its ``ping`` subcommand."""
    check = sub.add_parser("check", help="monitoring checks with Nagios/Icinga exit codes")
    checks = check.add_subparsers(dest="check", required=True, metavar="CHECK")
    p = checks.add_parser("ping", help="the latest scheduled Ping of each link")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cpa", action="append", default=[], help="only this CPA (repeatable)")
    which.add_argument("--all", action="store_true", help="every watched link (the default)")
    p.add_argument("--warn-rtt", type=float, metavar="MS", help="WARNING at this round trip")
    p.add_argument("--crit-rtt", type=float, metavar="MS", help="CRITICAL at this round trip")
    p.add_argument(
        "--max-age",
        type=float,
        metavar="SECONDS",
        help="UNKNOWN when the latest verdict is older (default: 3 ping intervals "
        "plus the timeout from --config, else 960)",
    )
    p.add_argument("--config", type=Path, help="take the store and ping interval from this file")
    p.set_defaults(handler=cmd_check_ping)


def judge(
    link: LinkStatus,
    *,
    now: datetime,
    warn_ms: float | None,
    crit_ms: float | None,
    max_age: float,
) -> LinkCheck:
    """One link's code and line: ``CODE cpa=.. from=.. to=.. text | perfdata``."""
    key = link.key
    head = f"cpa={key.cpa_id} from={key.from_party} to={key.to_party}"
    if link.last_outcome is None or link.last_checked_at is None:
        return LinkCheck(UNKNOWN, f"UNKNOWN {head} no Ping settled yet")
    age = (now - link.last_checked_at).total_seconds()
    if age > max_age:
        return LinkCheck(
            UNKNOWN,
            f"UNKNOWN {head} latest verdict is {age:.0f} s old (is the gateway running?)",
        )
    if link.last_outcome != "up":
        since = to_db(link.last_success_at) if link.last_success_at else "never"
        return LinkCheck(
            CRITICAL,
            f"CRITICAL {head} down, {link.consecutive_failures} Ping(s) without Pong "
            f"(last success {since}): {link.last_reason or 'no reason recorded'}",
        )
    rtt_ms = (link.last_rtt or 0.0) * 1000.0
    code = OK
    if crit_ms is not None and rtt_ms >= crit_ms:
        code = CRITICAL
    elif warn_ms is not None and rtt_ms >= warn_ms:
        code = WARNING
    perf = f"rtt={rtt_ms:.1f}ms;{_num(warn_ms)};{_num(crit_ms)};0"
    return LinkCheck(code, f"{NAMES[code]} {head} up, round trip {rtt_ms:.1f} ms | {perf}")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def overall(codes: Sequence[int]) -> int:
    """The worst code (CRITICAL > WARNING > UNKNOWN > OK); UNKNOWN when there are none."""
    if not codes:
        return UNKNOWN
    return max(codes, key=lambda c: SEVERITY[c])


def cmd_check_ping(args: argparse.Namespace) -> int:
    """``dkgw check ping``: prints one line per link, exits with the worst code."""
    max_age = args.max_age
    try:
        config = config_of(args)
        if config is not None and max_age is None:
            max_age = 3 * config.monitoring.ping_interval + config.monitoring.ping_timeout
        db = open_store(args)
    except CommandError as exc:  # a monitoring plugin answers on standard output
        print(f"UNKNOWN {exc}")
        return UNKNOWN
    except Exception as exc:  # the store is unreachable: the check cannot say anything
        print(f"UNKNOWN cannot read the store: {exc}")
        return UNKNOWN
    if max_age is None:
        max_age = 3 * 300.0 + 60.0
    try:
        with db.transaction() as cur:
            links = link_statuses(cur, cpa_ids=args.cpa or None)
    finally:
        db.close()
    now = utcnow()
    checks = [
        judge(link, now=now, warn_ms=args.warn_rtt, crit_ms=args.crit_rtt, max_age=max_age)
        for link in links
    ]
    if not checks:
        wanted = f"CPA {', '.join(args.cpa)}" if args.cpa else "any CPA"
        print(f"UNKNOWN no watched link for {wanted} (are pings enabled and the CPA active?)")
        return UNKNOWN
    for check in checks:
        print(check.line)
    return overall([c.code for c in checks])
