"""The iWmo/iJw relay between a municipality's gateway and a node gateway, end to end.

Two real gateways over mutual TLS: ``a`` in the gemeente role (back-office API,
outbox and inbox folders), ``b`` in the node role (one municipality CPA, the
care providers' folders).  The CPA carries the message types as actions of
one service, and Fo01 both ways.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import pytest_twisted
from twisted.internet.threads import deferToThread

from adapters.stuf.bare import read_bare, wrap_bare
from adapters.stuf.envelope import unwrap, wrap
from adapters.stuf.fo01 import parse_fo01
from cpa.generate import ActionSpec
from cpa.model import Service
from gateway.config import ApiConfig, StufConfig, StufMunicipality
from gateway.msh.outbound import Payload
from tests.gateways import GEMEENTE, NODE, Pair, Side, gateway_config, store_url, wait_until
from tests.test_integration import RM_FAST

FIXTURES = Path(__file__).parent / "fixtures" / "stuf"
SERVICE = "urn:osb:services:GGK:iWmo:3.2"
CPA_ID = "stuf-cpa"
AGB = "42420001"
ACTIONS = (
    ActionSpec("WMO301", "a"),
    ActionSpec("JW301", "a"),
    ActionSpec("WMO302", "b"),
    ActionSpec("JW302", "b"),
    ActionSpec("JW315", "b"),
    ActionSpec("Fo01", "both"),
)


def sample(path: str) -> bytes:
    return (FIXTURES / path).read_bytes()


@pytest_twisted.async_yield_fixture
async def relay_pair(pki: Path, make_spec, tmp_path: Path) -> AsyncIterator[Pair]:
    services = (("ijw", SERVICE), ("iwmo", SERVICE))
    a_stuf = StufConfig(
        role="gemeente",
        cpa_id=CPA_ID,
        gemeentecodes=("0384", "0363"),
        services=services,
        outbox=tmp_path / "a-out",
        inbox=tmp_path / "a-in",
        poll_interval=0.1,
    )
    b_stuf = StufConfig(
        role="node",
        gemeenten=(StufMunicipality(CPA_ID, ("0384",)),),
        services=services,
        provider_outbox=tmp_path / "providers-out",
        provider_inbox=tmp_path / "providers-in",
        poll_interval=0.1,
    )
    sides = []
    for name, slug, stuf in (("a", "gemeente-voorbeeld", a_stuf), ("b", "ggk-rinis-test", b_stuf)):
        config = replace(
            gateway_config(
                pki,
                slug,
                tmp_path / name,
                store_url("sqlite", tmp_path, name),
                api=ApiConfig(port=0),
            ),
            stuf=stuf,
        )
        side = Side(name, config)
        side.start()
        sides.append(side)
    pair = Pair(
        sides[0],
        sides[1],
        CPA_ID,
        make_spec,
        {"profile": "osb-rm", "actions": ACTIONS, **RM_FAST},
    )
    pair.import_cpa()
    yield pair
    await pair.stop()


def post_bare(side: Side, body: bytes) -> tuple[int, Any]:
    assert side.gateway is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{side.gateway.api_listening_port}/service/rest/v19/stuf/messages",
        data=body,
        method="POST",
        headers={"Content-Type": "application/xml"},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except HTTPError as exc:
        return exc.code, exc.read().decode()


def files(folder: Path) -> list[Path]:
    """The finished files under ``folder``: not the hidden ``.tmp-`` ones being written."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def log_rows(side: Side, *columns: str) -> list[tuple[Any, ...]]:
    return side.rows(f"SELECT {', '.join(columns)} FROM stuf_message ORDER BY id")


@pytest_twisted.ensureDeferred
async def test_heen_to_the_provider_and_retour_to_the_back_office(
    relay_pair: Pair, tmp_path: Path
) -> None:
    a, b = relay_pair.a, relay_pair.b
    # The back office hands over a bare JW301 (REST) and a bare WMO301 (outbox folder).
    jw301 = sample("ijw/3.2/JW301.xml")
    status, sent = await deferToThread(post_bare, a, jw301)
    assert status == 200, sent
    assert (sent["functie"], sent["berichtcode"]) == ("JW301", "Di01")
    wmo301 = sample("iwmo/3.2/WMO301.xml")
    outbox = tmp_path / "a-out"
    await wait_until(lambda: outbox.is_dir())
    (outbox / "wmo301.xml.part").write_bytes(wmo301)
    (outbox / "wmo301.xml.part").rename(outbox / "wmo301.xml")

    # The node routes both to the provider's folder, enveloped, payload byte-exact.
    provider = tmp_path / "providers-out" / AGB
    await wait_until(lambda: len(files(provider)) == 2, timeout=20)
    payloads = {unwrap(p.read_bytes()).functie: unwrap(p.read_bytes()) for p in files(provider)}
    assert payloads["JW301"].payload == jw301
    assert payloads["WMO301"].payload == wmo301
    assert payloads["JW301"].referentienummer == sent["referentienummer"]
    assert payloads["JW301"].stuurgegevens.zender.organisatie == "0384"
    assert payloads["JW301"].stuurgegevens.ontvanger.organisatie == AGB

    # The provider answers the JW301 with a bare JW302 in the node's inbox.
    inbox = tmp_path / "providers-in"
    await wait_until(lambda: inbox.is_dir())
    jw302 = sample("ijw/3.2/JW302.xml")
    (inbox / "jw302.xml").write_bytes(jw302)

    # The municipality gets it unwrapped with its sidecar, as the Du01 of the JW301.
    a_inbox = tmp_path / "a-in"
    await wait_until(lambda: any(p.suffix == ".json" for p in files(a_inbox)), timeout=20)
    (sidecar_path,) = [p for p in files(a_inbox) if p.suffix == ".json"]
    sidecar = json.loads(sidecar_path.read_text())
    assert (sidecar["functie"], sidecar["berichtcode"]) == ("JW302", "Du01")
    assert sidecar["crossRefnummer"] == sent["referentienummer"]
    assert (a_inbox / sidecar["payload"]["file"]).read_bytes() == jw302
    await wait_until(lambda: (inbox / "sent" / "jw302.xml").exists(), timeout=20)

    # Both message logs tell the story; the provider taking its files counts as read.
    for p in files(provider):
        p.unlink()
    await wait_until(
        lambda: {r[0] for r in log_rows(b, "status") if r[0] in ("read",)} == {"read"},
        timeout=10,
    )
    await wait_until(
        lambda: sorted(log_rows(a, "direction", "functie", "status"))
        == [("in", "JW302", "delivered"), ("out", "JW301", "delivered"),
            ("out", "WMO301", "delivered")],
        timeout=20,
    )  # fmt: skip
    node_log = sorted(log_rows(b, "direction", "functie", "gemeente", "counterpart"))
    assert node_log == [
        ("in", "JW301", "0384", AGB),
        ("in", "WMO301", "0384", AGB),
        ("out", "JW302", "0384", AGB),
    ]


@pytest_twisted.ensureDeferred
async def test_the_node_refuses_with_an_fo01_that_fails_the_message_at_the_gemeente(
    relay_pair: Pair,
) -> None:
    a, b = relay_pair.a, relay_pair.b
    # The municipality may send for 0363, but the node knows its CPA only for 0384.
    other = sample("iwmo/3.2/WMO301.xml").replace(b">0384<", b">0363<", 1)
    status, sent = await deferToThread(post_bare, a, other)
    assert status == 200, sent
    await wait_until(
        lambda: log_rows(a, "status", "reason_code")[:1] == [("failed", "IB002")], timeout=20
    )
    assert b.rows("SELECT status, reason_code FROM stuf_message") == [("rejected", "IB002")]
    # The back office sees a FAILED event on the message it sent.
    events = a.rows(
        "SELECT e.event_type FROM message_event e JOIN ebms_message m ON m.id = e.message_pk "
        "WHERE m.message_id = ? ORDER BY e.id",
        sent["messageId"],
    )
    assert ("FAILED",) in events
    # ... with the Fo01's code and text, over the REST API as well.
    assert a.gateway is not None
    url = (
        f"http://127.0.0.1:{a.gateway.api_listening_port}/service/rest/v19/ebms/events/unprocessed"
    )

    def fetch() -> Any:
        with urllib.request.urlopen(f"{url}?eventTypes=FAILED", timeout=10) as answer:
            return json.loads(answer.read())

    failed = await deferToThread(fetch)
    assert [(e["messageId"], e["errorCode"]) for e in failed] == [(sent["messageId"], "IB002")]
    assert "0363" in failed[0]["errorText"]


@pytest_twisted.ensureDeferred
async def test_refusals_at_the_gemeente_are_answered_at_once(relay_pair: Pair) -> None:
    a = relay_pair.a
    cases = [
        (b"not xml at all", "GW001"),
        (sample("ijw/3.2/JW315.xml"), "IB240"),  # an aanbieder's message
        (sample("ijw/3.2/JW301.xml").replace(b">0384<", b">0599<", 1), "IB002"),
        (sample("ijw/2.3/JW301.xml"), "GW004"),  # release 2.3 not enabled
    ]
    for body, code in cases:
        status, text = await deferToThread(post_bare, a, body)
        assert status == 400, (code, text)
        assert text.startswith(code), (code, text)
    rows = log_rows(a, "status", "reason_code")
    assert [r[1] for r in rows] == [c for _, c in cases]
    assert {r[0] for r in rows} == {"rejected"}


@pytest_twisted.ensureDeferred
async def test_an_invalid_provider_message_gets_an_fo01_in_the_providers_folder(
    relay_pair: Pair, tmp_path: Path
) -> None:
    inbox = tmp_path / "providers-in"
    await wait_until(lambda: inbox.is_dir())
    # JW315.xml is invalid against its XSD (a date 2027-06-31).
    (inbox / "jw315.xml").write_bytes(sample("ijw/3.2/JW315.xml"))
    await wait_until(lambda: (inbox / "failed" / "jw315.xml.error").exists(), timeout=20)
    error = (inbox / "failed" / "jw315.xml.error").read_text()
    assert "StUF055" in error and "line" in error
    provider = tmp_path / "providers-out" / AGB
    await wait_until(lambda: len(files(provider)) == 1, timeout=10)
    fo01 = parse_fo01(files(provider)[0].read_bytes())
    assert fo01.code == "StUF055"
    assert fo01.stuurgegevens.zender.organisatie == "IB"
    assert fo01.stuurgegevens.ontvanger.organisatie == AGB


@pytest_twisted.ensureDeferred
async def test_the_gemeente_answers_an_invalid_payload_with_stuf055(
    relay_pair: Pair, tmp_path: Path
) -> None:
    # Sent past the node's relay (straight over ebMS), so only the gemeente checks it.
    bare = read_bare(sample("ijw/3.2/JW315.xml"), max_bytes=1 << 25)
    envelope = wrap(
        wrap_bare(
            bare,
            applicatie="Zorgapp",
            applicatie_versie="0001",
            applicatie_subversie="0000",
            cross_ref=lambda b: None,
        )
    )

    assert relay_pair.b.gateway is not None
    await relay_pair.b.gateway.send_message(
        cpa_id=CPA_ID,
        from_party=NODE,
        from_role="GGk",
        to_party=GEMEENTE,
        to_role="Gemeente",
        service=Service("GGK:iWmo:3.2", "urn:osb:services"),
        action="JW315",
        payloads=(Payload(envelope, "application/xml"),),
    )
    a_rows = await wait_until(lambda: log_rows(relay_pair.a, "status", "reason_code"), timeout=20)
    assert a_rows == [("rejected", "StUF055")]
    # The node passes the gemeente's Fo01 on to the provider.
    provider = tmp_path / "providers-out" / AGB
    await wait_until(lambda: len(files(provider)) == 1, timeout=20)
    fo01 = parse_fo01(files(provider)[0].read_bytes())
    assert fo01.code == "StUF055"
    assert fo01.stuurgegevens.cross_refnummer == unwrap(envelope).referentienummer
    assert not files(tmp_path / "a-in")


def post_keyed(side: Side, body: bytes, key: str) -> tuple[int, Any]:
    assert side.gateway is not None
    request = urllib.request.Request(
        f"http://127.0.0.1:{side.gateway.api_listening_port}/service/rest/v19/stuf/messages",
        data=body,
        method="POST",
        headers={"Content-Type": "application/xml", "Idempotency-Key": key},
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, json.loads(answer.read())
    except HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest_twisted.ensureDeferred
async def test_a_retried_bare_message_with_a_key_reaches_the_provider_once(
    relay_pair: Pair, tmp_path: Path
) -> None:
    # Without a key every call wraps the bare message in a new envelope (a new
    # referentienummer): a retry after a lost answer reached the node twice.
    a = relay_pair.a
    jw301 = sample("ijw/3.2/JW301.xml")
    first = await deferToThread(post_keyed, a, jw301, "stuf-key-1")
    assert first[0] == 200, first
    assert await deferToThread(post_keyed, a, jw301, "stuf-key-1") == first
    other = await deferToThread(post_keyed, a, sample("iwmo/3.2/WMO301.xml"), "stuf-key-1")
    assert other[0] == 422, other
    provider = tmp_path / "providers-out" / AGB
    await wait_until(lambda: len(files(provider)) == 1, timeout=20)
    await wait_until(lambda: a.status(first[1]["messageId"], "out") == "DELIVERED", timeout=20)
    assert len(files(provider)) == 1
    assert a.rows("SELECT COUNT(*) FROM ebms_message WHERE direction = 'out'")[0][0] == 1
