"""The back-office API listener: REST under ``/service/rest/v19``, SOAP under ``/service``.

The paths are ebms-admin's (``Start.java`` mounts the services at
``/service``), so a back office switches from ebms-core by changing only the
host and port it calls.  Every request passes :class:`AuthGuard` first, then
the same hardening as the ebMS endpoint: bounded bodies, an idle timeout,
no form parsing on the reactor, no tracebacks.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.web import resource, server

from adapters.api.auth import UsersFile, parse_basic
from adapters.api.rest import RestApi
from adapters.api.service import BackOffice
from adapters.api.soap import soap_resources
from adapters.api.text import plain
from gateway.config import ApiConfig
from gateway.http.connections import TrackingSite
from gateway.http.deadlines import Deadlines, OnEvent, guard_site
from gateway.http.reply import PendingReply
from gateway.http.server import EbmsChannel, limited_request_factory
from gateway.tls import peer_certificate

log = logging.getLogger("dkgw.api")

__all__ = ["AuthGuard", "api_site"]


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return plain(request, 404, "not found")


class _Branch(resource.Resource):
    """A path segment with children; anything else under it is 404."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return _NotFound()

    def render(self, request: server.Request) -> bytes:
        return plain(request, 404, "not found")


class AuthGuard(resource.Resource):
    """Lets a request through to ``inner`` only when it is authenticated.

    Mutual TLS is enforced in the handshake (the listener's TLS context
    requires a client certificate chaining to ``client_ca``); HTTP Basic here.
    Checking a password costs PBKDF2 time, so it runs in the thread pool.
    """

    isLeaf = True

    def __init__(self, inner: resource.Resource, users: UsersFile | None, run_in_thread: Any):
        super().__init__()
        self.inner = inner
        self.users = users
        self.run_in_thread = run_in_thread

    def render(self, request: server.Request) -> Any:
        if self.users is None:
            return self._forward(request)
        credentials = parse_basic(request.getHeader(b"authorization"))
        if credentials is None:
            return self._challenge(request)
        reply_to = PendingReply(request)
        d = self.run_in_thread(self.users.check, *credentials)

        def decided(ok: bool) -> None:
            if not reply_to.writable:
                return
            if not ok:
                log.warning("event=api-refused reason=bad-credentials user=%r", credentials[0])
                reply_to.finish(self._challenge(request))
                return
            result = self._forward(request)
            if result is not server.NOT_DONE_YET:
                reply_to.finish(result)

        def crash(failure: Any) -> None:
            log.error("event=api-error reason=%s", failure.getErrorMessage())
            if reply_to.writable:
                reply_to.finish(plain(request, 500, "internal error"))

        d.addCallbacks(decided, crash)
        return server.NOT_DONE_YET

    def _forward(self, request: server.Request) -> Any:
        # Walk the tree below the guard as twisted.web would have.
        request.prepath = []
        request.postpath = request.path.split(b"?", 1)[0].split(b"/")[1:]
        target = resource.getChildForRequest(self.inner, request)
        return target.render(request)

    @staticmethod
    def _challenge(request: server.Request) -> bytes:
        request.setHeader(b"WWW-Authenticate", b'Basic realm="dkgw", charset="UTF-8"')
        return plain(request, 401, "authentication required")


def api_tree(backoffice: BackOffice, run_in_thread: Any, reactor: Any) -> resource.Resource:
    """The resources below the root: ``/service/rest/v19/...`` and ``/service/<soap>``."""
    root = _Branch()
    service = _Branch()
    root.putChild(b"service", service)
    rest = _Branch()
    service.putChild(b"rest", rest)
    rest.putChild(b"v19", RestApi(backoffice, run_in_thread, reactor))
    for name, child in soap_resources(backoffice, run_in_thread, reactor).items():
        service.putChild(name, child)
    return root


def api_site(
    backoffice: BackOffice,
    run_in_thread: Any,
    reactor: Any,
    config: ApiConfig,
    *,
    idle_timeout: float = 30.0,
    deadlines: Deadlines | None = None,
    on_event: OnEvent | None = None,
) -> server.Site:
    """The Site for the ``[api]`` listener, with slow-client ``deadlines``."""
    users = UsersFile(config.users_file) if config.users_file is not None else None
    guard = AuthGuard(api_tree(backoffice, run_in_thread, reactor), users, run_in_thread)
    site = TrackingSite(guard, parsePOSTFormSubmission=False)
    site.protocol = EbmsChannel
    site.timeOut = idle_timeout
    site.requestFactory = limited_request_factory(config.max_request_bytes)
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return guard_site(site, deadlines or Deadlines(), "api", on_event)


def client_subject(request: server.Request) -> str | None:
    """The TLS client certificate's subject, for the log line of a request."""
    cert = peer_certificate(request)
    return cert.subject.rfc4514_string() if cert is not None else None
