"""The purge ``dkgw serve`` runs every ``[retention] interval`` seconds.

One run is :func:`purge_once` (plain, blocking: retention then, when much was
freed, VACUUM on SQLite); :class:`PurgeScheduler` is its Twisted driver, which runs
it in the store's thread pool.  A failing run is logged in one line and the loop goes
on: the next run tries again (docs/operations.md, "Retention and purge").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred

from gateway.logfmt import log_event
from gateway.services.loop import LoopService
from gateway.store.database import Database
from gateway.store.retention import KINDS, PurgeReport, RetentionSettings, purge, reclaim_space
from gateway.store.timeutil import utcnow

__all__ = ["PurgeScheduler", "purge_once"]

log = logging.getLogger("dkgw.retention")


def purge_once(db: Database, settings: RetentionSettings, now: datetime) -> PurgeReport:
    """Apply retention at ``now`` and give freed space back on SQLite."""
    report = purge(db, now, settings)
    if report.total_rows:
        reclaim_space(db)
    return report


class PurgeScheduler(LoopService):
    """Runs :func:`purge_once` every ``settings.interval`` seconds (the first at once).

    A :class:`~gateway.services.loop.LoopService`: never two purges at once,
    and a failed one is logged and tried again at the next interval.
    """

    def __init__(
        self,
        reactor: Any,
        db: Database,
        run_in_thread: Callable[..., Deferred[Any]],
        settings: RetentionSettings,
        *,
        node: str,
        clock: Callable[[], datetime] = utcnow,
        on_report: Callable[[PurgeReport], None] | None = None,
    ) -> None:
        super().__init__(
            self._tick,
            reactor=reactor,
            interval=settings.interval,
            on_failure=lambda f: log.error("purge failed: %s", f.getErrorMessage()),
        )
        self.db = db
        self.run = run_in_thread
        self.settings = settings
        self.node = node
        self.clock = clock
        self.on_report = on_report
        self.runs = 0
        """Purges finished, failed ones included (for tests and /status)."""

    def start(self) -> None:
        """Begin the loop."""
        self.startService()

    def stop(self) -> Deferred[None]:
        """Stop the loop; fires once a purge in flight has finished its batch."""
        return self.stopService()

    def _tick(self) -> Deferred[Any]:
        d: Deferred[Any] = self.run(purge_once, self.db, self.settings, self.clock())
        d.addCallback(self._report)

        def counted(result: object) -> object:
            self.runs += 1
            return result

        d.addBoth(counted)
        return d

    def _report(self, report: PurgeReport) -> None:
        if report.total_rows:
            fields = {"event": "purged", "node": self.node}
            fields.update({kind: str(report.rows[kind]) for kind in KINDS if report.rows[kind]})
            log_event(log, logging.INFO, fields)
        if self.on_report is not None:
            self.on_report(report)
