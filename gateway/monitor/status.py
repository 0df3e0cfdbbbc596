"""A snapshot of what an operator watches: links, CPAs, certificates and queues.

One read transaction builds a :class:`Snapshot`; ``/status`` renders it as JSON,
``/metrics`` as Prometheus gauges, and ``dkgw check ping`` judges its links.  No
payloads and no personal data: ids, parties, times and counts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cpa.certificates import facts, load_der
from cpa.model import in_force
from gateway.msh.states import TASK_BUSY, TaskState
from gateway.msh.states import WebhookState as WS
from gateway.store.cpas import CpaNotFound, CpaRegistry, select_all
from gateway.store.database import Cursor
from gateway.store.guards import in_states
from gateway.store.pings import LinkStatus, link_statuses
from gateway.store.retention import store_bytes
from gateway.store.timeutil import from_db, to_db

__all__ = ["CertificateInfo", "CpaInfo", "QueueInfo", "Snapshot", "snapshot", "status_document"]

_DAY = 86400.0


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate a CPA carries."""

    party: str
    cert_id: str
    subject: str
    oin: str | None
    not_after: datetime


@dataclass(frozen=True)
class CpaInfo:
    """One stored CPA as monitoring sees it."""

    cpa_id: str
    status: str
    start: datetime
    end: datetime
    certificates: tuple[CertificateInfo, ...]

    def active_at(self, now: datetime) -> bool:
        """Agreed and within its validity period."""
        return in_force(self.status, self.start, self.end, now)


@dataclass(frozen=True)
class QueueInfo:
    """Work waiting: outbound deliveries and inbound events the back office has not taken."""

    pending: int
    sending: int
    oldest_pending: datetime | None
    events_unprocessed: int
    oldest_event: datetime | None
    #: (webhook name, state) -> deliveries, for pending/sending/failed pushes.
    webhooks: tuple[tuple[str, str, int], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """Everything of one read, taken at ``now``."""

    now: datetime
    cpas: tuple[CpaInfo, ...]
    links: tuple[LinkStatus, ...]
    queue: QueueInfo
    store_bytes: int | None = None
    """Size of the store (gateway/store/retention.py ``store_bytes``)."""
    stored_messages: int | None = None
    """ebMS messages and signals in the store: what retention keeps."""


class _CertificateCache:
    """Certificate facts per CPA content: a CPA never changes under the same digest."""

    def __init__(self) -> None:
        self._by_sha: dict[str, tuple[CertificateInfo, ...]] = {}

    def get(
        self, cur: Cursor, registry: CpaRegistry, cpa_id: str, sha: str
    ) -> tuple[CertificateInfo, ...]:
        cached = self._by_sha.get(sha)
        if cached is not None:
            return cached
        try:
            cpa = registry.get_cpa(cpa_id, cur)
        except CpaNotFound:
            return ()
        infos = []
        for party in cpa.parties:
            for cert_id, cert in sorted(party.certificates.items()):
                if cert.der is None:
                    continue
                try:
                    f = facts(load_der(cert.der))
                except ValueError:
                    continue
                infos.append(
                    CertificateInfo(party.party_name, cert_id, f.subject, f.oin, f.not_after)
                )
        result = tuple(infos)
        if len(self._by_sha) > 4096:  # bounded: CPAs replaced many times over a long run
            self._by_sha.clear()
        self._by_sha[sha] = result
        return result


_CERTIFICATES = _CertificateCache()


def _queue(cur: Cursor) -> QueueInfo:
    counts = dict.fromkeys((TaskState.PENDING, TaskState.SENDING), 0)
    for state, count in cur.execute(
        f"SELECT state, COUNT(*) FROM delivery_task WHERE {in_states('state', TASK_BUSY)} "
        "GROUP BY state"
    ).fetchall():
        counts[state] = int(count)
    oldest = cur.execute(
        "SELECT MIN(m.created_at) FROM delivery_task t JOIN ebms_message m "
        f"ON m.id = t.message_pk WHERE {in_states('t.state', TASK_BUSY)}"
    ).fetchone()
    events = cur.execute(
        "SELECT COUNT(*), MIN(created_at) FROM message_event WHERE processed_at IS NULL"
    ).fetchone()
    assert events is not None
    webhooks = tuple(
        (str(name), str(state), int(count))
        for name, state, count in cur.execute(
            "SELECT webhook, state, COUNT(*) FROM webhook_delivery "
            f"WHERE {in_states('state', (WS.PENDING, WS.SENDING, WS.FAILED))} "
            "GROUP BY webhook, state "
            "ORDER BY webhook, state"
        ).fetchall()
    )
    return QueueInfo(
        pending=counts[TaskState.PENDING],
        sending=counts[TaskState.SENDING],
        oldest_pending=from_db(oldest[0]) if oldest and oldest[0] else None,
        events_unprocessed=int(events[0]),
        oldest_event=from_db(events[1]) if events[1] else None,
        webhooks=webhooks,
    )


def snapshot(cur: Cursor, registry: CpaRegistry, now: datetime) -> Snapshot:
    """Read links, CPAs (with their certificates) and queue figures in ``cur``'s transaction."""
    cpas = tuple(
        CpaInfo(
            row.cpa_id,
            row.status,
            row.start,
            row.end,
            _CERTIFICATES.get(cur, registry, row.cpa_id, row.sha256),
        )
        for row in select_all(cur)
    )
    messages = cur.execute("SELECT COUNT(*) FROM ebms_message").fetchone()
    return Snapshot(
        now,
        cpas,
        tuple(link_statuses(cur)),
        _queue(cur),
        store_bytes=store_bytes(cur),
        stored_messages=int(messages[0]) if messages else None,
    )


def _iso(value: datetime | None) -> str | None:
    return to_db(value) if value is not None else None


def _days(until: datetime, now: datetime) -> float:
    return round((until - now).total_seconds() / _DAY, 2)


def status_document(snap: Snapshot, *, node: str) -> dict[str, Any]:
    """The ``/status`` JSON: per CPA its links, certificates and days to expiry."""
    links_by_cpa: dict[str, list[LinkStatus]] = {}
    for link in snap.links:
        links_by_cpa.setdefault(link.key.cpa_id, []).append(link)
    cpas = []
    for cpa in snap.cpas:
        cpas.append(
            {
                "cpa_id": cpa.cpa_id,
                "status": cpa.status,
                "active": cpa.active_at(snap.now),
                "start": _iso(cpa.start),
                "end": _iso(cpa.end),
                "days_to_expiry": _days(cpa.end, snap.now),
                "links": [
                    {
                        "from": link.key.from_party,
                        "to": link.key.to_party,
                        "up": link.up,
                        "last_ping": _iso(link.last_checked_at),
                        "last_success": _iso(link.last_success_at),
                        "rtt_seconds": link.last_rtt,
                        "consecutive_failures": link.consecutive_failures,
                        "reason": link.last_reason,
                        "ping_in_flight": link.ping_message_id,
                        "next_ping": _iso(link.next_due),
                    }
                    for link in links_by_cpa.get(cpa.cpa_id, [])
                ],
                "certificates": [
                    {
                        "party": c.party,
                        "cert_id": c.cert_id,
                        "subject": c.subject,
                        "oin": c.oin,
                        "not_after": _iso(c.not_after),
                        "days_to_expiry": _days(c.not_after, snap.now),
                    }
                    for c in cpa.certificates
                ],
            }
        )
    queue = snap.queue
    return {
        "node": node,
        "time": _iso(snap.now),
        "queue": {
            "pending": queue.pending,
            "sending": queue.sending,
            "oldest_pending": _iso(queue.oldest_pending),
            "events_unprocessed": queue.events_unprocessed,
            "oldest_event": _iso(queue.oldest_event),
            "webhooks": [
                {"webhook": name, "state": state, "deliveries": count}
                for name, state, count in queue.webhooks
            ],
        },
        "cpas": cpas,
        "store": {"bytes": snap.store_bytes, "messages": snap.stored_messages},
    }
