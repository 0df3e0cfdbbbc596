"""The relay in a running gateway: its timer, and its folders.

Every ``poll_interval`` (and whenever the gateway wakes it) one pass runs in the
store's thread pool: relay what arrived over ebMS, carry ebMS outcomes into
the message log, notice files the recipients took away.  Retention runs once
an hour.  The folders (the gemeente's ``outbox``, the node's
``provider_inbox``) are :class:`~adapters.filedrop.FileDrop` outboxes whose
files the relay sends, so they get the file drop's exactly-once handling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred

from adapters.filedrop import FileDrop
from adapters.stuf.relay import Relay
from gateway.config import FileDropConfig
from gateway.services.loop import LoopService
from gateway.store.database import Database

log = logging.getLogger("dkgw.stuf")

__all__ = ["RelayService"]

PURGE_EVERY = 3600.0


class RelayService(LoopService):
    """Runs a :class:`Relay` on the reactor's timer.

    A :class:`~gateway.services.loop.LoopService` whose tick is one pass in the
    thread pool; a pass with a failed step is logged and does not beat.
    """

    def __init__(
        self,
        reactor: Any,
        db: Database,
        run_in_thread: Any,
        relay: Relay,
        *,
        node_id: str,
        wake_delivery: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(
            lambda: run_in_thread(self._one_pass),
            reactor=reactor,
            interval=relay.config.poll_interval,
            on_failure=lambda f: log.error("event=stuf-pass-failed reason=%s", f.getErrorMessage()),
        )
        self.run_in_thread = run_in_thread
        self.relay = relay
        self.wake_delivery = wake_delivery
        self._last_purge = 0.0
        config = relay.config
        folder = config.outbox if relay.gemeente else config.provider_inbox
        self.folder: FileDrop | None = None
        if folder is not None:
            exchange = FileDropConfig(
                name="stuf-outbox" if relay.gemeente else "stuf-providers",
                cpa_id=config.cpa_id,
                service="stuf",
                outbox=folder,
                poll_interval=config.poll_interval,
                max_file_bytes=config.max_envelope_bytes,
            )
            self.folder = FileDrop(
                reactor,
                db,
                relay.registry,
                run_in_thread,
                exchange,
                node_id=node_id,
                security=relay.security,
                wake=wake_delivery,
                sender=relay,
            )

    def start(self) -> None:
        """Begin: the first pass runs at once."""
        self.startService()

    def startService(self) -> None:
        """Begin: the folder's watch, and the first pass at once."""
        if self.folder is not None:
            self.folder.startService()
        super().startService()

    def _one_pass(self) -> None:
        """Each step runs even when an earlier one failed; the first failure is raised last.

        A pass with a failed step does not count as finished (no heartbeat).
        """
        relay = self.relay
        failure: Exception | None = None

        def step(name: str, run: Callable[[], object]) -> object:
            nonlocal failure
            try:
                return run()
            except Exception as exc:
                log.error("event=stuf-step-failed step=%s reason=%s", name, type(exc).__name__)
                failure = failure or exc
                return None

        if step("received", relay.process_received):
            # An Fo01 or a forwarded message may wait in the delivery queue.
            self.reactor.callFromThread(self.wake_delivery)
        step("statuses", relay.sync_statuses)
        step("read", relay.detect_read)
        if time.monotonic() - self._last_purge >= PURGE_EVERY:
            self._last_purge = time.monotonic()
            step("purge", relay.purge)
        if failure is not None:
            raise failure

    def stop(self) -> Deferred[None]:
        """Stop the timer; a pass in progress is finished first."""
        return self.stopService()

    def stopService(self) -> Deferred[None]:
        """Stop the timer and the folder's watch; fires once their passes are done."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        passing = super().stopService()
        if self.folder is not None:
            await self.folder.stopService()
        await passing
