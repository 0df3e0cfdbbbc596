"""File-drop folders: an outbox sent over ebMS, an inbox of received messages (``[[filedrop]]``).

One :class:`FileDrop` per configured exchange polls its folders every
``poll_interval`` seconds.  Every pass runs in the gateway's thread pool: the
outbox first (:mod:`adapters.filedrop.outbox`), then the inbox
(:mod:`adapters.filedrop.inbox`).  The operator's view (folder layout, the
atomic-rename contract, the sidecar, why nothing is sent twice) is
docs/filedrop.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred

from adapters.filedrop.inbox import Inbox
from adapters.filedrop.outbox import Outbox, OutboxSender
from gateway.config import FileDropConfig
from gateway.logfmt import log_event
from gateway.msh.security import MessageSecurity
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database

__all__ = ["FileDrop"]

log = logging.getLogger("dkgw.filedrop")


class FileDrop:
    """One exchange's outbox and inbox folders."""

    #: Called when a pass ran to its end (gateway.monitor.heartbeat; the gateway sets it).
    heartbeat: Callable[[], None] | None = None

    def _beat(self, _: object) -> None:
        if self.heartbeat is not None:
            self.heartbeat()

    def __init__(
        self,
        reactor: Any,
        db: Database,
        registry: CpaRegistry,
        run_in_thread: Any,
        exchange: FileDropConfig,
        *,
        node_id: str,
        security: MessageSecurity | None = None,
        wake: Callable[[], None] = lambda: None,
        sender: OutboxSender | None = None,
    ) -> None:
        self.reactor = reactor
        self.db = db
        self.registry = registry
        self.run_in_thread = run_in_thread
        self.exchange = exchange
        self.node_id = node_id
        self.security = security
        self.wake = wake
        self._stopping = threading.Event()
        self._running = False
        self._prepared = False
        self._call: DelayedCall | None = None
        self._pass: Deferred[None] | None = None
        self.outbox = (
            Outbox(
                db,
                registry,
                exchange,
                security=security,
                stopping=self._stopping,
                queued=self._queued,
                sender=sender,
            )
            if exchange.outbox is not None
            else None
        )
        self.inbox = (
            Inbox(db, exchange, stopping=self._stopping) if exchange.inbox is not None else None
        )

    def start(self) -> None:
        """Begin watching the folders: the first pass runs at once."""
        self._running = True
        self._stopping.clear()
        self._schedule(0.0)

    def stop(self) -> Deferred[None]:
        """Stop watching; a file being sent is finished first."""
        return defer.ensureDeferred(self._stop())

    def poll(self) -> None:
        """Run a pass now, unless one is running (tests and operators' impatience)."""
        if self._running and self._pass is None:
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None
            self._run()

    async def _stop(self) -> None:
        self._running = False
        self._stopping.set()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._pass is not None:
            await self._pass

    def _schedule(self, delay: float) -> None:
        if self._running:
            self._call = self.reactor.callLater(delay, self._run)

    def _run(self) -> None:
        self._call = None
        if not self._running:
            return
        d: Deferred[None] = self.run_in_thread(self._one_pass)
        # Reached only when the pass ran to its end (gateway.monitor.heartbeat).
        d.addCallback(self._beat)
        d.addErrback(self._failed)
        self._pass = d
        d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._pass = None
        self._schedule(self.exchange.poll_interval)

    def _failed(self, failure: Any) -> None:
        log_event(
            log,
            logging.ERROR,
            {
                "event": "filedrop",
                "exchange": self.exchange.name,
                "outcome": "pass-failed",
                "error": failure.getErrorMessage(),
            },
        )

    def _queued(self) -> None:
        """Called in the worker thread for every message queued: wake the delivery worker."""
        self.reactor.callFromThread(self.wake)

    def _one_pass(self) -> None:
        """One pass over the folders (in a worker thread)."""
        if not self._prepared:
            if self.outbox is not None:
                self.outbox.prepare()
            if self.inbox is not None:
                self.inbox.prepare()
            self._prepared = True
        # Each folder on its own: a failing outbox must not hold up the inbox.
        for part in (self.outbox, self.inbox):
            if part is None or self._stopping.is_set():
                continue
            try:
                part.run_pass()
            except Exception as exc:
                log_event(
                    log,
                    logging.ERROR,
                    {
                        "event": "filedrop",
                        "exchange": self.exchange.name,
                        "direction": "out" if part is self.outbox else "in",
                        "outcome": "pass-failed",
                        "error": f"{type(exc).__name__}: {exc}",
                    },
                )
