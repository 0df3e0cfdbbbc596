"""``dkgw status``: one screen of what an operator checks first.

Version, store, listeners (with ``--config``: whether each answers), CPAs with
their links, the queues, failures of the last day, and CPAs and certificates
that have expired or will within 30 days.  ``--json`` gives the same as one
object.  Exit code 0, or 1 when something has expired or a listener does not
answer, so a cron job or a deployment script can act on it.
"""

from __future__ import annotations

import argparse
import json
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from gateway.commands.common import config_of, open_store, version
from gateway.config import GatewayConfig
from gateway.monitor.overview import Expiry, RecentFailure, expiries, recent_failures
from gateway.monitor.status import Snapshot, snapshot, status_document
from gateway.store.cpas import CpaRegistry
from gateway.store.timeutil import to_db, utcnow

FAILURE_WINDOW = timedelta(hours=24)
PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class Listener:
    """One configured listener and whether it answered a TCP connect."""

    name: str
    host: str
    port: int
    answering: bool
    problem: str | None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the top-level parser."""
    p = sub.add_parser(
        "status",
        help="one screen: store, listeners, CPAs and links, queues, failures, expiries",
        description="Exit code 1 when a CPA or certificate has expired or a configured "
        "listener does not answer; 0 otherwise.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)


def probe(name: str, host: str, port: int) -> Listener:
    """Connect to a listener (a wildcard address is tried on loopback)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104
    try:
        with socket.create_connection((target, port), timeout=PROBE_TIMEOUT):
            return Listener(name, host, port, True, None)
    except ConnectionRefusedError:
        return Listener(name, host, port, False, "connection refused")
    except TimeoutError:
        return Listener(name, host, port, False, f"no answer within {PROBE_TIMEOUT:g} s")
    except OSError as exc:
        return Listener(name, host, port, False, exc.strerror or type(exc).__name__)


def listeners(config: GatewayConfig) -> list[Listener]:
    """The configured listeners, each probed."""
    found = [probe("ebms", config.http.host, config.http.port)]
    for name, listener in (("api", config.api), ("admin", config.admin)):
        if listener.port is not None:
            found.append(probe(name, listener.host, listener.port))
    return found


def own_certificates(config: GatewayConfig) -> dict[str, x509.Certificate]:
    """The certificates we present, by what they are for (unreadable ones are left out:
    ``serve --check`` reports those)."""
    paths = {
        "TLS server certificate": config.tls.certificate,
        "TLS client certificate": config.tls.client_certificate,
        "signing certificate": config.security.signing_certificate,
        "encryption certificate": config.security.encryption_certificate,
    }
    found = {}
    for name, path in paths.items():
        if path is None:
            continue
        try:
            found[name] = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue
    return found


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, (now - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class Overview:
    """Everything the screen shows, read once."""

    snap: Snapshot
    version: str
    store: str
    node: str | None
    found: list[Listener] | None
    """The configured listeners, probed; None without ``--config``."""
    failures: list[RecentFailure]
    coming: list[Expiry]


def render(view: Overview) -> str:
    """The screen, as text."""
    snap, node, found, failures, coming = (
        view.snap, view.node, view.found, view.failures, view.coming
    )  # fmt: skip
    version, store = view.version, view.store
    now = snap.now
    lines = [f"dkgw {version}" + (f"  node {node}" if node else "") + f"  {to_db(now)}"]
    lines.append(f"store      {store}")
    if found is None:
        lines.append("listeners  unknown (give --config to check them)")
    else:
        lines.append(
            "listeners  "
            + "; ".join(
                f"{item.name} {item.host}:{item.port} "
                + ("answering" if item.answering else f"NOT ANSWERING ({item.problem})")
                for item in found
            )
        )
    q = snap.queue
    lines.append(
        f"queue      {q.pending} pending (oldest {_ago(q.oldest_pending, now)}), "
        f"{q.sending} sending; {q.events_unprocessed} events not taken by the back office "
        f"(oldest {_ago(q.oldest_event, now)})"
    )
    active = sum(cpa.active_at(now) for cpa in snap.cpas)
    lines.append(f"CPAs       {len(snap.cpas)} stored, {active} active")
    links: dict[str, list[str]] = {}
    for link in snap.links:
        state = {True: "up", False: "DOWN", None: "not pinged yet"}[link.up]
        detail = f", {link.last_reason}" if link.up is False and link.last_reason else ""
        links.setdefault(link.key.cpa_id, []).append(
            f"{link.key.from_party} -> {link.key.to_party} {state}{detail} "
            f"(checked {_ago(link.last_checked_at, now)} ago)"
        )
    for cpa in snap.cpas:
        state = "active" if cpa.active_at(now) else f"inactive ({cpa.status})"
        lines.append(f"  {cpa.cpa_id}  {state}, until {cpa.end.date().isoformat()}")
        lines.extend(f"    {text}" for text in links.get(cpa.cpa_id, ()))
    lines.append(f"failures   {len(failures)} in the last 24 h" + (":" if failures else ""))
    for f in failures:
        reason = f": {f.reason}" if f.reason else ""
        lines.append(f"  {to_db(f.at)} {f.status} {f.message_id} {f.cpa_id} {f.action}{reason}")
    lines.append(f"expiry     {len(coming)} within 30 days" + (":" if coming else ""))
    lines.extend(f"  {'ERROR' if e.expired else 'WARNING'} {e.sentence(now)}" for e in coming)
    return "\n".join(lines)


def document(view: Overview) -> dict[str, Any]:
    """The same as JSON: ``/status``'s document plus the rest of the screen."""
    snap, found, failures, coming = view.snap, view.found, view.failures, view.coming
    doc = status_document(snap, node=view.node or "")
    doc.update(
        version=view.version,
        store=view.store,
        listeners=None
        if found is None
        else [
            {
                "name": i.name,
                "host": i.host,
                "port": i.port,
                "answering": i.answering,
                "problem": i.problem,
            }
            for i in found
        ],
        recent_failures=[
            {
                "message_id": f.message_id,
                "cpa_id": f.cpa_id,
                "action": f.action,
                "status": f.status,
                "at": to_db(f.at),
                "reason": f.reason,
            }
            for f in failures
        ],
        expiries=[
            {
                "what": e.what,
                "not_after": to_db(e.not_after),
                "expired": e.expired,
                "text": e.sentence(snap.now),
            }
            for e in coming
        ],
    )
    return doc


def cmd_status(args: argparse.Namespace) -> int:
    """``dkgw status [--json]``."""
    config = config_of(args)
    db = open_store(args)
    try:
        now = utcnow()
        with db.transaction() as cur:
            snap = snapshot(cur, CpaRegistry(db), now)
            failures = recent_failures(cur, now - FAILURE_WINDOW)
    finally:
        db.close()
    found = listeners(config) if config is not None else None
    coming = expiries(snap, own_certificates(config) if config is not None else None)
    view = Overview(
        snap,
        version=version(),
        store=db.description,
        node=config.node_id if config is not None else None,
        found=found,
        failures=failures,
        coming=coming,
    )
    print(json.dumps(document(view), indent=2) if args.json else render(view))
    bad = any(e.expired for e in coming) or any(not i.answering for i in found or ())
    return 1 if bad else 0
