"""Acceptance: every valid iStandaarden sample round-trips wrap → ebMS → unwrap byte-exact.

Two real gateways over mutual TLS, *without* a ``[stuf]`` role: the relay plays no
part, so what is tested is the envelope (``read_bare`` + ``wrap_bare`` + ``wrap``) and
the ebMS transport (MIME, osb-rm, the store) carrying it unchanged.  Every valid
payload sample under ``tests/fixtures/stuf`` is wrapped and sent as the single payload
of one ebMS message from the side that produces that message type (gemeente-sent
types from ``a``, the others from ``b``); the valid ggk0210 envelope samples are sent
as they are.  At the receiver the stored attachment is loaded and unwrapped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted

from adapters.stuf.bare import read_bare, wrap_bare
from adapters.stuf.catalogue import Party, message_type
from adapters.stuf.envelope import unwrap, wrap
from adapters.stuf.fo01 import parse_fo01
from cpa.generate import ActionSpec
from gateway.msh.outbound import Payload
from gateway.store.messages import Direction, find_message, load_attachments
from tests.gateways import (
    GEMEENTE,
    NODE,
    SERVICE,
    Pair,
    Side,
    gateway_config,
    store_url,
    wait_until,
)
from tests.test_integration import RM_FAST

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "stuf"
CPA_ID = "stuf-roundtrip-cpa"
ACTION = "StUF"
#: Invalid against their XSD (tests/fixtures/stuf/README.md); not part of the acceptance.
INVALID = {"ijw/3.2/JW315.xml", "ijw/3.2/JW318.xml"}
#: The valid ggk0210 samples: (file, sent by the gemeente?).
ENVELOPES = (
    ("envelopes/envelopHeenbericht-ggk_Di01_v21-xml.xml", True),
    ("envelopes/envelopHeenbericht-ggk_Di01_v21-tekst.xml", True),
    ("envelopes/envelopRetourbericht-ggk_Du01-v21.xml", False),
    ("envelopes/Fo01.xml", False),
)
#: A fixed crossRefnummer for the retour types (the rules are not the point here).
CROSS_REF = "9c0f7b90-5c69-41e5-a837-0800200c9a66"


def payload_samples() -> list[str]:
    names = sorted(
        str(p.relative_to(FIXTURES))
        for std in ("iwmo", "ijw", "ieb")
        for p in (FIXTURES / std).glob("*/*.xml")
    )
    return [n for n in names if n not in INVALID]


@dataclass
class Case:
    name: str
    original: bytes  # the payload (bare sample) or, for envelope samples, the envelope
    sent: bytes  # what travelled as the ebMS payload
    from_a: bool
    envelope_sample: bool
    message_id: str = ""


def cases() -> list[Case]:
    out = []
    for name in payload_samples():
        data = (FIXTURES / name).read_bytes()
        bare = read_bare(data, max_bytes=1 << 25)
        mt = message_type(bare.functie)
        assert mt is not None
        env = wrap_bare(
            bare,
            applicatie="Backoffice",
            applicatie_versie="0001",
            applicatie_subversie="0000",
            cross_ref=lambda b: CROSS_REF,
        )
        out.append(Case(name, data, wrap(env), mt.sender is Party.GEMEENTE, False))
    for name, from_a in ENVELOPES:
        data = (FIXTURES / name).read_bytes()
        out.append(Case(name, data, data, from_a, True))
    return out


@pytest_twisted.async_yield_fixture
async def pair(pki: Path, make_spec, tmp_path: Path) -> AsyncIterator[Pair]:
    a = Side("a", gateway_config(pki, "gemeente-voorbeeld", tmp_path / "a",
                                 store_url("sqlite", tmp_path, "a")))  # fmt: skip
    b = Side("b", gateway_config(pki, "ggk-rinis-test", tmp_path / "b",
                                 store_url("sqlite", tmp_path, "b")))  # fmt: skip
    a.start()
    b.start()
    p = Pair(
        a,
        b,
        CPA_ID,
        make_spec,
        {"profile": "osb-rm", "actions": (ActionSpec(ACTION, "both"),), **RM_FAST},
    )
    p.import_cpa()
    yield p
    await p.stop()


def test_the_sample_set_is_complete() -> None:
    # Guards the acceptance against a fixture directory that silently lost files.
    names = payload_samples()
    assert len(names) == 43  # 45 samples, 2 invalid
    assert {n.split("/")[0] for n in names} == {"iwmo", "ijw", "ieb"}
    assert not INVALID & set(names)


def stored_payload(side: Side, message_id: str) -> bytes | None:
    """The one payload ``side`` stored for ``message_id`` once it is RECEIVED, else None."""
    with side.db.transaction() as cur:
        message = find_message(cur, message_id, Direction.IN)
        if message is None or message.status != "RECEIVED":
            return None
        parts = load_attachments(cur, message.pk)
    try:
        assert len(parts) == 1, f"{message_id}: {len(parts)} parts"
        return parts[0].data()
    finally:
        for p in parts:
            p.close()


@pytest_twisted.ensureDeferred
async def test_every_valid_sample_round_trips_byte_exact(pair: Pair) -> None:
    started = time.monotonic()
    todo = cases()
    for case in todo:
        sender = pair.a if case.from_a else pair.b
        assert sender.gateway is not None
        queued = await sender.gateway.send_message(
            cpa_id=CPA_ID,
            from_party=GEMEENTE if case.from_a else NODE,
            from_role="Gemeente" if case.from_a else "GGk",
            to_party=NODE if case.from_a else GEMEENTE,
            to_role="GGk" if case.from_a else "Gemeente",
            service=SERVICE,
            action=ACTION,
            payloads=(Payload(case.sent, "application/xml", f"{Path(case.name).stem}.xml"),),
        )
        case.message_id = queued.message_id
    assert sum(c.from_a for c in todo) and sum(not c.from_a for c in todo)

    def all_stored() -> dict[str, bytes] | None:
        got = {}
        for case in todo:
            receiver = pair.b if case.from_a else pair.a
            data = stored_payload(receiver, case.message_id)
            if data is None:
                return None
            got[case.name] = data
        return got

    stored: dict[str, bytes] = await wait_until(all_stored, timeout=30, step=0.2)
    for case in todo:
        data = stored[case.name]
        if case.envelope_sample:
            assert data == case.sent, case.name
            if case.name.endswith("Fo01.xml"):
                assert parse_fo01(data).code == "IB210"
            else:
                assert unwrap(data).payload == unwrap(case.original).payload, case.name
        else:
            assert data == case.sent, case.name
            assert unwrap(data).payload == case.original, case.name
    assert time.monotonic() - started < 30
