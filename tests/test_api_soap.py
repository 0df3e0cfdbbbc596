"""The SOAP back-office API as an ebms-core client uses it: zeep on our WSDL, two real gateways.

zeep reads the WSDL from ``?wsdl`` (and once from ``wsdl/``) and builds its
requests from it alone, as a client generated from ebms-core's WSDL would.
zeep blocks, so every call runs in a thread while the gateways keep running
on the test reactor.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import requests
import zeep
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread
from zeep.exceptions import Fault

from adapters.api.service import PartnerUnavailable
from adapters.api.soap_http import SOAP_NS, WSDL_DIR, WsdlDescription
from cpa.generate import make_cpa
from gateway.config import ApiConfig
from gateway.store.cpas import CpaRegistry
from tests.conftest import GEMEENTE_OIN, NODE_OIN, load_cert
from tests.gateways import Pair, Side, gateway_config, store_url

RM_FAST = {"retries": 2, "retry_interval": timedelta(seconds=1)}
GEMEENTE = f"urn:osb:oin:{GEMEENTE_OIN}"
NODE = f"urn:osb:oin:{NODE_OIN}"
SERVICE = "urn:osb:services:GGK:iWmo:3.2"
EBMS_NS = "http://www.ordina.nl/ebms/2.18"
CPA_NS = "http://www.ordina.nl/cpa/2.18"


# -- fixtures and helpers -------------------------------------------------------------


def _side(pki: Path, slug: str, tmp_path: Path, name: str) -> Side:
    return Side(
        name,
        gateway_config(
            pki, slug, tmp_path / name, store_url("sqlite", tmp_path, name), api=ApiConfig(port=0)
        ),
    )


@pytest_twisted.async_yield_fixture
async def pair(pki: Path, make_spec: Any, tmp_path: Path) -> AsyncIterator[Pair]:
    a = _side(pki, "gemeente-voorbeeld", tmp_path, "a")
    b = _side(pki, "ggk-rinis-test", tmp_path, "b")
    a.start()
    b.start()
    p = Pair(a, b, "soap-cpa", make_spec, {"profile": "osb-rm", **RM_FAST})
    p.import_cpa()
    yield p
    await p.stop()


@pytest_twisted.async_yield_fixture
async def side(pki: Path, tmp_path: Path) -> AsyncIterator[Side]:
    """One gateway with an empty store: enough for the configuration services."""
    one = _side(pki, "gemeente-voorbeeld", tmp_path, "solo")
    one.start()
    yield one
    await one.stop()
    one.close()


def url(side: Side, service: str) -> str:
    assert side.gateway is not None
    return f"http://127.0.0.1:{side.gateway.api_listening_port}/service/{service}"


async def client(side: Side, service: str) -> zeep.Client:
    """A zeep client built from the endpoint's own ``?wsdl``."""
    built: zeep.Client = await deferToThread(zeep.Client, url(side, service) + "?wsdl")
    return built


async def call(api: zeep.Client, operation: str, *args: Any, **kwargs: Any) -> Any:
    return await deferToThread(lambda: getattr(api.service, operation)(*args, **kwargs))


async def fault_of(api: zeep.Client, operation: str, *args: Any, **kwargs: Any) -> Fault:
    with pytest.raises(Fault) as caught:
        await call(api, operation, *args, **kwargs)
    return caught.value


async def poll(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Await ``check()`` (a coroutine function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await task.deferLater(reactor, 0.1, lambda: None)


async def post(
    target: str, body: bytes | str, content_type: str = "text/xml; charset=utf-8", **headers: str
) -> requests.Response:
    data = body.encode("utf-8") if isinstance(body, str) else body
    response: requests.Response = await deferToThread(
        requests.post,
        target,
        data=data,
        headers={"Content-Type": content_type, "SOAPAction": '""', **headers},
        timeout=30,
    )
    return response


def envelope(inner: str, ns: str = EBMS_NS) -> str:
    return (
        f'<soap:Envelope xmlns:soap="{SOAP_NS}" xmlns:ns="{ns}">'
        f"<soap:Header/><soap:Body>{inner}</soap:Body></soap:Envelope>"
    )


def fault(response: requests.Response) -> tuple[str, str]:
    """(faultcode, faultstring) of a SOAP 1.1 fault answer, after checking its framing."""
    assert response.status_code in (500, 415), response.text
    assert response.headers["Content-Type"].startswith("text/xml")
    assert "Traceback" not in response.text and 'File "' not in response.text
    root = etree.fromstring(response.content)
    found = root.find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
    assert found is not None, response.text
    return found.findtext("faultcode") or "", found.findtext("faultstring") or ""


def response_wrapper(response: requests.Response, schema_of: str) -> etree._Element:
    """The response wrapper, checked against the schema in ``wsdl/<schema_of>``."""
    assert response.status_code == 200, response.text
    wrapper = etree.fromstring(response.content).find(f"{{{SOAP_NS}}}Body")[0]
    errors = WsdlDescription(WSDL_DIR / schema_of).schema.validate(wrapper)
    assert errors is None, errors
    return wrapper


def der(path: Path) -> bytes:
    return load_cert(path).public_bytes(Encoding.DER)


# -- messages end to end ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_message_round_trip_between_two_gateways(pair: Pair) -> None:
    ebms_a = await client(pair.a, "ebms")
    ebms_b = await client(pair.b, "ebms")

    assert await call(ebms_a, "ping", pair.cpa_id, GEMEENTE, NODE) is None

    bericht, bijlage = b"<bericht>WMO301</bericht>", bytes(range(256)) * 40
    message_id = await call(
        ebms_a,
        "sendMessage",
        message={
            "properties": {
                "cpaId": pair.cpa_id,
                "fromPartyId": GEMEENTE,
                "fromRole": "Gemeente",
                "toPartyId": NODE,
                "toRole": "GGk",
                "service": SERVICE,
                "action": "WMO301",
            },
            "dataSource": [
                {"name": "bericht.xml", "contentType": "application/xml", "content": bericht},
                {"name": "bijlage.bin", "contentType": "application/pdf", "content": bijlage},
            ],
        },
    )
    assert message_id

    only_ours = {"cpaId": pair.cpa_id, "fromParty": {"partyId": GEMEENTE, "role": "Gemeente"}}

    async def unprocessed() -> list[str]:
        return list(
            await call(ebms_b, "getUnprocessedMessageIds", messageFilter=only_ours, maxNr=10) or []
        )

    assert message_id in await poll(unprocessed)
    received = await call(ebms_b, "getUnprocessedMessageEvents", eventType=["RECEIVED"])
    assert (message_id, "RECEIVED") in [(e.messageId, e.type) for e in received]

    message = await call(ebms_b, "getMessage", message_id)
    assert message.properties.messageId == message_id
    assert message.properties.fromParty.partyId == GEMEENTE
    assert message.properties.toParty.role == "GGk"
    assert message.properties.messageStatus == "RECEIVED"
    assert [(d.name, d.contentType, d.content) for d in message.dataSource] == [
        ("bericht.xml", "application/xml", bericht),
        ("bijlage.bin", "application/pdf", bijlage),
    ]
    # The same answer on the wire is valid against the WSDL zeep was built from.
    raw = await post(url(pair.b, "ebms"), envelope(f"<ns:getMessage><messageId>{message_id}"
                                                    "</messageId></ns:getMessage>"))  # fmt: skip
    response_wrapper(raw, "ebms.wsdl")

    assert await call(ebms_b, "processMessage", message_id) is None
    assert message_id not in await unprocessed()
    # Processing the message settles its RECEIVED event as well (ebms-core).
    left = await call(ebms_b, "getUnprocessedMessageEvents", eventType=["RECEIVED"]) or []
    assert message_id not in [e.messageId for e in left]

    status = await call(ebms_a, "getMessageStatus", message_id)
    assert status.status == "PROCESSED"

    async def delivered() -> bool:
        events = await call(
            ebms_a,
            "getUnprocessedMessageEvents",
            messageFilter={"cpaId": pair.cpa_id},
            eventType=["DELIVERED", "FAILED"],
        )
        return (message_id, "DELIVERED") in [(e.messageId, e.type) for e in events or []]

    await poll(delivered)
    assert await call(ebms_a, "processMessageEvent", message_id) is None
    assert not await delivered()

    again = await call(ebms_a, "resendMessage", message_id)
    assert again and again != message_id
    assert again in await poll(lambda: _contains(unprocessed, again))


async def _contains(listing: Callable[[], Any], item: str) -> list[str]:
    found: list[str] = await listing()
    return found if item in found else []


@pytest_twisted.ensureDeferred
async def test_message_faults_are_readable(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    ebms = await client(pair.a, "ebms")
    unknown = await fault_of(ebms, "getMessage", "no-such-message@example")
    assert unknown.code == "soap:Client"
    assert unknown.message == "message no-such-message@example not found"
    # The declared detail element carries the same text (ebms-core's exception type).
    assert (
        unknown.detail.find(f"{{{EBMS_NS}}}EbMSMessageServiceException").findtext("message")
        == unknown.message
    )

    wrong_action = await fault_of(
        ebms,
        "sendMessage",
        message={
            "properties": {
                "cpaId": pair.cpa_id,
                "fromPartyId": GEMEENTE,
                "service": SERVICE,
                "action": "WMO999",
            }
        },
    )
    assert wrong_action.code == "soap:Client"
    assert "WMO999" in wrong_action.message

    assert pair.a.gateway is not None and pair.a.gateway.backoffice is not None
    backoffice = pair.a.gateway.backoffice

    async def unavailable(*args: Any) -> None:
        raise PartnerUnavailable("no Pong to x within 30 s", timed_out=True)

    monkeypatch.setattr(backoffice, "ping", unavailable)
    down = await fault_of(ebms, "ping", pair.cpa_id, GEMEENTE, NODE)
    assert (down.code, down.message) == ("soap:Server", "no Pong to x within 30 s")

    def broken(*args: Any) -> None:
        raise RuntimeError("secret database detail")

    monkeypatch.setattr(backoffice, "process_message", broken)
    response = await post(
        url(pair.a, "ebms"),
        envelope("<ns:processMessage><messageId>x</messageId></ns:processMessage>"),
    )
    assert fault(response) == ("soap:Server", "internal error")
    assert "secret" not in response.text


# -- configuration services -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cpa_operations(side: Side, make_spec: Any) -> None:
    cpas = await client(side, "cpa")
    xml = make_cpa(make_spec(cpa_id="soap-admin")).decode("utf-8")

    assert await call(cpas, "validateCPA", xml) is None
    assert await call(cpas, "insertCPA", xml, False) == "soap-admin"
    assert await call(cpas, "insertCPA", cpa=xml, overwrite=True) == "soap-admin"
    exists = await fault_of(cpas, "insertCPA", xml)
    assert exists.code == "soap:Client" and "soap-admin" in exists.message
    assert await call(cpas, "getCPAIds") == ["soap-admin"]
    assert await call(cpas, "getCPA", "soap-admin") == xml

    broken = xml.replace("<tns:PartyInfo ", "<tns:PartyInfoX ", 1).replace(
        "</tns:PartyInfo>", "</tns:PartyInfoX>", 1
    )
    invalid = await fault_of(cpas, "validateCPA", broken)
    assert invalid.code == "soap:Client"
    assert invalid.message.startswith("invalid CPA:")
    assert "PartyInfoX" in invalid.message

    missing = await fault_of(cpas, "deleteCPA", "no-such-cpa")
    assert (missing.code, missing.message) == ("soap:Client", "CPA no-such-cpa not found")
    assert await call(cpas, "deleteCache") is None
    assert await call(cpas, "deleteCPA", "soap-admin") is None
    assert not await call(cpas, "getCPAIds")


@pytest_twisted.ensureDeferred
async def test_url_mapping_operations(side: Side) -> None:
    mappings = await client(side, "urlMapping")
    source, destination = "https://gemeente.example/ebms", "https://proxy.example:8443/ebms"

    assert (
        await call(mappings, "setURLMapping", {"source": source, "destination": destination})
        is None
    )
    found = await call(mappings, "getURLMappings")
    assert [(m.source, m.destination) for m in found] == [(source, destination)]
    assert await call(mappings, "deleteCache") is None
    assert await call(mappings, "deleteURLMapping", source) is None
    assert not await call(mappings, "getURLMappings")
    gone = await fault_of(mappings, "deleteURLMapping", sourceURL=source)
    assert gone.code == "soap:Client" and source in gone.message


@pytest_twisted.ensureDeferred
async def test_certificate_mapping_operations(side: Side, pki: Path, make_spec: Any) -> None:
    CpaRegistry(side.db).insert(make_cpa(make_spec(cpa_id="some-cpa")))
    mappings = await client(side, "certificateMapping")
    source = der(pki / "gemeente-voorbeeld" / "signing.pem")
    destination = der(pki / "ggk-rinis-test" / "signing.pem")
    # A cpaId must name a stored CPA (none: the mapping is for every CPA).
    unknown = await fault_of(
        mappings,
        "setCertificateMapping",
        {"source": source, "destination": destination, "cpaId": "no-such-cpa"},
    )
    assert unknown.code == "soap:Client"
    assert "names no stored CPA" in unknown.message

    mapping = {"source": source, "destination": destination, "cpaId": "some-cpa"}
    assert await call(mappings, "setCertificateMapping", mapping) is None
    assert await call(mappings, "setCertificateMapping", {**mapping, "cpaId": None}) is None
    found = await call(mappings, "getCertificateMappings")
    assert sorted((m.source, m.destination, m.cpaId or "") for m in found) == [
        (source, destination, ""),
        (source, destination, "some-cpa"),
    ]
    assert await call(mappings, "deleteCertificateMapping", source, "some-cpa") is None
    assert await call(mappings, "deleteCertificateMapping", sourceCertificate=source) is None
    assert not await call(mappings, "getCertificateMappings")
    gone = await fault_of(mappings, "deleteCertificateMapping", source)
    assert gone.code == "soap:Client"
    assert await call(mappings, "deleteCache") is None

    not_a_certificate = await fault_of(
        mappings, "setCertificateMapping", {"source": b"junk", "destination": destination}
    )
    assert not_a_certificate.code == "soap:Client"


# -- the WSDL -------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wsdl_address_is_the_one_the_client_used(side: Side) -> None:
    assert side.gateway is not None
    port = side.gateway.api_listening_port
    for service in ("ebms", "cpa", "urlMapping", "certificateMapping"):
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            response = await deferToThread(
                requests.get, url(side, service) + "?wsdl", headers={"Host": host}, timeout=10
            )
            assert response.status_code == 200
            address = etree.fromstring(response.content).find(".//{*}service/{*}port/{*}address")
            assert address is not None
            assert address.get("location") == f"http://{host}/service/{service}"


@pytest_twisted.ensureDeferred
async def test_zeep_from_the_wsdl_file_with_an_address_override(side: Side) -> None:
    def build() -> Any:
        api = zeep.Client(str(WSDL_DIR / "cpa.wsdl"))
        return api.create_service(f"{{{CPA_NS}}}CPAServiceSoapBinding", url(side, "cpa"))

    cpas = await deferToThread(build)
    assert not await deferToThread(cpas.getCPAIds)
    assert await deferToThread(cpas.deleteCache) is None


# -- what a client can get wrong --------------------------------------------------------


PING = "<ns:ping><cpaId>c</cpaId><fromPartyId>f</fromPartyId>{rest}</ns:ping>"


@pytest.mark.parametrize(
    ("body", "content_type", "code", "text"),
    [
        pytest.param("<soap:Envelope", "text/xml", "soap:Client", "not acceptable XML",
                     id="malformed"),
        pytest.param('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]>'
                     + envelope("<ns:getCPAIds>&e;</ns:getCPAIds>"), "text/xml", "soap:Client",
                     "DOCTYPE is not allowed", id="dtd-entity"),
        pytest.param(envelope("<ns:getMessage><messageId>&e;</messageId></ns:getMessage>"),
                     "text/xml", "soap:Client", "not acceptable XML", id="undeclared-entity"),
        pytest.param(envelope("<ns:frobnicate/>"), "text/xml", "soap:Client",
                     "unknown operation 'frobnicate'", id="unknown-operation"),
        pytest.param(envelope("<ns:getCPAIds/>", CPA_NS), "text/xml", "soap:Client",
                     "unknown operation 'getCPAIds'", id="other-service-namespace"),
        pytest.param(envelope(PING.format(rest="")), "text/xml", "soap:Client",
                     "invalid ping request: Element 'ping': Missing child element(s). "
                     "Expected is ( toPartyId ).", id="missing-element"),
        pytest.param(envelope("<ns:getMessage><messageId>m</messageId><process>maybe</process>"
                              "</ns:getMessage>"), "text/xml", "soap:Client",
                     "'maybe' is not a valid value", id="bad-boolean"),
        pytest.param(envelope(""), "text/xml", "soap:Client", "exactly one operation",
                     id="empty-body"),
        pytest.param("<soap:Envelope xmlns:soap='http://www.w3.org/2003/05/soap-envelope'>"
                     "<soap:Body/></soap:Envelope>", "text/xml", "soap:VersionMismatch",
                     "SOAP 1.1", id="soap12-envelope"),
        pytest.param(envelope("<ns:getCPAIds/>"), "application/soap+xml", "soap:Client",
                     "send a SOAP 1.1 request as text/xml", id="soap12-content-type"),
        pytest.param("{}", "application/json", "soap:Client", "application/json is not supported",
                     id="json"),
    ],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_a_client_fault(
    side: Side, body: str, content_type: str, code: str, text: str
) -> None:
    response = await post(url(side, "ebms"), body, content_type)
    assert response.status_code == (415 if "text/xml" not in content_type else 500)
    faultcode, faultstring = fault(response)
    assert faultcode == code
    assert text in faultstring


@pytest_twisted.ensureDeferred
async def test_http_framing(side: Side) -> None:
    target = url(side, "cpa")
    # ebms-core's clients send SOAPAction "", the operation's name is accepted too.
    for action in ('""', "getCPAIds", f'"{CPA_NS}/getCPAIds"'):
        response = await post(target, envelope("<ns:getCPAIds/>", CPA_NS), SOAPAction=action)
        response_wrapper(response, "cpa.wsdl")
    mismatch = await post(target, envelope("<ns:getCPAIds/>", CPA_NS), SOAPAction="deleteCPA")
    assert fault(mismatch)[0] == "soap:Client"
    understood = envelope("<ns:getCPAIds/>", CPA_NS).replace(
        "<soap:Header/>",
        '<soap:Header><x:Security xmlns:x="urn:x" soap:mustUnderstand="1"/></soap:Header>',
    )
    assert fault(await post(target, understood))[0] == "soap:MustUnderstand"

    plain_get = await deferToThread(requests.get, target, timeout=10)
    assert plain_get.status_code == 405
    put = await deferToThread(requests.put, target, data=b"x", timeout=10)
    assert put.status_code == 405
    below = await deferToThread(requests.get, target + "/deeper?wsdl", timeout=10)
    assert below.status_code == 404


@pytest_twisted.ensureDeferred
async def test_a_payload_over_libxml2s_text_limit_is_accepted(pair: Pair) -> None:
    # 12 MiB of payload is 16 MiB of base64 in one text node: over libxml2's
    # default 10 MB text limit, within Digikoppeling's 20 MiB message size.
    payload = os.urandom(12 * 1024 * 1024)
    request = envelope(
        "<ns:sendMessage><message><properties>"
        f"<cpaId>{pair.cpa_id}</cpaId><fromPartyId>{GEMEENTE}</fromPartyId>"
        f"<service>{SERVICE}</service><action>WMO301</action></properties>"
        "<dataSource><contentType>application/pdf</contentType>"
        f"<content>{base64.b64encode(payload).decode('ascii')}</content></dataSource>"
        "</message></ns:sendMessage>"
    )
    response = await post(url(pair.a, "ebms"), request)
    message_id = response_wrapper(response, "ebms.wsdl").findtext("messageId")
    assert message_id
    rows = pair.a.rows(
        "SELECT a.size, a.sha256 FROM ebms_attachment a JOIN ebms_message m "
        "ON m.id = a.message_pk WHERE m.message_id = ? AND m.direction = 'out'",
        message_id,
    )
    assert rows == [(len(payload), hashlib.sha256(payload).hexdigest())]


@pytest_twisted.ensureDeferred
async def test_nesting_deeper_than_the_parser_allows_is_refused(side: Side) -> None:
    deep = "<x>" * 300 + "</x>" * 300
    code, text = fault(await post(url(side, "ebms"), envelope(f"<ns:ping>{deep}</ns:ping>")))
    assert code == "soap:Client"
    assert "nested deeper" in text
