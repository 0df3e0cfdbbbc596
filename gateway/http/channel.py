"""The HTTP/1.1 channel of every listener: malformed framing refused cleanly.

twisted.web's own channel answers a malformed request with a bare 400 and no
log line, and could raise on what follows it (see :class:`EbmsChannel`); the
ebMS endpoint, the back-office API and the admin listener all use this one.
"""

from __future__ import annotations

import logging
import re

from twisted.web import http

log = logging.getLogger("dkgw.http")


def show(value: bytes, limit: int = 100) -> str:
    """Client-supplied bytes made safe for one log line (escaped, cut short)."""
    return repr(value[:limit])[2:-1] + ("..." if len(value) > limit else "")


#: A request line (RFC 9112 §3): method token, target, HTTP-version.  No header line
#: matches (a header name cannot hold the space before the colon), nor a folded one.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [!-~]+ HTTP/(\d)\.(\d)")


class EbmsChannel(http.HTTPChannel):
    """twisted.web's HTTP channel, with a log line for every connection it refuses.

    It also answers a request or header line over twisted.web's 16 KiB line
    limit: ``LineReceiver`` hangs up through the TLS transport behind the
    channel's back, which leaves the TLS shutdown waiting for a producer that
    never lets go, so the connection hung, unanswered, until the idle timeout.

    Once a connection is refused it reads nothing more.  twisted.web stops
    parsing after its 400 only within the bytes of one ``dataReceived``; over
    TLS every further record of the same read arrives in a call of its own, and
    twisted.web went on parsing it as the rest of a request it had already
    given up on: a request line it never stored or a body with no length made
    it raise (an unhandled error and traceback in the log).

    A request line with an HTTP version other than 1.0 or 1.1 is answered 505
    (RFC 9110 §15.6.6), not twisted.web's 400: HTTP/2 does not use request
    lines (RFC 9113 §3.4), so the client is in the wrong place, not malformed.
    """

    _refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        match = _REQUEST_LINE.fullmatch(line)
        if match is not None and match.group(1, 2) not in ((b"1", b"0"), (b"1", b"1")):
            self._refuse(
                b"505 HTTP Version Not Supported",
                f"HTTP version {show(line.rsplit(b' ', 1)[1])}",
            )
            return
        super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().rawDataReceived(data)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's one exit for a malformed request line, header, length
        # or chunk, and for over 500 headers or over 16 KiB of them in all.
        self._refuse(
            b"400 Bad Request", "malformed HTTP request (request line, headers or framing)"
        )

    def _refuse(self, status: bytes, reason: str) -> None:
        """Answer ``status`` with no body, hang up, and ignore whatever else arrives."""
        if self._refused:
            return
        self._refused = True
        log.warning("refused: %s", reason)
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()

    def timeoutConnection(self) -> None:
        if self.requests:
            log.warning("refused: idle for %g s in the middle of a request", self.timeOut)
        else:
            log.debug("closing a connection idle for %g s", self.timeOut)
        super().timeoutConnection()
