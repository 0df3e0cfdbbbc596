"""Fuzz targets: every parser and decision a peer or a back office can reach.

Each target takes one input (bytes) and drives one entry point the way the
gateway does.  The contract it checks is the module's own: a parser raises only
its documented error type (developers' guide, "Protocol core without I/O"), a
decision (the inbound MSH, the CPA validator) raises nothing for bad input.
Any other exception escaping is a finding, unless :mod:`tests.fuzz.known`
lists it as one already being fixed.

The targets import nothing of atheris: :mod:`tests.fuzz.run` instruments and
runs them, and ``tests/test_fuzz.py`` replays the regression inputs with plain
pytest.  docs/fuzzing.md says what each target checks.
"""

from __future__ import annotations

import atexit
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.fuzz import known, material

#: Small limits, so that one input can neither take long nor use much memory.
MAX_INPUT = 256 * 1024


@dataclass(frozen=True)
class Target:
    """One fuzz target: what it drives and which exceptions its contract allows."""

    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    doc: str
    #: Extra seed inputs made at run time (they need this run's keys: signed, encrypted).
    seeds: Callable[[], Iterable[bytes]] | None = None


class ContractViolation(AssertionError):
    """A target's own check failed (not an exception from the code under test)."""


def check(target: Target, data: bytes, *, strict: bool = False) -> None:
    """Run ``target`` on ``data``; raise when something outside its contract escapes.

    ``strict`` reports the findings :mod:`tests.fuzz.known` accepts as well (to
    minimise one of them).
    """
    try:
        target.run(data)
    except target.allowed:
        return
    except ContractViolation:
        raise
    except Exception as exc:
        if not strict and known.accepted(target.name, exc) is not None:
            return
        raise


@functools.cache
def scratch() -> Path:
    """A temporary directory for this process (spool files, the SQLite store).

    Inside ``$DKGW_FUZZ_SCRATCH`` when set (tests/fuzz/run.py sets it).
    """
    base = os.environ.get("DKGW_FUZZ_SCRATCH")
    path = Path(tempfile.mkdtemp(prefix="dkgw-fuzz-", dir=base))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _split_line(data: bytes, limit: int = 400) -> tuple[str, bytes]:
    """(first line as text, the rest): the header line some targets take first."""
    line, sep, rest = data.partition(b"\n")
    if not sep or len(line) > limit:
        return "", data
    return line.rstrip(b"\r").decode("latin-1"), rest


def _with_line(line: str, body: bytes) -> bytes:
    return line.encode("latin-1") + b"\n" + body


# -- MIME multipart (gateway/ebms/mime.py via the HTTP edge's split_package) ----------------


def _mime_limits() -> Any:
    from gateway.ebms.mime import MimeLimits

    return MimeLimits(
        max_total_bytes=MAX_INPUT * 2,
        max_parts=16,
        max_header_bytes=4096,
        max_preamble_bytes=4096,
        spool_memory_bytes=8192,
        spool_dir=str(scratch()),
    )


def run_mime(data: bytes) -> None:
    """First line: the Content-Type header; the rest: the body, fed in chunks."""
    from gateway.ebms.mime import SwaParser

    content_type, body = _split_line(data)
    # The push parser as the HTTP edge feeds it, in chunks of a size the input picks.
    step = 1 + (len(body) % 97) * 7
    parser = SwaParser(content_type or "multipart/related; boundary=b", _mime_limits())
    for at in range(0, len(body), step):
        parser.feed(body[at : at + step])
    message = parser.close()
    try:
        for part in (message.root, *message.attachments.values()):
            content = part.read()
            if len(content) != part.size:
                raise ContractViolation(f"part size {part.size} but {len(content)} bytes read")
            part.content_id  # noqa: B018 - reading the header must not fail
    finally:
        message.close()


def run_edge(data: bytes) -> list[Any]:
    """The HTTP edge's split into SOAP part and payloads (text/xml or multipart)."""
    from gateway.http.server import split_package

    content_type, body = _split_line(data)
    envelope, attachments = split_package(content_type, io.BytesIO(body), _mime_limits())
    return [envelope, attachments]


def run_edge_closed(data: bytes) -> None:
    """run_edge, closing what it returns (spooled payloads)."""
    _, attachments = run_edge(data)
    for record in attachments:
        record.close()


def _mime_seeds() -> Iterable[bytes]:
    for sign in (True, False):
        m = material.signed_message(sign=sign)
        yield _with_line(m.content_type, m.body)
        yield _with_line("text/xml; charset=UTF-8", m.envelope)


# -- the SOAP/ebMS envelope (gateway/ebms/envelope.py) ------------------------------------


def run_envelope(data: bytes) -> None:
    from gateway.ebms.envelope import parse_envelope

    parse_envelope(data)


# -- signature verification (gateway/ebms/xmldsig.py) --------------------------------------


def run_xmldsig(data: bytes) -> None:
    """Verify a (mutated) signed SOAP part against the municipality's certificate."""
    from gateway.ebms.xmldsig import signature_references, verify_envelope

    certificate = material.gemeente_signing_key().certificate
    parts = {material.PAYLOAD_CID: lambda: io.BytesIO(material.PAYLOAD)}
    verify_envelope(data, parts, certificate, material.POLICY)
    # Only a verified message gets here in the MSH: its references go into a signed ack.
    signature_references(data)


def _xmldsig_seeds() -> Iterable[bytes]:
    yield material.signed_message().envelope


# -- decryption (gateway/ebms/xmlenc.py) --------------------------------------------------


@functools.cache
def _node_encryption_certificate() -> Any:
    from gateway.commands.demo import NODE

    return material.load_cert(material.pki() / NODE[0] / "encryption.pem")


def run_xmlenc(data: bytes) -> None:
    """Decrypt the input; every eighth input is also encrypted and decrypted back."""
    from gateway.ebms.xmlenc import AES256_GCM, decrypt_part, encrypt_part

    if len(data) % 8 == 0:
        # The sending direction: any payload a back office hands over must come back intact.
        document = encrypt_part(
            data,
            content_id=material.PAYLOAD_CID,
            mime_type="application/octet-stream",
            recipient_cert=_node_encryption_certificate(),
            data_algorithm=AES256_GCM,
        )
        back = decrypt_part(document, private_key=material.node_encryption_key())
        if back.content != data:
            raise ContractViolation("encrypt_part then decrypt_part changed the payload")
    decrypt_part(
        data,
        private_key=material.node_encryption_key(),
        legacy=True,
        on_legacy=lambda algorithm: None,
        max_bytes=MAX_INPUT,
    )


def _xmlenc_seeds() -> Iterable[bytes]:
    from gateway.ebms import xmlenc

    certificate = _node_encryption_certificate()
    for data_algorithm, transport in (
        (xmlenc.AES128_GCM, xmlenc.RSA_OAEP_MGF1P),
        (xmlenc.AES256_GCM, xmlenc.RSA_OAEP),
        (xmlenc.AES128_CBC, xmlenc.RSA_1_5),
    ):
        yield xmlenc.encrypt_part(
            material.PAYLOAD,
            content_id=material.PAYLOAD_CID,
            mime_type="application/xml",
            recipient_cert=certificate,
            data_algorithm=data_algorithm,
            key_transport=transport,
            legacy=True,
        )


# -- the CPA (cpa/parse.py, cpa/validate.py) ----------------------------------------------


def run_cpa(data: bytes) -> None:
    """validate_cpa answers every input with a report; it raises nothing."""
    from cpa.validate import ValidationOptions, validate_cpa

    report = validate_cpa(data, ValidationOptions(allow_insecure=True))
    if report.cpa is None and not report.errors:
        raise ContractViolation("no CPA and no error finding")
    str(report.findings)


def _cpa_seeds() -> Iterable[bytes]:
    yield material.cpa_bytes()


# -- StUF-GGk (adapters/stuf) -------------------------------------------------------------


def run_stuf_envelope(data: bytes) -> None:
    from adapters.stuf.envelope import unwrap

    unwrap(data, max_bytes=MAX_INPUT)


def run_stuf_bare(data: bytes) -> None:
    from adapters.stuf.bare import read_bare

    read_bare(data, max_bytes=MAX_INPUT)


# -- the REST API (adapters/api/rest.py) --------------------------------------------------


def run_rest(data: bytes) -> None:
    """First line: ``METHOD /path?query``; the rest: the request body.

    The route table, the query string and the body are read as
    :class:`adapters.api.rest.RestApi` does, then the operation's arguments are
    built as its handler builds them (the handlers themselves talk to the store).
    """
    from adapters.api import rest

    line, body = _split_line(data, limit=2000)
    method, _, target = line.partition(" ")
    path, _, _ = target.partition("?")
    try:
        route, params, _ = rest.match(method, path)
    except UnicodeDecodeError:
        # RestApi.render answers this with 404.
        return
    request = SimpleNamespace(uri=target.encode("latin-1"))
    call = rest.Call(params, rest._query(request), body)  # type: ignore[arg-type]
    operation = route.operation_id if route is not None else ""
    if operation == "sendMessage" or route is None:
        rest.message_request(call.json())
    elif operation in ("setURLMapping", "setCertificateMapping"):
        payload = rest._object(call.json(), "the body")
        rest._field(payload, "source", "", required=True)
        rest._field(payload, "destination", "", required=True)
        rest._field(payload, "cpaId", "")
    elif operation == "deleteCertificateMapping":
        call.text()
        call.one("cpaId")
    elif operation == "listMessages":
        for name in ("since", "until"):
            rest._time_param(call, name)
        rest._int_param(call, "limit", 100, 1, rest.MAX_LIMIT)
        rest._int_param(call, "offset", 0, 0, rest.MAX_OFFSET)
    else:
        call.filter()
        call.max_nr()
        call.flag("process")


def _rest_seeds() -> Iterable[bytes]:
    import base64
    import json

    message = {
        "properties": {
            "cpaId": material.CPA_ID,
            "fromPartyId": material.GEMEENTE.key(),
            "fromRole": "Gemeente",
            "toPartyId": material.NODE_PARTY.key(),
            "toRole": "GGk",
            "service": material.SERVICE.key(),
            "action": "WMO301",
        },
        "dataSources": [
            {
                "contentType": "application/xml",
                "content": base64.b64encode(material.PAYLOAD).decode(),
                "name": "bericht.xml",
            }
        ],
    }
    yield _with_line("POST /ebms/messages", json.dumps(message).encode())
    mapping = {"source": "https://a.example/ebms", "destination": "https://b.example/ebms"}
    yield _with_line("POST /urlMappings", json.dumps(mapping).encode())
    yield _with_line("GET /ebms/messages?since=2026-01-31T12:00:00Z&limit=5&offset=1", b"")
    yield _with_line("GET /ebms/messages/unprocessed?cpaId=x&maxNr=10", b"")


# -- the SOAP back-office API (adapters/api/soap*.py) ----------------------------------------


@functools.cache
def _soap_endpoints() -> dict[str, Any]:
    from adapters.api.soap import soap_resources

    resources = soap_resources(None, None, None)  # type: ignore[arg-type]
    return {name.decode(): resource for name, resource in resources.items()}


def run_soap(data: bytes) -> None:
    """First line: ``endpoint SOAPAction`` (e.g. ``ebms "sendMessage"``); the rest: the body.

    The request is read and schema-checked as :class:`SoapResource` does, then
    the operation's arguments are built as its handler builds them.
    """
    from adapters.api import soap_ebms
    from adapters.api.soap_http import boolean_of, text_of

    line, body = _split_line(data)
    name, _, action = line.partition(" ")
    endpoints = _soap_endpoints()
    resource = endpoints.get(name, endpoints["ebms"])
    operation, wrapper = resource._read(io.BytesIO(body), action.encode("latin-1") or None)
    if operation == "sendMessage":
        soap_ebms._message_request(soap_ebms._child(wrapper, "message"))
    elif operation in ("getUnprocessedMessageIds", "getUnprocessedMessageEvents"):
        soap_ebms._message_filter(wrapper.find("messageFilter"))
        soap_ebms._max_nr(wrapper)
    elif operation == "getMessage":
        soap_ebms._required(wrapper, "messageId")
        boolean_of(wrapper, "process")
    else:
        for child in wrapper:
            if isinstance(child.tag, str):
                text_of(wrapper, child.tag)


def _soap_seeds() -> Iterable[bytes]:
    import base64

    soap = "http://schemas.xmlsoap.org/soap/envelope/"
    ebms = "http://www.ordina.nl/ebms/2.18"
    content = base64.b64encode(material.PAYLOAD).decode()
    send = (
        f'<soap:Envelope xmlns:soap="{soap}"><soap:Body><e:sendMessage xmlns:e="{ebms}">'
        "<message><properties><cpaId>c</cpaId><fromPartyId>urn:osb:oin:1</fromPartyId>"
        "<service>urn:osb:services:S</service><action>A</action></properties>"
        f"<dataSource><contentType>application/xml</contentType><content>{content}</content>"
        "</dataSource></message></e:sendMessage></soap:Body></soap:Envelope>"
    )
    yield _with_line('ebms "sendMessage"', send.encode())
    ids = (
        f'<soap:Envelope xmlns:soap="{soap}"><soap:Body>'
        f'<e:getUnprocessedMessageIds xmlns:e="{ebms}"><messageFilter><cpaId>c</cpaId>'
        "<fromParty><partyId>p</partyId><role>r</role></fromParty></messageFilter>"
        "<maxNr>5</maxNr></e:getUnprocessedMessageIds></soap:Body></soap:Envelope>"
    )
    yield _with_line("ebms", ids.encode())
    get = (
        f'<soap:Envelope xmlns:soap="{soap}"><soap:Header/><soap:Body>'
        f'<e:getMessage xmlns:e="{ebms}"><messageId>m@x</messageId><process>true</process>'
        "</e:getMessage></soap:Body></soap:Envelope>"
    )
    yield _with_line("ebms", get.encode())


# -- the zip upload (adapters/upload.py) -----------------------------------------------------


def run_upload(data: bytes) -> None:
    from adapters.upload import read_upload

    path = scratch() / "upload.zip"
    path.write_bytes(data)
    read_upload(path, max_bytes=MAX_INPUT, max_entries=64, max_uncompressed=1 << 20, max_ratio=100)


def _upload_seeds() -> Iterable[bytes]:
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bericht-1.xml", material.PAYLOAD)
        archive.writestr("bericht-2.xml", material.PAYLOAD * 3)
    yield out.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("a.xml", b"<a/>")
    yield out.getvalue()


# -- the inbound MSH decision (gateway/msh/inbound.py) ---------------------------------------


@functools.cache
def _inbound() -> Any:
    """The node's InboundProcessor on a SQLite store in the scratch directory."""
    from gateway.commands.demo import NODE
    from gateway.config import SecurityConfig
    from gateway.msh.inbound import InboundProcessor
    from gateway.msh.security import MessageSecurity
    from gateway.store.cpas import CpaRegistry
    from gateway.store.database import Database
    from gateway.store.migrate import apply_migrations

    pki = material.pki()
    db = Database.sqlite(scratch() / "inbound" / "gateway.sqlite3")
    atexit.register(db.close)
    apply_migrations(db)
    registry = CpaRegistry(db)
    registry.insert(material.cpa_bytes(), overwrite=True)
    party = pki / NODE[0]
    security = MessageSecurity.load(
        SecurityConfig(
            signing_certificate=party / "signing.pem",
            signing_key=party / "signing.key",
            encryption_certificate=party / "encryption.pem",
            encryption_key=party / "encryption.key",
        ),
        default_anchors=[pki / "ca" / "root.pem"],
        default_intermediates=[pki / "ca" / "intermediate.pem"],
    )
    processor = InboundProcessor(
        db, registry, own_parties=(material.NODE_PARTY,), security=security
    )
    peer = material.load_cert(pki / "gemeente-voorbeeld" / "tls-client.pem")
    return processor, peer


def run_inbound(data: bytes) -> None:
    """First line: the Content-Type; the rest: the body, split and handled as the edge does.

    The HTTP edge answers a package it cannot split (MimeError, an oversized
    SOAP part) itself; everything else reaches :meth:`InboundProcessor.handle`,
    which must answer every input with an HTTP reply and raise nothing.
    """
    from gateway.ebms.mime import MimeError
    from gateway.http.server import SoapPartTooLarge
    from gateway.msh.inbound import HttpReply, InboundRequest

    processor, peer = _inbound()
    try:
        envelope, attachments = run_edge(data)
    except (MimeError, SoapPartTooLarge):
        return
    content_type, _ = _split_line(data)
    try:
        reply = processor.handle(
            InboundRequest('"ebXML"', content_type, envelope, attachments, peer)
        )
    finally:
        for record in attachments:
            record.close()
    if not isinstance(reply, HttpReply) or not 200 <= reply.status < 600:
        raise ContractViolation(f"not an HTTP reply: {reply!r}")


def _inbound_seeds() -> Iterable[bytes]:
    for sign in (True, False):
        m = material.signed_message(sign=sign)
        yield _with_line(m.content_type, m.body)


# -- the table ------------------------------------------------------------------------


def _targets() -> dict[str, Target]:
    from adapters.api.service import ApiError
    from adapters.api.soap_http import SoapFault
    from adapters.stuf.bare import BareError
    from adapters.stuf.envelope import EnvelopeError as StufEnvelopeError
    from adapters.upload import UploadRefused
    from gateway.ebms.envelope import EnvelopeError
    from gateway.ebms.mime import MimeError
    from gateway.ebms.xmldsig import SignatureError
    from gateway.ebms.xmlenc import DecryptionError
    from gateway.http.server import SoapPartTooLarge

    table = [
        Target(
            "mime",
            run_mime,
            (MimeError,),
            "SwaParser fed in chunks, then every part read back: only MimeError.",
            _mime_seeds,
        ),
        Target(
            "edge",
            run_edge_closed,
            (MimeError, SoapPartTooLarge),
            "The HTTP edge's split_package (text/xml or multipart/related): "
            "only MimeError or SoapPartTooLarge.",
            _mime_seeds,
        ),
        Target(
            "envelope",
            run_envelope,
            (EnvelopeError,),
            "parse_envelope on the SOAP part: only EnvelopeError.",
            _xmldsig_seeds,
        ),
        Target(
            "xmldsig",
            run_xmldsig,
            (SignatureError,),
            "verify_envelope of a signed SOAP part with the sender's certificate: "
            "only SignatureError.",
            _xmldsig_seeds,
        ),
        Target(
            "xmlenc",
            run_xmlenc,
            (DecryptionError,),
            "decrypt_part of an EncryptedData document with the receiver's key: only "
            "DecryptionError; and encrypt_part then decrypt_part gives the payload back.",
            _xmlenc_seeds,
        ),
        Target(
            "cpa",
            run_cpa,
            (),
            "validate_cpa (parse, schema, model, Digikoppeling rules): a report, never "
            "an exception.",
            _cpa_seeds,
        ),
        Target(
            "stuf_envelope",
            run_stuf_envelope,
            (StufEnvelopeError,),
            "unwrap of a StUF-GGk Di01/Du01: only adapters.stuf.envelope.EnvelopeError.",
        ),
        Target(
            "stuf_bare",
            run_stuf_bare,
            (BareError,),
            "read_bare of a bare iWmo/iJw/iEb message: only BareError.",
        ),
        Target(
            "rest",
            run_rest,
            (ApiError,),
            "REST route, query and JSON body into the operation's arguments: only ApiError.",
            _rest_seeds,
        ),
        Target(
            "soap",
            run_soap,
            (SoapFault, ApiError),
            "SOAP request read, schema-checked and turned into the operation's arguments: "
            "only SoapFault or ApiError.",
            _soap_seeds,
        ),
        Target(
            "upload",
            run_upload,
            (UploadRefused,),
            "read_upload of a zip: only UploadRefused.",
            _upload_seeds,
        ),
        Target(
            "inbound",
            run_inbound,
            (),
            "InboundProcessor.handle on a SQLite store, after the edge's split: an HTTP "
            "reply, never an exception.",
            _inbound_seeds,
        ),
    ]
    return {t.name: t for t in table}


TARGETS: dict[str, Target] = _targets()
