"""What ``dkgw status`` adds to the monitoring snapshot: failures and coming expiries.

Pure functions over a :class:`~gateway.monitor.status.Snapshot` and a few store
reads; ids, parties, times and reasons only, never content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from gateway.monitor.status import Snapshot
from gateway.store.database import Cursor
from gateway.store.timeutil import from_db, to_db

#: Expiry within this long is a warning (an expired one is an error).
EXPIRY_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class RecentFailure:
    """One outbound business message that ended FAILED or EXPIRED."""

    message_id: str
    cpa_id: str
    action: str
    status: str
    at: datetime
    reason: str | None


@dataclass(frozen=True)
class Expiry:
    """A CPA or certificate that has expired or will within :data:`EXPIRY_WARNING`."""

    what: str
    not_after: datetime
    expired: bool

    def sentence(self, now: datetime) -> str:
        """``CPA x expired 3 days ago`` / ``... expires in 12 days (2027-01-01)``."""
        days = abs((self.not_after - now).total_seconds()) / 86400
        when = f"{days:.0f} days" if days >= 1 else f"{days * 24:.0f} hours"
        date = self.not_after.date().isoformat()
        if self.expired:
            return f"{self.what} expired {when} ago ({date})"
        return f"{self.what} expires in {when} ({date})"


def recent_failures(cur: Cursor, since: datetime, *, limit: int = 10) -> list[RecentFailure]:
    """Outbound business messages that failed or expired since ``since``, newest first.

    The reason is the delivery's last error, else the status change's reason.
    """
    rows = cur.execute(
        "SELECT m.message_id, m.cpa_id, m.action, m.status, m.status_at, t.last_error, "
        "(SELECT h.reason FROM status_history h WHERE h.message_pk = m.id "
        " AND h.status = m.status ORDER BY h.at DESC LIMIT 1) "
        "FROM ebms_message m LEFT JOIN delivery_task t ON t.message_pk = m.id "
        "WHERE m.direction = 'out' AND m.status IN ('FAILED', 'EXPIRED') AND m.status_at >= ? "
        "ORDER BY m.status_at DESC, m.id DESC LIMIT ?",
        (to_db(since), limit),
    ).fetchall()
    return [
        RecentFailure(
            str(message_id),
            str(cpa_id),
            str(action),
            str(status),
            from_db(at),
            (last_error or reason) or None,
        )
        for message_id, cpa_id, action, status, at, last_error, reason in rows
    ]


def expiries(
    snap: Snapshot,
    own: dict[str, x509.Certificate] | None = None,
    *,
    within: timedelta = EXPIRY_WARNING,
) -> list[Expiry]:
    """CPAs in force and their certificates, and our own (``own``: name → cert), near their end.

    Soonest first.  A CPA that is not active (ended, not yet begun, or not
    agreed) is not watched: it carries no traffic.
    """
    horizon = snap.now + within
    found: list[Expiry] = []
    for cpa in snap.cpas:
        if not cpa.active_at(snap.now):
            continue
        if cpa.end <= horizon:
            found.append(Expiry(f"CPA {cpa.cpa_id}", cpa.end, cpa.end <= snap.now))
        for cert in cpa.certificates:
            if cert.not_after <= horizon:
                found.append(
                    Expiry(
                        f"certificate {cert.cert_id} of {cert.party} in CPA {cpa.cpa_id}",
                        cert.not_after,
                        cert.not_after <= snap.now,
                    )
                )
    for name, certificate in (own or {}).items():
        not_after = certificate.not_valid_after_utc
        if not_after <= horizon:
            found.append(Expiry(f"our {name}", not_after, not_after <= snap.now))
    return sorted(found, key=lambda e: e.not_after)
