"""The upkeep of the relay's message log: ebMS outcomes, files taken away, retention."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from adapters.stuf import codes
from adapters.stuf.relaybase import RelayPart, failure_reason, log
from adapters.stuf.store import PurgeCounts, StufStatus, mark_by_ebms_id, purge, update_status
from gateway.msh.states import OUTBOUND, OutboundStatus
from gateway.store.database import Cursor
from gateway.store.guards import in_states
from gateway.store.timeutil import to_db


class Upkeep(RelayPart):
    """Keeps the message log in step with the ebMS messages and the folders."""

    def sync_statuses(self) -> int:
        """Carry ebMS outcomes (acknowledged, failed, expired) into the message log."""
        moved = 0
        with self.db.transaction() as cur:
            rows = cur.execute(
                "SELECT DISTINCT s.ebms_message_id, m.status FROM stuf_message s "
                "JOIN ebms_message m ON m.message_id = s.ebms_message_id AND m.direction = 'out' "
                "WHERE s.status = 'sent' AND "
                + in_states("m.status", OUTBOUND.table[OutboundStatus.CREATED].values())
                + " LIMIT 500"
            ).fetchall()
            for ebms_id, status in rows:
                try:
                    with cur.savepoint():
                        moved += self._apply_outcome(cur, str(ebms_id), str(status))
                except Exception as exc:
                    moved += self._fail_outcome(cur, str(ebms_id), str(status), exc)
        return moved

    def _apply_outcome(self, cur: Cursor, ebms_id: str, status: str) -> int:
        if status == OutboundStatus.DELIVERED:
            return mark_by_ebms_id(cur, ebms_id, StufStatus.DELIVERED, now=self.clock())
        return mark_by_ebms_id(
            cur, ebms_id, StufStatus.FAILED, reason_code=status[:20],
            reason=f"ebMS {status.lower().replace('_', ' ')}", now=self.clock(),
        )  # fmt: skip

    def _fail_outcome(self, cur: Cursor, ebms_id: str, status: str, exc: Exception) -> int:
        """An outcome that cannot be applied fails its log rows alone, with the reason."""
        reason = f"The ebMS outcome {status} could not be applied: {failure_reason(exc)}"
        try:
            with cur.savepoint():
                # Plain SQL: the guarded move is what just failed.
                cur.execute(
                    "UPDATE stuf_message SET status = ?, reason_code = ?, reason = ?, "
                    "updated_at = ? WHERE ebms_message_id = ? AND status = ?",
                    (StufStatus.FAILED.value, codes.RELAY_FAILED, reason[:1000],
                     to_db(self.clock()), ebms_id, StufStatus.SENT.value),
                )  # fmt: skip
                moved = max(cur.rowcount, 0)
        except Exception:
            log.exception("event=stuf-error ebms_message_id=%s", ebms_id)
            return 0
        self._log("stuf-outcome-failed", level=logging.ERROR, ebms_message_id=ebms_id,
                  reason=reason)  # fmt: skip
        return moved

    def detect_read(self) -> int:
        """Mark delivered items whose file the recipient has taken away as read."""
        base = self.config.inbox if self.gemeente else self.config.provider_outbox
        if base is None:
            return 0
        read = 0
        with self.db.transaction() as cur:
            rows = cur.execute(
                "SELECT id, file_name FROM stuf_message WHERE direction = 'in' "
                "AND status = 'delivered' AND file_name IS NOT NULL ORDER BY id LIMIT 1000"
            ).fetchall()
            for log_id, name in rows:
                try:
                    with cur.savepoint():
                        if _taken_away(base, str(name)):
                            read += int(
                                update_status(cur, int(log_id), StufStatus.READ, now=self.clock())
                            )
                except Exception as exc:
                    self._fail_delivered(cur, int(log_id), exc)
        return read

    def _fail_delivered(self, cur: Cursor, log_id: int, exc: Exception) -> None:
        """A delivered item whose file cannot be looked at fails alone, with the reason."""
        reason = f"Whether its file was taken away cannot be checked: {failure_reason(exc)}"
        try:
            with cur.savepoint():
                update_status(cur, log_id, StufStatus.FAILED, reason_code=codes.RELAY_FAILED,
                              reason=reason[:1000], now=self.clock())  # fmt: skip
        except Exception:
            log.exception("event=stuf-error log_id=%s", log_id)
            return
        self._log("stuf-read-failed", level=logging.ERROR, log_id=str(log_id), reason=reason)

    def purge(self) -> PurgeCounts:
        """Apply retention (``read_retention_hours``, ``max_age_days``)."""
        with self.db.transaction() as cur:
            counts = purge(
                cur,
                self.clock(),
                read_after=timedelta(hours=self.config.read_retention_hours),
                max_age=timedelta(days=self.config.max_age_days),
            )
        if counts.messages or counts.batches:
            self._log("stuf-purged", read=str(counts.read), expired=str(counts.expired),
                      batches=str(counts.batches))  # fmt: skip
        return counts


def _taken_away(base: Path, name: str) -> bool:
    """Whether the file ``name`` (under ``base``) is gone; raises when it cannot tell."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError("the stored file name is outside the folder")
    try:
        (base / name).stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    return False
