"""ebms-core's REST API v19 (``/service/rest/v19``) over :class:`BackOffice`.

The resources, JSON field names, status values and HTTP codes are
ebms-core's ``CPARestController``, ``URLMappingRestController``,
``CertificateMappingRestController`` and ``EbMSRestController`` (ebms-core
2.20; docs/api.md): a text answer is ``200 text/plain``, an operation
without one ``204``, bad input ``400`` with a readable text, an unknown id
``404``.  Two additions: ``GET /openapi.json`` (the document
:mod:`adapters.api.openapi` builds from :data:`ROUTES`), and a partner that
does not answer a Ping or StatusRequest is ``502``/``504`` rather than a bare
``500``.

Routing is a table of (method, path pattern, handler); every handler runs in
the store's thread pool, except ping and status, which wait for the partner
without holding a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote

from twisted.internet import defer
from twisted.web import resource, server

from adapters.api.service import (
    ApiError,
    BackOffice,
    BadRequest,
    DataSource,
    Message,
    MessageRequest,
    MessageRequestProperties,
    MessageStatusInfo,
    NotFound,
)
from gateway.http.reply import PendingReply
from gateway.logfmt import log_event
from gateway.store.backoffice import MessageFilter
from gateway.store.messages import Direction
from gateway.store.queries import MAX_LIMIT, MAX_OFFSET, MessageQuery, summary_json
from gateway.tls import peer_certificate

log = logging.getLogger("dkgw.api")

__all__ = ["ROUTES", "RestApi", "Route"]


@dataclass(frozen=True)
class Reply:
    """What a handler answers."""

    status: int
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True)
class Call:
    """One request as a handler sees it."""

    params: dict[str, str]  # path parameters, percent-decoded
    query: dict[str, list[str]]
    body: bytes
    correlation_id: str | None = None  # X-Correlation-ID: the back office's request id
    idempotency_key: str | None = None  # Idempotency-Key: see docs/api.md "Retrying safely"
    user: str = ""  # who is asking: the Basic user or the TLS client's subject

    def flag(self, name: str) -> bool:
        value = self.one(name)
        if value is None or value == "":
            return False
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise BadRequest(f"{name} must be true or false")

    def one(self, name: str) -> str | None:
        values = self.query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise BadRequest(f"{name} given more than once")
        return values[0]

    def max_nr(self) -> int | None:
        value = self.one("maxNr")
        if value is None or value == "":
            return None
        if not value.isdigit() or len(value) > 9:
            raise BadRequest("maxNr must be a whole number from 0")
        return int(value)

    def filter(self) -> MessageFilter:
        return MessageFilter(
            cpa_id=self.one("cpaId") or None,
            from_party=self.one("fromPartyId") or None,
            from_role=self.one("fromRole") or None,
            to_party=self.one("toPartyId") or None,
            to_role=self.one("toRole") or None,
            service=self.one("service") or None,
            action=self.one("action") or None,
            conversation_id=self.one("conversationId") or None,
            message_id=self.one("messageId") or None,
            ref_to_message_id=self.one("refToMessageId") or None,
        )

    def json(self) -> Any:
        return bounded_json(self.body)

    def text(self) -> str:
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the body is not UTF-8 text") from None


#: The deepest nesting of arrays and objects a request body may have.  ebms-core's
#: deepest document (a message request) has four levels; json.loads recurses
#: once per level and stops with RecursionError at about a thousand.
MAX_JSON_DEPTH = 32


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests arrays and objects more than ``limit`` levels deep.

    Walked with a stack, not recursion, and in time linear in the value's size
    (an earlier scan of the raw bytes with a regular expression backtracked
    exponentially on an unterminated string).
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def bounded_json(body: bytes) -> Any:
    """``body`` parsed as JSON, or :class:`BadRequest`: not JSON, or nested too deep.

    The body's size is bounded by the listener (``[api] max_request_bytes``).
    """
    too_deep = BadRequest(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(body)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise too_deep
    return value


Handler = Callable[[BackOffice, Call], Reply]
AsyncHandler = Callable[[BackOffice, Call, Any, Any], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """One operation: ``pattern`` is an OpenAPI path template below ``/service/rest/v19``."""

    method: str
    pattern: str
    operation_id: str
    handler: Handler | None = None
    async_handler: AsyncHandler | None = None

    @property
    def regex(self) -> re.Pattern[str]:
        # {source+} takes the rest of the path (a URL with its slashes); {x} one segment.
        out = re.sub(r"\{(\w+)\+\}", r"(?P<\1>.+)", self.pattern)
        out = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", out)
        return re.compile(f"^{out}$")


def _json(value: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(value).encode("utf-8"), "application/json")


def _text(value: str) -> Reply:
    return Reply(200, value.encode("utf-8"), "text/plain; charset=utf-8")


NO_CONTENT = Reply(204)


def _instant(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _omit_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _party(party_id: str, role: str | None) -> dict[str, Any]:
    return _omit_none({"partyId": party_id, "role": role})


def message_json(message: Message) -> dict[str, Any]:
    """ebms-core's ``Message`` JSON."""
    p = message.properties
    return {
        "properties": _omit_none(
            {
                "cpaId": p.cpa_id,
                "fromParty": _party(p.from_party_id, p.from_role),
                "toParty": _party(p.to_party_id, p.to_role),
                "service": p.service,
                "action": p.action,
                "timestamp": _instant(p.timestamp),
                "conversationId": p.conversation_id,
                "messageId": p.message_id,
                "refToMessageId": p.ref_to_message_id,
                "messageStatus": p.message_status,
            }
        ),
        "dataSources": [
            _omit_none(
                {
                    "name": ds.name,
                    "contentId": ds.content_id,
                    "contentType": ds.content_type,
                    "content": base64.b64encode(ds.content).decode("ascii"),
                }
            )
            for ds in message.data_sources
        ],
    }


def status_json(status: MessageStatusInfo) -> dict[str, Any]:
    """ebms-core's ``MessageStatus`` JSON."""
    return _omit_none({"timestamp": _instant(status.timestamp), "status": status.status})


def _field(data: dict[str, Any], name: str, where: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{where}{name} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{where}{name} must be a string")
    if required and not value:
        raise BadRequest(f"{where}{name} must not be empty")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be a JSON object")
    return value


def message_request(data: Any) -> MessageRequest:
    """A MessageRequest from ebms-core's JSON; BadRequest says what is wrong."""
    data = _object(data, "the body")
    props = _object(data.get("properties"), "properties")
    where = "properties."
    request_props = MessageRequestProperties(
        cpa_id=_field(props, "cpaId", where, required=True) or "",
        from_party_id=_field(props, "fromPartyId", where, required=True) or "",
        from_role=_field(props, "fromRole", where),
        to_party_id=_field(props, "toPartyId", where),
        to_role=_field(props, "toRole", where),
        service=_field(props, "service", where, required=True) or "",
        action=_field(props, "action", where, required=True) or "",
        conversation_id=_field(props, "conversationId", where),
        message_id=_field(props, "messageId", where),
        ref_to_message_id=_field(props, "refToMessageId", where),
    )
    sources = data.get("dataSources") or []
    if not isinstance(sources, list):
        raise BadRequest("dataSources must be a JSON array")
    parsed = []
    for n, item in enumerate(sources):
        where = f"dataSources[{n}]."
        item = _object(item, f"dataSources[{n}]")
        content = _field(item, "content", where, required=False)
        if content is None:
            raise BadRequest(f"{where}content is required")
        try:
            raw = base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}content is not valid base64") from None
        parsed.append(
            DataSource(
                content_type=_field(item, "contentType", where, required=True) or "",
                content=raw,
                name=_field(item, "name", where),
                content_id=_field(item, "contentId", where),
            )
        )
    return MessageRequest(request_props, tuple(parsed))


# -- handlers (blocking: they run in the store's thread pool) ---------------------------


def _validate_cpa(bo: BackOffice, call: Call) -> Reply:
    bo.validate_cpa(call.body)
    return NO_CONTENT


def _insert_cpa(bo: BackOffice, call: Call) -> Reply:
    return _text(bo.insert_cpa(call.body, overwrite=call.flag("overwrite")))


def _cpa_ids(bo: BackOffice, call: Call) -> Reply:
    return _json(bo.cpa_ids())


def _get_cpa(bo: BackOffice, call: Call) -> Reply:
    return _text(bo.get_cpa(call.params["cpaId"]))


def _delete_cpa(bo: BackOffice, call: Call) -> Reply:
    bo.delete_cpa(call.params["cpaId"])
    return NO_CONTENT


def _no_cache(bo: BackOffice, call: Call) -> Reply:
    # ebms-core caches CPAs and mappings per node and needs this to see a change
    # made elsewhere; we read the store on every message, so there is nothing to
    # clear.  Answered as ebms-core does, so its clients keep working.
    return NO_CONTENT


def _set_url_mapping(bo: BackOffice, call: Call) -> Reply:
    data = _object(call.json(), "the body")
    bo.set_url_mapping(
        _field(data, "source", "", required=True) or "",
        _field(data, "destination", "", required=True) or "",
    )
    return NO_CONTENT


def _url_mappings(bo: BackOffice, call: Call) -> Reply:
    return _json([{"source": s, "destination": d} for s, d in bo.url_mappings()])


def _delete_url_mapping(bo: BackOffice, call: Call) -> Reply:
    bo.delete_url_mapping(call.params["source"])
    return NO_CONTENT


def _set_certificate_mapping(bo: BackOffice, call: Call) -> Reply:
    data = _object(call.json(), "the body")
    bo.set_certificate_mapping(
        _field(data, "source", "", required=True) or "",
        _field(data, "destination", "", required=True) or "",
        _field(data, "cpaId", ""),
    )
    return NO_CONTENT


def _certificate_mappings(bo: BackOffice, call: Call) -> Reply:
    return _json(
        [
            _omit_none({"source": s, "destination": d, "cpaId": c})
            for s, d, c in bo.certificate_mappings()
        ]
    )


def _delete_certificate_mapping(bo: BackOffice, call: Call) -> Reply:
    source = call.text().strip()
    if not source:
        raise BadRequest("the body must be the source certificate (base64 DER)")
    bo.delete_certificate_mapping(source, call.one("cpaId") or None)
    return NO_CONTENT


def _send_message(bo: BackOffice, call: Call) -> Reply:
    request = message_request(call.json())
    return _text(
        bo.send_message(
            request,
            correlation_id=call.correlation_id,
            idempotency_key=call.idempotency_key,
            user=call.user,
        )
    )


#: An Idempotency-Key value: an sf-string (RFC 8941 §3.3.3, quoted) as the draft
#: has it, or the same characters bare, as many clients send it.
_IDEMPOTENCY_KEY = re.compile(r'"([\x20-\x21\x23-\x5b\x5d-\x7e]{1,255})"|([\x21-\x7e]{1,255})')


def idempotency_key(value: bytes | None) -> str | None:
    """The Idempotency-Key header's key, None without one; BadRequest if malformed."""
    if value is None:
        return None
    match = _IDEMPOTENCY_KEY.fullmatch(value.decode("latin-1").strip())
    if match is None:
        raise BadRequest(
            "Idempotency-Key must be 1 to 255 printable ASCII characters (quoted or not)"
        )
    return match.group(1) or match.group(2)


def _resend_message(bo: BackOffice, call: Call) -> Reply:
    return _text(bo.resend_message(call.params["messageId"]))


def _time_param(call: Call, name: str) -> datetime | None:
    value = call.one(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be a date-time (2026-01-31T12:00:00Z)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _int_param(call: Call, name: str, default: int, low: int, high: int) -> int:
    value = call.one(name)
    if value is None or value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(value)


def _list_messages(bo: BackOffice, call: Call) -> Reply:
    # Not an ebms-core operation: the operator's list of messages (docs/operations.md).
    direction = call.one("direction") or None
    if direction not in (None, "in", "out"):
        raise BadRequest("direction must be in or out")
    query = MessageQuery(
        status=call.one("status") or None,
        direction=Direction(direction) if direction else None,
        cpa_id=call.one("cpaId") or None,
        party=call.one("partyId") or None,
        service=call.one("service") or None,
        action=call.one("action") or None,
        since=_time_param(call, "since"),
        until=_time_param(call, "until"),
        correlation_id=call.one("correlationId") or None,
        limit=_int_param(call, "limit", 100, 1, MAX_LIMIT),
        offset=_int_param(call, "offset", 0, 0, MAX_OFFSET),
    )
    rows = bo.list_messages(query)
    return _json({"messages": [_omit_none(summary_json(r)) for r in rows]})


def _retry_message(bo: BackOffice, call: Call) -> Reply:
    # Not an ebms-core operation: attempt now, same MessageId and bytes.
    return _json(_omit_none(summary_json(bo.retry_message(call.params["messageId"]))))


def _unprocessed_ids(bo: BackOffice, call: Call) -> Reply:
    return _json(bo.unprocessed_message_ids(call.filter(), call.max_nr()))


def _get_message(bo: BackOffice, call: Call) -> Reply:
    message = bo.get_message(call.params["messageId"], process=call.flag("process"))
    return _json(message_json(message))


def _process_message(bo: BackOffice, call: Call) -> Reply:
    bo.process_message(call.params["messageId"])
    return NO_CONTENT


def _unprocessed_events(bo: BackOffice, call: Call) -> Reply:
    types: list[str] = []
    for value in call.query.get("eventTypes", []):
        types.extend(t for t in value.split(",") if t)
    events = bo.unprocessed_events(call.filter(), types, call.max_nr())
    return _json(
        [
            _omit_none(
                {
                    "messageId": e.message_id,
                    "type": e.type,
                    "errorCode": e.error_code,
                    "errorText": e.error_text,
                }
            )
            for e in events
        ]
    )


def _process_event(bo: BackOffice, call: Call) -> Reply:
    bo.process_event(call.params["messageId"])
    return NO_CONTENT


async def _ping(bo: BackOffice, call: Call, run: Any, reactor: Any) -> Reply:
    p = call.params
    await bo.ping(run, reactor, p["cpaId"], p["fromPartyId"], p["toPartyId"])
    return NO_CONTENT


async def _message_status(bo: BackOffice, call: Call, run: Any, reactor: Any) -> Reply:
    status = await bo.message_status(run, reactor, call.params["messageId"])
    return _json(status_json(status))


def _stuf_send(bo: BackOffice, call: Call) -> Reply:
    # Not an ebms-core operation: the iWmo/iJw relay takes a bare message (or an
    # envelope), wraps, checks and sends it (docs/stuf.md).
    from adapters.stuf.relay import Refused

    if bo.relay is None:
        raise NotFound("the iWmo/iJw relay is not configured ([stuf] role)")
    if not call.body:
        raise BadRequest("the body must be an iWmo/iJw message (XML)")
    relay = bo.relay

    def work(cur: Any) -> tuple[str, str]:
        sent = relay.queue(cur, call.body, file_name=None)
        answer = {
            "referentienummer": sent.referentienummer,
            "functie": sent.functie,
            "berichtcode": sent.berichtcode,
            "messageId": sent.message_id,
        }
        return sent.message_id, json.dumps(answer)

    try:
        if call.idempotency_key is None:
            with bo.db.transaction() as cur:
                answer = work(cur)[1]
        else:
            digest = hashlib.sha256(call.body).hexdigest()
            answer = bo.once(call.user, call.idempotency_key, "sendStufMessage", digest, work)
    except Refused as refused:
        relay.record_refusal(refused, call.body, file_name=None)
        raise BadRequest(f"{refused.code}: {refused.reason}") from None
    return Reply(200, answer.encode("utf-8"), "application/json")


def _openapi(bo: BackOffice, call: Call) -> Reply:
    from adapters.api.openapi import openapi_document

    return _json(openapi_document())


#: Every operation; :mod:`adapters.api.openapi` documents exactly these.  Literal
#: paths come before the templates that would also match them (``/cpas/cache``).
ROUTES: tuple[Route, ...] = (
    Route("POST", "/cpas/validate", "validateCPA", _validate_cpa),
    Route("DELETE", "/cpas/cache", "deleteCPACache", _no_cache),
    Route("POST", "/cpas", "insertCPA", _insert_cpa),
    Route("GET", "/cpas", "getCPAIds", _cpa_ids),
    Route("GET", "/cpas/{cpaId}", "getCPA", _get_cpa),
    Route("DELETE", "/cpas/{cpaId}", "deleteCPA", _delete_cpa),
    Route("DELETE", "/urlMappings/cache", "deleteURLMappingCache", _no_cache),
    Route("POST", "/urlMappings", "setURLMapping", _set_url_mapping),
    Route("GET", "/urlMappings", "getURLMappings", _url_mappings),
    Route("DELETE", "/urlMappings/{source+}", "deleteURLMapping", _delete_url_mapping),
    Route("DELETE", "/certificateMappings/cache", "deleteCertificateMappingCache", _no_cache),
    Route("POST", "/certificateMappings", "setCertificateMapping", _set_certificate_mapping),
    Route("GET", "/certificateMappings", "getCertificateMappings", _certificate_mappings),
    Route(
        "DELETE", "/certificateMappings", "deleteCertificateMapping", _delete_certificate_mapping
    ),
    Route(
        "POST",
        "/ebms/ping/{cpaId}/from/{fromPartyId}/to/{toPartyId}",
        "ping",
        async_handler=_ping,
    ),
    Route("POST", "/ebms/messages", "sendMessage", _send_message),
    Route("GET", "/ebms/messages", "listMessages", _list_messages),
    Route("GET", "/ebms/messages/unprocessed", "getUnprocessedMessageIds", _unprocessed_ids),
    Route("POST", "/ebms/messages/{messageId}/retry", "retryMessage", _retry_message),
    Route("PUT", "/ebms/messages/{messageId}", "resendMessage", _resend_message),
    Route("GET", "/ebms/messages/{messageId}", "getMessage", _get_message),
    Route("PATCH", "/ebms/messages/{messageId}", "processMessage", _process_message),
    Route(
        "GET",
        "/ebms/messages/{messageId}/status",
        "getMessageStatus",
        async_handler=_message_status,
    ),
    Route("GET", "/ebms/events/unprocessed", "getUnprocessedMessageEvents", _unprocessed_events),
    Route("PATCH", "/ebms/events/{messageId}", "processMessageEvent", _process_event),
    Route("POST", "/stuf/messages", "sendStufMessage", _stuf_send),
    Route("GET", "/openapi.json", "getOpenApi", _openapi),
)

_COMPILED = tuple((r, r.regex) for r in ROUTES)


def _split_path(request: server.Request) -> str:
    """The raw path below ``/service/rest/v19`` (still percent-encoded)."""
    raw = request.path.decode("latin-1")
    prefix = "/" + "/".join(p.decode("latin-1") for p in request.prepath)
    return raw[len(prefix) :] if raw.startswith(prefix) else raw


def _query(request: server.Request) -> dict[str, list[str]]:
    _, _, qs = request.uri.partition(b"?")
    try:
        return parse_qs(qs.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the query string is not valid UTF-8") from None


def match(method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
    """The route for ``method`` and raw ``path``, its decoded parameters, and the
    methods the path allows (for 405)."""
    allowed: list[str] = []
    for route, regex in _COMPILED:
        m = regex.match(path)
        if m is None:
            continue
        if route.method != method:
            allowed.append(route.method)
            continue
        return route, {k: unquote(v, errors="strict") for k, v in m.groupdict().items()}, []
    return None, {}, sorted(set(allowed))


def api_user(request: server.Request) -> str:
    """Who is asking, for scoping idempotency keys: Basic user, else TLS client subject."""
    user = request.getUser()
    if user:
        return "basic:" + user.decode("utf-8", "replace")
    cert = peer_certificate(request)
    return f"tls:{cert.subject.rfc4514_string()}" if cert is not None else ""


class RestApi(resource.Resource):
    """The ``/service/rest/v19`` resource."""

    isLeaf = True

    def __init__(self, backoffice: BackOffice, run_in_thread: Any, reactor: Any) -> None:
        super().__init__()
        self.backoffice = backoffice
        self.run_in_thread = run_in_thread
        self.reactor = reactor

    def render(self, request: server.Request) -> Any:
        started = time.monotonic()
        reply_to = PendingReply(request)
        method = request.method.decode("latin-1")
        path = _split_path(request)
        try:
            route, params, allowed = match(method, path)
        except UnicodeDecodeError:
            route, params, allowed = None, {}, []
        if route is None:
            if allowed:
                request.setHeader(b"Allow", ", ".join(allowed).encode())
                self._finish(reply_to, Reply(405), started, "?")
            else:
                not_found = Reply(404, b"not found\n", "text/plain; charset=utf-8")
                self._finish(reply_to, not_found, started, "?")
            return server.NOT_DONE_YET
        d = defer.ensureDeferred(self._run(route, params, request))
        d.addCallback(lambda reply: self._finish(reply_to, reply, started, route.operation_id))
        d.addErrback(self._crash, reply_to, started, route.operation_id)
        return server.NOT_DONE_YET

    async def _run(self, route: Route, params: dict[str, str], request: server.Request) -> Reply:
        try:
            body = request.content.read() if request.content is not None else b""
            correlation = request.getHeader(b"x-correlation-id")
            call = Call(
                params,
                _query(request),
                body,
                correlation_id=correlation.decode("latin-1")[:200] if correlation else None,
                idempotency_key=idempotency_key(request.getHeader(b"idempotency-key")),
                user=api_user(request),
            )
            if route.async_handler is not None:
                return await route.async_handler(
                    self.backoffice, call, self.run_in_thread, self.reactor
                )
            assert route.handler is not None
            reply: Reply = await self.run_in_thread(route.handler, self.backoffice, call)
            return reply
        except ApiError as exc:
            return Reply(exc.status, f"{exc}\n".encode(), "text/plain; charset=utf-8")

    def _crash(self, failure: Any, reply_to: PendingReply, started: float, op: str) -> None:
        log.error("event=api-error operation=%s reason=%s", op, failure.getErrorMessage())
        self._finish(reply_to, Reply(500, b"internal error\n", "text/plain"), started, op)

    @staticmethod
    def _finish(reply_to: PendingReply, reply: Reply, started: float, op: str) -> bytes:
        request = reply_to.request
        fields = {
            "event": "api",
            "operation": op,
            "method": request.method.decode("latin-1"),
            "status": reply.status,
            "ms": round((time.monotonic() - started) * 1000),
            "user": request.getUser().decode("utf-8", "replace") or None,
        }
        if reply.status >= 400 and reply.body:
            fields["reason"] = reply.body.decode("utf-8", "replace").strip()[:200]
        log_event(log, logging.INFO if reply.status < 500 else logging.ERROR, fields)
        headers = [(b"Cache-Control", b"no-store")]
        if reply.content_type:
            headers.append((b"Content-Type", reply.content_type.encode("latin-1")))
        reply_to.send(reply.status, reply.body, headers)
        return b""
