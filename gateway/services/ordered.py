"""The services of one process, stopped one by one in the reverse of their start.

``twisted.application.service.MultiService`` stops its children all at once.
A gateway must drain in order instead: stop taking new work (the folders, the
listeners) before the worker that carries it out, and close the HTTP client
only once no attempt needs it.  So the order of :meth:`addService` is the
start order, and :meth:`OrderedServices.stopService` waits for each child to
stop before the one added before it.  A child that fails to stop is logged and
the others are still stopped; the first failure is raised at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred

__all__ = ["OnStop", "OrderedServices"]

log = logging.getLogger("dkgw.serve")


class OrderedServices(MultiService):
    """A MultiService that stops its children one after the other, last started first.

    Every child is stopped, started or not, so a start that failed half-way is
    cleaned up by the same :meth:`stopService`; each child's own stop must
    therefore be harmless when it never started.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def add(self, service: Service) -> None:
        """Add ``service``: it starts after, and stops before, those added so far."""
        self.addService(service)  # type: ignore[no-untyped-call]

    def stopService(self) -> Deferred[None]:
        """Stop the children in reverse order, each after the one started after it."""
        Service.stopService(self)  # type: ignore[no-untyped-call]
        return defer.ensureDeferred(self._stop_children())

    async def _stop_children(self) -> None:
        first: BaseException | None = None
        for child in reversed(list(self)):
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception as exc:
                log.error("stopping %s failed: %s", type(child).__name__, exc)
                first = first or exc
        if first is not None:
            raise first


class OnStop(Service):
    """Calls ``stop`` (which may return a Deferred) when stopped: a resource to release."""

    def __init__(self, stop: Callable[[], Any]) -> None:
        self._stop = stop

    def stopService(self) -> Deferred[Any]:
        """Release the resource; harmless when the service never started."""
        super().stopService()  # type: ignore[no-untyped-call]
        return defer.maybeDeferred(self._stop)
