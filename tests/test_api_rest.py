"""The REST API driven by ebms-adapter-client, an independent client written for ebms-core.

Two real gateways over mutual TLS, each with its back-office API on
127.0.0.1; the client is used exactly as published (its own httpx transport,
its own models).  It is blocking, so every call runs in a thread while the
gateways keep running on the test reactor.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.error import HTTPError

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from ebms_adapter_client import (
    CertificateMapping,
    DataSource,
    EbmsAdapterClient,
    EbmsAdapterClientConfig,
    EbmsBadRequestError,
    EbMSMessageStatus,
    EbmsNotFoundError,
    MessageEventType,
    MessageFilter,
    MessageRequest,
    MessageRequestProperties,
    URLMapping,
)
from twisted.internet.threads import deferToThread

from adapters.api.auth import hash_password
from adapters.api.openapi import openapi_document
from adapters.api.rest import ROUTES
from gateway.config import ApiConfig
from tests.conftest import GEMEENTE_OIN, NODE_OIN
from tests.gateways import SERVICE, Pair, Side, gateway_config, store_url, wait_until
from tests.test_integration import RM_FAST

T = TypeVar("T")
GEMEENTE = f"urn:osb:oin:{GEMEENTE_OIN}"
NODE = f"urn:osb:oin:{NODE_OIN}"


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking client call off the reactor thread."""
    result: T = await deferToThread(fn, *args, **kwargs)
    return result


def client(side: Side, **config: Any) -> EbmsAdapterClient:
    assert side.gateway is not None
    base = f"http://127.0.0.1:{side.gateway.api_listening_port}"
    return EbmsAdapterClient(EbmsAdapterClientConfig(base_url=base, timeout=30, **config))


@pytest.fixture(params=["sqlite", "postgresql"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def pair(pki: Path, make_spec, tmp_path: Path, dialect: str) -> AsyncIterator[Pair]:
    sides = []
    for name, slug in (("a", "gemeente-voorbeeld"), ("b", "ggk-rinis-test")):
        config = gateway_config(
            pki,
            slug,
            tmp_path / name,
            store_url(dialect, tmp_path, name),
            api=ApiConfig(port=0, wait_timeout=10.0),
        )
        side = Side(name, config)
        side.start()
        sides.append(side)
    p = Pair(sides[0], sides[1], "rest-cpa", make_spec, {"profile": "osb-rm", **RM_FAST})
    p.import_cpa()
    yield p
    await p.stop()


def request(action: str = "WMO301", *sources: DataSource, **props: Any) -> MessageRequest:
    return MessageRequest(
        MessageRequestProperties(
            cpa_id="rest-cpa",
            from_party_id=GEMEENTE,
            from_role="Gemeente",
            to_party_id=NODE,
            to_role="GGk",
            service=SERVICE.key(),
            action=action,
            **props,
        ),
        list(sources),
    )


@pytest_twisted.ensureDeferred
async def test_every_client_method_against_two_gateways(pair: Pair, pki: Path) -> None:
    a, b = client(pair.a), client(pair.b)
    try:
        # -- CPAs -------------------------------------------------------------------
        cpa_xml = await call(b.get_cpa, "rest-cpa")
        assert cpa_xml.startswith("<?xml") or "CollaborationProtocolAgreement" in cpa_xml
        await call(a.validate_cpa, cpa_xml)
        assert await call(a.insert_cpa, cpa_xml, overwrite=True) == "rest-cpa"
        with pytest.raises(EbmsBadRequestError, match="exists"):
            await call(a.insert_cpa, cpa_xml)
        copy = cpa_xml.replace('cpaid="rest-cpa"', 'cpaid="rest-cpa-copy"')
        assert copy != cpa_xml
        assert await call(a.insert_cpa, copy) == "rest-cpa-copy"
        assert sorted(await call(a.list_cpa_ids)) == ["rest-cpa", "rest-cpa-copy"]
        assert await call(a.get_cpa, "rest-cpa-copy") == copy
        await call(a.delete_cpa, "rest-cpa-copy")
        assert await call(a.list_cpa_ids) == ["rest-cpa"]
        with pytest.raises(EbmsNotFoundError):
            await call(a.delete_cpa, "rest-cpa-copy")
        with pytest.raises(EbmsNotFoundError):
            await call(a.get_cpa, "no such cpa")
        with pytest.raises(EbmsBadRequestError, match="invalid CPA"):
            await call(a.validate_cpa, cpa_xml.replace("tns:PartyInfo", "tns:PartyInf", 1))
        await call(a.clear_cpa_cache)

        # -- URL mappings -----------------------------------------------------------
        source = "https://old.example.nl:8443/ebms"
        mapping = URLMapping(source=source, destination="https://new.example.nl/ebms")
        await call(a.create_url_mapping, mapping)
        assert await call(a.list_url_mappings) == [mapping]
        await call(a.delete_url_mapping, source)
        assert await call(a.list_url_mappings) == []
        with pytest.raises(EbmsNotFoundError):
            await call(a.delete_url_mapping, source)
        with pytest.raises(EbmsBadRequestError):
            await call(a.create_url_mapping, URLMapping(source="not a url", destination=source))
        await call(a.clear_url_mapping_cache)

        # -- certificate mappings ---------------------------------------------------
        def b64(path: Path) -> str:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()

        old = b64(pki / "gemeente-voorbeeld" / "signing.pem")
        new = b64(pki / "gemeente-voorbeeld" / "encryption.pem")
        cert_mapping = CertificateMapping(source=old, destination=new, cpa_id="rest-cpa")
        await call(a.create_certificate_mapping, cert_mapping)
        assert await call(a.list_certificate_mappings) == [cert_mapping]
        await call(a.delete_certificate_mapping, "rest-cpa", old)
        assert await call(a.list_certificate_mappings) == []
        with pytest.raises(EbmsNotFoundError):
            await call(a.delete_certificate_mapping, "rest-cpa", old)
        with pytest.raises(EbmsBadRequestError):
            await call(
                a.create_certificate_mapping,
                CertificateMapping(source="bm90IGEgY2VydA==", destination=new, cpa_id="rest-cpa"),
            )
        await call(a.clear_certificate_mapping_cache)

        # -- ping -------------------------------------------------------------------
        await call(a.ping, "rest-cpa", GEMEENTE, NODE)
        await call(b.ping, "rest-cpa", NODE, GEMEENTE)
        with pytest.raises(EbmsNotFoundError):
            await call(a.ping, "no-such-cpa", GEMEENTE, NODE)

        # -- send, receive, get, process ---------------------------------------------
        contents = [b"<bericht>een</bericht>", bytes(range(256)) * 40]
        sent_id = await call(
            a.send_message,
            request(
                "WMO301",
                DataSource("application/xml", contents[0], name="wmo301.xml"),
                DataSource("application/octet-stream", contents[1], name="bijlage.bin"),
                conversation_id="conv-rest-1",
            ),
        )
        assert sent_id

        async def arrived() -> list[str]:
            return await call(b.list_unprocessed_message_ids, MessageFilter(cpa_id="rest-cpa"))

        ids: list[str] = []
        for _ in range(200):
            ids = await arrived()
            if ids:
                break
            await wait_until(lambda: True, timeout=0.1)
        assert ids == [sent_id]
        assert (
            await call(b.list_unprocessed_message_ids, MessageFilter(action="WMO302"), max_nr=0)
            == []
        )
        assert await call(
            b.list_unprocessed_message_ids,
            MessageFilter(from_party_id=GEMEENTE, conversation_id="conv-rest-1"),
            max_nr=1,
        ) == [sent_id]

        message = await call(b.get_message, sent_id)
        props = message.properties
        assert props.message_id == sent_id
        assert props.cpa_id == "rest-cpa"
        assert props.from_party.party_id == GEMEENTE and props.from_party.role == "Gemeente"
        assert props.to_party.party_id == NODE and props.to_party.role == "GGk"
        assert props.service == SERVICE.key() and props.action == "WMO301"
        assert props.conversation_id == "conv-rest-1"
        assert props.message_status is EbMSMessageStatus.RECEIVED
        assert props.timestamp is not None
        assert [d.content for d in message.data_sources] == contents
        assert [d.name for d in message.data_sources] == ["wmo301.xml", "bijlage.bin"]

        # Events: RECEIVED at the node, DELIVERED at the municipality.
        await wait_until(lambda: pair.a.status(sent_id, "out") == "DELIVERED", timeout=15)
        received = await call(
            b.list_unprocessed_message_events, event_types=[MessageEventType.RECEIVED]
        )
        assert [(e.message_id, e.type) for e in received] == [(sent_id, MessageEventType.RECEIVED)]
        delivered = await call(a.list_unprocessed_message_events, MessageFilter(), max_nr=10)
        assert [(e.message_id, e.type) for e in delivered] == [
            (sent_id, MessageEventType.DELIVERED)
        ]
        assert (
            await call(a.list_unprocessed_message_events, event_types=[MessageEventType.FAILED])
            == []
        )
        await call(a.process_message_event, sent_id)
        assert await call(a.list_unprocessed_message_events) == []

        # The partner's status of our message: RECEIVED, then PROCESSED.
        status = await call(a.get_message_status, sent_id)
        assert status.status is EbMSMessageStatus.RECEIVED
        assert status.timestamp is not None
        await call(b.process_message, sent_id)
        assert await arrived() == []
        assert await call(b.list_unprocessed_message_events) == []
        status = await call(a.get_message_status, sent_id)
        assert status.status is EbMSMessageStatus.PROCESSED
        again = await call(b.get_message, sent_id, process=True)
        assert again.properties.message_status is EbMSMessageStatus.PROCESSED
        with pytest.raises(EbmsNotFoundError):
            await call(a.get_message_status, "unknown@example")
        with pytest.raises(EbmsBadRequestError, match="not an outgoing"):
            await call(b.get_message_status, sent_id)

        # get_message with process=True, on a second message.
        second = await call(a.send_message, request("WMO301"))
        await wait_until(lambda: pair.b.status(second, "in") == "RECEIVED", timeout=15)
        got = await call(b.get_message, second, process=True)
        assert got.data_sources == []
        assert pair.b.status(second, "in") == "PROCESSED"
        assert await arrived() == []

        # Resend: a new message with the same content.
        resent = await call(a.resend_message, sent_id)
        assert resent != sent_id
        await wait_until(lambda: pair.b.status(resent, "in") == "RECEIVED", timeout=15)
        copy_message = await call(b.get_message, resent)
        assert [d.content for d in copy_message.data_sources] == contents
        with pytest.raises(EbmsNotFoundError):
            await call(a.resend_message, "unknown@example")

        # Unknown ids and bad input.
        with pytest.raises(EbmsNotFoundError):
            await call(b.get_message, "unknown@example")
        with pytest.raises(EbmsNotFoundError):
            await call(b.process_message, "unknown@example")
        with pytest.raises(EbmsNotFoundError):
            await call(b.process_message_event, "unknown@example")
        with pytest.raises(EbmsBadRequestError, match="not allowed by CPA"):
            await call(a.send_message, request("WMO302"))
        no_role = request("WMO302")
        no_role.properties.from_role = None
        no_role.properties.to_role = None
        with pytest.raises(EbmsBadRequestError, match="cannot send"):
            await call(a.send_message, no_role)
        with pytest.raises(EbmsBadRequestError, match="not found"):
            bad = request()
            bad.properties.cpa_id = "no-such-cpa"
            await call(a.send_message, bad)
        with pytest.raises(EbmsBadRequestError, match="already exists"):
            await call(a.send_message, request(message_id=sent_id))
    finally:
        a.close()
        b.close()


#: Every client method the test above calls: a new client release with a method we
#: do not exercise fails here rather than going unnoticed.
EXERCISED = {
    "validate_cpa", "insert_cpa", "delete_cpa", "list_cpa_ids", "get_cpa", "clear_cpa_cache",
    "create_url_mapping", "delete_url_mapping", "list_url_mappings", "clear_url_mapping_cache",
    "create_certificate_mapping", "delete_certificate_mapping", "list_certificate_mappings",
    "clear_certificate_mapping_cache", "ping", "send_message", "resend_message",
    "list_unprocessed_message_ids", "get_message", "process_message", "get_message_status",
    "list_unprocessed_message_events", "process_message_event",
}  # fmt: skip


def test_the_integration_test_calls_every_client_method() -> None:
    import inspect

    methods = {
        name
        for name, _ in inspect.getmembers(EbmsAdapterClient, inspect.isfunction)
        if not name.startswith("_") and name != "close"
    }
    assert methods == EXERCISED
    source = inspect.getsource(test_every_client_method_against_two_gateways)
    for name in EXERCISED:
        assert re.search(rf"\.{name}[,)]", source), name


@pytest_twisted.ensureDeferred
async def test_to_party_and_roles_are_taken_from_the_cpa_when_left_out(pair: Pair) -> None:
    a = client(pair.a)
    try:
        bare = MessageRequest(
            MessageRequestProperties(
                cpa_id="rest-cpa",
                from_party_id=GEMEENTE,
                service=SERVICE.key(),
                action="WMO301",
            ),
            [DataSource("application/xml", b"<x/>")],
        )
        sent = await call(a.send_message, bare)
        await wait_until(lambda: pair.b.status(sent, "in") == "RECEIVED", timeout=15)
        row = pair.b.rows(
            "SELECT from_role, to_party, to_role FROM ebms_message WHERE message_id = ?", sent
        )
        assert row == [("Gemeente", NODE, "GGk")]
        # The back office's own request id travels with the message (X-Correlation-ID).
        assert pair.a.gateway is not None
        status, _, body = await call(
            raw,
            pair.a.gateway.api_listening_port,
            "POST",
            REST + "/ebms/messages",
            json.dumps({"properties": bare.properties.to_dict(), "dataSources": []}).encode(),
            {"Content-Type": "application/json", "X-Correlation-ID": "bo-req-42"},
        )
        assert status == 200
        assert pair.a.rows(
            "SELECT correlation_id FROM ebms_message WHERE message_id = ?", body.decode()
        ) == [("bo-req-42",)]
    finally:
        a.close()


def raw(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


REST = "/service/rest/v19"


@pytest_twisted.ensureDeferred
async def test_bad_requests_are_400_with_a_reason_and_never_a_trace(pair: Pair) -> None:
    assert pair.a.gateway is not None
    port = pair.a.gateway.api_listening_port
    cases = [
        ("POST", "/ebms/messages", b"{not json", 400, "not valid JSON"),
        ("POST", "/ebms/messages", b"[]", 400, "JSON object"),
        ("POST", "/ebms/messages", b'{"properties": {}}', 400, "cpaId is required"),
        (
            "POST",
            "/ebms/messages",
            json.dumps(
                {
                    "properties": {
                        "cpaId": "rest-cpa",
                        "fromPartyId": GEMEENTE,
                        "service": SERVICE.key(),
                        "action": "WMO301",
                    },
                    "dataSources": [{"contentType": "text/plain", "content": "!!"}],
                }
            ).encode(),
            400,
            "not valid base64",
        ),
        ("GET", "/ebms/messages/unprocessed?maxNr=-1", None, 400, "maxNr"),
        ("GET", "/ebms/messages/unprocessed?maxNr=x", None, 400, "maxNr"),
        ("GET", "/ebms/messages/x%40y?process=maybe", None, 400, "process"),
        ("GET", "/ebms/events/unprocessed?eventTypes=NOPE", None, 400, "eventTypes"),
        ("POST", "/cpas", b"<not-a-cpa/>", 400, "invalid CPA"),
        ("POST", "/cpas", b"\xff\xfe", 400, ""),
        ("POST", "/cpas/validate", b"<!DOCTYPE x [<!ENTITY e 'x'>]><x>&e;</x>", 400, ""),
        ("DELETE", "/certificateMappings", b"", 400, "source certificate"),
        ("DELETE", "/certificateMappings", b"%%%", 400, "base64"),
        ("GET", "/nope", None, 404, "not found"),
        ("GET", "/ebms/messages/nope%40x/status/extra", None, 404, ""),
        ("DELETE", "/ebms/messages/unprocessed", None, 405, ""),
    ]
    for method, path, body, status, reason in cases:
        got, headers, text = await call(raw, port, method, REST + path, body)
        assert got == status, (method, path, got, text)
        assert b"Traceback" not in text and b'File "' not in text, (path, text)
        assert reason.encode() in text, (path, text)
        if status == 405:
            assert "Allow" in headers


@pytest_twisted.ensureDeferred
async def test_the_openapi_document_is_served_and_matches_the_routes(pair: Pair) -> None:
    assert pair.a.gateway is not None
    status, headers, body = await call(
        raw, pair.a.gateway.api_listening_port, "GET", REST + "/openapi.json"
    )
    assert status == 200 and headers["Content-Type"] == "application/json"
    served = json.loads(body)
    assert served == json.loads(json.dumps(openapi_document()))
    documented = {(method.upper(), path) for path, ops in served["paths"].items() for method in ops}
    routed = {(r.method, r.pattern.replace("+}", "}")) for r in ROUTES}
    assert documented == routed


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(f"# back offices\nsociaal-domein:{hash_password('geheim', iterations=1000)}\n")
    return path


@pytest_twisted.ensureDeferred
async def test_basic_authentication(pki: Path, tmp_path: Path, users_file: Path) -> None:
    config = gateway_config(
        pki,
        "gemeente-voorbeeld",
        tmp_path / "a",
        store_url("sqlite", tmp_path, "a"),
        api=ApiConfig(port=0, users_file=users_file),
    )
    side = Side("a", config)
    side.start()
    try:
        assert side.gateway is not None
        port = side.gateway.api_listening_port
        status, headers, _ = await call(raw, port, "GET", REST + "/cpas")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        wrong = base64.b64encode(b"sociaal-domein:fout").decode()
        status, _, _ = await call(
            raw, port, "GET", REST + "/cpas", None, {"Authorization": f"Basic {wrong}"}
        )
        assert status == 401
        nobody = base64.b64encode(b"niemand:geheim").decode()
        status, _, _ = await call(
            raw, port, "GET", REST + "/cpas", None, {"Authorization": f"Basic {nobody}"}
        )
        assert status == 401
        good = client(side, username="sociaal-domein", password="geheim")
        try:
            assert await call(good.list_cpa_ids) == []
            assert await call(good.list_cpa_ids) == []  # the remembered pair
        finally:
            good.close()
        # A user removed from the file is refused at once.
        users_file.write_text("# nobody\n")
        good = client(side, username="sociaal-domein", password="geheim")
        try:
            with pytest.raises(Exception, match="401"):
                await call(good.list_cpa_ids)
        finally:
            good.close()
    finally:
        await side.stop()
        side.close()


@pytest_twisted.ensureDeferred
async def test_mutual_tls(pki: Path, tmp_path: Path) -> None:
    import httpx

    party = pki / "gemeente-voorbeeld"
    config = gateway_config(
        pki,
        "gemeente-voorbeeld",
        tmp_path / "a",
        store_url("sqlite", tmp_path, "a"),
        api=ApiConfig(
            port=0,
            certificate=party / "tls-server.pem",
            key=party / "tls-server.key",
            client_ca=pki / "ca" / "root.pem",
        ),
    )
    side = Side("a", config)
    side.start()
    try:
        assert side.gateway is not None
        base = f"https://localhost:{side.gateway.api_listening_port}"
        import ssl

        ctx = ssl.create_default_context(cafile=str(pki / "ca" / "root.pem"))
        ctx.load_verify_locations(cafile=str(pki / "ca" / "intermediate.pem"))
        ctx.load_cert_chain(str(party / "tls-client.pem"), str(party / "tls-client.key"))
        with_cert = EbmsAdapterClient(EbmsAdapterClientConfig(base_url=base, verify_ssl=ctx))  # type: ignore[arg-type]
        try:
            assert await call(with_cert.list_cpa_ids) == []
        finally:
            with_cert.close()

        bare = ssl.create_default_context(cafile=str(pki / "ca" / "root.pem"))
        bare.load_verify_locations(cafile=str(pki / "ca" / "intermediate.pem"))

        def without_cert() -> None:
            with httpx.Client(verify=bare) as h:
                h.get(base + REST + "/cpas")

        with pytest.raises(httpx.HTTPError):
            await call(without_cert)
    finally:
        await side.stop()
        side.close()


@pytest_twisted.ensureDeferred
async def test_the_api_listener_bounds_bodies_and_stalled_clients(
    pki: Path, tmp_path: Path
) -> None:
    import socket
    import time

    config = gateway_config(
        pki,
        "gemeente-voorbeeld",
        tmp_path / "a",
        store_url("sqlite", tmp_path, "a"),
        api=ApiConfig(port=0, max_request_bytes=4096),
    )
    config = replace(config, http=replace(config.http, idle_timeout=1.0))
    side = Side("a", config)
    side.start()
    try:
        assert side.gateway is not None
        port = side.gateway.api_listening_port
        status, _, body = await call(
            raw, port, "POST", REST + "/cpas", b"x" * 10_000, {"Content-Type": "text/plain"}
        )
        assert status == 413 and b"Traceback" not in body

        def stall() -> float:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(
                    b"POST /service/rest/v19/cpas HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100\r\n\r\n"
                )
                started = time.monotonic()
                s.recv(1024)  # returns b"" when the server hangs up
                return time.monotonic() - started

        assert await call(stall) < 5.0
    finally:
        await side.stop()
        side.close()


@pytest_twisted.ensureDeferred
async def test_the_admin_listener_asks_for_basic_auth_when_configured(
    pki: Path, tmp_path: Path, users_file: Path
) -> None:
    config = gateway_config(
        pki, "gemeente-voorbeeld", tmp_path / "a", store_url("sqlite", tmp_path, "a"), admin_port=0
    )
    config = replace(config, admin=replace(config.admin, users_file=users_file))
    side = Side("a", config)
    side.start()
    try:
        assert side.gateway is not None
        port = side.gateway.admin_listening_port
        status, headers, _ = await call(raw, port, "GET", "/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        good = base64.b64encode(b"sociaal-domein:geheim").decode()
        status, _, body = await call(
            raw, port, "GET", "/metrics", None, {"Authorization": f"Basic {good}"}
        )
        assert status == 200 and b"ebms_delivery_tasks" in body
    finally:
        await side.stop()
        side.close()
