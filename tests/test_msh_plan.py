"""The outbound decision (gateway.msh.plan) and the answer verdicts (gateway.msh.answers), no store.

What is stored and queued for a resolved route, per profile; how a request
to the partner ended; what an idempotency key decides; how long to wait.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cpa.generate import make_cpa
from cpa.model import Cpa, Service
from cpa.parse import parse_cpa
from gateway.ebms.signals import ping
from gateway.msh.addressing import Addressing, SendRoute, resolve_send, resolve_signal
from gateway.msh.answers import (
    FIRST_DELAY,
    MAX_DELAY,
    Answer,
    AnswerFacts,
    Outcome,
    Replay,
    next_delay,
    replay,
    verdict,
)
from gateway.msh.plan import XML, Payload, plan_message, plan_signal, time_to_live
from tests.conftest import GEMEENTE_OIN, NODE_OIN, SpecFactory

G = f"urn:osb:oin:{GEMEENTE_OIN}"
N = f"urn:osb:oin:{NODE_OIN}"
SERVICE = "urn:osb:services:GGK:iWmo:3.2"


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"u{next(numbers)}"


@pytest.fixture(scope="module")
def cpas(make_spec: SpecFactory) -> Callable[..., Cpa]:
    made: dict[tuple[tuple[str, Any], ...], Cpa] = {}

    def cpa(**overrides: Any) -> Cpa:
        key = tuple(sorted(overrides.items()))
        if key not in made:
            made[key] = parse_cpa(make_cpa(make_spec(**overrides)))
        return made[key]

    return cpa


def route_of(cpa: Cpa) -> SendRoute:
    now = cpa.start + timedelta(hours=1)
    return resolve_send(
        cpa, Addressing(cpa.cpa_id, SERVICE, "WMO301", from_party=G), now, duplicate=False
    )


# profile overrides -> (AckRequested, DuplicateElimination, SyncReply, attempts, TTL after)
PROFILES: list[tuple[dict[str, Any], bool, bool, bool, int, timedelta | None]] = [
    ({"profile": "osb-be"}, False, False, False, 1, None),
    (
        {"profile": "osb-rm", "retries": 2, "retry_interval": timedelta(minutes=5)},
        True,
        True,
        False,
        3,
        timedelta(minutes=15),
    ),
    (
        {
            "profile": "osb-rm",
            "retries": 0,
            "retry_interval": timedelta(minutes=5),
            "sync_reply": True,
        },
        True,
        True,
        True,
        1,
        timedelta(minutes=5),
    ),
    (
        {"profile": "osb-rm-s", "retries": 8, "retry_interval": timedelta(hours=3)},
        True,
        True,
        False,
        9,
        timedelta(hours=27),
    ),
]


@pytest.mark.parametrize(("overrides", "ack", "dup", "sync", "attempts", "ttl"), PROFILES)
def test_business_message_plan(
    cpas: Callable[..., Cpa],
    overrides: dict[str, Any],
    ack: bool,
    dup: bool,
    sync: bool,
    attempts: int,
    ttl: timedelta | None,
) -> None:
    route = route_of(cpas(**overrides))
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    plan = plan_message(route, (), now, fresh=counter())
    env, h = plan.envelope, plan.envelope.header
    assert (env.ack_requested is not None, h.duplicate_elimination, env.sync_reply is not None) == (
        ack,
        dup,
        sync,
    )
    assert plan.max_attempts == attempts
    assert plan.retry_interval == (overrides.get("retry_interval") if ack else None)
    assert h.time_to_live == (now + ttl if ttl else None)
    assert plan.status == "CREATED" and plan.content_type == XML and plan.parts == ()
    assert (h.from_ids, h.from_role, h.to_ids, h.to_role) == (
        (route.from_party,),
        "Gemeente",
        (route.to_party,),
        "GGk",
    )
    assert (h.service, h.action, h.cpa_id, h.timestamp) == (
        Service("GGK:iWmo:3.2", "urn:osb:services"),
        "WMO301",
        route.cpa_id,
        now,
    )
    # Fresh ids: the conversation first, then the MessageId on the sender's host.
    assert (h.conversation_id, h.message_id) == ("u1", "u2@localhost")
    assert env.manifest is None and plan.message_id == "u2@localhost"


def test_payloads_become_parts_with_a_manifest(cpas: Callable[..., Cpa]) -> None:
    route = route_of(cpas(profile="osb-be"))
    now = datetime(2026, 1, 2, tzinfo=UTC)
    payloads = (
        Payload(b"<a/>", "application/xml", "a.xml"),
        Payload(b"\x00\x01", "application/octet-stream", content_id="mine@here"),
    )
    plan = plan_message(
        route,
        payloads,
        now,
        message_id="client@id",
        conversation_id="conv",
        ref_to_message_id="earlier@id",
        correlation_id="corr",
        fresh=counter(),
    )
    assert [(p.content_id, p.content_type, p.content, p.filename) for p in plan.parts] == [
        ("u1@localhost", "application/xml", b"<a/>", "a.xml"),
        ("mine@here", "application/octet-stream", b"\x00\x01", None),
    ]
    assert plan.envelope.manifest is not None
    assert [m.href for m in plan.envelope.manifest] == ["cid:u1@localhost", "cid:mine@here"]
    assert plan.envelope.manifest_version == "2.0"
    h = plan.envelope.header
    assert (h.message_id, h.conversation_id, h.ref_to_message_id) == (
        "client@id",
        "conv",
        "earlier@id",
    )
    assert plan.correlation_id == "corr"
    assert plan.content_type == (
        'multipart/related; type="text/xml"; boundary="MIMEBoundary_u2"; '
        'start="<soap-u3@localhost>"'
    )


def test_a_schedule_beyond_any_date_never_expires(cpas: Callable[..., Cpa]) -> None:
    route = route_of(cpas(profile="osb-rm", retries=3, retry_interval=timedelta(hours=3)))
    now = datetime(9999, 12, 31, 22, tzinfo=UTC)  # + 4 × 3 h is past year 9999
    assert time_to_live(route, now) == datetime.max.replace(tzinfo=UTC)
    assert time_to_live(route, datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        2026, 1, 1, 12, tzinfo=UTC
    )


def test_a_signal_is_tried_once_without_business_status(cpas: Callable[..., Cpa]) -> None:
    for sync in (False, True):
        cpa = cpas(profile="osb-rm", sync_reply=sync)
        route = resolve_signal(cpa, G, N, "Ping")
        now = datetime(2026, 1, 2, tzinfo=UTC)
        plan = plan_signal(route, now, lambda header, s: ping(header, sync=s), fresh=counter())
        h = plan.envelope.header
        assert (plan.status, plan.max_attempts, plan.retry_interval, plan.parts) == (
            None,
            1,
            None,
            (),
        )
        assert (h.action, h.conversation_id, h.message_id, h.time_to_live) == (
            "Ping",
            "u1",
            "u2@localhost",
            None,
        )
        assert (plan.envelope.sync_reply is not None) is sync
        assert plan.content_type == XML and plan.envelope.ack_requested is None


# -- answers -------------------------------------------------------------------------------

VERDICTS: list[tuple[str, AnswerFacts, Answer | None]] = [
    ("nothing yet", AnswerFacts(task_state="pending"), None),
    ("still sending", AnswerFacts(task_state="sending"), None),
    ("delivered, no answer yet", AnswerFacts(task_state="done"), None),
    ("the Ping is gone", AnswerFacts(), None),
    ("Pong", AnswerFacts("p@x", "Pong", "done"), Answer(Outcome.ANSWERED, "p@x")),
    ("StatusResponse", AnswerFacts("s@x", "StatusResponse"), Answer(Outcome.ANSWERED, "s@x")),
    ("MessageError", AnswerFacts("e@x", "MessageError", "done"), Answer(Outcome.ERROR, "e@x")),
    (
        "an answer beats a failed task",
        AnswerFacts("p@x", "Pong", "failed", "timeout"),
        Answer(Outcome.ANSWERED, "p@x"),
    ),
    (
        "failed",
        AnswerFacts(task_state="failed", last_error="HTTP 503"),
        Answer(Outcome.UNDELIVERED, None, "failed", "HTTP 503"),
    ),
    (
        "expired without an error",
        AnswerFacts(task_state="expired"),
        Answer(Outcome.UNDELIVERED, None, "expired", None),
    ),
]


@pytest.mark.parametrize(
    ("facts", "expected"), [v[1:] for v in VERDICTS], ids=[v[0] for v in VERDICTS]
)
def test_verdict(facts: AnswerFacts, expected: Answer | None) -> None:
    assert verdict(facts) == expected


def test_failure_names_the_last_error_else_the_state() -> None:
    assert Answer(Outcome.UNDELIVERED, None, "failed", "HTTP 503").failure == "HTTP 503"
    assert Answer(Outcome.UNDELIVERED, None, "expired", None).failure == "expired"


REPLAYS: list[tuple[str, tuple[str | None, str | None, bool], Replay]] = [
    ("first use", (None, None, False), Replay.DO),
    ("the same request again", ("sendMessage", "d1", True), Replay.ANSWER),
    ("another request", ("sendMessage", "d2", True), Replay.REFUSE),
    ("another operation", ("sendStufMessage", "d1", True), Replay.REFUSE),
    ("claimed, never answered", ("sendMessage", "d1", False), Replay.REFUSE),
]


@pytest.mark.parametrize(
    ("first", "expected"), [r[1:] for r in REPLAYS], ids=[r[0] for r in REPLAYS]
)
def test_replay(first: tuple[str | None, str | None, bool], expected: Replay) -> None:
    assert replay(*first, "sendMessage", "d1") is expected


def test_waiting_backs_off_and_stops_at_the_deadline() -> None:
    delays: list[float] = []
    delay: float | None = None
    for _ in range(8):
        delay = next_delay(delay, 10.0)
        delays.append(delay)
    assert delays[0] == FIRST_DELAY and delays[-1] == MAX_DELAY
    assert delays == sorted(delays) and all(d <= MAX_DELAY for d in delays)
    assert next_delay(MAX_DELAY, 0.01) == 0.01
    assert next_delay(None, -1.0) == 0.0
