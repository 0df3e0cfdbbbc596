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

from twisted.internet.defer import Deferred

from adapters.filedrop.inbox import Inbox
from adapters.filedrop.outbox import Outbox, OutboxSender
from gateway.config import FileDropConfig
from gateway.logfmt import log_event
from gateway.msh.security import MessageSecurity
from gateway.services.loop import LoopService
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database

__all__ = ["FileDrop"]

log = logging.getLogger("dkgw.filedrop")


class FileDrop(LoopService):
    """One exchange's outbox and inbox folders.

    A :class:`~gateway.services.loop.LoopService`: a pass (its tick) runs in
    the thread pool every ``poll_interval`` seconds after the previous one ended.
    """

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
        super().__init__(
            lambda: run_in_thread(self._one_pass),
            reactor=reactor,
            interval=exchange.poll_interval,
            on_failure=self._failed,
        )
        self.db = db
        self.registry = registry
        self.run_in_thread = run_in_thread
        self.exchange = exchange
        self.node_id = node_id
        self.security = security
        self.wake_delivery = wake
        self._stopping = threading.Event()
        self._prepared = False
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
        self.startService()

    def startService(self) -> None:
        """Begin watching the folders: the first pass runs at once."""
        self._stopping.clear()
        super().startService()

    def stop(self) -> Deferred[None]:
        """Stop watching; a file being sent is finished first."""
        return self.stopService()

    def stopService(self) -> Deferred[None]:
        """Stop watching; fires once the pass in progress (its file being sent) is done."""
        self._stopping.set()
        return super().stopService()

    def poll(self) -> None:
        """Run a pass now, unless one is running (tests and operators' impatience)."""
        if not self.ticking:
            self.wake()

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
        self.reactor.callFromThread(self.wake_delivery)

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
