"""Deferred HTTP replies (gateway/http/reply.py) on a real listener on 127.0.0.1.

The resource answers later, as the gateway's resources do when the work runs in
the thread pool; the test decides when.  A client that hangs up first must get
nothing written to its closed request and cause no error.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.web import resource, server

from gateway.http.reply import PendingReply
from tests.gateways import wait_until


class Later(resource.Resource):
    """Every request gets a PendingReply, answered by the test."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[PendingReply] = []

    def render(self, request: server.Request) -> int:
        self.pending.append(PendingReply(request))
        return server.NOT_DONE_YET


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[tuple[Later, int]]:
    later = Later()
    port = reactor.listenTCP(0, server.Site(later), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield later, port.getHost().port
    await port.stopListening()


def ask(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return client


def read_response(client: socket.socket) -> bytes:
    """One response: its head and a body of its Content-Length (blocking; in a thread)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        assert chunk, "the connection closed before the response"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = client.recv(65536)
        assert chunk, "the connection closed in the body"
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest_twisted.ensureDeferred
async def test_the_reply_is_written_with_its_headers_in_order(served) -> None:
    later, port = served
    client = ask(port)
    try:
        assert await wait_until(lambda: len(later.pending) == 1)
        reply = later.pending[0]
        assert reply.writable and not reply.gone
        sent = reply.send(201, b"made\n", [(b"Content-Type", b"text/plain"), (b"X-A", b"1")])
        assert sent and not reply.writable
        assert not reply.send(500)  # one answer per request
        answer = await threads.deferToThread(read_response, client)
    finally:
        client.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 201 Created"
    names = [line.split(b":")[0].lower() for line in lines[1:]]
    assert names.index(b"content-type") < names.index(b"x-a") < names.index(b"content-length")
    assert b"Content-Length: 5" in lines and body == b"made\n"


@pytest.mark.parametrize("method", ["send", "finish"])
@pytest_twisted.ensureDeferred
async def test_a_client_gone_before_the_reply_gets_nothing_and_breaks_nothing(
    served, method: str
) -> None:
    later, port = served
    client = ask(port)
    assert await wait_until(lambda: len(later.pending) == 1)
    client.close()  # hangs up while the answer is being worked out
    reply = later.pending[0]
    assert await wait_until(lambda: reply.gone)
    assert not reply.writable
    if method == "send":
        written = reply.send(200, b"too late\n", [(b"Content-Type", b"text/plain")])
    else:
        written = reply.finish(b"too late\n")
    assert written is False
    assert not reply.request.startedWriting and not reply.request.finished
    # The listener goes on serving the next client.
    again = ask(port)
    try:
        assert await wait_until(lambda: len(later.pending) == 2)
        assert later.pending[1].send(204)
        answer = await threads.deferToThread(read_response, again)
        assert answer.startswith(b"HTTP/1.1 204 No Content")
    finally:
        again.close()
