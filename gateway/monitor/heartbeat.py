"""Heartbeats of the gateway's loops, for ``/ready``.

Each loop (the delivery worker's poll, the Ping schedule's tick, and the passes
of the webhooks, file drops and StUF relay) calls :meth:`Heartbeats.beat` when a
tick ran to its end, whatever its tasks came to: one failed task is the task's
affair, a tick that raised (the store unreachable, a bug) is the loop's.  The
gateway hands each loop a ``heartbeat`` callable (:meth:`Heartbeats.beater`),
which the loop driver (:mod:`gateway.services.loop`) calls.  A loop that has not
ticked within three of its intervals is stuck (a store that hangs) and
makes the gateway "not ready" (docs/operations.md, "Health and readiness").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: A loop is stale after this many of its intervals without a tick.
STALE_AFTER_INTERVALS = 3.0


class Heartbeats:
    """The last tick of every loop that beats; safe to use from any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, float]] = {}  # name -> (at, interval)

    def beat(self, name: str, interval: float) -> None:
        """Record that loop ``name``, which ticks every ``interval`` seconds, ticked now."""
        with self._lock:
            self._last[name] = (self.clock(), interval)

    def beater(self, name: str, interval: float) -> Callable[[], None]:
        """A no-argument ``beat`` for one loop, to hand to that loop."""
        return lambda: self.beat(name, interval)

    def last(self, name: str) -> float | None:
        """When (on :attr:`clock`) loop ``name`` last ticked, None if it never did."""
        with self._lock:
            entry = self._last.get(name)
        return entry[0] if entry is not None else None

    def stale(self, now: float | None = None) -> list[str]:
        """One reason per loop that missed three of its ticks (``delivery: no tick for 9.0 s``)."""
        at = self.clock() if now is None else now
        with self._lock:
            last = dict(self._last)
        reasons = []
        for name, (beat, interval) in sorted(last.items()):
            silent = at - beat
            if silent > STALE_AFTER_INTERVALS * interval:
                reasons.append(f"{name}: no tick for {silent:.1f} s (interval {interval:g} s)")
        return reasons
