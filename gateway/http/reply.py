"""Deferred HTTP replies: written later, and only to a client that is still there.

A resource that answers from the store's thread pool returns ``NOT_DONE_YET``
and writes its reply when the work is done.  By then the client may have hung
up (a timeout of its own, a deadline of ours in gateway/http/deadlines.py);
writing to that request would raise or, worse, be silently dropped halfway.
:class:`PendingReply` is made while the request is being rendered and watches
``request.notifyFinish()``: the Deferred fails when the connection is lost
before the reply is finished (twisted.web's documented signal), after which
every write is skipped.  The work itself is never cancelled; what it did (the
message stored, the reply queued) stays done and is logged as usual.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.python.failure import Failure
from twisted.web import server

__all__ = ["PendingReply"]

Header = tuple[bytes, bytes]


class PendingReply:
    """The reply still owed to ``request``; make it before returning ``NOT_DONE_YET``."""

    def __init__(self, request: server.Request) -> None:
        self.request = request
        self.gone = False
        """The client went away before the reply was finished."""
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, _: Failure) -> None:
        self.gone = True

    @property
    def writable(self) -> bool:
        """Nothing written yet and the client still there."""
        request = self.request
        return not (self.gone or request.finished or request.startedWriting)

    def send(self, status: int, body: bytes = b"", headers: Iterable[Header] = ()) -> bool:
        """Answer ``status`` with ``headers`` (in that order), Content-Length and ``body``.

        Returns False, writing nothing, when the client is gone or an answer
        was already written.
        """
        if not self.writable:
            return False
        request = self.request
        request.setResponseCode(status)
        for name, value in headers:
            request.setHeader(name, value)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        if body:
            request.write(body)
        request.finish()
        return True

    def finish(self, body: bytes) -> bool:
        """Write ``body`` and finish: the status and headers are set already (a render).

        Returns False, writing nothing, when the client is gone or the reply
        was finished already.
        """
        if self.gone or self.request.finished:
            return False
        if body:
            self.request.write(body)
        self.request.finish()
        return True
