"""Deadlines for slow clients on every HTTP listener, and a cap on open connections.

twisted.web only has an idle timeout, and it restarts with every byte: a client
that sends one header byte every few seconds keeps its connection (and a slot
of the listener) for as long as it likes ("slowloris").  This module adds what
nginx (``client_header_timeout``, ``client_body_timeout``) and Apache
(``mod_reqtimeout``) give a public HTTPS endpoint:

* a **header deadline**: the TLS handshake, the request line and the headers
  must be complete within ``header_timeout`` seconds of the connection's start
  (on a kept-alive connection: of the first byte of the next request);
* a **minimum body rate**: after the headers, at least ``min_body_rate`` bytes
  a second must arrive, averaged over each ``body_rate_window`` seconds;
* a **connection cap**: over ``max_connections`` open connections, a new one is
  closed at once.

A client cut by a deadline gets a ``408 Request Timeout`` when its request line
had arrived (RFC 9110 §15.5.9; nothing was answered yet), else the connection is
just closed; either way one ``event=slow-client`` log line names the listener,
the peer and what was missing.  docs/operations.md, "Slow clients and connection limits", explains
the defaults.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from twisted.web import http, server

from gateway.logfmt import log_event

log = logging.getLogger("dkgw.http")

#: Seconds to wait for the client's side of the TLS close after a cut before
#: the connection is aborted: a slow client rarely answers a close_notify.
CLOSE_GRACE = 2.0
#: A refused connection over the cap is logged at most once per this many
#: seconds (with the count since), so a flood cannot flood the log too.
CAP_LOG_INTERVAL = 10.0
#: A timer that fires this many seconds late means the reactor was busy: input
#: may be waiting unread in the socket, so the verdict waits for one more look.
LATE = 1.0
RECHECK = 0.2

_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

OnEvent = Callable[[dict[str, str]], None]


@dataclass(frozen=True)
class Deadlines:
    """The slow-client limits of one listener (see the module docstring)."""

    header_timeout: float = 20.0
    min_body_rate: int = 4096
    body_rate_window: float = 20.0
    max_connections: int = 512


class DeadlineChannel(http.HTTPChannel):
    """An HTTP channel with a header deadline, a minimum body rate and a connection cap.

    Used as a mixin in front of a site's own channel class (:func:`guard_site`);
    the per-site settings are class attributes of the generated subclass.
    """

    deadlines: ClassVar[Deadlines] = Deadlines()
    listener: ClassVar[str] = "ebms"
    on_event: ClassVar[OnEvent | None] = None
    #: The open connections of the site this class serves (one set per site).
    open_channels: ClassVar[set[Any]] = set()
    cap_state: ClassVar[list[float]] = [0.0, 0.0]  # [last log time, refused since]

    _phase = "headers"  # headers | body | busy | idle | cut
    _deadline_call: Any = None
    _rate_call: Any = None
    _body_bytes = 0
    _window_mark = 0
    _window_start = 0.0
    _phase_start = 0.0
    _due = 0.0
    _rechecked = False

    # -- connection start and end -----------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        if len(self.open_channels) >= self.deadlines.max_connections:
            self._refuse_over_cap()
            return
        self.open_channels.add(self)
        # Runs at TCP accept, before the TLS handshake: the deadline covers it.
        self._start_headers()

    def connectionLost(self, reason: Any) -> None:
        self.open_channels.discard(self)
        self._cancel()
        super().connectionLost(reason)

    def _refuse_over_cap(self) -> None:
        self._phase = "cut"
        state = self.cap_state
        state[1] += 1
        now = time.monotonic()
        if now - state[0] >= CAP_LOG_INTERVAL:
            log_event(
                log,
                logging.WARNING,
                {
                    "event": "connections-full",
                    "listener": self.listener,
                    "peer": _peer(self),
                    "limit": self.deadlines.max_connections,
                    "refused": int(state[1]),
                },
            )
            state[0], state[1] = now, 0.0
        self._emit({"event": "connections-full", "listener": self.listener})
        self.setTimeout(None)
        self._drop()

    def _drop(self) -> None:
        """Abort the connection, without the TLS layer's last words.

        twisted's TLS protocol feeds OpenSSL an end of input when its connection
        goes, and OpenSSL answers a half-done handshake with a decode_error
        alert, which the handshake watch logs as ``event=tls-refused``: one more
        line per dropped connection, a log flood when a flood hits the cap.
        """
        transport = self.transport
        if transport is None:
            return
        if hasattr(transport, "_lostTLSConnection"):
            transport._lostTLSConnection = True
        transport.abortConnection()

    # -- the phases of a request ------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._phase == "cut":
            return
        if self._phase == "idle":
            self._start_headers()
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase == "body":
            self._body_bytes += len(data)
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel()
        self._phase = "body"
        self._body_bytes = self._window_mark = 0
        self._phase_start = self._window_start = time.monotonic()
        if self.deadlines.min_body_rate > 0:
            self._rate_call = self._later(self.deadlines.body_rate_window, self._check_rate)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._cancel()
        self._phase = "busy"
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._phase = "idle"
        super().requestDone(request)
        # Pipelined bytes replayed by requestDone may have begun the next request.
        pending = bool(self.requests) or bool(getattr(self, "_buffer", b""))
        if self._phase == "idle" and pending and not self._disconnecting():
            self._start_headers()

    def _start_headers(self) -> None:
        self._cancel()
        self._phase = "headers"
        self._phase_start = time.monotonic()
        self._deadline_call = self._later(self.deadlines.header_timeout, self._header_late)

    def _later(self, delay: float, check: Callable[[], None]) -> Any:
        self._due = time.monotonic() + delay
        self._rechecked = False
        return self.callLater(delay, check)

    def _busy_reactor(self, call_name: str, check: Callable[[], None]) -> bool:
        """True (and ``check`` again shortly) when the timer fired late, the first time.

        The reactor runs due timers before it reads sockets: after it was busy,
        a client's bytes may be waiting unread, and the verdict must not blame
        the client for the gateway's delay.
        """
        if self._rechecked or time.monotonic() - self._due < LATE:
            return False
        self._rechecked = True
        setattr(self, call_name, self.callLater(RECHECK, check))
        return True

    def _cancel(self) -> None:
        for name in ("_deadline_call", "_rate_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _disconnecting(self) -> bool:
        return self.transport is None or bool(getattr(self.transport, "disconnecting", False))

    # -- the deadlines ----------------------------------------------------------------

    def _header_late(self) -> None:
        self._deadline_call = None
        if self._phase != "headers" or self._busy_reactor("_deadline_call", self._header_late):
            return
        if not getattr(self.transport, "_handshakeDone", True):
            missing = "tls-handshake"
        elif not self.requests:
            missing = "request-line"
        else:
            missing = "headers"
        self._cut(missing, {"deadline": f"{self.deadlines.header_timeout:g}s"})

    def _check_rate(self) -> None:
        self._rate_call = None
        if self._phase != "body" or self._busy_reactor("_rate_call", self._check_rate):
            return
        window = self.deadlines.body_rate_window
        received = self._body_bytes - self._window_mark
        now = time.monotonic()
        # Over the time that really passed: a late check has waited longer.
        rate = received / max(window, now - self._window_start)
        if rate < self.deadlines.min_body_rate:
            self._cut(
                "body",
                {
                    "rate": f"{rate:.0f}B/s",
                    "min_rate": f"{self.deadlines.min_body_rate}B/s",
                    "body_bytes": str(self._body_bytes),
                },
            )
            return
        self._window_mark = self._body_bytes
        self._window_start = now
        self._rate_call = self._later(window, self._check_rate)

    def _cut(self, missing: str, details: dict[str, str]) -> None:
        if self._disconnecting():
            # Already answered and closing (a 400 or 413), and the client has not
            # let go since: no slow client to report, just the end of the wait.
            self._phase = "cut"
            self._cancel()
            self._drop()
            return
        answered = bool(self.requests)
        self._phase = "cut"
        self._cancel()
        self.setTimeout(None)
        after = time.monotonic() - self._phase_start
        log_event(
            log,
            logging.WARNING,
            {
                "event": "slow-client",
                "listener": self.listener,
                "peer": _peer(self),
                "missing": missing,
                "after": f"{after:.1f}s",
                **details,
                "status": "408" if answered else None,
            },
        )
        self._emit({"event": "slow-client", "listener": self.listener, "missing": missing})
        for request in self.requests:
            # This line says why the connection ends; the request's own
            # "closed before the request was complete" line would say it twice.
            if hasattr(request, "_refused"):
                request._refused = True
        transport = self.transport
        if transport is None:
            return
        if missing == "tls-handshake":
            self._drop()  # nothing to say: no TLS to say it in
            return
        if answered:
            transport.write(_REQUEST_TIMEOUT)
        # Through the channel: it is the TLS transport's producer and must let go.
        self.loseConnection()
        self.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and self in self.open_channels:
            self.transport.abortConnection()

    def _emit(self, fields: dict[str, str]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(fields)
            except Exception:
                log.exception("slow-client event listener failed")


def _peer(channel: http.HTTPChannel) -> str:
    try:
        address = channel.transport.getPeer()  # type: ignore[union-attr]
    except Exception:
        return "-"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


def guard_site(
    site: server.Site,
    deadlines: Deadlines,
    listener: str,
    on_event: OnEvent | None = None,
) -> server.Site:
    """Give ``site``'s channels the deadlines and the connection cap; returns ``site``.

    ``listener`` names the listener in log lines and metrics (``ebms``, ``api``,
    ``admin``); ``on_event`` receives ``slow-client`` and ``connections-full``
    events (the metrics count them).
    """
    if deadlines.header_timeout <= 0 or deadlines.body_rate_window <= 0:
        raise ValueError("header_timeout and body_rate_window must be positive")
    if deadlines.min_body_rate < 0 or deadlines.max_connections < 1:
        raise ValueError("min_body_rate must be >= 0 and max_connections >= 1")
    base = site.protocol
    if not (isinstance(base, type) and issubclass(base, http.HTTPChannel)):
        # twisted.web's default factory (HTTP/2 by ALPN when h2 is installed):
        # these listeners speak HTTP/1.1 only, as TrackingSite says.
        base = http.HTTPChannel
    site.protocol = type(  # type: ignore[assignment]
        f"Guarded{base.__name__}",
        (DeadlineChannel, base),
        {
            "deadlines": deadlines,
            "listener": listener,
            "on_event": staticmethod(on_event) if on_event is not None else None,
            "open_channels": set(),
            "cap_state": [0.0, 0.0],
        },
    )
    return site
