"""Scheduled Pings, /metrics, /status and ``dkgw check ping``.

The schedule is tested tick by tick with a fake clock against a real store (both
dialects); the acceptance test runs two real gateways pinging each other every
second, stops one and starts it again, and watches the metrics, the status
document and the Nagios check follow.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from cpa.model import PartyId
from cpa.parse import parse_cpa
from gateway.commands.check import CRITICAL, OK, UNKNOWN, WARNING, judge, overall
from gateway.config import MonitoringConfig
from gateway.monitor.links import links_for
from gateway.monitor.pinger import LinkPlanner, PingSettings, run_tick
from gateway.monitor.status import snapshot, status_document
from gateway.store.cpas import CpaRegistry
from gateway.store.database import Database
from gateway.store.messages import Direction, MessageRecord, insert_message
from gateway.store.migrate import apply_migrations
from gateway.store.pings import LinkKey, link_statuses, settle
from gateway.store.timeutil import to_db
from tests.conftest import DIALECTS, GEMEENTE_OIN, NODE_OIN, load_cert
from tests.gateways import Pair, Side, gateway_config, store_url, wait_until

GEMEENTE = PartyId(GEMEENTE_OIN, "urn:osb:oin")
NODE = PartyId(NODE_OIN, "urn:osb:oin")
#: The CPAs of the fixtures start an hour before the test session.
T0 = datetime.now(UTC).replace(microsecond=0)


# -- which links -------------------------------------------------------------------------


def test_links_from_party_ids_and_from_the_client_certificate(cpa_xml, pki: Path) -> None:
    cpa = parse_cpa(cpa_xml(profile="osb-rm"))
    expected = [LinkKey(cpa.cpa_id, GEMEENTE.key(), NODE.key())]
    assert links_for(cpa, (GEMEENTE,), None) == expected
    assert links_for(cpa, (NODE,), None) == [LinkKey(cpa.cpa_id, NODE.key(), GEMEENTE.key())]
    der = load_cert(pki / "gemeente-voorbeeld" / "tls-client.pem").public_bytes(Encoding.DER)
    assert links_for(cpa, (), der) == expected
    # Neither our ids nor our certificate: this CPA is not ours to watch.
    assert links_for(cpa, (PartyId("00000001009999999000", "urn:osb:oin"),), None) == []
    assert links_for(cpa, (), None) == []
    foreign = load_cert(pki / "negative" / "foreign-client.pem").public_bytes(Encoding.DER)
    assert links_for(cpa, (), foreign) == []


# -- the schedule, tick by tick -------------------------------------------------------------


@pytest.fixture(params=DIALECTS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    db = Database.from_url(store_url(str(request.param), tmp_path, "mon"))
    apply_migrations(db)
    yield db
    db.close()


class Schedule:
    """run_tick with a fake clock on a real store, as the municipality."""

    def __init__(self, db: Database, xml: bytes, settings: PingSettings) -> None:
        self.db = db
        self.registry = CpaRegistry(db)
        self.registry.insert(xml, overwrite=True)
        self.settings = settings
        self.planner = LinkPlanner(self.registry, (GEMEENTE,), None)
        self.rng = random.Random(7)  # noqa: S311 - a repeatable schedule
        self.now = T0

    def tick(self, *, after: float = 0.0, purge: bool = False) -> Any:
        self.now += timedelta(seconds=after)
        with self.db.transaction() as cur:
            return run_tick(
                cur,
                self.registry,
                self.planner,
                self.settings,
                node="n1",
                now=self.now,
                rng=self.rng,
                purge=purge,
            )

    def links(self) -> list[Any]:
        with self.db.transaction() as cur:
            return link_statuses(cur, include_inactive=True)

    def pong(self, ping_id: str, *, after: float) -> None:
        """Store a Pong for ``ping_id`` as the endpoint would, ``after`` s from now."""
        with self.db.transaction() as cur:
            insert_message(
                cur,
                MessageRecord(
                    message_id=f"pong-{ping_id}",
                    direction=Direction.IN,
                    cpa_id="test-cpa",
                    conversation_id="c",
                    from_party=NODE.key(),
                    to_party=GEMEENTE.key(),
                    service="urn:oasis:names:tc:ebxml-msg:service",
                    action="Pong",
                    sent_at=self.now,
                    content_type="text/xml",
                    envelope=b"<x/>",
                    ref_to_message_id=ping_id,
                ),
                (),
                now=self.now + timedelta(seconds=after),
            )

    def attempt(self, ping_id: str, *, state: str, error: str | None = None) -> None:
        """Record a delivery attempt of the Ping, as the worker would."""
        with self.db.transaction() as cur:
            cur.execute(
                "UPDATE delivery_task SET state = ?, last_error = ?, attempts = 1 WHERE "
                "message_pk = (SELECT id FROM ebms_message WHERE message_id = ? AND "
                "direction = 'out')",
                (state, error, ping_id),
            )
            cur.execute(
                "INSERT INTO delivery_attempt (task_id, attempt, node, url, started_at, "
                "finished_at, outcome) SELECT t.id, 1, 'n1', t.url, ?, ?, ? FROM delivery_task t "
                "JOIN ebms_message m ON m.id = t.message_pk WHERE m.message_id = ?",
                (to_db(self.now), to_db(self.now), state, ping_id),
            )


@pytest.fixture
def schedule(store: Database, cpa_xml) -> Schedule:
    return Schedule(store, cpa_xml(profile="osb-rm"), PingSettings(interval=60.0, timeout=10.0))


def test_a_new_link_is_spread_within_one_interval_then_pinged_once(schedule: Schedule) -> None:
    report = schedule.tick()
    assert report.links == 1 and report.queued == []
    (link,) = schedule.links()
    assert T0 <= link.next_due <= T0 + timedelta(seconds=60)
    assert link.up is None

    due_in = (link.next_due - schedule.now).total_seconds()
    report = schedule.tick(after=due_in)
    assert [k for k, _ in report.queued] == [link.key]
    ping_id = report.queued[0][1]
    # The Ping is stored with its delivery task (persist before acting).
    with schedule.db.transaction() as cur:
        row = cur.execute(
            "SELECT m.action, t.state, t.max_attempts FROM ebms_message m JOIN delivery_task t "
            "ON t.message_pk = m.id WHERE m.message_id = ?",
            (ping_id,),
        ).fetchone()
    assert row == ("Ping", "pending", 1)
    # Never a second Ping on the link while one is in flight, however late it is.
    assert schedule.tick(after=5).queued == []
    assert schedule.tick(after=1).queued == []


def _first_ping(schedule: Schedule) -> str:
    schedule.tick()
    (link,) = schedule.links()
    report = schedule.tick(after=(link.next_due - schedule.now).total_seconds())
    return str(report.queued[0][1])


def test_a_pong_makes_the_link_up_with_its_round_trip(schedule: Schedule) -> None:
    ping_id = _first_ping(schedule)
    schedule.attempt(ping_id, state="done")
    schedule.pong(ping_id, after=0.042)
    report = schedule.tick(after=0.1)
    (verdict,) = report.verdicts
    assert verdict.outcome == "up" and verdict.rtt == pytest.approx(0.042, abs=1e-6)
    (link,) = schedule.links()
    assert link.up is True and link.consecutive_failures == 0
    assert link.last_success_at == schedule.now
    assert link.ping_message_id is None
    # The next one is due one interval later, give or take the jitter.
    delay = (link.next_due - schedule.now).total_seconds()
    assert 54.0 <= delay <= 66.0


def test_an_expired_ping_is_down_with_its_last_failure(schedule: Schedule) -> None:
    ping_id = _first_ping(schedule)
    refused = "partner rejected our client certificate (TLS alert unknown_ca)"
    schedule.attempt(ping_id, state="expired", error=refused)
    (verdict,) = schedule.tick(after=0.2).verdicts
    assert (verdict.outcome, verdict.reason) == ("down", f"Ping expired: {refused}")
    (link,) = schedule.links()
    assert link.last_reason == f"Ping expired: {refused}"


def test_an_undeliverable_ping_makes_the_link_down_and_failures_count(
    schedule: Schedule,
) -> None:
    ping_id = _first_ping(schedule)
    schedule.attempt(ping_id, state="failed", error="ConnectionRefusedError: refused")
    (verdict,) = schedule.tick(after=0.2).verdicts
    assert verdict.outcome == "down" and "ConnectionRefused" in (verdict.reason or "")
    (link,) = schedule.links()
    assert link.up is False and link.consecutive_failures == 1

    report = schedule.tick(after=(link.next_due - schedule.now).total_seconds())
    second = report.queued[0][1]
    # No Pong and no failure either: after the timeout the link is down again.
    schedule.attempt(second, state="done")
    assert schedule.tick(after=5).verdicts == []
    (verdict,) = schedule.tick(after=6).verdicts
    assert verdict.reason == "no Pong within 10 s"
    (link,) = schedule.links()
    assert link.consecutive_failures == 2 and link.last_success_at is None


def test_two_nodes_on_one_store_send_one_ping_per_link(store: Database, cpa_xml) -> None:
    first = Schedule(store, cpa_xml(profile="osb-rm"), PingSettings(interval=60.0))
    second = Schedule(store, cpa_xml(profile="osb-rm"), PingSettings(interval=60.0))
    first.tick()
    (link,) = first.links()
    due = (link.next_due - first.now).total_seconds()
    sent = first.tick(after=due).queued + second.tick(after=due).queued
    assert len(sent) == 1
    # Either node may settle it; the verdict counts once.
    ping_id = sent[0][1]
    first.attempt(ping_id, state="done")
    first.pong(ping_id, after=0.01)
    verdicts = second.tick(after=0.1).verdicts + first.tick(after=0.1).verdicts
    assert [v.outcome for v in verdicts] == ["up"]
    with store.transaction() as cur:
        assert cur.execute("SELECT COUNT(*) FROM ping_result").fetchone() == (1,)


def test_a_ping_that_is_never_sent_times_out(schedule: Schedule) -> None:
    _first_ping(schedule)
    (verdict,) = schedule.tick(after=11).verdicts
    assert verdict.reason == "Ping not delivered within 10 s"


def test_a_verdict_counts_once_when_two_nodes_settle_the_same_ping(schedule: Schedule) -> None:
    ping_id = _first_ping(schedule)
    (link,) = schedule.links()
    kwargs: dict[str, Any] = dict(
        outcome="up",
        rtt=0.01,
        reason=None,
        started_at=T0,
        now=schedule.now,
        node="n1",
        next_due=schedule.now + timedelta(seconds=60),
    )
    with schedule.db.transaction() as cur:
        assert settle(cur, link.key, ping_id, **kwargs) is True
        assert settle(cur, link.key, ping_id, **kwargs) is False
        assert cur.execute("SELECT COUNT(*) FROM ping_result").fetchone() == (1,)


def test_links_follow_the_cpas_and_history_is_purged(schedule: Schedule) -> None:
    ping_id = _first_ping(schedule)
    schedule.attempt(ping_id, state="done")
    schedule.pong(ping_id, after=0.01)
    schedule.tick(after=0.1)
    schedule.registry.delete("test-cpa")
    schedule.tick(after=1)
    (link,) = schedule.links()
    assert link.active is False
    with schedule.db.transaction() as cur:
        assert link_statuses(cur) == []
    # Results older than the history window go; recent ones stay.
    assert schedule.tick(after=29 * 86400, purge=True).purged == 0
    assert schedule.tick(after=2 * 86400, purge=True).purged == 1


def test_a_cpa_that_allows_no_ping_is_a_finding_not_a_crash(store: Database, cpa_xml) -> None:
    schedule = Schedule(store, cpa_xml(profile="osb-rm"), PingSettings(interval=60.0))
    # A link the CPA does not resolve (a party id it does not have).
    stranger = LinkKey("test-cpa", GEMEENTE.key(), "urn:osb:oin:00000001000000000000")
    schedule.planner.wanted = lambda cur, now: [stranger]  # type: ignore[method-assign]
    schedule.tick()
    (link,) = schedule.links()
    report = schedule.tick(after=(link.next_due - schedule.now).total_seconds())
    downs = [v for v in report.verdicts if v.outcome == "down"]
    assert downs and "cannot send a Ping" in (downs[0].reason or "")
    assert report.queued == []
    with store.transaction() as cur:
        assert cur.execute("SELECT COUNT(*) FROM ebms_message").fetchone() == (0,)


def test_status_document_reports_links_certificates_and_expiry(schedule: Schedule) -> None:
    ping_id = _first_ping(schedule)
    schedule.attempt(ping_id, state="done")
    schedule.pong(ping_id, after=0.02)
    schedule.tick(after=0.1)
    with schedule.db.transaction() as cur:
        doc = status_document(snapshot(cur, schedule.registry, schedule.now), node="n1")
    (cpa,) = doc["cpas"]
    assert cpa["cpa_id"] == "test-cpa" and cpa["active"] is True
    assert 364 < cpa["days_to_expiry"] < 366
    (link,) = cpa["links"]
    assert link["up"] is True and link["consecutive_failures"] == 0
    assert link["rtt_seconds"] == pytest.approx(0.02, abs=1e-6)
    kinds = {c["cert_id"] for c in cpa["certificates"]}
    assert len(kinds) >= 4 and all(c["days_to_expiry"] > 30 for c in cpa["certificates"])
    assert {c["oin"] for c in cpa["certificates"]} == {GEMEENTE_OIN, NODE_OIN}
    json.dumps(doc)  # serialisable as is


def test_webhook_backlog_is_in_the_status_and_the_scrape(schedule: Schedule) -> None:
    from gateway.monitor.metrics import GatewayMetrics

    stamp = to_db(schedule.now)
    with schedule.db.transaction() as cur:
        for n, (hook, state) in enumerate(
            [
                ("bo", "pending"),
                ("bo", "pending"),
                ("bo", "failed"),
                ("bo", "done"),
                ("x", "sending"),
            ]
        ):
            cur.execute(
                "INSERT INTO webhook_delivery (webhook, event_id, message_id, event_type, state, "
                "next_attempt_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (hook, n, f"m{n}@x", "RECEIVED", state, stamp, stamp, stamp),
            )
    with schedule.db.transaction() as cur:
        snap = snapshot(cur, schedule.registry, schedule.now)
    doc = status_document(snap, node="n1")
    assert doc["queue"]["webhooks"] == [
        {"webhook": "bo", "state": "failed", "deliveries": 1},
        {"webhook": "bo", "state": "pending", "deliveries": 2},
        {"webhook": "x", "state": "sending", "deliveries": 1},
    ]
    families = {
        f.name: f
        for f in text_string_to_metric_families(GatewayMetrics(lambda: snap).exposition().decode())
    }
    samples = {
        (s.labels["webhook"], s.labels["state"]): s.value
        for s in families["dkgw_webhook_deliveries"].samples
    }
    assert samples == {("bo", "failed"): 1.0, ("bo", "pending"): 2.0, ("x", "sending"): 1.0}


# -- the Nagios verdicts ------------------------------------------------------------------


def _status(**kw: Any) -> Any:
    from gateway.store.pings import LinkStatus

    base = dict(
        key=LinkKey("c", "a", "b"),
        active=True,
        next_due=T0,
        ping_message_id=None,
        last_checked_at=T0,
        last_outcome="up",
        last_rtt=0.05,
        last_reason=None,
        last_success_at=T0,
        consecutive_failures=0,
    )
    base.update(kw)
    return LinkStatus(**base)


@pytest.mark.parametrize(
    ("status", "warn", "crit", "code", "text"),
    [
        ({}, None, None, OK, "up, round trip 50.0 ms | rtt=50.0ms;;;0"),
        ({}, 40, 100, WARNING, "rtt=50.0ms;40;100;0"),
        ({}, 10, 40, CRITICAL, "up, round trip 50.0 ms"),
        (
            {"last_outcome": "down", "last_reason": "refused", "consecutive_failures": 3},
            None,
            None,
            CRITICAL,
            "down, 3 Ping(s) without Pong",
        ),
        ({"last_outcome": None, "last_checked_at": None}, None, None, UNKNOWN, "no Ping settled"),
        ({"last_checked_at": T0 - timedelta(hours=1)}, None, None, UNKNOWN, "3600 s old"),
    ],
)
def test_judge(status: dict[str, Any], warn: Any, crit: Any, code: int, text: str) -> None:
    result = judge(_status(**status), now=T0, warn_ms=warn, crit_ms=crit, max_age=960)
    assert result.code == code
    assert text in result.line


def test_overall_takes_the_worst() -> None:
    assert overall([]) == UNKNOWN
    assert overall([OK, UNKNOWN]) == UNKNOWN
    assert overall([OK, WARNING, UNKNOWN]) == WARNING
    assert overall([WARNING, CRITICAL, OK]) == CRITICAL
    assert overall([OK, OK]) == OK


# -- two real gateways ------------------------------------------------------------------

FAST = MonitoringConfig(pings=True, ping_interval=1.0, ping_timeout=3.0, ping_jitter=0.1)


@pytest_twisted.async_yield_fixture
async def watched_pair(pki: Path, make_spec, tmp_path: Path) -> AsyncIterator[Pair]:
    sides = []
    for name, slug in (("a", "gemeente-voorbeeld"), ("b", "ggk-rinis-test")):
        config = gateway_config(
            pki,
            slug,
            tmp_path / name,
            store_url("sqlite", tmp_path, name),
            monitoring=FAST,
            admin_port=0,
        )
        side = Side(name, config)
        side.start()
        sides.append(side)
    pair = Pair(sides[0], sides[1], "mon-cpa", make_spec, {"profile": "osb-rm"})
    pair.import_cpa()
    yield pair
    await pair.stop()


async def scrape(side: Side) -> dict[str, list[Any]]:
    assert side.gateway is not None
    response = await treq.get(
        f"http://127.0.0.1:{side.gateway.admin_listening_port}/metrics".encode()
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    text = (await response.content()).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def ping_up(metrics: dict[str, list[Any]]) -> float | None:
    samples = metrics.get("ebms_ping_up", [])
    return samples[0].value if samples else None


def check_ping(side: Side) -> tuple[int, str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "--store",
            side.config.store,
            "check",
            "ping",
            "--all",
            "--max-age",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_scheduled_pings_follow_the_partner_down_and_up(watched_pair: Pair) -> None:
    a, b = watched_pair.a, watched_pair.b
    # Both sides watch the link (each pings the other) and see it up.
    for side in (a, b):
        await wait_until(
            lambda s=side: s.rows("SELECT 1 FROM ping_link WHERE last_outcome = 'up'"), timeout=15
        )
    metrics = await scrape(a)
    assert ping_up(metrics) == 1.0
    for name in (
        "ebms_ping_up",
        "ebms_ping_rtt_seconds",
        "ebms_ping_last_success_timestamp",
        "ebms_ping_consecutive_failures",
        "ebms_cpa_end_timestamp_seconds",
        "ebms_certificate_not_after_timestamp_seconds",
        "ebms_delivery_tasks",
        "ebms_delivery_oldest_pending_age_seconds",
        "ebms_events_unprocessed",
        "ebms_delivery_attempts",
        "ebms_inbound_requests",
        "process_resident_memory_bytes",
    ):
        assert metrics.get(name), f"{name} missing from the scrape"
    (labels,) = {tuple(sorted(s.labels.items())) for s in metrics["ebms_ping_up"]}
    assert dict(labels) == {"cpa": "mon-cpa", "from": GEMEENTE.key(), "to": NODE.key()}
    rtt_count = [s for s in metrics["ebms_ping_rtt_seconds"] if s.name.endswith("_count")]
    assert rtt_count and rtt_count[0].value >= 1

    code, out = check_ping(a)
    assert code == OK, out
    assert out.startswith("OK cpa=mon-cpa") and "rtt=" in out

    status = json.loads(
        await (
            await treq.get(f"http://127.0.0.1:{a.gateway.admin_listening_port}/status".encode())
        ).content()
    )
    (cpa,) = status["cpas"]
    assert cpa["links"][0]["up"] is True and cpa["links"][0]["rtt_seconds"] > 0

    # The partner goes away: within two intervals the link is down.
    await b.stop()
    stopped = time.monotonic()
    await wait_until(
        lambda: a.rows("SELECT 1 FROM ping_link WHERE last_outcome = 'down'"), timeout=10, step=0.05
    )
    went_down = time.monotonic() - stopped
    # Two intervals plus slack for a loaded machine: the point is "the next pings", not speed.
    assert went_down <= 2 * FAST.ping_interval + 2.5, went_down
    assert ping_up(await scrape(a)) == 0.0
    code, out = check_ping(a)
    assert code == CRITICAL, out
    assert "down" in out

    # And back: the next Pong brings the link up again.
    b.start()
    started = time.monotonic()
    await wait_until(
        lambda: a.rows("SELECT 1 FROM ping_link WHERE last_outcome = 'up'"), timeout=10, step=0.05
    )
    came_up = time.monotonic() - started
    assert came_up <= 2 * FAST.ping_interval + 2.5, came_up
    assert ping_up(await scrape(a)) == 1.0
    code, out = check_ping(a)
    assert code == OK, out


@pytest.mark.integration
def test_check_ping_without_a_store_is_unknown_and_makes_none(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--data-dir", str(tmp_path), "check", "ping"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == UNKNOWN
    assert done.stdout.startswith(f"UNKNOWN no store at {tmp_path / 'gateway.sqlite3'}")
    assert not (tmp_path / "gateway.sqlite3").exists()


def test_check_ping_without_links_is_unknown(tmp_path: Path) -> None:
    db = Database.sqlite(tmp_path / "gateway.sqlite3")
    apply_migrations(db)
    db.close()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "--data-dir",
            str(tmp_path),
            "check",
            "ping",
            "--all",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == UNKNOWN
    assert done.stdout.startswith("UNKNOWN no watched link")


def test_an_unreadable_cpa_does_not_stop_the_pings_of_the_others(store: Database, cpa_xml) -> None:
    schedule = Schedule(store, cpa_xml(profile="osb-rm"), PingSettings(interval=60.0))
    schedule.registry.insert(cpa_xml(profile="osb-rm", cpa_id="broken-cpa"), overwrite=True)
    with store.transaction() as cur:
        # Stored long ago, unreadable now (the registry would refuse it today).
        cur.execute(
            "UPDATE cpa SET xml = ?, sha256 = ? WHERE cpa_id = ?",
            (b"<broken/>", "broken", "broken-cpa"),
        )
    schedule.tick()
    (link,) = schedule.links()
    assert link.key.cpa_id == "test-cpa"
    report = schedule.tick(after=(link.next_due - schedule.now).total_seconds())
    assert [k.cpa_id for k, _ in report.queued] == ["test-cpa"]
