"""``dkgw log``, ``dkgw report``, ``dkgw purge`` and ``dkgw upload``: the StUF message log.

``log``, ``report`` and ``purge`` read and clean the message log of
:mod:`adapters.stuf.store` (see docs/node.md).  ``upload FILE.zip`` is the portal's
"aanleveren": :func:`adapters.upload.read_upload` checks the zip as a whole, then every
file goes to a *handler*, and the processing report is printed.

The handler seam
----------------
This command does not know how to check, wrap or send a StUF message; the relay does.
:func:`cmd_upload` takes a handler factory, by default :func:`handler_from_config`,
which imports ``adapters.stuf.relay`` and calls::

    upload_handler(args: argparse.Namespace, session: adapters.upload.UploadSession)
        -> Callable[[str, bytes], adapters.upload.Accepted | adapters.upload.Rejected]

``args`` are this command's arguments (``--config`` is the gateway's config, for the CPA
and parties); ``session`` holds the opened store, the batch id, the zip's name and the
node.  The handler gets each file's name and bytes and:

* when the message is wrong, returns ``Rejected(code, reason, referentienummer=...,
  functie=..., berichtcode=..., sender_org=..., receiver_org=...)`` (the envelope
  fields it could read) and writes nothing: this command logs the refusal in the batch;
* when it is right, in ONE transaction on ``session.db``: calls
  :func:`adapters.stuf.store.record_message` with ``batch_id=session.batch_id``,
  ``file_name=name``, ``size=len(data)``, direction ``out`` and status ``sent`` (with the
  ebMS MessageId and CPA id) or ``accepted``; if that returns ``None`` the reference is a
  duplicate: queue nothing and return ``Rejected("duplicate", ...)``; otherwise queue
  the ebMS message in the same transaction and return ``Accepted(referentienummer,
  functie)``;
* never raises after it has queued a message (an exception is reported as a refusal).

Until ``adapters.stuf.relay`` exists, ``dkgw upload`` checks the zip and then says that
sending is not available yet.  Exit codes: 0 every file accepted, 1 some file rejected or
the upload refused (or another error), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.stuf.store import (
    DEFAULT_MAX_AGE,
    DEFAULT_READ_AFTER,
    BatchReport,
    BatchSource,
    LogEntry,
    LogItem,
    StufDirection,
    StufStatus,
    batch_report,
    delete_batch,
    finish_batch,
    open_batch,
    purge,
    query_log,
    record_message,
    split_parties,
)
from adapters.upload import (
    FileResult,
    Handler,
    Rejected,
    UploadRefused,
    UploadSession,
    format_report,
    process_upload,
    read_upload,
)
from gateway.commands import ops as ops_commands
from gateway.commands.common import config_of, fail, open_store
from gateway.config import ConfigError
from gateway.store.database import Database
from gateway.store.timeutil import utcnow

RELAY_MODULE = "adapters.stuf.relay"

HandlerFactory = Callable[[argparse.Namespace, UploadSession], Handler]


class UploadUnavailable(Exception):
    """Sending uploaded messages is not available in this installation."""


# -- argument types ----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)\s*(s|m|min|h|d|w)")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``"168h"``, ``"90d"``, ``"30m"`` (minutes), ``"2w"``, ``"45s"``; at least 1 second."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 168h, 90d, 30m, 2w (a number and s/m/h/d/w)"
        )
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def parse_when(text: str, *, now: datetime | None = None) -> datetime:
    """A point in time: a duration ago (``7d``, ``24h``) or an ISO date or date-time.

    A date (``2026-11-01``) is midnight UTC; a date-time without an offset is UTC too.
    """
    text = text.strip()
    if _DURATION.fullmatch(text):
        return (now if now is not None else utcnow()) - parse_duration(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give a duration ago (7d, 24h) or a date "
            "(2026-11-01) or date-time (2026-11-01T08:00, UTC unless an offset is given)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _gemeente(text: str) -> str:
    if not re.fullmatch(r"[0-9]{4}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a 4-digit gemeentecode (e.g. 0363)")
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _hours(delta: timedelta) -> str:
    """``168h``, ``90d``: hours up to a week (retention is set in hours), then days."""
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds > 7 * 86400:
        return f"{seconds // 86400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


# -- registration ------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``log``, ``report``, ``purge`` and ``upload`` to the top-level parser."""
    p = sub.add_parser(
        "log",
        help="list StUF messages from the message log",
        description="List logged StUF messages, newest first. Times are UTC.",
    )
    p.add_argument(
        "--since",
        type=parse_when,
        default=None,
        help="from this time: 7d, 24h (ago) or 2026-11-01 / 2026-11-01T08:00 (UTC)",
    )
    p.add_argument("--until", type=parse_when, default=None, help="before this time (same forms)")
    p.add_argument("--type", dest="functie", help="message type (functie), e.g. WMO301")
    p.add_argument("--gemeente", type=_gemeente, help="4-digit gemeentecode, e.g. 0363")
    p.add_argument(
        "--status", choices=[s.value for s in StufStatus], help="only messages in this state"
    )
    p.add_argument(
        "--direction", choices=[d.value for d in StufDirection], help="only sent or received"
    )
    p.add_argument("--ref", help="a referentienummer (also finds answers to it by crossRefnummer)")
    p.add_argument("--batch", type=int, help="only the messages of this batch")
    p.add_argument("--limit", type=_positive, default=1000, help="at most this many (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _config_option(p)
    p.set_defaults(handler=cmd_log)

    p = sub.add_parser(
        "report", help="show the processing report of a batch (an upload)", description=None
    )
    p.add_argument("batch_id", type=int, help="the batch number dkgw upload printed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _config_option(p)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "purge",
        help="apply retention to the message log",
        description="Delete delivered-and-read messages READ_AFTER after they were read, "
        "every message MAX_AGE after it was logged, and batches left empty.",
    )
    p.add_argument(
        "--read-after",
        type=parse_duration,
        default=DEFAULT_READ_AFTER,
        help=f"keep read messages this long (default {_hours(DEFAULT_READ_AFTER)})",
    )
    p.add_argument(
        "--max-age",
        type=parse_duration,
        default=DEFAULT_MAX_AGE,
        help=f"keep any message this long (default {_hours(DEFAULT_MAX_AGE)})",
    )
    p.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    _config_option(p)
    p.set_defaults(handler=cmd_purge)

    p = sub.add_parser(
        "upload",
        help="send the StUF messages in a zip and print the processing report",
        description="Upload a zip of StUF XML messages (no folders, only .xml files, at most "
        "1 GiB). Every message is checked; the valid ones are sent. Exit code 0 when all "
        "were accepted, 1 when some were rejected or the zip was refused.",
    )
    p.add_argument("file", type=Path, help="the zip file")
    _config_option(p)
    p.set_defaults(handler=cmd_upload)


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, default=None, help="the gateway's config (for its store and node)"
    )


def _open(args: argparse.Namespace) -> tuple[Database, str]:
    """The store (the config's with ``--config``, else ``--store``/``--data-dir``), node."""
    config = config_of(args)
    db = open_store(args)
    return db, config.node_id if config is not None else socket.gethostname()


# -- dkgw log ----------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def item_json(item: LogItem) -> dict[str, Any]:
    """One log item as a JSON object (times ISO-8601 UTC)."""
    return {k: _json_value(v) for k, v in dataclasses.asdict(item).items()}


def _when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _reason(item: LogItem) -> str:
    if item.reason_code is None and item.reason is None:
        return ""
    text = " ".join((item.reason or "").split())
    return f"  [{item.reason_code}] {text}" if item.reason_code else f"  {text}"


LOG_HEADER = (
    "TIME (UTC)           DIR  TYPE    CODE  GEM   COUNTERPART  STATUS     REFERENTIENUMMER"
)


def log_line(item: LogItem) -> str:
    """One log item as a text line (columns as :data:`LOG_HEADER`)."""
    return (
        f"{_when(item.created_at)}  {item.direction.value:<3}  {item.functie or '-':<7} "
        f"{item.berichtcode or '-':<5} {item.gemeente or '-':<5} {item.counterpart or '-':<12} "
        f"{item.status.value:<10} {item.referentienummer or '-'}{_reason(item)}"
    )


def cmd_log(args: argparse.Namespace) -> int:
    """``dkgw log [filters] [--json] [--limit N]``."""
    try:
        db, _node = _open(args)
    except ConfigError as exc:
        return fail(str(exc))
    try:
        with db.transaction() as cur:
            items = query_log(
                cur,
                since=args.since,
                until=args.until,
                functie=args.functie,
                gemeente=args.gemeente,
                status=None if args.status is None else StufStatus(args.status),
                direction=None if args.direction is None else StufDirection(args.direction),
                referentienummer=args.ref,
                batch_id=args.batch,
                limit=args.limit,
            )
    finally:
        db.close()
    if args.json:
        print(json.dumps([item_json(i) for i in items], indent=2))
    elif not items:
        print("no messages")
    else:
        print(LOG_HEADER)
        for item in items:
            print(log_line(item))
    if len(items) == args.limit:
        print(
            f"dkgw: showing the newest {args.limit}; there may be more (--limit)", file=sys.stderr
        )
    return 0


# -- dkgw report -------------------------------------------------------------------------


def report_text(report: BatchReport) -> str:
    """A stored batch's processing report as text."""
    batch = report.batch
    name = f' "{batch.name}"' if batch.name else ""
    node = f" on {batch.node}" if batch.node else ""
    finished = (
        f"finished {_when(batch.finished_at)} UTC" if batch.finished_at else "not finished (yet)"
    )
    total = batch.accepted + batch.rejected
    lines = [
        f"batch {batch.id}: {batch.source.value}{name}{node}, "
        f"started {_when(batch.created_at)} UTC, {finished}",
        f"{total} file{'' if total == 1 else 's'}: "
        f"{batch.accepted} accepted, {batch.rejected} rejected",
    ]
    width = max((len(i.file_name or "-") for i in report.items), default=0)
    for item in report.items:
        if item.status is StufStatus.REJECTED:
            detail = f"rejected   [{item.reason_code}] {' '.join((item.reason or '').split())}"
        else:
            detail = (
                f"{item.status.value:<10} {item.functie or '-':<6}  {item.referentienummer or '-'}"
                f"{_reason(item)}"
            )
        lines.append(f"{item.file_name or '-':<{width}}  {detail}")
    if batch.finished_at and len(report.items) < total:
        lines.append(f"({total - len(report.items)} of the items are no longer kept: retention)")
    return "\n".join(lines) + "\n"


def cmd_report(args: argparse.Namespace) -> int:
    """``dkgw report BATCH_ID [--json]``; exit code 1 for an unknown batch."""
    try:
        db, _node = _open(args)
    except ConfigError as exc:
        return fail(str(exc))
    try:
        with db.transaction() as cur:
            report = batch_report(cur, args.batch_id)
    finally:
        db.close()
    if report is None:
        return fail(f"no batch {args.batch_id}")
    if args.json:
        batch = {k: _json_value(v) for k, v in dataclasses.asdict(report.batch).items()}
        print(json.dumps({"batch": batch, "items": [item_json(i) for i in report.items]}, indent=2))
    else:
        sys.stdout.write(report_text(report))
    return 0


# -- dkgw purge --------------------------------------------------------------------------


def cmd_purge(args: argparse.Namespace) -> int:
    """``dkgw purge [--read-after 168h] [--max-age 90d] [--dry-run]``."""
    try:
        db, _node = _open(args)
    except ConfigError as exc:
        return fail(str(exc))
    try:
        settings = ops_commands.retention_settings(args)
        with db.transaction() as cur:
            counts = purge(cur, utcnow(), args.read_after, args.max_age, dry_run=args.dry_run)
        # Then the ebMS messages, events, webhook and file-drop history (docs/operations.md).
        lines = ops_commands.run_purge(db, settings, dry_run=args.dry_run)
    except ConfigError as exc:
        return fail(str(exc))
    finally:
        db.close()
    verb = "would purge" if args.dry_run else "purged"
    print(
        f"{verb} {counts.messages} message{'' if counts.messages == 1 else 's'} "
        f"({counts.read} read more than {_hours(args.read_after)} ago, "
        f"{counts.expired} older than {_hours(args.max_age)}) "
        f"and {counts.batches} batch{'' if counts.batches == 1 else 'es'}"
    )
    print(f"{verb} ebms copies of the StUF messages: {counts.ebms}")
    for line in lines:
        print(line)
    return 0


# -- dkgw upload -------------------------------------------------------------------------


def handler_from_config(args: argparse.Namespace, session: UploadSession) -> Handler:
    """The relay's handler: ``adapters.stuf.relay.upload_handler(args, session)``.

    Raises :class:`UploadUnavailable` only when that module does not exist; an import
    error inside it is a bug and propagates.
    """
    try:
        relay = importlib.import_module(RELAY_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name not in ("adapters.stuf", RELAY_MODULE):
            raise
        raise UploadUnavailable(
            "sending uploaded messages is not available yet in this version "
            f"(the StUF relay, {RELAY_MODULE}, is not installed); the zip itself was checked "
            "and is acceptable"
        ) from None
    factory: HandlerFactory = relay.upload_handler
    return factory(args, session)


_BERICHTCODES = frozenset({"Di01", "Du01", "Fo01"})


def _short(value: str | None, limit: int = 200) -> str | None:
    """A field read from a refused file, bounded for the log (it may be anything)."""
    return None if value is None else value[:limit]


def refusal_entry(result: FileResult, outcome: Rejected, batch_id: int) -> LogEntry:
    """The log row of a file the handler refused."""
    sender, receiver = _short(outcome.sender_org), _short(outcome.receiver_org)
    gemeente, counterpart = split_parties(sender, receiver)
    return LogEntry(
        direction=StufDirection.OUT,
        status=StufStatus.REJECTED,
        referentienummer=_short(outcome.referentienummer),
        berichtcode=outcome.berichtcode if outcome.berichtcode in _BERICHTCODES else None,
        functie=_short(outcome.functie, 30),
        gemeente=gemeente,
        counterpart=counterpart,
        sender_org=sender,
        receiver_org=receiver,
        file_name=result.name,
        reason_code=_short(outcome.code, 40),
        reason=_short(outcome.reason, 2000),
        size=result.size,
        batch_id=batch_id,
    )


def cmd_upload(
    args: argparse.Namespace, handler_factory: HandlerFactory = handler_from_config
) -> int:
    """``dkgw upload FILE.zip``: exit code 0 all accepted, 1 some rejected or refused."""
    try:
        items = read_upload(args.file)
    except UploadRefused as exc:
        return fail(f"upload refused: {args.file.name}: {exc.reason}")
    try:
        db, node = _open(args)
    except ConfigError as exc:
        return fail(str(exc))
    try:
        with db.transaction() as cur:
            batch_id = open_batch(cur, BatchSource.UPLOAD, name=args.file.name, node=node)
        session = UploadSession(db=db, batch_id=batch_id, name=args.file.name, node=node)
        try:
            handler = handler_factory(args, session)
        except Exception as exc:
            with db.transaction() as cur:
                delete_batch(cur, batch_id)
            if isinstance(exc, UploadUnavailable | ConfigError | ValueError | OSError):
                return fail(str(exc))
            raise

        def log_refusal(result: FileResult) -> None:
            if isinstance(result.outcome, Rejected):
                # An accepted file was logged by the handler, with its sending.
                with db.transaction() as cur:
                    record_message(cur, refusal_entry(result, result.outcome, batch_id))

        report = process_upload(items, handler, on_result=log_refusal)
        with db.transaction() as cur:
            finish_batch(
                cur, batch_id, accepted=len(report.accepted), rejected=len(report.rejected)
            )
    finally:
        db.close()
    title = f"verwerkingsverslag {args.file.name} (batch {batch_id}, node {node})"
    sys.stdout.write(format_report(report, title=title))
    return 1 if report.rejected else 0
