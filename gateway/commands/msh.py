"""``dkgw serve``, ``dkgw ping``, ``dkgw send`` and ``dkgw message``: running and using the MSH.

``ping`` and ``send`` work through the store: they queue a message and the
running gateway (any node on that store) delivers it.  ``ping`` then waits for
the Pong to show up in the store, so it works with several nodes too: the Pong
may arrive at any of them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from cpa.model import Service, parse_party
from gateway.commands.common import config_of, fail, open_store
from gateway.config import ConfigError, load_config
from gateway.errors import StartupError, describe
from gateway.logfmt import configure_logging
from gateway.material.load import load_message_security
from gateway.monitor.pinger import ping_failure
from gateway.msh.answers import Outcome
from gateway.msh.plan import Payload
from gateway.msh.security import MessageSecurity
from gateway.msh.service import Addressing, MshService, SendError
from gateway.msh.states import TaskState
from gateway.msh.waiting import wait
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Cursor, Database, Row
from gateway.store.messages import Direction, find_message

EXIT_NO_ANSWER = 2

log = logging.getLogger("dkgw.serve")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the MSH commands to the top-level parser."""
    p = sub.add_parser("serve", help="run the gateway (HTTPS endpoint and delivery worker)")
    p.add_argument("--config", type=Path, help="TOML configuration file (required)")
    p.add_argument(
        "--check", action="store_true", help="check the configuration and TLS material, then exit"
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text lines or one JSON object per line (default: [logging] format)",
    )
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("ping", help="send an ebMS Ping and wait for the Pong")
    p.add_argument("cpa_id", help="the CPA to ping over")
    p.add_argument("--from", dest="from_party", required=True, help="our party id")
    p.add_argument("--to", dest="to_party", required=True, help="the partner's party id")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.set_defaults(handler=cmd_ping)

    p = sub.add_parser("send", help="queue a business message for delivery")
    p.add_argument("cpa_id", help="the CPA the message goes under")
    p.add_argument("--from", dest="from_party", required=True, help="our party id")
    p.add_argument("--from-role", required=True, help="our role in the CPA")
    p.add_argument("--to", dest="to_party", required=True, help="the partner's party id")
    p.add_argument("--to-role", required=True, help="the partner's role in the CPA")
    p.add_argument("--service", required=True, help="type:value, e.g. urn:osb:services:X:Y:1")
    p.add_argument("--action", required=True, help="the CPA action, e.g. WMO301")
    p.add_argument("--conversation-id", help="ConversationId (default: a new one)")
    p.add_argument(
        "--file", action="append", default=[], type=Path, help="a payload file (repeatable)"
    )
    p.add_argument(
        "--content-type",
        default="application/xml",
        help="payload type (default application/xml)",
    )
    p.add_argument(
        "--correlation-id", help="your id for this request; logged with the message and its ack"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="the gateway's config: its store, and its [security] keys to sign and encrypt "
        "(needed for the -s and -e profiles)",
    )
    p.set_defaults(handler=cmd_send)

    # ``dkgw message`` (list, show, retry, and the bare ``dkgw message ID`` that
    # cmd_message answers) is registered by gateway.commands.message.


def _service(value: str) -> Service:
    # "urn:osb:services:GGK:iWmo:3.2": the type is a URN of three parts on DK.
    if value.startswith("urn:osb:services:"):
        return Service(value.removeprefix("urn:osb:services:"), "urn:osb:services")
    return Service(value)


def cmd_serve(args: argparse.Namespace) -> int:
    """``dkgw serve --config FILE [--check]``.

    The checks of :mod:`gateway.preflight` run first; ``--check`` prints them all
    and exits 1 on any error, ``serve`` refuses to start on an error (except a
    CPA's, which concerns one partner, not the gateway) and logs the rest.  A start
    that fails later (a port in use) closes what it opened and exits 1 with one
    line naming the cause, through :func:`gateway.cli.main`.
    """
    if args.config is None:
        return fail("serve needs the gateway's configuration: --config FILE")
    config = load_config(args.config)  # a ConfigError is one line in main()
    from gateway.preflight import has_errors, run_checks
    from gateway.store.timeutil import utcnow

    findings = run_checks(config, utcnow())
    if args.check:
        # Problems on standard error, one line each; the verdict last.
        for finding in findings:
            print(finding.line(), file=sys.stderr)
        errors = sum(f.severity == "error" for f in findings)
        if has_errors(findings):
            return fail(f"configuration {config.source}: {errors} error(s), see above")
        print(f"configuration {config.source} is valid")
        return 0
    fatal = [f for f in findings if f.severity == "error" and not f.subject.startswith("CPA ")]
    for finding in fatal:
        print(f"dkgw: {finding.line()}", file=sys.stderr)
    if fatal:
        return 1
    configure_logging(args.log_format or config.logging.format, config.logging.level)
    for finding in findings:
        log.warning(
            "event=preflight severity=%s subject=%s problem=%s",
            finding.severity,
            finding.subject,
            finding.text,
        )
    from twisted.internet import reactor
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    from gateway.serve import Gateway, compile_schemas

    # Here, in the main thread before the reactor and its threads run; a
    # schema that does not compile stops the start with one line.
    started = time.monotonic()
    compiled = compile_schemas()
    log.info(
        "event=xml-schemas-compiled count=%d ms=%.0f",
        len(compiled),
        (time.monotonic() - started) * 1000,
    )
    globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)
    gateway = Gateway(config, reactor)
    failed: list[Exception] = []

    def start() -> None:
        try:
            gateway.start()
        except Exception as exc:
            # Nothing half-open: close what was opened, then leave the reactor.
            failed.append(exc)
            gateway.stop().addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
            return
        reactor.addSystemEventTrigger("before", "shutdown", gateway.stop)  # type: ignore[attr-defined]

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))  # type: ignore[attr-defined]
    # SIGHUP reloads what can be reloaded; without a handler it would end the process.
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gateway.reload))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failed:
        exc = failed[0]
        if describe(exc) is None:
            raise StartupError(f"cannot start: {type(exc).__name__}: {exc}") from exc
        raise exc
    return 0


def _wait_for_pong(db: Database, ping_id: str, timeout: float) -> tuple[int, str]:
    msh = MshService(db, CpaRegistry(db))
    answer = wait(lambda: msh.answer(ping_id, "Pong"), timeout)
    if answer is None:
        return EXIT_NO_ANSWER, f"no Pong within {timeout:g} s"
    if answer.outcome is Outcome.ANSWERED:
        return 0, f"Pong {answer.answer_id}"
    if answer.outcome is Outcome.ERROR:
        return EXIT_NO_ANSWER, f"the partner answered with a MessageError {answer.answer_id}"
    task_state = answer.task_state or TaskState.FAILED
    return EXIT_NO_ANSWER, f"Ping not delivered ({ping_failure(task_state, answer.last_error)})"


def cmd_ping(args: argparse.Namespace) -> int:
    """``dkgw ping CPA --from P --to Q``: 0 Pong, 2 no answer, 1 error."""
    db = open_store(args)
    try:
        queued = MshService(db, CpaRegistry(db)).ping(
            args.cpa_id, parse_party(args.from_party), parse_party(args.to_party)
        )
    except SendError as exc:
        return fail(str(exc))
    started = time.monotonic()
    code, text = _wait_for_pong(db, queued.message_id, args.timeout)
    print(
        f"{text} ({time.monotonic() - started:.3f} s) for Ping {queued.message_id} to {queued.url}"
    )
    return code


def _sending_setup(args: argparse.Namespace) -> tuple[Database, MessageSecurity | None]:
    """The store and, with ``--config``, the gateway's message security."""
    config = config_of(args)
    if config is None:
        return open_store(args), None
    return open_store(args), load_message_security(config)


def cmd_send(args: argparse.Namespace) -> int:
    """``dkgw send ...``: prints the new MessageId."""
    try:
        db, security = _sending_setup(args)
    except (ConfigError, OSError, ValueError) as exc:
        return fail(str(exc))
    try:
        payloads = [Payload(f.read_bytes(), args.content_type, f.name) for f in args.file]
    except OSError as exc:
        return fail(f"cannot read {exc.filename}: {exc.strerror}")
    addressing = Addressing(
        cpa_id=args.cpa_id,
        service=_service(args.service),
        action=args.action,
        from_party=parse_party(args.from_party),
        from_role=args.from_role,
        to_party=parse_party(args.to_party),
        to_role=args.to_role,
    )
    try:
        queued = MshService(db, CpaRegistry(db), security=security).send(
            addressing,
            payloads=payloads,
            conversation_id=args.conversation_id,
            correlation_id=args.correlation_id,
        )
    except SendError as exc:
        return fail(str(exc))
    print(queued.message_id)
    return 0


def cmd_message(args: argparse.Namespace) -> int:
    """``dkgw message ID``: direction, parties, status, payloads, history and attempts."""
    db = open_store(args)
    directions = [Direction(args.direction)] if args.direction else [Direction.OUT, Direction.IN]
    with db.transaction() as cur:
        found = [m for d in directions if (m := find_message(cur, args.message_id, d))]
        details = [(m, *_details(cur, m.pk)) for m in found]
    if not found:
        return fail(f"no message {args.message_id!r}")
    for m, parts, history, attempts in details:
        print(
            f"{m.message_id} {m.direction.value} {m.status or '-'} cpa={m.cpa_id} "
            f"from={m.from_party} to={m.to_party} service={m.service} action={m.action}"
        )
        for content_id, content_type, size, sha256 in parts:
            print(f"  payload {content_id} {content_type} {size} bytes sha256={sha256[:16]}...")
        for status, at, reason in history:
            print(f"  {at} {status}{f' ({reason})' if reason else ''}")
        for attempt, started, http_status, outcome, error in attempts:
            result = f"HTTP {http_status}" if http_status is not None else (error or "")
            print(f"  attempt {attempt} at {started}: {outcome} {result}".rstrip())
    return 0


def _details(cur: Cursor, pk: int) -> tuple[list[Row], list[Row], list[Row]]:
    parts = cur.execute(
        "SELECT content_id, content_type, size, sha256 FROM ebms_attachment "
        "WHERE message_pk = ? ORDER BY order_nr",
        (pk,),
    ).fetchall()
    history = cur.execute(
        "SELECT status, at, reason FROM status_history WHERE message_pk = ? ORDER BY at", (pk,)
    ).fetchall()
    attempts = cur.execute(
        "SELECT a.attempt, a.started_at, a.http_status, a.outcome, a.error FROM delivery_attempt a "
        "JOIN delivery_task t ON t.id = a.task_id WHERE t.message_pk = ? ORDER BY a.attempt",
        (pk,),
    ).fetchall()
    return parts, history, attempts
