"""``dkgw message list``, ``dkgw message show ID`` and ``dkgw message retry ID``.

``dkgw message ID`` (without a subcommand) keeps working as before: it is
``show`` with the payload list and every attempt.  The queries are
:mod:`gateway.store.queries`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from gateway.commands.common import fail, open_store
from gateway.store.messages import Direction
from gateway.store.queries import (
    MAX_LIMIT,
    MessageDetail,
    MessageQuery,
    RetryRefused,
    detail_json,
    list_messages,
    message_detail,
    retry_message,
    summary_json,
)
from gateway.store.timeutil import utcnow

SUBCOMMANDS = ("list", "show", "retry")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dkgw message`` to the top-level parser."""
    p = sub.add_parser(
        "message",
        help="list, show and retry ebMS messages (dkgw message {list,show,retry} -h)",
        description="dkgw message list [filters] | show ID | retry ID | ID (= show ID)",
    )
    p.add_argument("words", nargs=argparse.REMAINDER, help="list, show ID, retry ID, or ID")
    p.set_defaults(handler=cmd_message)


def _time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date or time (2026-01-31 or 2026-01-31T12:00)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _limit(value: str) -> int:
    n = int(value)
    if not 1 <= n <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_LIMIT}")
    return n


#: Worked examples at the end of each subcommand's help.
EXAMPLES = {
    "list": (
        "dkgw --config /etc/dkgw/dkgw.toml message list --status EXPIRED --since 2026-12-01",
        "dkgw --config /etc/dkgw/dkgw.toml message list --direction in --cpa CPA_ID --json",
    ),
    "show": ("dkgw --config /etc/dkgw/dkgw.toml message show 1f0c…@gw-1 --direction out",),
    "retry": ("dkgw --config /etc/dkgw/dkgw.toml message retry 1f0c…@gw-1",),
}


def _subparser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"dkgw message {prog}",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES.get(prog, ())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # As on every command: the config may also come after the words.
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="the gateway's TOML configuration: its store",
    )
    if prog == "list":
        parser.add_argument("--status", help="CREATED, DELIVERED, DELIVERY_FAILED, EXPIRED, ...")
        parser.add_argument("--direction", choices=("in", "out"), help="received or sent")
        parser.add_argument("--cpa", dest="cpa_id", help="only messages under this CPA")
        parser.add_argument("--party", help="a PartyId as sender or receiver")
        parser.add_argument("--service", help="type:value, e.g. urn:osb:services:GGK:iWmo:3.2")
        parser.add_argument("--action", help="the CPA action, e.g. WMO301")
        parser.add_argument("--since", type=_time, help="stored at or after (UTC unless given)")
        parser.add_argument("--until", type=_time, help="stored before (UTC unless given)")
        parser.add_argument("--correlation-id", help="the back office's X-Correlation-ID")
        parser.add_argument("--limit", type=_limit, default=100, help="rows (default 100)")
        parser.add_argument("--offset", type=int, default=0, help="rows to skip (paging)")
        parser.add_argument("--json", action="store_true", help="one JSON document")
    else:
        parser.add_argument("message_id", help="the ebMS MessageId")
        if prog != "retry":
            parser.add_argument(
                "--direction", choices=("in", "out"), help="received or sent (default either)"
            )
            parser.add_argument("--json", action="store_true", help="one JSON document")
    return parser


def cmd_message(args: argparse.Namespace) -> int:
    """Dispatch ``dkgw message ...``; a bare id is the historic ``dkgw message ID``."""
    words: list[str] = list(args.words)
    if not words:
        _subparser("list").print_usage()
        return fail("give list, show ID, retry ID or a message id")
    if words[0] not in SUBCOMMANDS:
        from gateway.commands.msh import cmd_message as legacy

        legacy_parser = _subparser("show")
        legacy_parser.prog = "dkgw message"
        ns = legacy_parser.parse_args(words, namespace=argparse.Namespace(**vars(args)))
        ns.json = False
        return legacy(ns)
    ns = _subparser(words[0]).parse_args(words[1:], namespace=argparse.Namespace(**vars(args)))
    if words[0] == "list":
        return _list(ns)
    if words[0] == "show":
        return _show(ns)
    return _retry(ns)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _list(args: argparse.Namespace) -> int:
    query = MessageQuery(
        status=args.status,
        direction=Direction(args.direction) if args.direction else None,
        cpa_id=args.cpa_id,
        party=args.party,
        service=args.service,
        action=args.action,
        since=args.since,
        until=args.until,
        correlation_id=args.correlation_id,
        limit=args.limit,
        offset=args.offset,
    )
    db = open_store(args)
    try:
        with db.transaction() as cur:
            rows = list_messages(cur, query)
    except ValueError as exc:
        return fail(str(exc))
    if args.json:
        print(json.dumps({"messages": [summary_json(r) for r in rows]}, indent=2))
        return 0
    header = ("CREATED", "DIR", "STATUS", "MESSAGE ID", "ACTION", "TRIES", "LAST FAILURE")
    table = [header] + [
        (
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.direction.value,
            r.status or "-",
            r.message_id,
            r.action,
            str(r.attempts) if r.direction is Direction.OUT else "-",
            r.last_error or "",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1])
    if len(rows) == query.limit:
        print(f"(more may follow: --offset {query.offset + query.limit})")
    return 0


def _show(args: argparse.Namespace) -> int:
    db = open_store(args)
    direction = Direction(args.direction) if args.direction else None
    with db.transaction() as cur:
        found = message_detail(cur, args.message_id, direction)
    if not found:
        return fail(f"no message {args.message_id!r}")
    if args.json:
        print(json.dumps({"messages": [detail_json(d) for d in found]}, indent=2))
        return 0
    for d in found:
        print_detail(d)
    return 0


def print_detail(d: MessageDetail) -> None:
    """The readable form of :func:`detail_json`."""
    s = d.summary
    lines = [
        f"{s.message_id} ({'outgoing' if s.direction is Direction.OUT else 'incoming'})",
        f"  status         {s.status or '-'}"
        + (f" since {_iso(s.status_at)}" if s.status_at else ""),
        f"  cpa            {s.cpa_id}",
        f"  from / to      {s.from_party} -> {s.to_party}",
        f"  service        {s.service} {s.action}",
        f"  conversation   {d.conversation_id}",
    ]
    if d.ref_to_message_id:
        lines.append(f"  refers to      {d.ref_to_message_id}")
    if s.correlation_id:
        lines.append(f"  correlation    {s.correlation_id}")
    if s.task_state is not None:
        lines.append(
            f"  delivery       {s.task_state}, {s.attempts} attempt(s), {s.attempts_left} left"
        )
        lines.append(f"  next attempt   {_iso(s.next_attempt_at) or '-'}")
        if s.expires_at:
            lines.append(f"  time to live   {_iso(s.expires_at)}")
        lines.append(f"  last failure   {s.last_error or '-'}")
    for sig in d.signals:
        lines.append(
            f"  signal         {sig.action} {sig.message_id} ({sig.direction.value}) "
            f"{_iso(sig.created_at)}"
        )
    for h in d.history:
        lines.append(
            f"  history        {_iso(h.at)} {h.status}{f' ({h.reason})' if h.reason else ''}"
        )
    print("\n".join(lines))


def _retry(args: argparse.Namespace) -> int:
    db = open_store(args)
    try:
        with db.transaction() as cur:
            summary = retry_message(cur, args.message_id, now=utcnow())
    except RetryRefused as exc:
        return fail(str(exc))
    print(
        f"{summary.message_id} due now (attempt {summary.attempts + 1} of "
        f"{summary.max_attempts}); a running gateway sends it within its poll interval"
    )
    return 0
