"""The SOAP ``StufService`` (``/service/stuf``): a back office hands over a bare iWmo/iJw message.

zeep reads the endpoint's own ``?wsdl`` and calls ``sendStufMessage`` on the
municipality's gateway of the relay pair (tests/test_stuf_relay.py); the node
writes what arrives to the care provider's folder.  Raw POSTs cover what zeep
would never send (bad base64).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest_twisted
from lxml import etree

from adapters.api.soap_stuf import NOT_CONFIGURED, STUF_NS
from adapters.stuf.envelope import unwrap
from tests.gateways import Pair, Side, wait_until
from tests.test_api_soap import (
    call,
    client,
    fault,
    fault_of,
    post,
    response_wrapper,
    side,  # noqa: F401  (a fixture, used by name)
    url,
)
from tests.test_stuf_relay import (
    AGB,
    files,
    log_rows,
    relay_pair,  # noqa: F401  (a fixture, used by name)
    sample,
)


def stuf_envelope(inner: str) -> str:
    return (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:ns="{STUF_NS}"><soap:Body>{inner}</soap:Body></soap:Envelope>'
    )


def request(bericht: str) -> str:
    return stuf_envelope(f"<ns:sendStufMessage><bericht>{bericht}</bericht></ns:sendStufMessage>")


@pytest_twisted.ensureDeferred
async def test_a_bare_wmo301_goes_to_the_providers_folder(
    relay_pair: Pair,  # noqa: F811
    tmp_path: Path,
) -> None:
    a = relay_pair.a
    stuf = await client(a, "stuf")
    wmo301 = sample("iwmo/3.2/WMO301.xml")
    sent = await call(stuf, "sendStufMessage", bericht=wmo301)
    assert (sent.functie, sent.berichtcode) == ("WMO301", "Di01")
    assert sent.referentienummer and sent.messageId

    # The node writes the envelope to the provider's folder, payload byte-exact.
    provider = tmp_path / "providers-out" / AGB
    await wait_until(lambda: len(files(provider)) == 1, timeout=20)
    arrived = unwrap(files(provider)[0].read_bytes())
    assert arrived.functie == "WMO301"
    assert arrived.payload == wmo301
    assert arrived.referentienummer == sent.referentienummer
    assert [r[0] for r in log_rows(a, "functie")] == ["WMO301"]


@pytest_twisted.ensureDeferred
async def test_the_response_matches_the_wsdl(relay_pair: Pair) -> None:  # noqa: F811
    body = base64.b64encode(sample("ijw/3.2/JW301.xml")).decode("ascii")
    wrapper = response_wrapper(await post(url(relay_pair.a, "stuf"), request(body)), "stuf.wsdl")
    assert etree.QName(wrapper).text == f"{{{STUF_NS}}}sendStufMessageResponse"
    assert [child.tag for child in wrapper] == [
        "referentienummer",
        "functie",
        "berichtcode",
        "messageId",
    ]
    assert (wrapper.findtext("functie"), wrapper.findtext("berichtcode")) == ("JW301", "Di01")


@pytest_twisted.ensureDeferred
async def test_an_aanbieder_message_is_refused_with_its_code(relay_pair: Pair) -> None:  # noqa: F811
    a = relay_pair.a
    stuf = await client(a, "stuf")
    refused = await fault_of(stuf, "sendStufMessage", bericht=sample("ijw/3.2/JW315.xml"))
    assert refused.code == "soap:Client"
    assert refused.message.startswith("IB240: ")
    detail = refused.detail.find(f"{{{STUF_NS}}}StufServiceException")
    assert detail.findtext("code") == "IB240"
    assert detail.findtext("reason")
    assert refused.message == f"IB240: {detail.findtext('reason')}"
    assert detail.findtext("message") == refused.message
    # Logged as a refusal, as REST's are; nothing went out.
    assert log_rows(a, "status", "reason_code") == [("rejected", "IB240")]


@pytest_twisted.ensureDeferred
async def test_malformed_requests_are_client_faults(relay_pair: Pair) -> None:  # noqa: F811
    target = url(relay_pair.a, "stuf")
    # Not base64: the schema (xs:base64Binary) refuses it.
    code, text = fault(await post(target, request("@@ not base64 @@")))
    assert code == "soap:Client"
    assert text.startswith("invalid sendStufMessage request:"), text
    # No bericht at all.
    code, text = fault(await post(target, stuf_envelope("<ns:sendStufMessage/>")))
    assert code == "soap:Client" and "bericht" in text
    # An empty one.
    code, text = fault(await post(target, request("")))
    assert (code, text) == ("soap:Client", "bericht must be an iWmo/iJw message (XML)")
    # Base64 of something that is not XML: the relay refuses it (GW001).
    not_xml = base64.b64encode(b"not xml at all <<<").decode("ascii")
    response = await post(target, request(not_xml))
    code, text = fault(response)
    assert code == "soap:Client" and text.startswith("GW001: "), text
    detail = etree.fromstring(response.content).find(f".//{{{STUF_NS}}}StufServiceException")
    assert detail is not None and detail.findtext("code") == "GW001"
    # Broken XML in the middle of an iWmo message.
    broken = sample("iwmo/3.2/WMO301.xml").replace(b"</", b"<", 1)
    code, text = fault(await post(target, request(base64.b64encode(broken).decode("ascii"))))
    assert code == "soap:Client" and text.startswith("GW001: "), text
    # And the SOAP envelope itself broken.
    code, text = fault(await post(target, "<soap:Envelope"))
    assert code == "soap:Client"


@pytest_twisted.ensureDeferred
async def test_without_a_stuf_role_the_service_says_so(side: Side) -> None:  # noqa: F811
    stuf = await client(side, "stuf")
    missing = await fault_of(stuf, "sendStufMessage", bericht=sample("iwmo/3.2/WMO301.xml"))
    assert (missing.code, missing.message) == ("soap:Client", NOT_CONFIGURED)
    detail = missing.detail.find(f"{{{STUF_NS}}}StufServiceException")
    assert detail.findtext("message") == NOT_CONFIGURED
    assert detail.find("code") is None
    # The raw answer is a plain fault, without a traceback.
    body = base64.b64encode(b"<x/>").decode("ascii")
    assert fault(await post(url(side, "stuf"), request(body))) == ("soap:Client", NOT_CONFIGURED)
