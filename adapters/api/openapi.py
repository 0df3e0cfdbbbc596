"""The OpenAPI 3.0 document of the REST API, built from :data:`adapters.api.rest.ROUTES`.

Paths and methods come from the route table itself, so the document cannot
list an operation the code lacks or miss one it has; this module adds what a
table cannot say (parameters, bodies, schemas, answers).  A test fuzzes the
running API against this document (schemathesis), which keeps the schemas
honest too.
"""

from __future__ import annotations

from typing import Any

from gateway.config import EVENT_TYPES
from gateway.store.messages import InboundStatus, OutboundStatus

__all__ = ["openapi_document"]

API_VERSION = "19"

_TEXT = {"text/plain": {"schema": {"type": "string"}}}
_STATUSES = sorted(
    {s.value for s in InboundStatus}
    | {s.value for s in OutboundStatus}
    | {"UNAUTHORIZED", "NOT_RECOGNIZED", "FORWARDED"}
)

SCHEMAS: dict[str, Any] = {
    "Party": {
        "type": "object",
        "required": ["partyId"],
        "properties": {"partyId": {"type": "string"}, "role": {"type": "string"}},
    },
    "DataSource": {
        "type": "object",
        "required": ["contentType", "content"],
        "properties": {
            "name": {"type": "string"},
            "contentId": {"type": "string"},
            "contentType": {"type": "string", "minLength": 1},
            "content": {"type": "string", "format": "byte"},
        },
    },
    "MessageRequestProperties": {
        "type": "object",
        "required": ["cpaId", "fromPartyId", "service", "action"],
        "properties": {
            "cpaId": {"type": "string", "minLength": 1},
            "fromPartyId": {"type": "string", "minLength": 1},
            "fromRole": {"type": "string"},
            "toPartyId": {"type": "string"},
            "toRole": {"type": "string"},
            "service": {"type": "string", "minLength": 1},
            "action": {"type": "string", "minLength": 1},
            "conversationId": {"type": "string"},
            "messageId": {"type": "string"},
            "refToMessageId": {"type": "string"},
        },
    },
    "MessageRequest": {
        "type": "object",
        "required": ["properties"],
        "properties": {
            "properties": {"$ref": "#/components/schemas/MessageRequestProperties"},
            "dataSources": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/DataSource"},
            },
        },
    },
    "MessageProperties": {
        "type": "object",
        "required": [
            "cpaId",
            "fromParty",
            "toParty",
            "service",
            "action",
            "timestamp",
            "conversationId",
            "messageId",
            "messageStatus",
        ],
        "properties": {
            "cpaId": {"type": "string"},
            "fromParty": {"$ref": "#/components/schemas/Party"},
            "toParty": {"$ref": "#/components/schemas/Party"},
            "service": {"type": "string"},
            "action": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "conversationId": {"type": "string"},
            "messageId": {"type": "string"},
            "refToMessageId": {"type": "string"},
            "messageStatus": {"type": "string", "enum": _STATUSES},
        },
    },
    "Message": {
        "type": "object",
        "required": ["properties", "dataSources"],
        "properties": {
            "properties": {"$ref": "#/components/schemas/MessageProperties"},
            "dataSources": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/DataSource"},
            },
        },
    },
    "MessageStatus": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "timestamp": {"type": "string", "format": "date-time"},
            "status": {"type": "string", "enum": _STATUSES},
        },
    },
    "MessageEvent": {
        "type": "object",
        "required": ["messageId", "type"],
        "properties": {
            "messageId": {"type": "string"},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "errorCode": {
                "type": "string",
                "description": "FAILED: the code of the refusal, when known (a StUF Fo01's)",
            },
            "errorText": {"type": "string", "description": "FAILED: its text"},
        },
    },
    "MessageSummary": {
        "type": "object",
        "description": "A message as the operator's list shows it; absent fields are unknown "
        "or do not apply (no payload content)",
        "required": [
            "messageId",
            "direction",
            "cpaId",
            "fromPartyId",
            "toPartyId",
            "service",
            "action",
            "created",
            "attempts",
            "attemptsLeft",
        ],
        "properties": {
            "messageId": {"type": "string"},
            "direction": {"type": "string", "enum": ["in", "out"]},
            "status": {"type": "string"},
            "statusTime": {"type": "string", "format": "date-time"},
            "cpaId": {"type": "string"},
            "fromPartyId": {"type": "string"},
            "toPartyId": {"type": "string"},
            "service": {"type": "string"},
            "action": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "correlationId": {"type": "string"},
            "attempts": {"type": "integer", "minimum": 0},
            "attemptsLeft": {"type": "integer", "minimum": 0},
            "nextAttempt": {"type": "string", "format": "date-time"},
            "expires": {"type": "string", "format": "date-time"},
            "lastError": {
                "type": "string",
                "description": "the last delivery failure in one sentence",
            },
        },
    },
    "MessageList": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/MessageSummary"}}
        },
    },
    "URLMapping": {
        "type": "object",
        "required": ["source", "destination"],
        "properties": {
            "source": {"type": "string", "format": "uri"},
            "destination": {"type": "string", "format": "uri"},
        },
    },
    "CertificateMapping": {
        "type": "object",
        "required": ["source", "destination"],
        "properties": {
            "source": {"type": "string", "format": "byte", "description": "DER, base64"},
            "destination": {"type": "string", "format": "byte", "description": "DER, base64"},
            "cpaId": {"type": "string", "description": "absent: the mapping holds for every CPA"},
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _path(name: str, description: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    if description:
        p["description"] = description
    return p


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    q: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        q["description"] = description
    return q


_FILTER = [
    _query(n, {"type": "string"})
    for n in (
        "cpaId",
        "fromPartyId",
        "fromRole",
        "toPartyId",
        "toRole",
        "service",
        "action",
        "conversationId",
        "messageId",
        "refToMessageId",
    )
]
_MAX_NR = _query(
    "maxNr", {"type": "integer", "minimum": 0, "maximum": 999999999}, "0 or absent: all"
)
_BOOL = {"type": "boolean"}


def _answers(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    text = {"content": _TEXT}
    descriptions = {
        400: "bad input; the text says why",
        401: "authentication required (when configured)",
        404: "unknown id",
        405: "method not allowed on this path",
        409: "messages are pending on the CPA; the text says how many",
        413: "request body too large",
        422: "the Idempotency-Key was used before with another request",
        502: "the partner answered with an error, or the message could not be delivered",
        504: "the partner did not answer in time",
    }
    out = dict(ok)
    for code in (401, *errors):
        out[str(code)] = {"description": descriptions[code], **text}
    return out


_OK_TEXT = {"200": {"description": "the id", "content": _TEXT}}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 257},
    "description": "a new unique value (a UUID) per message: a retry with the same key "
    "and the same request gets the first answer (the same message id) instead of "
    "storing a second message; the same key with another request is 422.  Kept as "
    "long as the message (docs/api.md, 'Retrying safely')",
}
_NO_CONTENT = {"204": {"description": "done"}}


def _json_answer(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_TEXT_BODY = {"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}}

#: What the route table cannot say, per operationId.
OPERATIONS: dict[str, dict[str, Any]] = {
    "validateCPA": {
        "summary": "Validate a CPA without storing it",
        "requestBody": _TEXT_BODY,
        "responses": _answers(_NO_CONTENT, 400),
    },
    "deleteCPACache": {
        "summary": "Clear the CPA cache (nothing is cached; kept for ebms-core clients)",
        "responses": _answers(_NO_CONTENT),
    },
    "insertCPA": {
        "summary": "Validate and store a CPA; returns its id",
        "parameters": [_query("overwrite", _BOOL)],
        "requestBody": _TEXT_BODY,
        "responses": _answers(_OK_TEXT, 400),
    },
    "getCPAIds": {
        "summary": "Ids of the stored CPAs",
        "responses": _answers(_json_answer({"type": "array", "items": {"type": "string"}}, "ids")),
    },
    "getCPA": {
        "summary": "A stored CPA, byte for byte as imported",
        "parameters": [_path("cpaId")],
        "responses": _answers({"200": {"description": "the CPA XML", "content": _TEXT}}, 404),
    },
    "deleteCPA": {
        "summary": "Delete a CPA",
        "parameters": [_path("cpaId")],
        "responses": _answers(_NO_CONTENT, 404, 409),
    },
    "deleteURLMappingCache": {
        "summary": "Clear the URL mapping cache (nothing is cached)",
        "responses": _answers(_NO_CONTENT),
    },
    "setURLMapping": {
        "summary": "Map a CPA endpoint URL to another URL",
        "requestBody": _json_body(_ref("URLMapping")),
        "responses": _answers(_NO_CONTENT, 400),
    },
    "getURLMappings": {
        "summary": "Every URL mapping",
        "responses": _answers(_json_answer({"type": "array", "items": _ref("URLMapping")}, "")),
    },
    "deleteURLMapping": {
        "summary": "Remove the mapping of a source URL (given unescaped, slashes and all)",
        "parameters": [_path("source", "the source URL")],
        "responses": _answers(_NO_CONTENT, 404),
    },
    "deleteCertificateMappingCache": {
        "summary": "Clear the certificate mapping cache (nothing is cached)",
        "responses": _answers(_NO_CONTENT),
    },
    "setCertificateMapping": {
        "summary": "Map a certificate named in CPAs to another",
        "requestBody": _json_body(_ref("CertificateMapping")),
        "responses": _answers(_NO_CONTENT, 400),
    },
    "getCertificateMappings": {
        "summary": "Every certificate mapping",
        "responses": _answers(
            _json_answer({"type": "array", "items": _ref("CertificateMapping")}, "")
        ),
    },
    "deleteCertificateMapping": {
        "summary": "Remove a certificate mapping; the body is the source certificate (base64)",
        "parameters": [_query("cpaId", {"type": "string"}, "absent: the global mapping")],
        "requestBody": _TEXT_BODY,
        "responses": _answers(_NO_CONTENT, 400, 404),
    },
    "ping": {
        "summary": "Send an ebMS Ping and wait for the Pong",
        "parameters": [_path("cpaId"), _path("fromPartyId"), _path("toPartyId")],
        "responses": _answers(_NO_CONTENT, 400, 404, 502, 504),
    },
    "sendMessage": {
        "summary": "Store a message for delivery; returns its message id",
        "parameters": [
            {
                "name": "X-Correlation-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 200},
                "description": "the back office's id for this request: logged with the "
                "message, its delivery attempts and its acknowledgment",
            },
            _IDEMPOTENCY_KEY,
        ],
        "requestBody": _json_body(_ref("MessageRequest")),
        "responses": _answers(_OK_TEXT, 400, 422),
    },
    "listMessages": {
        "summary": "Business messages, newest first, one page (the operator's list)",
        "parameters": [
            _query("status", {"type": "string"}, "CREATED, DELIVERED, DELIVERY_FAILED, ..."),
            _query("direction", {"type": "string", "enum": ["in", "out"]}),
            _query("cpaId", {"type": "string"}),
            _query("partyId", {"type": "string"}, "sender or receiver"),
            _query("service", {"type": "string"}),
            _query("action", {"type": "string"}),
            _query("since", {"type": "string", "format": "date-time"}, "stored at or after"),
            _query("until", {"type": "string", "format": "date-time"}, "stored before"),
            _query("correlationId", {"type": "string"}),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "default 100"),
            _query("offset", {"type": "integer", "minimum": 0, "maximum": 999999999}),
        ],
        "responses": _answers(_json_answer(_ref("MessageList"), "the page"), 400),
    },
    "retryMessage": {
        "summary": "Attempt an outgoing message now, same MessageId and bytes, while its "
        "TimeToLive lasts",
        "parameters": [_path("messageId")],
        "responses": _answers(
            _json_answer(_ref("MessageSummary"), "the message, due now"), 400, 404
        ),
    },
    "getUnprocessedMessageIds": {
        "summary": "Ids of received messages not yet processed, oldest first",
        "parameters": [*_FILTER, _MAX_NR],
        "responses": _answers(
            _json_answer({"type": "array", "items": {"type": "string"}}, "ids"), 400
        ),
    },
    "resendMessage": {
        "summary": "Send a stored outgoing message again, as a new message; returns its id",
        "parameters": [_path("messageId")],
        "responses": _answers(_OK_TEXT, 400, 404),
    },
    "getMessage": {
        "summary": "A stored message with its payloads",
        "parameters": [_path("messageId"), _query("process", _BOOL, "also mark it processed")],
        "responses": _answers(_json_answer(_ref("Message"), "the message"), 400, 404),
    },
    "processMessage": {
        "summary": "Mark a received message processed",
        "parameters": [_path("messageId")],
        "responses": _answers(_NO_CONTENT, 404),
    },
    "getMessageStatus": {
        "summary": "Ask the partner for the status of an outgoing message (StatusRequest)",
        "parameters": [_path("messageId")],
        "responses": _answers(
            _json_answer(_ref("MessageStatus"), "the partner's answer"), 400, 404, 502, 504
        ),
    },
    "getUnprocessedMessageEvents": {
        "summary": "Unprocessed message events, oldest first",
        "parameters": [
            *_FILTER,
            _query(
                "eventTypes",
                {"type": "array", "items": {"type": "string", "enum": list(EVENT_TYPES)}},
            ),
            _MAX_NR,
        ],
        "responses": _answers(
            _json_answer({"type": "array", "items": _ref("MessageEvent")}, "events"), 400
        ),
    },
    "processMessageEvent": {
        "summary": "Mark a message's events processed (a RECEIVED event also the message)",
        "parameters": [_path("messageId")],
        "responses": _answers(_NO_CONTENT, 404),
    },
    "sendStufMessage": {
        "summary": "iWmo/iJw relay: wrap a bare message in its StUF-GGk envelope, check "
        "and send it (404 when [stuf] has no role)",
        "parameters": [_IDEMPOTENCY_KEY],
        "requestBody": {
            "required": True,
            "content": {"application/xml": {"schema": {"type": "string"}}},
        },
        "responses": _answers(
            _json_answer(
                {
                    "type": "object",
                    "required": ["referentienummer", "functie", "berichtcode", "messageId"],
                    "properties": {
                        "referentienummer": {"type": "string"},
                        "functie": {"type": "string"},
                        "berichtcode": {"type": "string", "enum": ["Di01", "Du01"]},
                        "messageId": {"type": "string"},
                    },
                },
                "sent: the envelope's referentienummer and the ebMS message id",
            ),
            400,
            404,
            422,
        ),
    },
    "getOpenApi": {
        "summary": "This document",
        "responses": _answers(_json_answer({"type": "object"}, "OpenAPI 3.0")),
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of every route in :data:`adapters.api.rest.ROUTES`."""
    from adapters.api.rest import ROUTES

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        template = route.pattern.replace("+}", "}")
        operation = {"operationId": route.operation_id, **OPERATIONS[route.operation_id]}
        operation["responses"] = {**operation["responses"]}
        if any(r.pattern == route.pattern and r.method != route.method for r in ROUTES):
            operation["responses"].setdefault("405", {"description": "method not allowed"})
        paths.setdefault(template, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "dkgw back-office REST API (ebms-core v19 compatible)",
            "version": API_VERSION,
        },
        "servers": [{"url": "/service/rest/v19"}],
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
        },
        "security": [{}, {"basic": []}],
        "paths": paths,
    }
