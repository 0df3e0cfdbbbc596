"""The ebMS endpoint over real HTTPS with mutual TLS: what a partner (or an attacker) sees.

One node gateway listens on 127.0.0.1; the tests POST to it as the municipality
(its TLS client certificate from the example PKI) or as someone else.  The
CPA has a synchronous (mshSignalsOnly) reliable channel, the shape of
ebms-core's integration-test CPA, so every MessageError comes back in the
HTTP response and can be asserted directly (ebms-core's endpoint test cases).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from lxml import etree
from twisted.internet import defer, protocol, reactor

from cpa.generate import make_cpa
from cpa.parse import parse_cpa
from gateway.delivery import HttpResult
from gateway.ebms.envelope import parse_envelope
from gateway.ebms.mime import OutgoingPart, build_swa
from gateway.http.client import EbmsClient
from gateway.store.cpas import CpaRegistry, insert_row
from gateway.tls import ClientTlsPolicy, TlsIdentity, load_trust_anchors
from tests.gateways import Side, gateway_config, store_url
from tests.messages import ERROR_MATRIX, render

XML = "text/xml; charset=UTF-8"
CPA_ID = "test-cpa"
MAX_REQUEST = 2 * 1024 * 1024


@dataclass
class Endpoint:
    side: Side
    url: str
    pki: Path
    clients: list[EbmsClient]

    def client(self, cert_dir: str = "gemeente-voorbeeld", name: str = "tls-client") -> EbmsClient:
        base = self.pki / cert_dir if cert_dir != "negative" else self.pki / "negative"
        identity = TlsIdentity.from_files(base / f"{name}.pem", base / f"{name}.key")
        anchors = load_trust_anchors(self.pki / "ca" / "chain.pem")
        client = EbmsClient(reactor, ClientTlsPolicy(identity, anchors), read_timeout=10)
        self.clients.append(client)
        return client

    async def post(
        self,
        body: bytes,
        *,
        content_type: str = XML,
        soap_action: str = '"ebXML"',
        client: EbmsClient | None = None,
    ) -> HttpResult:
        headers = {"Content-Type": content_type}
        if soap_action is not None:
            headers["SOAPAction"] = soap_action
        return await (client or self.clients[0]).post(self.url, headers, body, None)

    def count(self, sql: str, *params: Any) -> int:
        return int(self.side.rows(sql, *params)[0][0])


@pytest_twisted.async_yield_fixture
async def endpoint(pki: Path, make_spec, tmp_path: Path) -> AsyncIterator[Endpoint]:
    config = gateway_config(
        pki, "ggk-rinis-test", tmp_path / "b", store_url("sqlite", tmp_path, "b")
    )
    side = Side("b", replace(config, http=replace(config.http, max_request_bytes=MAX_REQUEST)))
    side.start()
    spec = make_spec(profile="osb-rm", sync_reply=True, cpa_id=CPA_ID)
    spec = replace(spec, b=replace(spec.b, endpoint=f"https://localhost:{side.port}/ebms"))
    CpaRegistry(side.db).insert(make_cpa(spec), overwrite=True)
    ep = Endpoint(side, f"https://localhost:{side.port}/ebms", pki, [])
    ep.client()
    yield ep
    for client in ep.clients:
        await client.close()
    await side.stop()
    side.close()


def error_of(result: HttpResult) -> tuple[str, str]:
    env, _ = parse_envelope(result.body)
    assert env.header.action == "MessageError", env.header.action
    assert env.error_list is not None
    (error,) = env.error_list.errors
    return error.code.value, error.location or ""


# -- the §9 matrix over the wire ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "values", "code", "location"),
    [
        *ERROR_MATRIX,
        (
            "EbMSMessageInvalidRefToMessageId",
            {},
            "ValueNotRecognized",
            "//Header/MessageHeader/MessageData/RefToMessageId",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_negative_fixture_gets_its_error(endpoint: Endpoint, name, values, code, location):
    xml = render(name, **values)
    result = await endpoint.post(xml)
    assert result.status == 200
    assert result.content_type.startswith("text/xml")
    assert error_of(result) == (code, location)
    # Stored as FAILED with the error, and never handed to the back office as received.
    message_id = parse_envelope(xml)[0].header.message_id
    assert endpoint.side.status(message_id, "in") == "FAILED"
    assert endpoint.count("SELECT count(*) FROM message_event WHERE event_type = 'RECEIVED'") == 0


@pytest.mark.parametrize(
    ("name", "action"),
    [
        ("EbMSMessage", "Acknowledgment"),
        ("EbMSMessageMissingManifest", "Acknowledgment"),
        ("EbMSPing", "Pong"),
        ("EbMSMessageStatus", "StatusResponse"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_valid_fixtures_get_their_sync_reply(endpoint: Endpoint, name, action) -> None:
    xml = render(name)
    request, _ = parse_envelope(xml)
    result = await endpoint.post(xml)
    assert (result.status, result.content_type) == (200, XML)
    reply, _ = parse_envelope(result.body)
    assert reply.header.action == action
    assert reply.header.ref_to_message_id == request.header.message_id
    assert reply.header.conversation_id == request.header.conversation_id
    assert reply.header.from_ids == request.header.to_ids


@pytest_twisted.ensureDeferred
async def test_duplicate_gets_the_stored_ack_and_is_stored_once(endpoint: Endpoint) -> None:
    cids = ("a@x", "b@x")
    xml = render("EbMSMessageWithAttachments", cids=cids)
    parts = [OutgoingPart(c, "application/octet-stream", bytes(range(256)) * 8) for c in cids]
    content_type, chunks, _ = build_swa(xml, parts)
    body = b"".join(chunks)
    first = await endpoint.post(body, content_type=content_type)
    second = await endpoint.post(body, content_type=content_type)
    assert first.status == second.status == 200
    assert second.body == first.body  # the stored acknowledgment, byte for byte
    assert parse_envelope(first.body)[0].header.action == "Acknowledgment"
    message_id = parse_envelope(xml)[0].header.message_id
    assert (
        endpoint.count(
            "SELECT count(*) FROM ebms_message WHERE direction = 'in' AND message_id = ?",
            message_id,
        )
        == 1
    )
    assert (
        endpoint.count("SELECT count(*) FROM message_event WHERE message_id = ?", message_id) == 1
    )
    assert endpoint.count("SELECT count(*) FROM ebms_attachment") == 2
    # The same MessageId with other content is not a duplicate but an error.
    other = build_swa(xml, parts[:1])
    reused = await endpoint.post(b"".join(other[1]), content_type=other[0])
    assert error_of(reused) == ("Inconsistent", "//Header/MessageHeader/MessageData/MessageId")


# -- refused before any ebMS error can be built ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_xxe_ping_is_refused_and_no_entity_is_resolved(endpoint: Endpoint, tmp_path) -> None:
    fetched: list[bytes] = []

    class Recorder(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            fetched.append(data)

    factory = protocol.Factory.forProtocol(Recorder)
    listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-NOT-TO-BE-READ")
    try:
        for target in (secret.as_uri(), f"http://127.0.0.1:{listener.getHost().port}/x"):
            xml = (
                render("EbMSPing")
                .replace(
                    b"<soap:Envelope",
                    f'<!DOCTYPE aa[<!ENTITY xxe SYSTEM "{target}">]>\n<soap:Envelope'.encode(),
                    1,
                )
                .replace(b"<eb:Action>Ping</eb:Action>", b"<eb:Action>&xxe;</eb:Action>")
            )
            result = await endpoint.post(xml)
            assert (result.status, result.body) == (500, b"")
            fixture = await endpoint.post(render("EbMSPingXXE"))
            assert (fixture.status, fixture.body) == (500, b"")
        await defer.succeed(None)
        assert fetched == []
        assert endpoint.count("SELECT count(*) FROM ebms_message") == 0
    finally:
        await listener.stopListening()


@pytest.mark.parametrize("action", ["", "ebXML2", '"other"', None])
@pytest_twisted.ensureDeferred
async def test_wrong_soap_action_is_a_soap_fault(endpoint: Endpoint, action) -> None:
    result = await endpoint.post(render("EbMSPing"), soap_action=action)
    assert result.status == 500
    fault = etree.fromstring(result.body)
    assert fault.findtext(".//faultcode").endswith("Client")
    assert "SOAPAction" in fault.findtext(".//faultstring")


@pytest_twisted.ensureDeferred
async def test_unknown_cpa_is_a_soap_fault(endpoint: Endpoint) -> None:
    result = await endpoint.post(render("EbMSMessage", cpa_id="no-such-cpa"))
    assert result.status == 500
    assert b"CPA no-such-cpa not found!" in result.body


@pytest_twisted.ensureDeferred
async def test_expired_cpa_is_refused(endpoint: Endpoint, make_spec) -> None:
    # Stored while it was valid, expired since: bypass import validation, which
    # refuses a CPA whose End has passed.
    now = datetime.now(UTC).replace(microsecond=0)
    xml = make_cpa(
        make_spec(profile="osb-rm", sync_reply=True, cpa_id="expired-cpa",
                  start=now - timedelta(days=30), end=now - timedelta(days=1))
    )  # fmt: skip
    with endpoint.side.db.transaction() as cur:
        insert_row(cur, parse_cpa(xml), xml, {}, overwrite=False)
    result = await endpoint.post(render("EbMSMessage", cpa_id="expired-cpa"))
    assert error_of(result) == ("Inconsistent", "//Header/MessageHeader/@cpaid")


@pytest_twisted.ensureDeferred
async def test_certificate_of_another_party_is_refused(endpoint: Endpoint) -> None:
    # The node's own client certificate: chains to the trusted root, but it is
    # not the sender's certificate in the CPA.
    other = endpoint.client("ggk-rinis-test")
    result = await endpoint.post(render("EbMSMessage"), client=other)
    assert result.status == 500
    assert b"Invalid SSL Client Certificate!" in result.body
    assert endpoint.count("SELECT count(*) FROM ebms_message") == 0


@pytest_twisted.ensureDeferred
async def test_certificate_from_a_foreign_ca_fails_the_handshake(endpoint: Endpoint) -> None:
    foreign = endpoint.client("negative", "foreign-client")
    with pytest.raises(Exception) as info:
        await endpoint.post(render("EbMSMessage"), client=foreign)
    assert "unknown ca" in str(info.value).lower() or "alert" in str(info.value).lower()
    assert endpoint.count("SELECT count(*) FROM ebms_message") == 0


# -- HTTP and MIME level ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bad_mime_and_content_type_are_400(endpoint: Endpoint) -> None:
    xml = render("EbMSMessage")
    truncated = await endpoint.post(
        b"--b\r\nContent-Type: text/xml\r\n\r\n" + xml,
        content_type='multipart/related; boundary="b"',
    )
    assert truncated.status == 400
    json = await endpoint.post(b"{}", content_type="application/json")
    assert json.status == 400
    assert endpoint.count("SELECT count(*) FROM ebms_message") == 0


@pytest_twisted.ensureDeferred
async def test_oversized_request_is_413_before_it_is_read(endpoint: Endpoint) -> None:
    limit = endpoint.side.config.http.max_request_bytes
    result = await endpoint.post(b"x" * 10, content_type=XML)
    assert result.status == 500  # not XML at all: a bare 500
    big = await endpoint.post(b" " * (limit + 1), content_type=XML)
    assert big.status == 413


@pytest_twisted.ensureDeferred
async def test_get_is_not_allowed(endpoint: Endpoint) -> None:
    import treq

    agent = endpoint.clients[0]._agent(None)
    response = await treq.client.HTTPClient(agent).get(endpoint.url)
    assert response.code == 405
    await response.content()
