"""Addressing an outbound message (gateway.msh.addressing): every default and refusal, no store.

The CPA is the suite's generated one: the Gemeente (a) sends WMO301 to the
GGk node (b), the node sends WMO302 back; ``Fo01`` goes either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from adapters.api.errors import ApiError, BadRequest, NotFound, Unprocessable, refused
from cpa.generate import ActionSpec
from cpa.model import Cpa, PartyId, Service
from cpa.parse import parse_cpa
from gateway.msh.addressing import (
    Addressing,
    Refusal,
    SendError,
    SendRoute,
    resolve_send,
    resolve_signal,
)
from tests.conftest import GEMEENTE_OIN, NODE_OIN, SpecFactory

SERVICE_KEY = "urn:osb:services:GGK:iWmo:3.2"
SERVICE = Service("GGK:iWmo:3.2", "urn:osb:services")
G = f"urn:osb:oin:{GEMEENTE_OIN}"
N = f"urn:osb:oin:{NODE_OIN}"
G_ID = PartyId(GEMEENTE_OIN, "urn:osb:oin")
N_ID = PartyId(NODE_OIN, "urn:osb:oin")
UNKNOWN = "urn:osb:oin:00000009999999999000"
UNKNOWN_ID = PartyId("00000009999999999000", "urn:osb:oin")


@pytest.fixture(scope="module")
def cpa(make_spec: SpecFactory) -> Cpa:
    from cpa.generate import make_cpa

    actions = (ActionSpec("WMO301", "a"), ActionSpec("WMO302", "b"), ActionSpec("Fo01", "both"))
    return parse_cpa(make_cpa(make_spec(actions=actions, profile="osb-rm")))


def now_in(cpa: Cpa) -> datetime:
    return cpa.start + timedelta(hours=1)


def send(
    cpa: Cpa, *, duplicate: bool = False, when: datetime | None = None, **fields: Any
) -> SendRoute:
    fields.setdefault("cpa_id", cpa.cpa_id)
    fields.setdefault("service", SERVICE_KEY)
    fields.setdefault("action", "WMO301")
    return resolve_send(cpa, Addressing(**fields), when or now_in(cpa), duplicate=duplicate)


# (what the door gives) -> (from, from role, to, to role, service)
ACCEPTED: list[tuple[str, dict[str, Any], tuple[PartyId, str, PartyId, str]]] = [
    (
        "REST: type:value sender, the rest from the CPA",
        {"from_party": G},
        (G_ID, "Gemeente", N_ID, "GGk"),
    ),
    (
        "a bare OIN is an urn:osb:oin party",
        {"from_party": GEMEENTE_OIN},
        (G_ID, "Gemeente", N_ID, "GGk"),
    ),
    ("receiver named", {"from_party": G, "to_party": N}, (G_ID, "Gemeente", N_ID, "GGk")),
    ("the other direction", {"from_party": N, "action": "WMO302"}, (N_ID, "GGk", G_ID, "Gemeente")),
    (
        "CLI: values and roles taken as given",
        {
            "service": SERVICE,
            "from_party": G_ID,
            "from_role": "Gemeente",
            "to_party": N_ID,
            "to_role": "GGk",
        },
        (G_ID, "Gemeente", N_ID, "GGk"),
    ),
    ("relay: no sender, no service: the CPA's", {"service": None}, (G_ID, "Gemeente", N_ID, "GGk")),
    (
        "relay: the one party that sends the action",
        {"action": "WMO302"},
        (N_ID, "GGk", G_ID, "Gemeente"),
    ),
    (
        "relay: both may send, the first is taken",
        {"action": "Fo01"},
        (G_ID, "Gemeente", N_ID, "GGk"),
    ),
    (
        "relay: both may send, ours is preferred",
        {"action": "Fo01", "prefer": (N_ID,)},
        (N_ID, "GGk", G_ID, "Gemeente"),
    ),
    (
        "relay: a preference no sender has is ignored",
        {"action": "WMO302", "prefer": (G_ID,)},
        (N_ID, "GGk", G_ID, "Gemeente"),
    ),
    (
        "relay reply: parties given, roles from the CPA",
        {"from_party": N_ID, "to_party": G_ID, "action": "WMO302"},
        (N_ID, "GGk", G_ID, "Gemeente"),
    ),
]


@pytest.mark.parametrize(
    ("given", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_accepted(
    cpa: Cpa, given: dict[str, Any], expected: tuple[PartyId, str, PartyId, str]
) -> None:
    route = send(cpa, **given)
    assert (route.from_party, route.from_role, route.to_party, route.to_role) == expected
    assert route.service == SERVICE and route.cpa_id == cpa.cpa_id
    assert route.route.from_party.party_ids[0] == expected[0]
    assert route.endpoint.startswith("https://")


def late(cpa: Cpa) -> datetime:
    return cpa.end + timedelta(days=1)


# (what the door gives, facts) -> (refusal, text, party named, sending side)
REFUSED: list[tuple[str, dict[str, Any], Refusal, str, str | None, bool]] = [
    (
        "unknown service",
        {"from_party": G, "service": "urn:osb:services:Other:1"},
        Refusal.NO_SERVICE,
        "CPA test-cpa has no service 'urn:osb:services:Other:1'",
        None,
        True,
    ),
    (
        "unknown sender",
        {"from_party": UNKNOWN},
        Refusal.NO_PARTY,
        f"CPA test-cpa has no party {UNKNOWN!r}",
        UNKNOWN,
        True,
    ),
    (
        "unknown receiver",
        {"from_party": G, "to_party": UNKNOWN},
        Refusal.NO_PARTY,
        f"CPA test-cpa has no party {UNKNOWN!r}",
        UNKNOWN,
        False,
    ),
    (
        "sender without a sending role",
        {"from_party": G, "action": "WMO302"},
        Refusal.CANNOT_SEND,
        f"party {G} cannot send {SERVICE_KEY} WMO302",
        G,
        True,
    ),
    (
        "sender as the client spelled it",
        {"from_party": GEMEENTE_OIN, "action": "WMO302"},
        Refusal.CANNOT_SEND,
        f"party {GEMEENTE_OIN} cannot send {SERVICE_KEY} WMO302",
        GEMEENTE_OIN,
        True,
    ),
    (
        "receiver without a receiving role",
        {"from_party": G, "from_role": "Gemeente", "action": "WMO302"},
        Refusal.CANNOT_RECEIVE,
        f"party {N} cannot receive {SERVICE_KEY} WMO302",
        N,
        False,
    ),
    (
        "relay reply: a sender the CPA does not know",
        {"from_party": UNKNOWN_ID, "to_party": G_ID},
        Refusal.CANNOT_SEND,
        f"party {UNKNOWN} cannot send {SERVICE_KEY} WMO301",
        UNKNOWN,
        True,
    ),
    (
        "relay reply: a receiver the CPA does not know",
        {"from_party": G_ID, "to_party": UNKNOWN_ID},
        Refusal.CANNOT_RECEIVE,
        f"party {UNKNOWN} cannot receive {SERVICE_KEY} WMO301",
        UNKNOWN,
        False,
    ),
    (
        "a sender the CPA does not know and no receiver",
        {"from_party": UNKNOWN_ID, "from_role": "Gemeente"},
        Refusal.NO_PARTY,
        f"CPA test-cpa has no party {UNKNOWN!r}",
        UNKNOWN,
        True,
    ),
    (
        "relay: nobody sends the action",
        {"action": "WMO999"},
        Refusal.NO_SENDER,
        "CPA test-cpa lets no party send WMO999",
        None,
        True,
    ),
    (
        "client MessageId already sent",
        {"from_party": G, "message_id": "m@x", "duplicate": True},
        Refusal.DUPLICATE,
        "message m@x already exists",
        None,
        True,
    ),
    (
        "CPA past its end",
        {"from_party": G, "when": "late"},
        Refusal.NOT_IN_FORCE,
        "CPA test-cpa is not in force now",
        None,
        True,
    ),
    (
        "CLI: a role the party does not play",
        {
            "service": SERVICE,
            "from_party": G_ID,
            "from_role": "GGk",
            "to_party": N_ID,
            "to_role": "GGk",
        },
        Refusal.NOT_ALLOWED,
        "not allowed by CPA test-cpa: ",
        None,
        True,
    ),
    (
        "CLI: a party the CPA does not know",
        {
            "service": SERVICE,
            "from_party": UNKNOWN_ID,
            "from_role": "Gemeente",
            "to_party": N_ID,
            "to_role": "GGk",
        },
        Refusal.NOT_ALLOWED,
        "not allowed by CPA test-cpa: ",
        None,
        True,
    ),
    (
        "CLI: a service the CPA does not have",
        {
            "service": Service("Other:1"),
            "from_party": G_ID,
            "from_role": "Gemeente",
            "to_party": N_ID,
            "to_role": "GGk",
        },
        Refusal.NOT_ALLOWED,
        "not allowed by CPA test-cpa: ",
        None,
        True,
    ),
    (
        "sender and receiver the same party",
        {"from_party": G, "from_role": "Gemeente", "to_party": G, "to_role": "GGk"},
        Refusal.NOT_ALLOWED,
        "not allowed by CPA test-cpa: //Header/MessageHeader/To/PartyId",
        None,
        True,
    ),
]


@pytest.mark.parametrize(
    ("given", "refusal", "text", "party", "sends"),
    [c[1:] for c in REFUSED],
    ids=[c[0] for c in REFUSED],
)
def test_refused(
    cpa: Cpa, given: dict[str, Any], refusal: Refusal, text: str, party: str | None, sends: bool
) -> None:
    if given.get("when") == "late":
        given = {**given, "when": late(cpa)}
    with pytest.raises(SendError) as caught:
        send(cpa, **given)
    assert caught.value.refusal is refusal
    assert str(caught.value).startswith(text), str(caught.value)
    assert caught.value.party == party
    assert caught.value.sends is sends


def test_checks_run_in_the_doors_order(cpa: Cpa) -> None:
    # Every check fails at once: the first in the REST API's order answers.
    everything_wrong: dict[str, Any] = {
        "service": "urn:osb:services:Other:1",
        "from_party": UNKNOWN,
        "message_id": "m@x",
        "duplicate": True,
        "when": late(cpa),
    }
    order = [
        ("service", Refusal.NO_SERVICE),
        ("from_party", Refusal.NO_PARTY),
        ("duplicate", Refusal.DUPLICATE),
        ("when", Refusal.NOT_IN_FORCE),
    ]
    given = dict(everything_wrong)
    for field, refusal in order:
        with pytest.raises(SendError) as caught:
            send(cpa, **given)
        assert caught.value.refusal is refusal
        given.pop(field)
        if field == "from_party":
            given["from_party"] = G
    send(cpa, **given)


def test_receiver_without_endpoint_is_refused(cpa: Cpa) -> None:
    node = cpa.parties[1]
    blind = replace(
        node, transports={k: replace(t, endpoints=()) for k, t in node.transports.items()}
    )
    no_endpoint = replace(cpa, parties=(cpa.parties[0], blind))
    with pytest.raises(SendError) as caught:
        send(no_endpoint, from_party=G)
    assert caught.value.refusal is Refusal.NO_ENDPOINT
    assert str(caught.value) == f"the CPA gives {node.party_name!r} no endpoint"


SIGNALS: list[tuple[str, Any, Any, Refusal | None, str]] = [
    ("by type:value", G, N, None, ""),
    ("by value", G_ID, N_ID, None, ""),
    (
        "unknown sender by type:value",
        UNKNOWN,
        N,
        Refusal.NO_PARTY,
        f"CPA test-cpa has no party {UNKNOWN!r}",
    ),
    (
        "unknown receiver by type:value",
        G,
        UNKNOWN,
        Refusal.NO_PARTY,
        f"CPA test-cpa has no party {UNKNOWN!r}",
    ),
    (
        "unknown party by value",
        UNKNOWN_ID,
        N_ID,
        Refusal.NOT_ALLOWED,
        "not allowed by CPA test-cpa: ",
    ),
    (
        "to itself",
        G,
        G,
        Refusal.NOT_ALLOWED,
        "not allowed by CPA test-cpa: //Header/MessageHeader/To",
    ),
]


@pytest.mark.parametrize(
    ("from_party", "to_party", "refusal", "text"),
    [c[1:] for c in SIGNALS],
    ids=[c[0] for c in SIGNALS],
)
def test_signal(
    cpa: Cpa, from_party: Any, to_party: Any, refusal: Refusal | None, text: str
) -> None:
    if refusal is None:
        route = resolve_signal(cpa, from_party, to_party, "Ping")
        assert route.service == Service("urn:oasis:names:tc:ebxml-msg:service")
        assert (route.from_role, route.to_role) == (None, None)
        assert route.route.is_signal and route.endpoint.startswith("https://")
        return
    with pytest.raises(SendError) as caught:
        resolve_signal(cpa, from_party, to_party, "Ping")
    assert caught.value.refusal is refusal and str(caught.value).startswith(text)


def test_a_ping_is_sent_on_a_cpa_out_of_force(cpa: Cpa) -> None:
    # A Ping is how an operator finds out whether the link works at all.
    expired = replace(cpa, end=cpa.start + timedelta(seconds=1))
    assert resolve_signal(expired, G, N, "Ping").route.is_signal


API: list[tuple[str, SendError, type[ApiError], type[ApiError], str]] = [
    (
        "no CPA in a request",
        SendError("no CPA 'x'", Refusal.NO_CPA, cpa_id="x"),
        BadRequest,
        BadRequest,
        "CPA x not found",
    ),
    (
        "no CPA in a path",
        SendError("no CPA 'x'", Refusal.NO_CPA, cpa_id="x"),
        NotFound,
        NotFound,
        "CPA x not found",
    ),
    (
        "unknown message",
        SendError("message m not found", Refusal.UNKNOWN_MESSAGE),
        BadRequest,
        NotFound,
        "message m not found",
    ),
    (
        "key reused",
        SendError("Idempotency-Key was used", Refusal.KEY_REUSED),
        BadRequest,
        Unprocessable,
        "Idempotency-Key was used",
    ),
    (
        "duplicate",
        SendError("message m already exists", Refusal.DUPLICATE),
        BadRequest,
        BadRequest,
        "message m already exists",
    ),
    (
        "not allowed",
        SendError("not allowed by CPA x: here", Refusal.NOT_ALLOWED),
        BadRequest,
        BadRequest,
        "not allowed by CPA x: here",
    ),
]


@pytest.mark.parametrize(
    ("exc", "missing_cpa", "expected", "text"), [c[1:] for c in API], ids=[c[0] for c in API]
)
def test_api_answers(
    exc: SendError, missing_cpa: type[ApiError], expected: type[ApiError], text: str
) -> None:
    answer = refused(exc, missing_cpa=missing_cpa)
    assert type(answer) is expected and str(answer) == text


def test_relay_words_its_own_refusals() -> None:
    from adapters.stuf.relay import _refusal_text

    words: Callable[[SendError], str] = lambda exc: _refusal_text(exc, "c")  # noqa: E731
    assert words(SendError("no CPA 'c'", Refusal.NO_CPA, cpa_id="c")) == "CPA c is not imported"
    cannot = SendError("x", Refusal.CANNOT_SEND, cpa_id="c", party=G, action="WMO301")
    assert words(cannot) == f"CPA c: {G} cannot send WMO301"
    cannot = SendError("x", Refusal.CANNOT_RECEIVE, cpa_id="c", party=N, sends=False, action="A")
    assert words(cannot) == f"CPA c: {N} cannot receive A"
    assert words(SendError("CPA c is not in force now", Refusal.NOT_IN_FORCE)) == (
        "CPA c is not in force now"
    )
