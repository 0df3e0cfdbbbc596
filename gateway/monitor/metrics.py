"""Prometheus metrics of one gateway process.

Two kinds:

* *counters and histograms* this process observes (inbound requests, delivery
  attempts, Ping round trips it settled), fed from the gateway's event listener;
* *gauges read from the store* at scrape time (link verdicts, CPA and certificate
  expiry, queue depth and age).  With several nodes on one store each node reports
  the same store figures; alert rules aggregate with ``max``/``min`` by ``cpa``.

Each gateway has its own registry (several run in one test process); the process
and platform collectors are added to it explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from gateway.monitor.pinger import TickReport
from gateway.monitor.status import Snapshot

__all__ = ["CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Round trips on Diginetwerk are milliseconds; over the internet with a slow partner,
#: seconds.  Buckets cover both.
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_LINK = ("cpa", "from", "to")


class _StoreCollector(Collector):
    """Gauges from a fresh :class:`Snapshot` per scrape."""

    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        snap = self.read()
        up = GaugeMetricFamily(
            "ebms_ping_up", "1 when the latest scheduled Ping got a Pong, else 0", labels=_LINK
        )
        last_ok = GaugeMetricFamily(
            "ebms_ping_last_success_timestamp",
            "Unix time of the latest Pong on the link",
            labels=_LINK,
        )
        last_check = GaugeMetricFamily(
            "ebms_ping_last_check_timestamp",
            "Unix time of the latest settled Ping on the link",
            labels=_LINK,
        )
        failures = GaugeMetricFamily(
            "ebms_ping_consecutive_failures", "Pings without a Pong in a row", labels=_LINK
        )
        for link in snap.links:
            labels = [link.key.cpa_id, link.key.from_party, link.key.to_party]
            if link.up is not None:
                up.add_metric(labels, 1.0 if link.up else 0.0)
            if link.last_success_at is not None:
                last_ok.add_metric(labels, link.last_success_at.timestamp())
            if link.last_checked_at is not None:
                last_check.add_metric(labels, link.last_checked_at.timestamp())
            failures.add_metric(labels, float(link.consecutive_failures))
        yield from (up, last_ok, last_check, failures)

        cpa_end = GaugeMetricFamily(
            "ebms_cpa_end_timestamp_seconds", "Unix time at which the CPA ends", labels=["cpa"]
        )
        cpa_active = GaugeMetricFamily(
            "ebms_cpa_active", "1 when the CPA is agreed and within its period", labels=["cpa"]
        )
        cert_end = GaugeMetricFamily(
            "ebms_certificate_not_after_timestamp_seconds",
            "Unix time at which a certificate named in a CPA expires",
            labels=["cpa", "party", "cert_id", "subject"],
        )
        for cpa in snap.cpas:
            cpa_end.add_metric([cpa.cpa_id], cpa.end.timestamp())
            cpa_active.add_metric([cpa.cpa_id], 1.0 if cpa.active_at(snap.now) else 0.0)
            for cert in cpa.certificates:
                cert_end.add_metric(
                    [cpa.cpa_id, cert.party, cert.cert_id, cert.subject],
                    cert.not_after.timestamp(),
                )
        yield from (cpa_end, cpa_active, cert_end)

        queue = snap.queue
        tasks = GaugeMetricFamily(
            "ebms_delivery_tasks", "Outbound deliveries not finished", labels=["state"]
        )
        tasks.add_metric(["pending"], float(queue.pending))
        tasks.add_metric(["sending"], float(queue.sending))
        yield tasks
        oldest = GaugeMetricFamily(
            "ebms_delivery_oldest_pending_age_seconds",
            "Age of the oldest message still waiting for delivery (0 when none)",
        )
        oldest.add_metric(
            [],
            (snap.now - queue.oldest_pending).total_seconds() if queue.oldest_pending else 0.0,
        )
        yield oldest
        events = GaugeMetricFamily(
            "ebms_events_unprocessed", "Message events the back office has not processed"
        )
        events.add_metric([], float(queue.events_unprocessed))
        yield events
        event_age = GaugeMetricFamily(
            "ebms_events_oldest_unprocessed_age_seconds",
            "Age of the oldest unprocessed message event (0 when none)",
        )
        event_age.add_metric(
            [], (snap.now - queue.oldest_event).total_seconds() if queue.oldest_event else 0.0
        )
        yield event_age
        hooks = GaugeMetricFamily(
            "dkgw_webhook_deliveries",
            "Event pushes to back-office webhooks waiting (pending, sending) or given up (failed)",
            labels=["webhook", "state"],
        )
        for name, state, count in queue.webhooks:
            hooks.add_metric([name, state], float(count))
        yield hooks
        if snap.store_bytes is not None:
            size = GaugeMetricFamily(
                "dkgw_store_bytes",
                "Size of the store: the SQLite file's pages, or the PostgreSQL schema's tables",
            )
            size.add_metric([], float(snap.store_bytes))
            yield size
        if snap.stored_messages is not None:
            kept = GaugeMetricFamily(
                "dkgw_store_messages", "ebMS messages and signals kept in the store (retention)"
            )
            kept.add_metric([], float(snap.stored_messages))
            yield kept


class GatewayMetrics:
    """The metrics registry of one gateway, and the hooks that feed it."""

    def __init__(self, read_snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry()
        self.ping_rtt = Histogram(
            "ebms_ping_rtt_seconds",
            "Round-trip time of scheduled Pings settled by this node",
            _LINK,
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        self.pings = Counter(
            "ebms_pings",
            "Scheduled Pings settled by this node, by outcome",
            ["cpa", "from", "to", "outcome"],
            registry=self.registry,
        )
        self.inbound = Counter(
            "ebms_inbound_requests",
            "Requests on the ebMS endpoint, by HTTP status and outcome",
            ["status", "outcome"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "ebms_delivery_attempts",
            "Delivery attempts made by this node, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.tls_failures = Counter(
            "dkgw_tls_handshake_failures",
            "TLS handshakes refused by a listener (ebms, api, admin), by reason",
            ["listener", "reason"],
            registry=self.registry,
        )
        self.slow_clients = Counter(
            "dkgw_slow_clients",
            "Connections a listener (ebms, api, admin) cut for being too slow, "
            "by what was missing (tls-handshake, request-line, headers, body)",
            ["listener", "missing"],
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "dkgw_connections_refused",
            "Connections a listener closed at once because it had max_connections open",
            ["listener"],
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(read_snapshot))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def on_event(self, fields: Mapping[str, str]) -> None:
        """Count one gateway event (the same fields the log line carries)."""
        event = fields.get("event")
        if event == "inbound":
            self.inbound.labels(fields.get("status", ""), fields.get("outcome", "")).inc()
        elif event == "delivery":
            self.attempts.labels(fields.get("outcome", "")).inc()
        elif event == "slow-client":
            self.slow_clients.labels(fields.get("listener", ""), fields.get("missing", "")).inc()
        elif event == "connections-full":
            self.connections_refused.labels(fields.get("listener", "")).inc()

    def on_tls_failure(self, listener: str, reason: str) -> None:
        """Count one refused TLS handshake (``reason`` is a short fixed label)."""
        self.tls_failures.labels(listener, reason).inc()

    def on_pings(self, report: TickReport) -> None:
        """Record the Pings one schedule tick settled."""
        for verdict in report.verdicts:
            key = verdict.key
            self.pings.labels(key.cpa_id, key.from_party, key.to_party, verdict.outcome).inc()
            if verdict.rtt is not None:
                self.ping_rtt.labels(key.cpa_id, key.from_party, key.to_party).observe(verdict.rtt)

    def exposition(self) -> bytes:
        """The text exposition format; reads the store, so call it off the reactor."""
        return generate_latest(self.registry)
