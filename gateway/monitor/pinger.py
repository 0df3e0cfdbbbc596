"""Scheduled Pings: one tick of the schedule as a plain function, and its Twisted driver.

Every tick, in one store transaction:

1. bring the watched links in line with the active CPAs (:mod:`gateway.monitor.links`);
2. settle the Pings in flight: a Pong arrived (up, with its round-trip time), the Ping
   could not be delivered or no Pong came within the timeout (down);
3. queue a Ping for each due link that has none in flight.

The Ping itself goes out through the ordinary delivery worker (queued by
:func:`~gateway.msh.outbound.queue_ping`, so it is persisted before it is sent), and
its Pong comes back through the ordinary endpoint, on whichever node the partner
reaches.  That is why settling reads the store rather than waiting on a callback: any
node may settle any link, and the compare-and-set in
:func:`~gateway.store.pings.settle` keeps a verdict from being counted twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from twisted.internet.defer import Deferred

from cpa.model import PartyId, in_force, parse_party
from gateway.logfmt import log_event
from gateway.monitor.links import links_for
from gateway.msh.service import SendError, queue_ping
from gateway.msh.states import TASK_UNDELIVERED, TaskState
from gateway.services.loop import LoopService
from gateway.store.cpas import CpaNotFound, CpaRegistry, select_all
from gateway.store.database import Cursor, Database
from gateway.store.pings import (
    LinkKey,
    LinkStatus,
    claim_due_links,
    in_flight,
    link_statuses,
    mark_sent,
    probe,
    purge_results,
    settle,
    sync_links,
)
from gateway.store.timeutil import utcnow

log = logging.getLogger("dkgw.ping")

__all__ = ["LinkPlanner", "PingScheduler", "PingSettings", "TickReport", "Verdict", "run_tick"]


@dataclass(frozen=True)
class PingSettings:
    """The ``[monitoring]`` options that drive the schedule."""

    enabled: bool = True
    interval: float = 300.0
    """Seconds between Pings on one link (default 5 minutes)."""
    timeout: float = 30.0
    """Seconds a Ping may take to be answered before the link counts as down."""
    jitter: float = 0.1
    """Each interval is stretched or shrunk by up to this fraction, so links spread out."""
    history_days: int = 30

    @property
    def tick(self) -> float:
        """How often the schedule is looked at: often enough to keep the interval."""
        return min(max(self.interval / 10.0, 0.2), 5.0)


@dataclass(frozen=True)
class Verdict:
    """One settled Ping."""

    key: LinkKey
    outcome: str  # "up" | "down"
    rtt: float | None
    reason: str | None
    ping_message_id: str | None
    previous: str | None  # the link's verdict before this one


@dataclass
class TickReport:
    """What one tick did; the driver logs it, updates metrics and wakes the worker."""

    queued: list[tuple[LinkKey, str]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    links: int = 0
    purged: int = 0


class LinkPlanner:
    """The links the active CPAs imply, recomputed only when a CPA changes."""

    def __init__(
        self, registry: CpaRegistry, own_ids: Sequence[PartyId], client_cert_der: bytes | None
    ) -> None:
        self.registry = registry
        self.own_ids = tuple(own_ids)
        self.client_cert_der = client_cert_der
        self._cache: dict[str, tuple[str, list[LinkKey]]] = {}

    def wanted(self, cur: Cursor, now: datetime) -> list[LinkKey]:
        """Links of every CPA that is agreed and within its validity period at ``now``."""
        keys: list[LinkKey] = []
        seen = set()
        for row in select_all(cur):
            if not in_force(row.status, row.start, row.end, now):
                continue
            seen.add(row.cpa_id)
            cached = self._cache.get(row.cpa_id)
            if cached is None or cached[0] != row.sha256:
                try:
                    with cur.savepoint():
                        cpa = self.registry.get_cpa(row.cpa_id, cur)
                        links = links_for(cpa, self.own_ids, self.client_cert_der)
                except CpaNotFound:
                    continue
                except Exception as exc:
                    # One unreadable CPA must not stop the pings of the others; it is
                    # reported once per version (cached without links).
                    log.warning(
                        "event=ping-links-failed cpa_id=%s reason=%s",
                        row.cpa_id,
                        f"{type(exc).__name__}: {exc}"[:300],
                    )
                    links = []
                cached = (row.sha256, links)
                self._cache[row.cpa_id] = cached
            keys.extend(cached[1])
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        return keys


def ping_failure(task_state: str, last_error: str | None) -> str:
    """What a Ping that was not delivered is reported as: its end and its last failure."""
    return f"Ping {task_state}: {last_error}" if last_error else f"Ping {task_state}"


def _next_due(now: datetime, settings: PingSettings, rng: random.Random) -> datetime:
    stretch = 1.0 + rng.uniform(-settings.jitter, settings.jitter)
    return now + timedelta(seconds=settings.interval * stretch)


def _verdict_for(
    cur: Cursor, message_id: str, queued_at: datetime, now: datetime, timeout: float
) -> tuple[str, float | None, str | None] | None:
    """(outcome, rtt, reason) for a Ping in flight, or None while it is still pending."""
    found = probe(cur, message_id)
    if found.pong_at is not None:
        # Round trip: from the first byte of the attempt to the Pong being stored; with a
        # synchronous Pong that is the HTTP exchange, with an asynchronous one it also
        # covers the partner queueing its Pong.
        start = found.attempt_started_at or queued_at
        return "up", max((found.pong_at - start).total_seconds(), 0.0), None
    if found.task_state is None:
        return "down", None, "the Ping is no longer in the store"
    if found.task_state in TASK_UNDELIVERED:
        # "Ping expired: partner rejected our client certificate (...)": the last
        # attempt's failure says why, not only that the Ping ran out of time.
        return "down", None, ping_failure(found.task_state, found.last_error)
    if (now - queued_at).total_seconds() > timeout:
        if found.task_state == TaskState.DONE:
            return "down", None, f"no Pong within {timeout:g} s"
        return "down", None, f"Ping not delivered within {timeout:g} s"
    return None


def run_tick(
    cur: Cursor,
    registry: CpaRegistry,
    planner: LinkPlanner,
    settings: PingSettings,
    *,
    node: str,
    now: datetime,
    rng: random.Random,
    purge: bool = False,
) -> TickReport:
    """One pass over the schedule (see the module docstring), inside ``cur``'s transaction."""
    report = TickReport()
    wanted = planner.wanted(cur, now)
    # New links start at a random point within one interval, so a node with hundreds
    # of CPAs does not ping them all at once after an import or a restart.
    sync_links(
        cur,
        {k: now + timedelta(seconds=rng.uniform(0, settings.interval)) for k in wanted},
        now=now,
    )
    report.links = len(wanted)
    before: dict[LinkKey, LinkStatus] = {s.key: s for s in link_statuses(cur)}

    for key, message_id, queued_at in in_flight(cur):
        verdict = _verdict_for(cur, message_id, queued_at, now, settings.timeout)
        if verdict is None:
            continue
        outcome, rtt, reason = verdict
        if settle(
            cur,
            key,
            message_id,
            outcome=outcome,
            rtt=rtt,
            reason=reason,
            started_at=queued_at,
            now=now,
            next_due=_next_due(now, settings, rng),
            node=node,
        ):
            previous = before[key].last_outcome if key in before else None
            report.verdicts.append(Verdict(key, outcome, rtt, reason, message_id, previous))

    for key in claim_due_links(cur, now=now):
        try:
            # Its own savepoint: a link that cannot be pinged fails alone.
            with cur.savepoint():
                queued = queue_ping(
                    cur,
                    registry,
                    cpa_id=key.cpa_id,
                    from_party=parse_party(key.from_party),
                    to_party=parse_party(key.to_party),
                    clock=lambda: now,
                )
        except Exception as exc:
            # The CPA does not let us ping (or vanished, or is unreadable): that is a
            # finding about this link, not a crash of the schedule.
            detail = str(exc) if isinstance(exc, SendError | CpaNotFound | ValueError) else ""
            reason = f"cannot send a Ping: {detail or type(exc).__name__}"
            if settle(
                cur,
                key,
                None,
                outcome="down",
                rtt=None,
                reason=reason,
                started_at=now,
                now=now,
                next_due=_next_due(now, settings, rng),
                node=node,
            ):
                previous = before[key].last_outcome if key in before else None
                report.verdicts.append(Verdict(key, "down", None, reason, None, previous))
            continue
        mark_sent(cur, key, queued.message_id, now=now)
        report.queued.append((key, queued.message_id))

    if purge:
        report.purged = purge_results(cur, before=now - timedelta(days=settings.history_days))
    return report


class PingScheduler(LoopService):
    """Runs :func:`run_tick` every :attr:`PingSettings.tick` seconds on a thread pool.

    A :class:`~gateway.services.loop.LoopService`: a tick that fails (a store
    outage) is logged and the next one tries again.
    """

    def __init__(
        self,
        *,
        reactor: Any,
        db: Database,
        registry: CpaRegistry,
        run_in_thread: Callable[..., Deferred[Any]],
        settings: PingSettings,
        node: str,
        own_ids: Sequence[PartyId],
        client_cert_der: bytes | None,
        on_report: Callable[[TickReport], None],
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            self._tick,
            reactor=reactor,
            interval=settings.tick,
            on_failure=lambda f: log.error("ping tick failed: %s", f.getErrorMessage()),
        )
        self.db = db
        self.registry = registry
        self.run = run_in_thread
        self.settings = settings
        self.node = node
        self.planner = LinkPlanner(registry, own_ids, client_cert_der)
        self.on_report = on_report
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self._last_purge: datetime | None = None

    def start(self) -> None:
        """Begin ticking (the first tick runs at once)."""
        self.startService()

    def stop(self) -> Deferred[None]:
        """Stop ticking; fires once a tick in flight has finished."""
        return self.stopService()

    def _tick(self) -> Deferred[None]:
        now = self.clock()
        purge = self._last_purge is None or now - self._last_purge > timedelta(hours=1)
        if purge:
            self._last_purge = now

        def work() -> TickReport:
            with self.db.transaction() as cur:
                return run_tick(
                    cur,
                    self.registry,
                    self.planner,
                    self.settings,
                    node=self.node,
                    now=now,
                    rng=self.rng,
                    purge=purge,
                )

        d: Deferred[None] = self.run(work).addCallback(self._report)
        return d

    def _report(self, report: TickReport) -> None:
        for verdict in report.verdicts:
            key = verdict.key
            fields = {
                "event": "ping",
                "cpa_id": key.cpa_id,
                "from": key.from_party,
                "to": key.to_party,
                "outcome": verdict.outcome,
                "rtt": f"{verdict.rtt:.3f}" if verdict.rtt is not None else None,
                "message_id": verdict.ping_message_id,
                "reason": verdict.reason,
            }
            # Changes and failures are news; a steady "up" only at debug level.
            if verdict.outcome == "down":
                level = logging.WARNING
            elif verdict.previous != "up":
                level = logging.INFO
            else:
                level = logging.DEBUG
            log_event(log, level, fields)
        self.on_report(report)
