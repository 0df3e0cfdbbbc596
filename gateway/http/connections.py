"""A twisted.web Site that knows its open connections, so a stop can close them.

``stopListening`` only stops new connections; kept-alive ones would stay open and
a partner's next request on one would reach a gateway that no longer processes
anything (its store and thread pool are closed) and wait for its read timeout.
Closing them on stop makes the partner see the truth at once and reconnect.
"""

from __future__ import annotations

from typing import Any

from twisted.web import http, server


class TrackingSite(server.Site):
    """A Site whose :meth:`close_connections` drops every open connection.

    It speaks plain HTTP/1.1 channels (Digikoppeling ebMS2 is HTTP/1.1; no HTTP/2
    negotiation), which also gives each tracked protocol its own transport.
    """

    protocol = http.HTTPChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.connections.add(protocol)
            lost = protocol.connectionLost

            def connection_lost(reason: Any) -> None:
                self.connections.discard(protocol)
                lost(reason)

            protocol.connectionLost = connection_lost
        return protocol

    def close_connections(self) -> int:
        """Drop every open connection at once; returns how many there were.

        Called after the requests in flight were answered.  An abort rather than a
        TLS close: the orderly close waits for the partner's close_notify, and a
        partner may meanwhile send its next request on the connection.
        """
        open_now = list(self.connections)
        for protocol in open_now:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
        return len(open_now)
