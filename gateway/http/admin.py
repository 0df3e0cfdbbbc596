"""The operator's HTTP listener: ``/metrics``, ``/status``, ``/health`` and ``/ready``.

It is a separate listener from the ebMS endpoint on purpose: partners reach the
endpoint over mutual TLS, while metrics and status are for the operator's own
network (loopback by default) and Prometheus scrapes plain HTTP.  Every answer is
computed in the store's thread pool, never on the reactor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web import http, resource, server

from gateway.http.channel import EbmsChannel
from gateway.http.deadlines import Deadlines, OnEvent, guard_site
from gateway.http.reply import PendingReply

log = logging.getLogger("dkgw.admin")

RunInThread = Callable[..., Deferred[Any]]


class _Computed(resource.Resource):
    """GET answers computed off the reactor by ``produce`` -> (content type, body)."""

    isLeaf = True

    def __init__(self, run: RunInThread, produce: Callable[[], tuple[str, bytes]]) -> None:
        super().__init__()
        self.run = run
        self.produce = produce

    def render_GET(self, request: server.Request) -> int:
        reply_to = PendingReply(request)
        d = self.run(self.produce)

        def respond(result: tuple[str, bytes]) -> None:
            content_type, body = result
            headers = [
                (b"Content-Type", content_type.encode("latin-1")),
                (b"Cache-Control", b"no-store"),
            ]
            reply_to.send(http.OK, body, headers)

        def crash(failure: Any) -> None:
            log.error("admin request %s failed: %s", request.path, failure.getErrorMessage())
            reply_to.send(http.SERVICE_UNAVAILABLE)

        d.addCallbacks(respond, crash)
        return server.NOT_DONE_YET


def _json(request: server.Request, code: int, document: dict[str, Any]) -> bytes:
    body = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    request.setResponseCode(code)
    for name, value in _JSON_HEADERS:
        request.setHeader(name, value)
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


_JSON_HEADERS = ((b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store"))


def _json_reply(reply_to: PendingReply, code: int, document: dict[str, Any]) -> None:
    body = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
    reply_to.send(code, body, _JSON_HEADERS)


class _Health(resource.Resource):
    """Liveness: answered on the reactor thread, so an answer means the reactor runs.

    ``broken`` names damage the process cannot recover from (a 503 then, so a
    supervisor restarts it), such as XML Schema compilation that stopped
    working (xmlsafe/schemas.py).
    """

    isLeaf = True

    def __init__(self, broken: Callable[[], str | None] | None = None) -> None:
        super().__init__()
        self.broken = broken

    def render_GET(self, request: server.Request) -> bytes:
        reason = self.broken() if self.broken is not None else None
        if reason is not None:
            return _json(
                request, http.SERVICE_UNAVAILABLE, {"status": "broken", "reasons": [reason]}
            )
        return _json(request, http.OK, {"status": "alive"})


class _Ready(resource.Resource):
    """Readiness: 200 when ``check`` finds nothing wrong, else 503 with its reasons."""

    isLeaf = True

    def __init__(self, check: Callable[[], Deferred[list[str]]]) -> None:
        super().__init__()
        self.check = check

    def render_GET(self, request: server.Request) -> int:
        reply_to = PendingReply(request)
        d = self.check()

        def respond(reasons: list[str]) -> None:
            if reasons:
                document = {"status": "not ready", "reasons": reasons}
                _json_reply(reply_to, http.SERVICE_UNAVAILABLE, document)
            else:
                _json_reply(reply_to, http.OK, {"status": "ready"})

        def crash(failure: Any) -> list[str]:
            log.error("readiness check failed: %s", failure.getErrorMessage())
            return [f"readiness check failed: {failure.getErrorMessage()}"]

        d.addErrback(crash).addCallback(respond)
        return server.NOT_DONE_YET


def admin_site(
    run_in_thread: RunInThread,
    *,
    metrics: Callable[[], bytes],
    metrics_content_type: str,
    status: Callable[[], dict[str, Any]],
    users_file: Path | None = None,
    ready: Callable[[], Deferred[list[str]]] | None = None,
    broken: Callable[[], str | None] | None = None,
    idle_timeout: float = 30.0,
    deadlines: Deadlines | None = None,
    on_event: OnEvent | None = None,
) -> server.Site:
    """A Site with ``/metrics`` (Prometheus text), ``/status`` (JSON), ``/health`` and ``/ready``.

    ``/health`` is liveness (the process and its reactor answer), ``/ready``
    readiness: ``ready`` gives the reasons the gateway cannot do its work (none:
    200, else 503 with them; docs/operations.md, "Health and readiness").
    ``broken`` gives the reason the process must be restarted, if any (then
    ``/health`` answers 503 too).

    With ``users_file`` every path needs HTTP Basic (the back-office API's users
    file format, :mod:`adapters.api.auth`); ``/health`` too, since a load balancer
    that checks it can send credentials like any other client.

    ``idle_timeout`` and ``deadlines`` bound slow clients and open connections
    (gateway/http/deadlines.py), as on the other listeners.
    """
    root = resource.Resource()
    root.putChild(b"metrics", _Computed(run_in_thread, lambda: (metrics_content_type, metrics())))
    root.putChild(
        b"status",
        _Computed(
            run_in_thread,
            lambda: (
                "application/json",
                json.dumps(status(), indent=2, sort_keys=True).encode() + b"\n",
            ),
        ),
    )
    root.putChild(b"health", _Health(broken))
    if ready is not None:
        root.putChild(b"ready", _Ready(ready))
    top: resource.Resource = root
    if users_file is not None:
        from adapters.api.auth import UsersFile
        from adapters.api.site import AuthGuard

        top = AuthGuard(root, UsersFile(users_file), run_in_thread)
    site = server.Site(top)
    # The ebMS endpoint's channel: malformed framing refused cleanly, HTTP/1.x only.
    site.protocol = EbmsChannel
    site.timeOut = idle_timeout
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return guard_site(site, deadlines or Deadlines(max_connections=32), "admin", on_event)
