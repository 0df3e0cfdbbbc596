"""The outbox: files dropped in a folder are sent as ebMS messages, exactly once.

Runs in a worker thread (:meth:`Outbox.run_pass`); see docs/filedrop.md for the
folder layout and the reasoning behind the steps.

1. Claim: ``os.rename(outbox/F, outbox/.work/<token>__F)``.  Atomic, so of two
   passes (or nodes) only one gets the file.
2. Queue: in one transaction, the ``filedrop_item`` row for the token and the
   message with its delivery task (or, when refused, the row with the reason).
3. Settle: when the message is DELIVERED the file moves to ``sent/``; when it is
   DELIVERY_FAILED or EXPIRED, to ``failed/`` with ``F.error`` stating why.

Every pass starts by going through ``.work/``: a token the store knows is never
queued again, a token it does not know (a crash between 1 and 2) is queued now,
and a settled item whose move was not finished is moved.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

import psycopg

from adapters.filedrop.files import ensure_folder, fsync_folder, move_no_clobber
from adapters.filedrop.store import (
    FileDropItem,
    ItemState,
    claim_item,
    refuse_item,
    set_item_message,
    settle_items,
)
from cpa.model import parse_party
from gateway.config import FileDropConfig
from gateway.logfmt import log_event
from gateway.msh.security import MessageSecurity
from gateway.msh.service import Addressing, Payload, SendError
from gateway.msh.service import queue as queue_message
from gateway.store.cpas import CpaNotFound, CpaRegistry
from gateway.store.database import Cursor, Database, IntegrityConflict, StoreError
from gateway.store.messages import CHUNK_BYTES, SpooledPayload
from gateway.store.timeutil import to_db, utcnow

log = logging.getLogger("dkgw.filedrop")

WORK = ".work"
SENT = "sent"
FAILED = "failed"
#: Name endings of files still being written: never picked up.
PARTIAL_SUFFIXES = (".tmp", ".part")
_WORK_NAME = re.compile(r"([0-9a-f]{32})__(.+)", re.DOTALL)
#: Errors that say nothing about the file: the next pass tries it again.
TRANSIENT = (sqlite3.Error, psycopg.Error, StoreError, OSError)
#: Store errors that are the item's own (a constraint or a value it breaks): trying
#: again would fail again, so the item fails with the reason.
ITEM_FAULTS = (
    IntegrityConflict,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    psycopg.IntegrityError,
    psycopg.DataError,
)
#: Longest file name (UTF-8 bytes) taken: the claim adds 34 characters to it.
MAX_NAME_BYTES = 200


def transient(exc: BaseException) -> bool:
    """True for an error of the store or the disk, not of the item: try it again later."""
    return isinstance(exc, TRANSIENT) and not isinstance(exc, ITEM_FAULTS)


def ignored(name: str) -> bool:
    """True for names the outbox leaves alone: hidden files and files being written."""
    return name.startswith(".") or name.endswith(PARTIAL_SUFFIXES)


@dataclass(frozen=True)
class _Read:
    content: SpooledPayload  # a copy: up to a chunk in memory, the rest in a temp file
    sha256: str

    def data(self) -> bytes:
        """The whole content in memory (the StUF relay's envelopes, at most 25 MB)."""
        return self.content.open().read()


class OutboxSender(Protocol):
    """Sends a file in place of the exchange's fixed ebMS properties (the StUF relay).

    ``queue_file`` queues the file's message in ``cur`` (the transaction that
    records the file's token) and returns its ebMS message id, or raises
    :class:`~gateway.msh.outbound.SendError` to refuse it; ``file_refused`` is
    then told, outside that transaction, so it can log the refusal.
    """

    def queue_file(self, cur: Cursor, name: str, content: bytes) -> str:
        """Queue ``content``; its ebMS message id."""
        ...

    def file_refused(self, name: str, content: bytes, error: SendError) -> None:
        """Record that ``name`` was refused."""
        ...


class Outbox:
    """One exchange's outbox folder (all methods block: call them in a worker thread)."""

    def __init__(
        self,
        db: Database,
        registry: CpaRegistry,
        exchange: FileDropConfig,
        *,
        security: MessageSecurity | None,
        stopping: threading.Event,
        queued: Callable[[], None],
        clock: Callable[[], datetime] = utcnow,
        sender: OutboxSender | None = None,
    ) -> None:
        assert exchange.outbox is not None
        self.sender = sender
        self.db = db
        self.registry = registry
        self.exchange = exchange
        self.security = security
        self.stopping = stopping
        self.queued = queued
        self.clock = clock
        self.folder = exchange.outbox
        self.work = self.folder / WORK
        self.sent = self.folder / SENT
        self.failed = self.folder / FAILED

    def prepare(self) -> None:
        """Create the outbox and its ``.work/``, ``sent/`` and ``failed/`` folders."""
        for folder in (self.folder, self.work, self.sent, self.failed):
            ensure_folder(folder)

    def run_pass(self) -> None:
        """Finish what ``.work/`` holds, then claim and queue newly dropped files."""
        self.reconcile()
        if not self.stopping.is_set():
            self.claim_new()

    # -- .work/ ----------------------------------------------------------------------

    def reconcile(self) -> None:
        """Act on every claimed file according to the store."""
        claimed: dict[str, str] = {}
        with os.scandir(self.work) as entries:
            for entry in entries:
                match = _WORK_NAME.fullmatch(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    claimed[match[1]] = match[2]
        if not claimed:
            return
        with self.db.transaction() as cur:
            items = settle_items(cur, self.exchange.name, claimed, now=self.clock())
        for token, name in sorted(claimed.items(), key=lambda t: t[1]):
            if self.stopping.is_set():
                return
            item = items.get(token)
            try:
                if item is None:
                    # Claimed, but the transaction that queues it never committed.
                    self._queue(token, name)
                elif item.state is ItemState.SENT:
                    self._finish(token, replace(item, file_name=name), self.sent)
                elif item.state is ItemState.FAILED:
                    self._finish(token, replace(item, file_name=name), self.failed)
            except Exception as exc:
                self._retry_later(token, name, exc)

    # -- new files -------------------------------------------------------------------

    def claim_new(self) -> None:
        """Claim the files dropped since the last pass (oldest first) and queue them."""
        found: list[tuple[float, str]] = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if ignored(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    found.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
                except FileNotFoundError:
                    continue
        if not found:
            return
        found.sort()
        claimed: list[tuple[str, str]] = []
        for _, name in found:
            if self.stopping.is_set():
                break
            if len(os.fsencode(name)) > MAX_NAME_BYTES:
                try:
                    self._refuse_unclaimed(name)
                except Exception as exc:
                    self._retry_later(None, name, exc)
                continue
            token = uuid.uuid4().hex
            try:
                os.rename(self.folder / name, self.work / f"{token}__{name}")
            except FileNotFoundError:
                continue  # taken by another node, or withdrawn
            except OSError as exc:
                self._retry_later(None, name, exc)
                continue
            claimed.append((token, name))
        if not claimed:
            return
        # The claims must be on disk before their tokens are: after a power loss a
        # file back in the outbox under a token already queued would be sent twice.
        fsync_folder(self.work)
        fsync_folder(self.folder)
        for token, name in claimed:
            if self.stopping.is_set():
                # The rest wait in .work/ under tokens the store does not know:
                # the next start queues them, exactly as after a crash.
                break
            try:
                self._queue(token, name)
            except Exception as exc:
                self._retry_later(token, name, exc)

    def _retry_later(self, token: str | None, name: str, exc: Exception) -> None:
        """One file's step failed on the disk or the store: the others go on.

        The file stays where it is (``.work/`` once claimed) and the next pass
        tries it again; a file that cannot be sent is refused, never left here.
        """
        log_event(
            log,
            logging.ERROR,
            {
                "event": "filedrop",
                "exchange": self.exchange.name,
                "direction": "out",
                "file": name,
                "token": token,
                "outcome": "retry",
                "error": f"{type(exc).__name__}: {exc}",
            },
        )

    def _refuse_unclaimed(self, name: str) -> None:
        error = (
            f"the file name is longer than {MAX_NAME_BYTES} bytes; rename it shorter "
            "and drop it again"
        )
        src = self.folder / name
        try:
            size = src.stat().st_size
            dest = move_no_clobber(
                src,
                self.failed,
                name,
                free=self._error_free(None),
                before=lambda d: self._write_error(d, name, None, None, error),
            )
        except FileNotFoundError:
            return
        self._log(logging.WARNING, name, size, None, "failed", error=error, moved_to=dest.name)

    # -- one file --------------------------------------------------------------------

    def _queue(self, token: str, name: str) -> None:
        """Send the claimed file ``token``, or refuse it; never twice."""
        path = self.work / f"{token}__{name}"
        exchange = self.exchange
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return  # another node finished it
        refusal: str | None = None
        read: _Read | None = None
        if size == 0:
            refusal = "the file is empty"
        elif size > exchange.max_file_bytes:
            refusal = (
                f"the file has {size} bytes, more than max_file_bytes ({exchange.max_file_bytes})"
            )
        else:
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                refusal = "the file name is not valid UTF-8"
        if refusal is None:
            try:
                read = self._read(path)
            except FileNotFoundError:
                return
            except OSError as exc:
                refusal = f"the file cannot be read: {exc.strerror or exc}"
            else:
                size = read.content.size
                if size == 0:
                    refusal = "the file is empty"
                elif size > exchange.max_file_bytes:
                    refusal = (
                        f"the file has more than max_file_bytes ({exchange.max_file_bytes}) bytes"
                    )
        try:
            self._queue_or_refuse(token, name, size, read, refusal)
        finally:
            if read is not None:
                read.content.close()

    def _queue_or_refuse(
        self,
        token: str,
        name: str,
        size: int,
        read: _Read | None,
        refusal: str | None,
    ) -> None:
        exchange = self.exchange
        if refusal is None and read is not None:
            try:
                message_id = self._send(token, name, read)
            except (SendError, CpaNotFound) as exc:
                refusal = str(exc)
                if self.sender is not None and isinstance(exc, SendError):
                    try:
                        self.sender.file_refused(name, read.data(), exc)
                    except Exception:
                        log.exception("filedrop %s: recording the refusal failed", exchange.name)
            except Exception as exc:
                if transient(exc):
                    raise  # the store or the disk: the next pass tries again
                # Not the store's fault, so trying again would fail again and keep
                # the file stuck: refuse it, with the reason.
                log.exception("filedrop %s: %s cannot be sent", exchange.name, name)
                refusal = f"the file cannot be sent: {type(exc).__name__}: {exc}"
            else:
                if message_id is not None:
                    self._log(logging.INFO, name, size, message_id, "queued", token=token)
                    self.queued()
                return
        assert refusal is not None
        sha256 = read.sha256 if read is not None else None
        with self.db.transaction() as cur:
            recorded = refuse_item(
                cur,
                exchange=exchange.name,
                token=token,
                file_name=name,
                size=size,
                sha256=sha256,
                error=refusal,
                now=self.clock(),
            )
        if recorded:
            item = FileDropItem(
                exchange.name, token, name, size, sha256, None, ItemState.FAILED, refusal,
                self.clock(), self.clock(),
            )  # fmt: skip
            self._finish(token, item, self.failed)

    def _read(self, path: Path) -> _Read:
        """A spooled copy of the file (at most max_file_bytes + 1 bytes) and its SHA-256.

        Copied in chunks, so a 100 MB file never sits in memory whole: the store
        takes it from the copy in 1 MiB rows.  A copy, not the file itself: what
        is hashed is exactly what is stored, whatever happens to the file.
        """
        limit = self.exchange.max_file_bytes + 1
        copy = SpooledPayload()
        try:
            with path.open("rb") as f:
                while copy.size < limit and (chunk := f.read(min(CHUNK_BYTES, limit - copy.size))):
                    copy.write(chunk)
        except BaseException:
            copy.close()
            raise
        return _Read(copy, copy.sha256)

    def _send(self, token: str, name: str, read: _Read) -> str | None:
        """Queue the message in the transaction that records the token; its id or None."""
        exchange = self.exchange
        with self.db.transaction() as cur:
            now = self.clock()
            if not claim_item(
                cur,
                exchange=exchange.name,
                token=token,
                file_name=name,
                size=read.content.size,
                sha256=read.sha256,
                now=now,
            ):
                return None  # queued by another node already
            if self.sender is not None:
                message_id = self.sender.queue_file(cur, name, read.data())
                set_item_message(cur, token, message_id, now=now)
                return message_id
            queued = queue_message(
                cur,
                self.registry,
                Addressing(
                    cpa_id=exchange.cpa_id,
                    service=exchange.service,
                    action=exchange.action,
                    from_party=parse_party(exchange.from_party),
                    from_role=exchange.from_role,
                    to_party=parse_party(exchange.to_party),
                    to_role=exchange.to_role,
                ),
                payloads=(Payload(read.content, exchange.content_type, name),),
                correlation_id=f"filedrop:{exchange.name}:{token}",
                security=self.security,
                clock=lambda: now,
            )
            set_item_message(cur, token, queued.message_id, now=now)
        return queued.message_id

    # -- settled files ---------------------------------------------------------------

    def _finish(self, token: str, item: FileDropItem, folder: Path) -> None:
        """Move a settled file from ``.work/`` to ``sent/`` or ``failed/``."""
        src = self.work / f"{token}__{item.file_name}"
        failed = folder == self.failed
        error = item.error or "not delivered"
        try:
            if failed:
                dest = move_no_clobber(
                    src,
                    folder,
                    item.file_name,
                    free=self._error_free(token),
                    before=lambda d: self._write_error(d, item.file_name, token, item, error),
                )
            else:
                dest = move_no_clobber(src, folder, item.file_name)
        except FileNotFoundError:
            return  # moved by another node
        fsync_folder(folder)
        fsync_folder(self.work)
        self._log(
            logging.WARNING if failed else logging.INFO,
            item.file_name,
            item.size,
            item.message_id,
            "failed" if failed else "sent",
            token=token,
            moved_to=dest.name,
            error=error if failed else None,
        )

    @staticmethod
    def _error_free(token: str | None) -> Callable[[Path], bool]:
        """A name in failed/ is free when its ``.error`` is absent or was ours."""

        def free(dest: Path) -> bool:
            error_file = dest.with_name(dest.name + ".error")
            try:
                text = error_file.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                return True
            return token is not None and f"\ntoken: {token}\n" in text

        return free

    def _write_error(
        self,
        dest: Path,
        name: str,
        token: str | None,
        item: FileDropItem | None,
        error: str,
    ) -> None:
        lines = [
            f"error: {error}",
            f"file: {name}",
            f"exchange: {self.exchange.name}",
            f"cpa: {self.exchange.cpa_id}",
            f"service: {self.exchange.service}",
            f"action: {self.exchange.action}",
        ]
        if item is not None:
            lines.append(f"size: {item.size}")
            if item.sha256:
                lines.append(f"sha256: {item.sha256}")
            if item.message_id:
                lines.append(f"message id: {item.message_id}")
            lines.append(f"dropped: {to_db(item.created_at)}")
        lines.append(f"failed: {to_db(self.clock())}")
        text = "\n".join(lines) + "\n"
        if token is not None:
            text += f"token: {token}\n"
        tmp = dest.with_name(f".tmp-{uuid.uuid4().hex}-{dest.name}.error")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest.with_name(dest.name + ".error"))

    def _log(
        self,
        level: int,
        name: str,
        size: int,
        message_id: str | None,
        outcome: str,
        **extra: str | None,
    ) -> None:
        log_event(
            log,
            level,
            {
                "event": "filedrop",
                "exchange": self.exchange.name,
                "direction": "out",
                "file": name,
                "size": size,
                "message_id": message_id,
                "outcome": outcome,
                **extra,
            },
        )
