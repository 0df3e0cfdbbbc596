"""One background loop as a ``twisted.application`` service: a tick, again and again.

Every loop of the gateway (the delivery worker's claim, the Ping schedule, the
webhook passes, the file drops, the StUF relay, retention, the CRL refresh) is
a :class:`LoopService` around one *tick*: a callable that does one round of
work and returns when it is over (a value, or a Deferred that fires then).  The
driver alone owns the timing:

- the first tick runs as the service starts; the next one ``interval`` seconds
  after the previous one ended, so ticks never overlap and a slow store is not
  piled up with transactions;
- :meth:`LoopService.wake` runs a tick now, or right after the running one when
  a tick is in progress (wakes during a tick coalesce into one more tick);
  ``min_gap`` makes wakes closer together than that share one tick;
- a tick that fails is handed to ``on_failure`` (the loop's own log line) and
  the loop goes on: the next tick tries again;
- a tick that ended well calls ``heartbeat`` and records :attr:`last_tick`; a
  loop whose ticks stop ending (a store that hangs) stops beating, which
  ``/ready`` reports (:mod:`gateway.monitor.heartbeat`);
- :meth:`stopService` cancels the timer and fires once the tick in progress,
  if any, has ended; nothing is cut off.  With ``wait_on_stop=False`` it fires
  at once and the tick in progress ends on its own (a download that may take
  its full timeout need not hold up a shutdown).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["LoopService", "Tick"]

Tick = Callable[[], Any]
"""One round of a loop's work: returns when it is over, or a Deferred that fires then."""


class LoopService(Service):
    """Runs ``tick`` every ``interval`` seconds (see the module docstring)."""

    def __init__(
        self,
        tick: Tick,
        *,
        reactor: Any,
        interval: float,
        on_failure: Callable[[Failure], None],
        heartbeat: Callable[[], None] | None = None,
        min_gap: float = 0.0,
        wait_on_stop: bool = True,
    ) -> None:
        self._tick = tick
        self.wait_on_stop = wait_on_stop
        self.reactor = reactor
        self.interval = interval
        self.on_failure = on_failure
        #: Called whenever a tick ended well (gateway.monitor.heartbeat; the gateway sets it).
        self.heartbeat = heartbeat
        #: Wakes closer together than this (seconds) share one tick.
        self.min_gap = min_gap
        self.last_tick: float | None = None
        """When (``reactor.seconds()``) the last tick that ended well ended; None before."""
        self.ticks = 0
        """Ticks that ended well."""
        self._busy = False
        self._again = False
        self._timer: DelayedCall | None = None
        self._last_end = float("-inf")
        self._idle: list[Deferred[None]] = []

    # -- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        """Start ticking; the first tick runs now (unless one is still ending)."""
        super().startService()  # type: ignore[no-untyped-call]
        if self._busy:
            self._again = True  # restarted while the last tick of before was ending
        else:
            self._run()

    def stopService(self) -> Deferred[None]:
        """Stop ticking; fires when the tick in progress, if any, has ended."""
        super().stopService()  # type: ignore[no-untyped-call]
        self._cancel_timer()
        self._again = False
        if not self._busy or not self.wait_on_stop:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    @property
    def ticking(self) -> bool:
        """A tick is in progress."""
        return self._busy

    # -- ticks -----------------------------------------------------------------------

    def wake(self) -> None:
        """Tick now, or right after the tick in progress; nothing once stopped."""
        if not self.running:
            return
        if self._busy:
            self._again = True
            return
        now = self.reactor.seconds()
        gap = self._last_end + self.min_gap - now
        if gap > 0:
            timer = self._timer
            if timer is None or not timer.active() or timer.getTime() > now + gap:
                self._schedule(gap)
            return
        self._run()

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.reactor.callLater(delay, self._due)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _due(self) -> None:
        self._timer = None
        if self.running and not self._busy:
            self._run()

    def _run(self) -> None:
        self._cancel_timer()
        self._again = False
        self._busy = True
        d: Deferred[Any] = defer.maybeDeferred(self._tick)
        d.addCallbacks(self._ended_well, self.on_failure)
        d.addBoth(self._over)

    def _ended_well(self, _: object) -> None:
        self.ticks += 1
        self.last_tick = self.reactor.seconds()
        if self.heartbeat is not None:
            self.heartbeat()

    def _over(self, _: object) -> None:
        # Whatever the tick, its heartbeat or its failure handler did: the loop goes on.
        self._busy = False
        self._last_end = self.reactor.seconds()
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            waiter.callback(None)
        if not self.running:
            return
        if self._again:
            self.wake()
        else:
            self._schedule(self.interval)
