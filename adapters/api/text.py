"""Plain-text answers of the API listener (404, 401, 405, ...)."""

from __future__ import annotations

from twisted.web import server

__all__ = ["plain"]


def plain(request: server.Request, status: int, text: str) -> bytes:
    """Set ``status`` and text headers on ``request``; returns the body to write."""
    body = text.encode("utf-8") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body
