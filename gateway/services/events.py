"""The fan-out of the gateway's events to its listeners and the loops they wake.

Every inbound request and delivery attempt is reported as a dict of the
fields that are logged (ids, parties, service/action, outcome, sizes; never
content).  :class:`Events` first wakes the loops that may have work because
of it (the webhooks, the StUF relay), then calls each listener (the metrics,
the back-office APIs, the tests) on the reactor thread; a listener that fails
is logged and does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Events", "Listener"]

log = logging.getLogger("dkgw.serve")

#: A listener: called with an event's fields on the reactor thread; must not block.
Listener = Callable[[dict[str, str]], None]


class Events:
    """The gateway's event listeners and the loops woken by events."""

    def __init__(self) -> None:
        self._wakes: list[tuple[Callable[[], object], str | None]] = []
        self._listeners: list[Listener] = []

    def wake_on(self, wake: Callable[[], object], event: str | None = None) -> None:
        """Call ``wake`` before the listeners, on every event or on those named ``event``."""
        self._wakes.append((wake, event))

    def add(self, listener: Listener) -> None:
        """Call ``listener`` with the fields of every event from now on."""
        self._listeners.append(listener)

    def emit(self, fields: dict[str, str]) -> None:
        """Report one event: wake the loops concerned, then tell every listener."""
        for wake, event in self._wakes:
            if event is None or fields.get("event") == event:
                wake()
        for listener in list(self._listeners):
            try:
                listener(fields)
            except Exception:
                log.exception("event listener failed")
