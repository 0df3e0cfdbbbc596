"""A listening port as a service: bound when started, closed when stopped.

Binding happens in :meth:`ListenerService.startService`, so a port that cannot
be bound stops the start with one plain sentence
(:class:`~gateway.errors.StartupError`, ``cannot listen on host:port: reason``)
and the services started before it are stopped again by the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from gateway.errors import StartupError

__all__ = ["ListenerService", "listening"]


def listening(host: str, port: int, listen: Callable[[], Any]) -> Any:
    """``listen()``, with a port that cannot be bound as one plain sentence."""
    try:
        return listen()
    except CannotListenError as exc:
        cause = exc.socketError
        reason = getattr(cause, "strerror", None) or str(cause)
        raise StartupError(f"cannot listen on {host}:{port}: {reason.lower()}") from exc


class ListenerService(Service):
    """Calls ``listen`` (a reactor's ``listenTCP``/``listenSSL``) on start.

    ``on_listening`` is told once the port is bound (the "listening" log line);
    ``after_stop`` runs once it no longer accepts (closing kept-alive
    connections, see :mod:`gateway.http.connections`).
    """

    def __init__(
        self,
        host: str,
        port: int,
        listen: Callable[[], IListeningPort],
        *,
        on_listening: Callable[[], None] | None = None,
        after_stop: Callable[[], object] | None = None,
    ) -> None:
        self.host = host
        self.configured_port = port
        self._listen = listen
        self.on_listening = on_listening
        self.after_stop = after_stop
        self.port: Any = None
        """The bound ``IListeningPort``; None until started."""

    @property
    def bound_port(self) -> int:
        """The TCP port actually bound (useful when the configuration says 0); 0 when not."""
        return int(self.port.getHost().port) if self.port is not None else 0

    def startService(self) -> None:
        """Bind; raises :class:`~gateway.errors.StartupError` when the port cannot be."""
        self.port = listening(self.host, self.configured_port, self._listen)
        super().startService()  # type: ignore[no-untyped-call]
        if self.on_listening is not None:
            self.on_listening()

    def stopService(self) -> Deferred[None]:
        """Stop accepting connections, then run ``after_stop``."""
        super().stopService()  # type: ignore[no-untyped-call]
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.port is not None:
            stopped = self.port.stopListening()
            if stopped is not None:
                await stopped
        if self.after_stop is not None:
            self.after_stop()
