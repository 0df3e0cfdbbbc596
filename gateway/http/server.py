"""The inbound ebMS endpoint on twisted.web.

The edge does three things and leaves the rest to
:class:`~gateway.msh.inbound.InboundProcessor`: it bounds the request size
(twisted.web has no limit of its own), splits the MIME package into the SOAP
part and payloads, and hands over the TLS client certificate.  Processing
runs in a thread pool because it talks to the store; the reactor only moves
bytes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.web import http, resource, server

from gateway.ebms.mime import MimeError, MimeLimits, SwaParser, parse_single
from gateway.http.connections import TrackingSite
from gateway.msh.inbound import HttpReply, InboundProcessor, InboundRequest
from gateway.store.messages import AttachmentRecord
from gateway.tls import peer_certificate

log = logging.getLogger("dkgw.http")

CHUNK = 64 * 1024
_FILENAME = re.compile(r'filename="?([^";]+)"?', re.IGNORECASE)

RunInThread = Callable[..., Deferred[Any]]


class LimitedRequest(server.Request):
    """A request that refuses bodies over ``max_bytes`` while they arrive.

    The check runs on the declared Content-Length and again on every chunk
    (chunked transfer has no length up front), so an oversized upload is cut
    off early instead of being spooled to disk first.
    """

    max_bytes: ClassVar[int] = 100 * 1024 * 1024
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_bytes:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_bytes:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        log.warning("refused: request body over %d bytes", self.max_bytes)
        transport = self.channel.transport if self.channel else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            transport.loseConnection()


def limited_request_factory(max_bytes: int) -> type[LimitedRequest]:
    """A LimitedRequest subclass with its own limit (one per site)."""
    return type("EbmsRequest", (LimitedRequest,), {"max_bytes": max_bytes})


def split_package(
    content_type: str, body_file: Any, limits: MimeLimits
) -> tuple[bytes, tuple[AttachmentRecord, ...]]:
    """(SOAP part, payloads) of a text/xml or multipart/related request body."""
    body_file.seek(0)
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/related":
        parser = SwaParser(content_type, limits)
        while chunk := body_file.read(CHUNK):
            parser.feed(chunk)
        message = parser.close()
    elif media in ("text/xml", "application/soap+xml", "application/xml"):
        message = parse_single(content_type, body_file.read())
    else:
        raise MimeError(f"unsupported Content-Type {media!r}")
    try:
        attachments = []
        for part in message.attachments.values():
            disposition = next(
                (v for k, v in part.headers if k.lower() == "content-disposition"), ""
            )
            match = _FILENAME.search(disposition)
            attachments.append(
                AttachmentRecord(
                    content_id=part.content_id or "",
                    content_type=part.content_type,
                    content=part.read(),
                    filename=match.group(1) if match else None,
                )
            )
        return message.root.read(), tuple(attachments)
    finally:
        message.close()


class EbmsResource(resource.Resource):
    """POST-only resource at the ebMS path."""

    isLeaf = True

    def __init__(
        self,
        processor: InboundProcessor,
        run_in_thread: RunInThread,
        limits: MimeLimits | None = None,
        on_queued: Callable[[], None] | None = None,
        on_event: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        super().__init__()
        self.on_event = on_event
        self.processor = processor
        self.run = run_in_thread
        self.limits = limits or MimeLimits()
        self.on_queued = on_queued

    def render_GET(self, request: server.Request) -> bytes:
        request.setResponseCode(http.NOT_ALLOWED)
        request.setHeader(b"Allow", b"POST")
        return b""

    def render_POST(self, request: server.Request) -> int:
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        soap_action = request.getHeader(b"soapaction")
        cert = peer_certificate(request)
        d: Deferred[HttpReply] = self.run(
            self._process,
            content_type,
            soap_action.decode("latin-1") if soap_action else None,
            request.content,
            cert,
        )
        d.addCallback(self._respond, request)
        d.addErrback(self._crash, request)
        return server.NOT_DONE_YET

    def render_HEAD(self, request: server.Request) -> bytes:
        return self.render_GET(request)

    def _process(
        self, content_type: str, soap_action: str | None, body: Any, cert: Any
    ) -> HttpReply:
        size = body.seek(0, 2)
        try:
            envelope, attachments = split_package(content_type, body, self.limits)
        except MimeError as exc:
            return HttpReply(
                400, log={"outcome": "bad-mime", "reason": str(exc), "size": str(size)}
            )
        reply = self.processor.handle(
            InboundRequest(
                soap_action=soap_action,
                content_type=content_type,
                envelope=envelope,
                attachments=attachments,
                peer_certificate=cert,
            )
        )
        reply.log["size"] = str(size)
        reply.log["parts"] = str(len(attachments))
        return reply

    def _respond(self, reply: HttpReply, request: server.Request) -> None:
        fields = " ".join(f"{k}={v}" for k, v in reply.log.items())
        log.info("event=inbound status=%d %s", reply.status, fields)
        if reply.queued and self.on_queued is not None:
            self.on_queued()
        if self.on_event is not None:
            self.on_event({"event": "inbound", "status": str(reply.status), **reply.log})
        if request._disconnected:
            return
        request.setResponseCode(reply.status)
        if reply.content_type:
            request.setHeader(b"Content-Type", reply.content_type.encode("latin-1"))
        request.setHeader(b"Content-Length", str(len(reply.body)).encode())
        if reply.body:
            request.write(reply.body)
        request.finish()

    @staticmethod
    def _crash(failure: Any, request: server.Request) -> None:
        # Never a traceback to the peer: a bare 500, the details in our log.
        log.error("inbound request failed: %s", failure.getTraceback())
        if not request._disconnected:
            request.setResponseCode(500)
            request.setHeader(b"Content-Length", b"0")
            request.finish()


def ebms_site(
    processor: InboundProcessor,
    run_in_thread: RunInThread,
    *,
    path: str,
    max_request_bytes: int,
    on_queued: Callable[[], None] | None = None,
    on_event: Callable[[dict[str, str]], None] | None = None,
) -> server.Site:
    """A Site serving the ebMS endpoint at ``path`` and nothing else."""
    root = resource.Resource()
    node = root
    parts = [p for p in path.strip("/").split("/") if p]
    for segment in parts[:-1]:
        child = resource.Resource()
        node.putChild(segment.encode(), child)
        node = child
    node.putChild(
        parts[-1].encode() if parts else b"",
        EbmsResource(
            processor,
            run_in_thread,
            MimeLimits(max_total_bytes=max_request_bytes),
            on_queued=on_queued,
            on_event=on_event,
        ),
    )
    site = TrackingSite(root)
    site.requestFactory = limited_request_factory(max_request_bytes)
    site.displayTracebacks = False
    # The access log would record client addresses per request; our own
    # per-message line carries what operators need.
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
