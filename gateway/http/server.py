"""The inbound ebMS endpoint on twisted.web.

The edge does three things and leaves the rest to
:class:`~gateway.msh.inbound.InboundProcessor`: it bounds the request size
(twisted.web has no limit of its own), splits the MIME package into the SOAP
part and payloads, and hands over the TLS client certificate.  Processing
runs in a thread pool because it talks to the store; the reactor only moves
bytes.

Everything refused here is refused with an empty body and one log line that
says why (docs/msh.md, "Hostile input"): other methods and paths, malformed
HTTP framing, stalled or truncated requests, oversized bodies and SOAP parts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.web import http, resource, server

from gateway.ebms.envelope import MAX_ENVELOPE_BYTES
from gateway.ebms.mime import MimeError, MimeLimits, SwaParser, parse_single
from gateway.http.channel import EbmsChannel
from gateway.http.channel import show as _show
from gateway.http.connections import TrackingSite
from gateway.http.deadlines import Deadlines, guard_site
from gateway.http.replies import HttpReply, http_reply
from gateway.http.reply import PendingReply
from gateway.logfmt import log_event
from gateway.msh.inbound import InboundProcessor, InboundRequest
from gateway.store.messages import CHUNK_BYTES, AttachmentRecord
from gateway.tls import peer_certificate

log = logging.getLogger("dkgw.http")

CHUNK = 64 * 1024
#: Seconds a connection may stay silent, mid-request or between requests, before
#: it is closed (twisted.web's own default is 60).  A partner's request arrives
#: in one go; a client that stops sending is broken or an attack.
IDLE_TIMEOUT = 30.0
_FILENAME = re.compile(r'filename="?([^";]+)"?', re.IGNORECASE)

RunInThread = Callable[..., Deferred[Any]]


class SoapPartTooLarge(Exception):
    """The SOAP part is over MAX_ENVELOPE_BYTES; refused without reading it."""

    def __init__(self, size: int) -> None:
        super().__init__(f"SOAP part is {size} bytes, over the limit of {MAX_ENVELOPE_BYTES}")


class LimitedRequest(server.Request):
    """A request that refuses bodies over ``max_bytes`` while they arrive.

    The check runs on the declared Content-Length and again on every chunk
    (chunked transfer has no length up front), so an oversized upload is cut
    off early instead of being spooled to disk first.
    """

    max_bytes: ClassVar[int] = 100 * 1024 * 1024
    _received = 0
    _refused = False
    _complete = False

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
        self._complete = True
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if not self._complete and not self._refused:
            log.warning(
                "refused: connection closed before the request was complete "
                "(%d bytes of its body received)",
                self._received,
            )
        super().connectionLost(reason)

    def _refuse(self) -> None:
        self._refused = True
        log.warning("refused: request body over %d bytes", self.max_bytes)
        channel = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            # Through the channel, not the transport: the channel is the TLS
            # transport's producer and must let go, or the close never happens.
            channel.loseConnection()


def limited_request_factory(max_bytes: int) -> type[LimitedRequest]:
    """A LimitedRequest subclass with its own limit (one per site)."""
    return type("EbmsRequest", (LimitedRequest,), {"max_bytes": max_bytes})


def split_package(
    content_type: str, body_file: Any, limits: MimeLimits
) -> tuple[bytes, tuple[AttachmentRecord, ...]]:
    """(SOAP part, payloads) of a text/xml or multipart/related request body.

    Raises :class:`MimeError` for a package that cannot be parsed and
    :class:`SoapPartTooLarge` before a SOAP part over the envelope limit is
    read into memory.  A payload over one store chunk stays in the parser's
    spool file (the record's content is the
    :class:`~gateway.ebms.mime.ReceivedPart`), so it reaches signature
    checks and the store without being read whole; the caller closes the
    records (:meth:`AttachmentRecord.close`).
    """
    body_file.seek(0)
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/related":
        parser = SwaParser(content_type, limits)
        while chunk := body_file.read(CHUNK):
            parser.feed(chunk)
        message = parser.close()
    elif media == "text/xml":
        # SOAP 1.1 (and so ebMS 2.0) is text/xml; application/soap+xml is SOAP 1.2.
        size = body_file.seek(0, 2)
        if size > MAX_ENVELOPE_BYTES:
            raise SoapPartTooLarge(size)
        body_file.seek(0)
        message = parse_single(content_type, body_file.read())
    else:
        raise MimeError(f"unsupported Content-Type {media!r}")
    try:
        if message.root.size > MAX_ENVELOPE_BYTES:
            raise SoapPartTooLarge(message.root.size)
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
                    content=part if part.size > CHUNK_BYTES else part.read(),
                    filename=match.group(1) if match else None,
                )
            )
        envelope = message.root.read()
    except BaseException:
        message.close()
        raise
    # Every spool but the large payloads' goes now; those belong to the records.
    message.root.close()
    for part in message.attachments.values():
        if part.size <= CHUNK_BYTES:
            part.close()
    return envelope, tuple(attachments)


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

    def render(self, request: server.Request) -> Any:
        # Refused here rather than by twisted.web, whose answers are HTML pages
        # (405 or 501 by method) and unlogged.  A trailing slash is tolerated.
        if request.postpath not in ([], [b""]):
            return _not_found(request)
        if request.method != b"POST":
            log.warning("refused: method %s", _show(request.method or b""))
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"Allow", b"POST")
            request.setHeader(b"Content-Length", b"0")
            return b""
        return super().render(request)

    def render_POST(self, request: server.Request) -> int:
        content_type = (request.getHeader(b"content-type") or b"").decode("latin-1")
        soap_action = request.getHeader(b"soapaction")
        cert = peer_certificate(request)
        # The body now belongs to the worker thread, which closes it: twisted.web
        # closes request.content when the client hangs up, and that may be while
        # the thread is still reading it.
        body, request.content = request.content, None
        reply_to = PendingReply(request)
        d: Deferred[HttpReply] = self.run(
            self._process_and_close,
            content_type,
            soap_action.decode("latin-1") if soap_action else None,
            body,
            cert,
        )
        d.addCallback(self._respond, reply_to)
        d.addErrback(self._crash, reply_to)
        return server.NOT_DONE_YET

    def _process_and_close(
        self, content_type: str, soap_action: str | None, body: Any, cert: Any
    ) -> HttpReply:
        try:
            return self._process(content_type, soap_action, body, cert)
        finally:
            body.close()

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
        except SoapPartTooLarge as exc:
            # The answer parse_envelope's own size check would give, without
            # holding the part in memory first: a bare 500 (docs/msh.md).
            return HttpReply(
                500, log={"outcome": "bad-envelope", "reason": str(exc), "size": str(size)}
            )
        try:
            decision = self.processor.receive(
                InboundRequest(
                    soap_action=soap_action,
                    content_type=content_type,
                    envelope=envelope,
                    attachments=attachments,
                    peer_certificate=cert,
                )
            )
        finally:
            for a in attachments:
                a.close()
        # The MSH said what to answer; the status is this edge's (gateway/http/replies.py).
        reply = http_reply(decision)
        reply.log["size"] = str(size)
        reply.log["parts"] = str(len(attachments))
        return reply

    def _respond(self, reply: HttpReply, reply_to: PendingReply) -> None:
        # log_event quotes values: parser messages and header values come from
        # the peer and must not be able to break or forge a log line.
        log_event(log, logging.INFO, {"event": "inbound", "status": reply.status, **reply.log})
        if reply.queued and self.on_queued is not None:
            self.on_queued()
        if self.on_event is not None:
            self.on_event({"event": "inbound", "status": str(reply.status), **reply.log})
        headers = []
        if reply.content_type:
            headers.append((b"Content-Type", reply.content_type.encode("latin-1")))
        reply_to.send(reply.status, reply.body, headers)

    @staticmethod
    def _crash(failure: Any, reply_to: PendingReply) -> None:
        # Never a traceback to the peer: a bare 500, the details in our log.
        log.error("inbound request failed: %s", failure.getTraceback())
        reply_to.send(500)


def _not_found(request: server.Request) -> bytes:
    log.warning("refused: no resource at %s", _show(request.path or b""))
    request.setResponseCode(http.NOT_FOUND)
    request.setHeader(b"Content-Length", b"0")
    return b""


class _NotFound(resource.Resource):
    """Every URL off the ebMS path: an empty 404 and a log line (not twisted's HTML page)."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return _not_found(request)


class _Branch(resource.Resource):
    """The root and the folders above the ebMS path: known children or 404."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return _NotFound()

    def render(self, request: server.Request) -> bytes:
        return _not_found(request)


def ebms_site(
    processor: InboundProcessor,
    run_in_thread: RunInThread,
    *,
    path: str,
    max_request_bytes: int,
    idle_timeout: float | None = None,
    on_queued: Callable[[], None] | None = None,
    on_event: Callable[[dict[str, str]], None] | None = None,
    deadlines: Deadlines | None = None,
) -> server.Site:
    """A Site serving the ebMS endpoint at ``path`` and nothing else.

    ``idle_timeout`` (seconds, default :data:`IDLE_TIMEOUT`) closes connections
    that stop sending, in the middle of a request or between requests;
    ``deadlines`` bound slow clients and open connections (gateway/http/deadlines.py).
    """
    root = _Branch()
    node: resource.Resource = root
    parts = [p for p in path.strip("/").split("/") if p]
    for segment in parts[:-1]:
        child = _Branch()
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
    # twisted.web would otherwise parse form uploads (multipart/form-data,
    # x-www-form-urlencoded) whole, in memory and on the reactor thread, before
    # the resource could refuse them.
    site = TrackingSite(root, parsePOSTFormSubmission=False)
    site.protocol = EbmsChannel
    site.timeOut = IDLE_TIMEOUT if idle_timeout is None else idle_timeout
    site.requestFactory = limited_request_factory(max_request_bytes)
    site.displayTracebacks = False
    # The access log would record client addresses per request; our own
    # per-message line carries what operators need.
    site.log = lambda request: None  # type: ignore[method-assign]
    return guard_site(site, deadlines or Deadlines(), "ebms", on_event)
