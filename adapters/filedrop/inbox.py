"""The inbox: received messages written to a folder, payloads first, sidecar last.

For every received business message of the exchange's CPA and service (and, if
configured, one of its actions) that is still RECEIVED:

1. each payload is written as ``<id>-<n><ext>`` (``<id>``: the MessageId in
   safe characters), atomically (``.tmp-...`` then fsync and rename), streamed
   in 1 MiB pieces;
2. the JSON sidecar ``<id>.json`` with the message's properties and its payload
   files is written last the same way: its presence means the message is complete;
3. the message is marked PROCESSED (and its RECEIVED event processed).

A crash between 2 and 3 writes the same names again on the next pass, with the
same content: the back office sees at most a rewrite, never a half file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from adapters.filedrop.files import atomic_write, ensure_folder, fsync_folder, safe_name
from adapters.filedrop.outbox import transient
from gateway.config import FileDropConfig
from gateway.logfmt import log_event
from gateway.store.backoffice import MessageFilter, process_message, unprocessed_message_ids
from gateway.store.database import Database
from gateway.store.messages import (
    AttachmentRecord,
    Direction,
    InboundStatus,
    StoredMessage,
    fail_received,
    find_message,
    load_attachments,
)
from gateway.store.timeutil import to_db, utcnow

log = logging.getLogger("dkgw.filedrop")

#: Messages asked for per query.
BATCH = 100
#: Temporary files older than this (seconds) are left-overs of a crash: removed at start.
STALE_TMP = 3600.0

_EXTENSIONS = {
    "application/xml": ".xml",
    "text/xml": ".xml",
    "application/json": ".json",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "text/csv": ".csv",
    "application/zip": ".zip",
    "application/octet-stream": ".bin",
}
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}")


def extension(part: AttachmentRecord) -> str:
    """The extension of the part's file name if it has a plain one, else its content type's."""
    if part.filename:
        suffix = Path(part.filename.replace("\\", "/")).suffix
        if _EXTENSION.fullmatch(suffix):
            return suffix.lower()
    media = part.content_type.split(";", 1)[0].strip().lower()
    known = _EXTENSIONS.get(media)
    if known is None:
        guessed = mimetypes.guess_extension(media, strict=True)
        known = guessed if guessed and _EXTENSION.fullmatch(guessed) else ".bin"
    return known


def _party(parties: str, role: str | None) -> dict[str, Any]:
    return {"partyId": parties, "role": role}


def sidecar(message: StoredMessage, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON sidecar's content for ``message`` and its written payload files."""
    return {
        "cpaId": message.cpa_id,
        "fromParty": _party(message.from_party, message.from_role),
        "toParty": _party(message.to_party, message.to_role),
        "service": message.service,
        "action": message.action,
        "conversationId": message.conversation_id,
        "messageId": message.message_id,
        "refToMessageId": message.ref_to_message_id,
        "timestamp": to_db(message.sent_at),
        "payloads": files,
    }


class Inbox:
    """One exchange's inbox folder (all methods block: call them in a worker thread)."""

    def __init__(
        self,
        db: Database,
        exchange: FileDropConfig,
        *,
        stopping: threading.Event,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        assert exchange.inbox is not None
        self.db = db
        self.exchange = exchange
        self.folder = exchange.inbox
        self.stopping = stopping
        self.clock = clock

    def prepare(self) -> None:
        """Create the folder; remove temporary files a crash left behind."""
        ensure_folder(self.folder)
        cutoff = time.time() - STALE_TMP
        for path in self.folder.glob(".tmp-*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except FileNotFoundError:
                continue

    def filters(self) -> list[MessageFilter]:
        """One filter per configured action, or one for the whole service."""
        exchange = self.exchange
        if exchange.inbox_actions:
            return [
                MessageFilter(cpa_id=exchange.cpa_id, service=exchange.service, action=action)
                for action in exchange.inbox_actions
            ]
        return [MessageFilter(cpa_id=exchange.cpa_id, service=exchange.service)]

    def run_pass(self) -> int:
        """Write out every waiting message; returns how many were written.

        Each message on its own: one that cannot be written fails alone
        (:meth:`_fail`) or, when the disk or the store failed, waits for the
        next pass; the others are written.
        """
        written = 0
        # Left RECEIVED after a failure of the disk or the store: tried again next pass.
        later: set[str] = set()
        for flt in self.filters():
            while not self.stopping.is_set():
                limit = BATCH + len(later)
                with self.db.transaction() as cur:
                    ids = unprocessed_message_ids(cur, flt, limit)
                for message_id in ids:
                    if self.stopping.is_set():
                        break
                    if message_id in later:
                        continue
                    try:
                        written += self.deliver(message_id)
                    except Exception as exc:
                        if transient(exc):
                            later.add(message_id)
                            self._log_failure(message_id, "retry", exc)
                        else:
                            self._fail(message_id, exc)
                if len(ids) < limit:
                    break
        return written

    def _fail(self, message_id: str, exc: Exception) -> None:
        """End a message that cannot be written: FAILED with the reason and a FAILED event."""
        reason = f"the message cannot be written to the inbox folder ({type(exc).__name__}: {exc})"
        with self.db.transaction() as cur:
            fail_received(cur, message_id, reason, now=self.clock())
        self._log_failure(message_id, "failed", exc)

    def _log_failure(self, message_id: str, outcome: str, exc: Exception) -> None:
        log_event(
            log,
            logging.ERROR,
            {
                "event": "filedrop",
                "exchange": self.exchange.name,
                "direction": "in",
                "message_id": message_id,
                "outcome": outcome,
                "error": f"{type(exc).__name__}: {exc}",
            },
        )

    def deliver(self, message_id: str) -> int:
        """Write one message's payloads and sidecar and mark it PROCESSED; 1 if done."""
        with self.db.transaction() as cur:
            message = find_message(cur, message_id, Direction.IN)
            if message is None or message.status != InboundStatus.RECEIVED.value:
                return 0  # processed meanwhile (another node, the API)
            parts = load_attachments(cur, message.pk)
        base = safe_name(message.message_id)
        files: list[dict[str, Any]] = []
        try:
            for n, part in enumerate(parts, 1):
                name = f"{base}-{n}{extension(part)}"
                size, sha256 = atomic_write(self.folder, name, part.open())
                files.append(
                    {
                        "file": name,
                        "name": part.filename,
                        "contentId": part.content_id,
                        "contentType": part.content_type,
                        "size": size,
                        "sha256": sha256,
                    }
                )
        except BaseException:
            # No sidecar announces them: the payloads written so far are removed.
            for written in files:
                with contextlib.suppress(OSError):
                    (self.folder / str(written["file"])).unlink()
            raise
        finally:
            for part in parts:
                part.close()
        # The payloads must be on disk before the sidecar that announces them.
        fsync_folder(self.folder)
        document = json.dumps(sidecar(message, files), ensure_ascii=False, indent=2) + "\n"
        atomic_write(self.folder, f"{base}.json", document.encode("utf-8"))
        fsync_folder(self.folder)
        with self.db.transaction() as cur:
            process_message(cur, message.message_id, now=self.clock())
        log_event(
            log,
            logging.INFO,
            {
                "event": "filedrop",
                "exchange": self.exchange.name,
                "direction": "in",
                "file": f"{base}.json",
                "size": sum(int(f["size"]) for f in files),
                "parts": len(files),
                "message_id": message.message_id,
                "action": message.action,
                "outcome": "written",
            },
        )
        return 1
