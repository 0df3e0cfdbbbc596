"""A hand-written mutation loop over the REST and SOAP operations: no input is a 5xx.

Schemathesis (tests/test_api_fuzz.py) generates from the OpenAPI document;
this loop starts from valid requests of every operation and breaks them the
ways back offices do: wrong JSON types, huge values, control characters and
odd unicode, members left out, unknown members, nulls, odd path segments and
query strings; and for SOAP the same inside the XML.  Against two real
``dkgw serve`` gateways (the ``api`` fixture); bounded by a request count and a
fixed seed (``DKGW_MUTATIONS``, ``DKGW_MUTATION_SEED`` to explore further).

A 5xx is allowed only where the API documents it: 502/504 for a partner that
does not answer, and the SOAP 1.1 fault convention (HTTP 500) for a
``soap:Client`` fault or a ``soap:Server`` fault about the partner; never
"internal error".
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import urllib.request
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote

from tests.gateways import SERVICE
from tests.test_api_fuzz import GEMEENTE, NODE, Fuzzed, api  # noqa: F401 (fixture)

EBMS_NS = "http://www.ordina.nl/ebms/2.18"
CPA_NS = "http://www.ordina.nl/cpa/2.18"
URLMAP_NS = "http://www.ordina.nl/cpa/urlMapping/2.18"
CERTMAP_NS = "http://www.ordina.nl/cpa/certificateMapping/2.18"

NASTY: tuple[Any, ...] = (
    None,
    True,
    0,
    -1,
    2**63,
    1e308,
    "",
    " ",
    "\x00",
    "a\x01b",
    "\x7f",
    "\u0085",
    "\ud800",
    "a\udfffb",
    "\udbff\udfff",
    "\ufffe",
    "\U0001f600",
    "é" * 300,
    "x" * 70_000,
    "../../etc/passwd",
    "%00",
    "<x/>",
    "]]>",
    "&amp;",
    "urn:osb:oin:",
    ":",
    "a:b:c:d",
    [],
    {},
    [None],
    {"a": None},
)


def _message() -> dict[str, Any]:
    return {
        "properties": {
            "cpaId": "fuzz-cpa",
            "fromPartyId": GEMEENTE,
            "toPartyId": NODE,
            "service": SERVICE.key(),
            "action": "WMO301",
            "conversationId": "c-1",
        },
        "dataSources": [{"contentType": "application/xml", "content": "PHgvPg==", "name": "a.xml"}],
    }


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _leaves(v, (*path, i))
    return out


def _mutate_json(rng: random.Random, document: Any) -> Any:
    doc = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        paths = _leaves(doc)
        path = rng.choice(paths)
        if not path:
            return rng.choice(NASTY)
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        kind = rng.random()
        if kind < 0.6:
            parent[last] = rng.choice(NASTY)
        elif kind < 0.8 and isinstance(parent, dict):
            del parent[last]
        elif isinstance(parent, dict):
            parent[rng.choice(["extra", "", "\x00", "properties", "x" * 300])] = rng.choice(NASTY)
        else:
            parent.append(rng.choice(NASTY))
    return doc


def _segment(rng: random.Random, good: str) -> str:
    choice = rng.random()
    if choice < 0.3:
        return quote(good, safe="")
    # Cut: a request line over twisted.web's 16 KiB is refused before any resource.
    raw = str(rng.choice(NASTY))[:3000]
    if choice < 0.8:
        return quote(raw.encode("utf-8", "surrogatepass"), safe="")
    return rng.choice(["%", "%zz", "%c3%28", "%ed%a0%80", "%00", "a%2Fb", "." * 3])


def _soap(operation: str, namespace: str, inner: str) -> bytes:
    return (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<soap:Body><ns:{operation} xmlns:ns="{namespace}">{inner}</ns:{operation}>'
        "</soap:Body></soap:Envelope>"
    ).encode("utf-8", "surrogatepass")


def _xml_text(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    # Characters XML cannot carry go in as character references (refused by the parser).
    return "".join(c if c.isprintable() or c in "\t\n" else f"&#{ord(c)};" for c in text)


def _soap_request(rng: random.Random, message_id: str) -> tuple[str, bytes]:
    def val(good: str) -> str:
        return _xml_text(rng.choice(NASTY)) if rng.random() < 0.5 else good

    def opt(name: str, good: str) -> str:
        return "" if rng.random() < 0.2 else f"<{name}>{val(good)}</{name}>"

    choice = rng.randrange(9)
    if choice == 0:
        props = "".join(
            opt(n, g)
            for n, g in (
                ("cpaId", "fuzz-cpa"),
                ("fromPartyId", GEMEENTE),
                ("toPartyId", NODE),
                ("service", SERVICE.key()),
                ("action", "WMO301"),
                ("conversationId", "c"),
                ("messageId", "m@x"),
            )
        )
        source = opt("contentType", "application/xml") + opt("content", "PHgvPg==")
        inner = (
            f"<message><properties>{props}</properties><dataSource>{source}</dataSource></message>"
        )
        return "ebms", _soap("sendMessage", EBMS_NS, inner)
    if choice == 1:
        op = rng.choice(["getMessage", "processMessage", "resendMessage", "processMessageEvent"])
        return "ebms", _soap(op, EBMS_NS, opt("messageId", message_id))
    if choice == 2:
        op = rng.choice(["getUnprocessedMessageIds", "getUnprocessedMessageEvents"])
        flt = opt("cpaId", "fuzz-cpa") + opt("fromParty", "") + opt("service", SERVICE.key())
        return "ebms", _soap(
            op, EBMS_NS, f"<messageFilter>{flt}</messageFilter>" + opt("maxNr", "5")
        )
    if choice == 3:
        inner = opt("source", "https://a.example/") + opt("destination", "https://b.example/")
        return "urlMapping", _soap("setURLMapping", URLMAP_NS, f"<urlMapping>{inner}</urlMapping>")
    if choice == 4:
        return "urlMapping", _soap(
            "deleteURLMapping", URLMAP_NS, opt("sourceURL", "https://a.example/")
        )
    if choice == 5:
        cert = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
        inner = opt("source", cert) + opt("destination", cert) + opt("cpaId", "fuzz-cpa")
        return "certificateMapping", _soap(
            "setCertificateMapping", CERTMAP_NS, f"<certificateMapping>{inner}</certificateMapping>"
        )
    if choice == 6:
        return "cpa", _soap(rng.choice(["getCPA", "deleteCPA"]), CPA_NS, opt("cpaId", "fuzz-cpa"))
    if choice == 7:
        return "cpa", _soap(rng.choice(["validateCPA", "insertCPA"]), CPA_NS, opt("cpa", "<x/>"))
    return "ebms", _soap(
        "ping",
        EBMS_NS,
        opt("cpaId", "fuzz-cpa") + opt("fromPartyId", GEMEENTE) + opt("toPartyId", "x"),
    )


def _rest_request(rng: random.Random, message_id: str) -> tuple[str, str, bytes]:
    choice = rng.randrange(10)
    if choice == 0:
        return "POST", "/ebms/messages", json.dumps(_mutate_json(rng, _message())).encode()
    if choice == 1:
        doc = {"source": "https://a.example/e", "destination": "https://b.example/e"}
        return "POST", "/urlMappings", json.dumps(_mutate_json(rng, doc)).encode()
    if choice == 2:
        cert = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
        doc = {"source": cert, "destination": cert, "cpaId": "fuzz-cpa"}
        return "POST", "/certificateMappings", json.dumps(_mutate_json(rng, doc)).encode()
    if choice == 3:
        method = rng.choice(["GET", "PATCH", "PUT"])
        return method, f"/ebms/messages/{_segment(rng, message_id)}", b""
    if choice == 4:
        return "GET", f"/ebms/messages/{_segment(rng, message_id)}/status", b""
    if choice == 5:
        names = ["cpaId", "fromPartyId", "service", "maxNr", "eventTypes", "messageId", "limit",
                 "offset", "since", "until", "direction", "status", "process"]  # fmt: skip
        query = "&".join(
            f"{rng.choice(names)}={_segment(rng, '1')}" for _ in range(rng.randint(1, 4))
        )
        path = rng.choice(
            ["/ebms/messages/unprocessed", "/ebms/events/unprocessed", "/ebms/messages"]
        )
        return "GET", f"{path}?{query}", b""
    if choice == 6:
        return "DELETE", f"/urlMappings/{_segment(rng, 'https://a.example/e')}", b""
    if choice == 7:
        body = rng.choice([b"", b"%%%", b"\x00", "é".encode(), b"PHgvPg==", b"A" * 5000])
        return "DELETE", f"/certificateMappings?cpaId={_segment(rng, 'fuzz-cpa')}", body
    if choice == 8:
        parts = [_segment(rng, v) for v in ("fuzz-cpa", GEMEENTE, NODE)]
        return "POST", "/ebms/ping/{}/from/{}/to/{}".format(*parts), b""
    body = rng.choice(
        [b"", b"<x/>", b"\x00" * 10, "<a>\ud800</a>".encode("utf-8", "surrogatepass")]
    )
    return rng.choice(["POST", "GET", "DELETE"]), f"/cpas/{_segment(rng, 'fuzz-cpa')}", body


def _send(url: str, method: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except HTTPError as error:
        return error.code, error.read()


def _is_server_error(status: int, body: bytes) -> bool:
    if status < 500 or status in (502, 504):
        return False
    if b"internal error" in body or b"Traceback" in body:
        return True
    if status == 500 and b"Fault" in body:
        # SOAP 1.1: every fault is HTTP 500; soap:Client is the client's mistake.
        return b"soap:Client" not in body and b"not answer" not in body
    return True


def test_mutated_requests_never_get_a_server_error(api: Fuzzed) -> None:  # noqa: F811
    count = int(os.environ.get("DKGW_MUTATIONS", "300"))
    rng = random.Random(int(os.environ.get("DKGW_MUTATION_SEED", "20261207")))  # noqa: S311
    found: list[str] = []
    seen: dict[str, int] = {}
    for _ in range(count):
        if rng.random() < 0.6:
            method, path, body = _rest_request(rng, api.message_id)
            url = f"{api.url}/service/rest/v19{path}"
            headers = {"Content-Type": "application/json"}
        else:
            service, body = _soap_request(rng, api.message_id)
            method, url = "POST", f"{api.url}/service/{service}"
            headers = {"Content-Type": "text/xml; charset=utf-8"}
        try:
            status, answer = _send(url, method, body, headers)
        except (URLError, ConnectionError) as exc:
            found.append(f"{method} {url[:300]} {body[:300]!r}: no answer ({exc})")
            continue
        outcome = f"{url.split('/service/')[1].split('?')[0][:25]} {status}"
        seen[outcome] = seen.get(outcome, 0) + 1
        if _is_server_error(status, answer):
            found.append(f"{method} {url[:300]} {body[:300]!r}: {status} {answer[:300]!r}")
    print(sorted(seen.items()))  # with -s: what the loop reached
    assert not found, "\n".join(found[:30])
