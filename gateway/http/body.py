"""Reading an HTTP client response's body: capped in size and in time.

Every HTTP client of the gateway (the delivery client, which also carries the
Pings, and the webhook poster) reads the body of a response through
:func:`read_body`.  Its bounds keep a partner or receiver from holding an
attempt, its connection and a slot for good:

- more than ``max_bytes`` aborts the connection and fails with ``too_large``;
- a body that has not ended ``timeout`` seconds after the headers aborts the
  connection and fails with ``timed_out`` (a response's headers are covered
  by the request's own timeout; the body needs its own);
- ``keep=False`` reads and drops the body (only the status counts), so the
  connection can be kept alive.

The connection is aborted rather than closed: a TLS close waits for the peer's
close_notify, which a stalled peer never sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

__all__ = ["BodyReader", "read_body"]


class BodyReader(Protocol):
    """Collects (or drops) at most ``max_bytes`` of a body into ``done``."""

    def __init__(
        self,
        done: Deferred[bytes],
        max_bytes: int,
        too_large: Callable[[int], Exception],
        *,
        keep: bool = True,
    ) -> None:
        self.done: Deferred[bytes] | None = done
        self.max_bytes = max_bytes
        self.too_large = too_large
        self.keep = keep
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done is None:
            return
        self.size += len(data)
        if self.size > self.max_bytes:
            self.fail(self.too_large(self.max_bytes))
            return
        if self.keep:
            self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        done, self.done = self.done, None
        if done is None:
            return
        if reason.check(ResponseDone, PotentialDataLoss):  # type: ignore[no-untyped-call]
            done.callback(b"".join(self.chunks))
        else:
            done.errback(reason)

    def fail(self, exc: Exception) -> None:
        """Give up on the body: abort the connection, fail with ``exc``."""
        done, self.done = self.done, None
        # The transport here is twisted.web's proxy; the connection is behind it.
        transport: Any = getattr(self.transport, "_producer", None) or self.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        elif transport is not None:
            transport.loseConnection()
        if done is not None:
            done.errback(Failure(exc))  # type: ignore[no-untyped-call]


def read_body(
    response: Any,
    reactor: Any,
    *,
    max_bytes: int,
    timeout: float,
    too_large: Callable[[int], Exception],
    timed_out: Callable[[float], Exception],
    keep: bool = True,
) -> Deferred[bytes]:
    """The body of ``response`` (an ``IResponse``), within ``max_bytes`` and ``timeout``.

    Fires with the bytes (``b""`` when ``keep`` is False), or fails with
    ``too_large(max_bytes)``, ``timed_out(timeout)`` or the connection's error.
    Cancelling the Deferred aborts the connection.
    """
    reader: BodyReader | None = None

    def cancel(_: Deferred[bytes]) -> None:
        if reader is not None:
            reader.fail(timed_out(timeout))

    done: Deferred[bytes] = Deferred(cancel)
    reader = BodyReader(done, max_bytes, too_large, keep=keep)
    if response.length == 0:
        done.callback(b"")
        return done
    timer = reactor.callLater(timeout, lambda: reader.fail(timed_out(timeout)))

    def settled(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    done.addBoth(settled)
    response.deliverBody(reader)
    return done
