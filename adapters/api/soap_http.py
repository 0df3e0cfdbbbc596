"""SOAP 1.1 over twisted.web for the back-office services: envelopes, faults, ``?wsdl``.

One :class:`SoapResource` serves one WSDL in ``wsdl/``: GET ``?wsdl`` returns
the file with its ``soap:address`` pointed at the URL the client used, and
POST takes a document/literal wrapped request, checks it against the schema
inside that same WSDL (so the file is the truth of what the endpoint accepts,
as CXF's generated WSDL is for ebms-core), and hands the wrapper element to
the operation's handler.

Errors become SOAP 1.1 faults (SOAP 1.1 §4.4) with HTTP 500 (§6.2):
``soap:Client`` when the request is wrong (bad XML, unknown operation, a
missing element, :class:`BadRequest`, :class:`NotFound`), ``soap:Server`` when
the gateway or the partner failed (:class:`PartnerUnavailable`, "internal
error").  Application faults carry the WSDL's declared detail element
(``<XServiceException><message>``), as ebms-core's CXF endpoints do, so
clients generated from ebms-core's WSDL raise their typed exception.  No
traceback and no payload ever reaches the caller or the log.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred
from twisted.web import resource, server

from adapters.api.service import ApiError, PartnerUnavailable
from adapters.api.text import plain
from gateway.config import ApiConfig
from gateway.http.reply import PendingReply
from gateway.logfmt import log_event
from wsdl import WSDL_DIR
from xmlsafe import UnsafeXmlError, parse_xml
from xmlsafe.schemas import Schema

log = logging.getLogger("dkgw.api")

__all__ = [
    "SOAP_NS",
    "WSDL_DIR",
    "Handler",
    "SoapFault",
    "SoapResource",
    "WsdlDescription",
    "add",
    "boolean_of",
    "in_thread",
    "integer_of",
    "text_of",
    "wsdl_schema",
    "xs_datetime",
]

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
WSDL_SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
XS_NS = "http://www.w3.org/2001/XMLSchema"

#: The WSDL files, next to the ebMS schemas in ``wsdl/xsd`` (as gateway.ebms.envelope finds them).

#: An operation: takes the validated request wrapper element, returns the
#: children of the response wrapper (unqualified elements, as the schema says).
Handler = Callable[[etree._Element], Awaitable[Sequence[etree._Element]]]

_CONTENT_TYPE = b"text/xml; charset=utf-8"
# The Host header goes into the WSDL we serve: only a host name, an IPv4 or a
# bracketed IPv6 address with an optional port is taken from it.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
_CLARK = re.compile(r"'\{[^}]*\}([^']*)'")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class SoapFault(Exception):
    """A SOAP 1.1 fault to answer with; ``str()`` is the faultstring."""

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        http_status: int = 500,
        detail: bool = False,
        operation: str = "-",
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.http_status = http_status
        self.detail = detail
        self.operation = operation  # for the log line, when the request got that far


class WsdlDescription:
    """One WSDL file: its namespace, operations, schema and service address."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = parse_xml(path.read_bytes())
        root = self.tree.getroot()
        self.namespace: str = root.get("targetNamespace") or ""
        self.operations = frozenset(
            str(op.get("name"))
            for op in root.iterfind(f"{{{WSDL_NS}}}portType/{{{WSDL_NS}}}operation")
        )
        _embedded_schema(self.tree, path)
        #: The request and response schema, compiled once per process and
        #: shared by the threads (xmlsafe/schemas.py).
        self.schema = wsdl_schema(path)

    def with_address(self, location: str) -> bytes:
        """The WSDL with every ``soap:address`` set to ``location``."""
        tree = copy.deepcopy(self.tree)
        for address in tree.iter(f"{{{WSDL_SOAP_NS}}}address"):
            address.set("location", location)
        return bytes(etree.tostring(tree, xml_declaration=True, encoding="UTF-8"))


def _embedded_schema(tree: etree._ElementTree, path: Path) -> etree._Element:
    schema = tree.getroot().find(f"{{{WSDL_NS}}}types/{{{XS_NS}}}schema")
    if schema is None:
        raise ValueError(f"{path.name} has no embedded xs:schema")
    return schema


_wsdl_schemas: dict[Path, Schema] = {}
_wsdl_schemas_lock = threading.Lock()


def wsdl_schema(path: Path) -> Schema:
    """The schema embedded in the WSDL file at ``path``, one per process."""
    with _wsdl_schemas_lock:
        schema = _wsdl_schemas.get(path)
        if schema is None:

            def load() -> etree._Element:
                # A copy of the xs:schema element as a document of its own.
                embedded = _embedded_schema(parse_xml(path.read_bytes()), path)
                return etree.fromstring(etree.tostring(embedded))

            schema = _wsdl_schemas[path] = Schema(f"{path.name} (its xs:schema)", load)
        return schema


class SoapResource(resource.Resource):
    """One SOAP 1.1 endpoint (``/service/<name>``) for the operations of one WSDL."""

    isLeaf = True

    def __init__(
        self,
        wsdl: WsdlDescription,
        operations: Mapping[str, Handler],
        fault_element: str,
        run_in_thread: Any,
        *,
        max_bytes: int = ApiConfig.max_request_bytes,
    ) -> None:
        super().__init__()
        if set(operations) != wsdl.operations:
            # The WSDL is what clients are generated from: an operation missing
            # on either side is a bug to catch at start-up, not at the first call.
            raise ValueError(
                f"{wsdl.path.name} declares {sorted(wsdl.operations)}, "
                f"the handlers are {sorted(operations)}"
            )
        self.wsdl = wsdl
        self.operations = dict(operations)
        self.fault_element = fault_element
        self.run_in_thread = run_in_thread
        # The listener already cuts a body off at [api] max_request_bytes while
        # it arrives; this bound is the parser's own (xmlsafe).
        self.max_bytes = max_bytes

    # -- HTTP ------------------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        if request.postpath not in ([], [b""]):
            return plain(request, 404, "not found")
        if request.method == b"GET":
            if _asks_wsdl(request.uri or b""):
                return self._render_wsdl(request)
            request.setHeader(b"Allow", b"GET, POST")
            return plain(request, 405, "POST a SOAP 1.1 request, or GET ?wsdl")
        if request.method == b"POST":
            return self._render_post(request)
        request.setHeader(b"Allow", b"GET, POST")
        return plain(request, 405, "method not allowed")

    def _render_wsdl(self, request: server.Request) -> bytes:
        body = self.wsdl.with_address(_address(request))
        request.setHeader(b"Content-Type", _CONTENT_TYPE)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body

    def _render_post(self, request: server.Request) -> Any:
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if content_type != "text/xml":
            # SOAP 1.2 (application/soap+xml) and MTOM/SwA (multipart/related)
            # are not spoken here; ebms-core's /service/* endpoints are SOAP 1.1.
            fault = SoapFault(
                "Client",
                f"Content-Type {content_type or '(none)'} is not supported: "
                "send a SOAP 1.1 request as text/xml",
                http_status=415,
            )
            self._log(request, "-", fault.http_status, "fault", str(fault), time.monotonic())
            answer = self.fault_envelope(fault)
            request.setResponseCode(fault.http_status)
            request.setHeader(b"Content-Type", _CONTENT_TYPE)
            request.setHeader(b"Content-Length", str(len(answer)).encode())
            return answer
        action = request.getHeader(b"soapaction")
        # The body now belongs to the worker thread, which closes it (as
        # gateway.http.server does): twisted.web may close it on a hang-up.
        body, request.content = request.content, None
        reply_to = PendingReply(request)
        answering = Deferred.fromCoroutine(self._answer(reply_to, body, action))
        answering.addErrback(
            lambda failure: log.error(
                "event=soap-error service=%s reason=%s",
                self.wsdl.path.stem,
                failure.getErrorMessage(),
            )
        )
        return server.NOT_DONE_YET

    async def _answer(self, reply_to: PendingReply, body: Any, action: bytes | None) -> None:
        request = reply_to.request
        started = time.monotonic()
        operation = "-"
        status, outcome, reason = 200, "ok", ""
        try:
            operation, wrapper = await self.run_in_thread(self._read, body, action)
            children = await self.operations[operation](wrapper)
            payload = await self.run_in_thread(self._response, operation, children)
        except SoapFault as fault:
            operation = fault.operation if operation == "-" else operation
            status, outcome, reason = fault.http_status, "fault", str(fault)
            payload = self.fault_envelope(fault)
        except ApiError as exc:
            code = "Server" if isinstance(exc, PartnerUnavailable) else "Client"
            status, outcome, reason = 500, "fault", str(exc)
            payload = self.fault_envelope(SoapFault(code, str(exc), detail=True))
        except Exception:
            # Our log gets the traceback; the caller gets two words.
            log.exception("event=soap-error service=%s op=%s", self.wsdl.path.stem, operation)
            status, outcome, reason = 500, "error", "internal error"
            payload = self.fault_envelope(SoapFault("Server", "internal error"))
        self._log(request, operation, status, outcome, reason, started)
        reply_to.send(status, payload, [(b"Content-Type", _CONTENT_TYPE)])

    def _log(
        self,
        request: server.Request,
        operation: str,
        status: int,
        outcome: str,
        reason: str,
        started: float,
    ) -> None:
        # Operation, outcome and the fault text only: never a request or response body.
        fields: dict[str, Any] = {
            "event": "soap-request",
            "service": self.wsdl.path.stem,
            "op": operation,
            "status": str(status),
            "outcome": outcome,
            "ms": str(round((time.monotonic() - started) * 1000)),
        }
        if reason:
            # One line, bounded: a CPA's findings can run to twenty lines.
            fields["reason"] = " ".join(reason.split())[:300]
        user = request.getUser()
        if user:
            fields["user"] = user.decode("utf-8", "replace")
        log_event(log, logging.INFO if outcome == "ok" else logging.WARNING, fields)

    # -- worker thread ---------------------------------------------------------------

    def _read(self, body: Any, action: bytes | None) -> tuple[str, etree._Element]:
        """Parse and check a request; returns the operation and its wrapper element."""
        try:
            data = body.read(self.max_bytes + 1)
        finally:
            body.close()
        try:
            # huge_text: a dataSource carries its payload inline, base64, and
            # Digikoppeling messages go up to 20 MiB; max_bytes bounds the whole.
            root = parse_xml(data, max_bytes=self.max_bytes, huge_text=True).getroot()
        except UnsafeXmlError as exc:
            raise SoapFault("Client", f"the request is not acceptable XML: {exc}") from None
        if root.tag == f"{{{SOAP12_NS}}}Envelope" or (
            etree.QName(root).localname == "Envelope" and root.tag != f"{{{SOAP_NS}}}Envelope"
        ):
            raise SoapFault("VersionMismatch", "only SOAP 1.1 envelopes are accepted")
        if root.tag != f"{{{SOAP_NS}}}Envelope":
            raise SoapFault("Client", "the request is not a SOAP envelope")
        header = root.find(f"{{{SOAP_NS}}}Header")
        for entry in header if header is not None else ():
            # SOAP 1.1 §4.2.3: a header we must understand but do not is a fault.
            must = entry.get(f"{{{SOAP_NS}}}mustUnderstand") if isinstance(entry.tag, str) else None
            if must in ("1", "true"):
                unknown = etree.QName(entry).localname
                raise SoapFault("MustUnderstand", f"header {unknown} is not understood")
        soap_body = root.find(f"{{{SOAP_NS}}}Body")
        if soap_body is None:
            raise SoapFault("Client", "the envelope has no Body")
        elements = [child for child in soap_body if isinstance(child.tag, str)]
        if len(elements) != 1:
            raise SoapFault("Client", "the Body must hold exactly one operation element")
        wrapper = elements[0]
        name = etree.QName(wrapper)
        if name.namespace != self.wsdl.namespace or name.localname not in self.operations:
            raise SoapFault(
                "Client",
                f"unknown operation {name.localname!r} in namespace {name.namespace or '(none)'}; "
                f"this endpoint has {', '.join(sorted(self.operations))} "
                f"in {self.wsdl.namespace}",
            )
        _check_action(action, name.localname, self.operations)
        errors = self.wsdl.schema.validate(wrapper)
        if errors is not None:
            error = errors.filter_from_errors()[0]
            readable = _CLARK.sub(r"'\1'", error.message)
            raise SoapFault(
                "Client", f"invalid {name.localname} request: {readable}", operation=name.localname
            )
        return name.localname, wrapper

    def _response(self, operation: str, children: Sequence[etree._Element]) -> bytes:
        envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
        body = etree.SubElement(envelope, f"{{{SOAP_NS}}}Body")
        # A prefixed namespace, not a default one: the children are unqualified.
        wrapper = etree.SubElement(
            body, f"{{{self.wsdl.namespace}}}{operation}Response", nsmap={"ns": self.wsdl.namespace}
        )
        wrapper.extend(children)
        return bytes(etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"))

    def fault_envelope(self, fault: SoapFault) -> bytes:
        """The SOAP 1.1 fault envelope for ``fault`` (a service may add to its detail)."""
        envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
        body = etree.SubElement(envelope, f"{{{SOAP_NS}}}Body")
        element = etree.SubElement(body, f"{{{SOAP_NS}}}Fault")
        # faultcode and faultstring are unqualified (SOAP 1.1 §4.4).
        reason = xml_text(str(fault))
        add(element, "faultcode", f"soap:{fault.code}")
        add(element, "faultstring", reason)
        if fault.detail:
            detail = etree.SubElement(element, "detail")
            exception = etree.SubElement(
                detail,
                f"{{{self.wsdl.namespace}}}{self.fault_element}",
                nsmap={"ns": self.wsdl.namespace},
            )
            add(exception, "message", reason)
        return bytes(etree.tostring(envelope, xml_declaration=True, encoding="UTF-8"))


def _check_action(action: bytes | None, operation: str, operations: Mapping[str, Any]) -> None:
    """Refuse a SOAPAction that names another operation than the Body does.

    The WSDL says ``soapAction=""`` (as ebms-core's does), so clients send an
    empty one; a client that puts the operation's name in it (bare, or after
    the namespace) is accepted too.  The Body decides the operation.
    """
    value = (action or b"").decode("latin-1").strip().strip('"').strip()
    if not value:
        return
    last = re.split(r"[/#:]", value)[-1]
    if last != operation and last in operations:
        raise SoapFault(
            "Client",
            f"SOAPAction {value!r} does not match the operation {operation}",
            operation=operation,
        )


def _asks_wsdl(uri: bytes) -> bool:
    """Whether the query string has a ``wsdl`` key (``?wsdl``, ``?WSDL``, ``?wsdl=``).

    Read from the URI: twisted.web's ``request.args`` drops a key without ``=``.
    """
    query = uri.partition(b"?")[2]
    return any(item.partition(b"=")[0].lower() == b"wsdl" for item in query.split(b"&"))


def _address(request: server.Request) -> str:
    """The endpoint URL as the client addressed it: scheme, host, port and path."""
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader("host") or "").strip()
    if not _HOST.match(host):
        local = request.getHost()
        host = f"[{local.host}]" if ":" in local.host else local.host
        host = f"{host}:{local.port}"
    path = (request.path or b"/").decode("ascii", "replace")
    return f"{scheme}://{host}{path}"


def xml_text(text: str) -> str:
    """``text`` with the characters XML 1.0 cannot carry replaced (a fault must always render)."""
    return _NOT_XML.sub("\ufffd", text)


# -- building blocks for the operation modules -----------------------------------------


def in_thread(
    run_in_thread: Any, work: Callable[[etree._Element], list[etree._Element]]
) -> Handler:
    """A handler that runs blocking ``work`` (store access, base64) in the thread pool."""

    async def handler(wrapper: etree._Element) -> Sequence[etree._Element]:
        result: list[etree._Element] = await run_in_thread(work, wrapper)
        return result

    return handler


def text_of(parent: etree._Element | None, name: str) -> str | None:
    """The text of the unqualified child ``name``; None when there is no such child."""
    if parent is None:
        return None
    child = parent.find(name)
    if child is None:
        return None
    return child.text or ""


def boolean_of(parent: etree._Element, name: str) -> bool | None:
    """An ``xs:boolean`` child (already checked by the schema)."""
    value = text_of(parent, name)
    return None if value is None else value.strip() in ("true", "1")


def integer_of(parent: etree._Element, name: str) -> int | None:
    """An ``xs:int`` child (already checked by the schema)."""
    value = text_of(parent, name)
    return None if value is None else int(value.strip())


def add(parent: etree._Element, name: str, value: str | None = None) -> etree._Element:
    """Append the unqualified child ``name`` with ``value`` as its text.

    A character XML cannot hold (XML 1.0 §2.2) becomes U+FFFD: the stores
    refuse such values now (:mod:`gateway.store.identifiers`), but one stored
    before must not make a whole answer fail (lxml raises on it).
    """
    child = etree.SubElement(parent, name)
    if value is not None:
        child.text = _NOT_XML.sub("\ufffd", value)
    return child


def xs_datetime(value: datetime) -> str:
    """An ``xs:dateTime`` in UTC with milliseconds, as ebms-core writes its timestamps."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
