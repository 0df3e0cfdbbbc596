"""The values the store keeps and the MSH decides over: rows as frozen dataclasses.

No SQL and no I/O here, so the pure decisions (``gateway/msh/``) can take and
return these without importing the store's database code; the store modules
(:mod:`gateway.store.messages`, :mod:`gateway.store.payloads`,
:mod:`gateway.store.tasks`) read and write them and re-export their names.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import IO, Protocol

from gateway.store import parties
from gateway.store.parties import Parties

__all__ = [
    "CHUNK_BYTES",
    "AttachmentRecord",
    "Direction",
    "MessageRecord",
    "PayloadFile",
    "SpooledPayload",
    "StoredMessage",
    "Task",
    "fingerprint",
]


CHUNK_BYTES = 1 << 20
"""Payloads above this size are stored as rows of this many bytes (``ebms_payload_chunk``).


A chunk is what one statement binds or returns, so storing or loading a
payload of any size holds about this much of it in memory at a time.
"""


class Direction(StrEnum):
    """Which way a message travelled."""

    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class MessageRecord:
    """The row to store for one message (signals included)."""

    message_id: str
    direction: Direction
    cpa_id: str
    conversation_id: str
    from_party: str | Parties
    """The sender's PartyIds, or their stored text (:mod:`gateway.store.parties`)."""
    to_party: str | Parties
    service: str
    action: str
    sent_at: datetime
    content_type: str
    envelope: bytes
    ref_to_message_id: str | None = None
    from_role: str | None = None
    to_role: str | None = None
    time_to_live: datetime | None = None
    persist_until: datetime | None = None
    status: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A stored message without its payloads."""

    pk: int
    message_id: str
    direction: Direction
    cpa_id: str
    conversation_id: str
    ref_to_message_id: str | None
    from_party: str
    from_role: str | None
    to_party: str
    to_role: str | None
    service: str
    action: str
    sent_at: datetime
    time_to_live: datetime | None
    persist_until: datetime | None
    status: str | None
    status_at: datetime | None
    content_type: str
    envelope: bytes
    fingerprint: str
    created_at: datetime
    correlation_id: str | None = None
    """The back office's id for the request that made this message (logs only)."""

    @property
    def from_ids(self) -> Parties:
        """The sender's PartyIds, read back from ``from_party``."""
        return parties.decode(self.from_party)

    @property
    def to_ids(self) -> Parties:
        """The receiver's PartyIds, read back from ``to_party``."""
        return parties.decode(self.to_party)


@dataclass(frozen=True)
class Task:
    """A claimed delivery task."""

    id: int
    message_pk: int
    url: str
    attempts: int  # including the one just claimed
    max_attempts: int

    @property
    def exhausted(self) -> bool:
        """No attempt left: the claim only ends the final wait for an acknowledgment."""
        return self.attempts > self.max_attempts

    retry_interval: timedelta | None
    expires_at: datetime | None
    lease_until: datetime


class PayloadFile(Protocol):
    """A payload kept on disk rather than in memory, with its size and digest known.


    :class:`gateway.ebms.mime.ReceivedPart` (a spooled received part) is one.
    """

    size: int
    sha256: str

    def open(self) -> IO[bytes]:
        """The content positioned at the start (shared: read it, do not close it)."""
        ...

    def close(self) -> None:
        """Drop the content."""
        ...


class SpooledPayload:
    """A payload copied into a temporary file, hashed on the way in."""

    def __init__(self) -> None:
        # Small payloads stay in memory; the file only appears above one chunk.
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=CHUNK_BYTES)  # noqa: SIM115
        self._digest = hashlib.sha256()
        self.size = 0
        self.sha256 = self._digest.hexdigest()

    @classmethod
    def copy_of(cls, source: IO[bytes]) -> SpooledPayload:
        """A spooled copy of ``source``, read from where it stands in chunks."""
        payload = cls()
        while chunk := source.read(CHUNK_BYTES):
            payload.write(chunk)
        return payload

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""
        self._file.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)
        self.sha256 = self._digest.hexdigest()

    def open(self) -> IO[bytes]:
        """The content positioned at the start (shared: read it, do not close it)."""
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        """Drop the temporary file."""
        self._file.close()


@dataclass(frozen=True, eq=False)
class AttachmentRecord:
    """One payload part as stored.


    ``content`` is the bytes themselves, or a :class:`PayloadFile` for a large
    payload, which then is never read into memory whole: the store writes it
    and reads it back in :data:`CHUNK_BYTES` pieces.
    """

    content_id: str
    content_type: str
    content: bytes | PayloadFile
    filename: str | None = None

    def __eq__(self, other: object) -> bool:
        # Equal content, not the same object: a payload loaded back from the
        # store equals the one stored, whether in memory or spooled.
        if not isinstance(other, AttachmentRecord):
            return NotImplemented
        return (self.content_id, self.content_type, self.filename, self.size, self.sha256) == (
            other.content_id,
            other.content_type,
            other.filename,
            other.size,
            other.sha256,
        )

    def __hash__(self) -> int:
        return hash((self.content_id, self.content_type, self.filename, self.size))

    @property
    def size(self) -> int:
        """Length of the content in bytes."""
        return len(self.content) if isinstance(self.content, bytes) else self.content.size

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the content."""
        if isinstance(self.content, bytes):
            return hashlib.sha256(self.content).hexdigest()
        return self.content.sha256

    def open(self) -> IO[bytes]:
        """The content as a file positioned at the start (shared: do not close it)."""
        if isinstance(self.content, bytes):
            return io.BytesIO(self.content)
        return self.content.open()

    def head(self, n: int) -> bytes:
        """The first ``n`` bytes, without reading the rest."""
        if isinstance(self.content, bytes):
            return self.content[:n]
        return self.content.open().read(n)

    def data(self) -> bytes:
        """The whole content in memory: only for parts known to be small (encrypted ones)."""
        if isinstance(self.content, bytes):
            return self.content
        return self.content.open().read()

    def close(self) -> None:
        """Drop a spooled content; bytes need nothing."""
        if not isinstance(self.content, bytes):
            self.content.close()


def fingerprint(envelope: bytes, attachments: Iterable[AttachmentRecord]) -> str:
    """SHA-256 over the envelope and every payload, in order.


    Tells a true duplicate (the sender's resend, same bytes) from a MessageId
    reused for different content (ebMS 2.0 §6.5 and §6.4.1).
    """
    digest = hashlib.sha256()
    digest.update(len(envelope).to_bytes(8, "big"))
    digest.update(envelope)
    for a in attachments:
        digest.update(a.size.to_bytes(8, "big"))
        if isinstance(a.content, bytes):
            digest.update(a.content)
            continue
        source = a.content.open()
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
