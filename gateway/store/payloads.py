"""Payloads in the store: parts kept whole in their row, or in chunks.

A payload of up to :data:`CHUNK_BYTES` is kept in its ``ebms_attachment`` row; a
larger one leaves that column empty and is stored as rows of
``ebms_payload_chunk``, written and read one statement per chunk, so no
statement binds or returns a large payload whole (docs/msh.md, "Payload
storage").  The fingerprint over the envelope and payloads tells a resent
duplicate from a MessageId reused for other content (ebMS 2.0 §6.5, §6.4.1).

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside
the caller's transaction.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Protocol

from gateway.store.database import Cursor

__all__ = [
    "CHUNK_BYTES",
    "AttachmentRecord",
    "PayloadFile",
    "SpooledPayload",
    "fingerprint",
    "insert_attachment",
    "load_attachments",
]


CHUNK_BYTES = 1 << 20
"""Payloads above this size are stored as rows of this many bytes (``ebms_payload_chunk``).

A chunk is what one statement binds or returns, so storing or loading a
payload of any size holds about this much of it in memory at a time.
"""


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


def insert_attachment(cur: Cursor, pk: int, order_nr: int, a: AttachmentRecord) -> None:
    """One payload: in its row when it fits one chunk, else in ``ebms_payload_chunk`` rows.

    A chunked payload leaves ``content`` empty; ``size`` then says how many
    bytes its chunks hold.
    """
    inline = isinstance(a.content, bytes) and len(a.content) <= CHUNK_BYTES
    cur.execute(
        "INSERT INTO ebms_attachment (message_pk, order_nr, content_id, content_type, filename, "
        "size, sha256, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            pk,
            order_nr,
            a.content_id,
            a.content_type,
            a.filename,
            a.size,
            a.sha256,
            a.content if inline else b"",
        ),
    )
    if inline:
        return
    source = a.open()
    seq = 0
    while chunk := source.read(CHUNK_BYTES):
        cur.execute(
            "INSERT INTO ebms_payload_chunk (message_pk, order_nr, seq, data) VALUES (?, ?, ?, ?)",
            (pk, order_nr, seq, chunk),
        )
        seq += 1


def load_attachments(cur: Cursor, message_pk: int) -> list[AttachmentRecord]:
    """The payloads of a message in their original order.

    A chunked payload comes back as a :class:`SpooledPayload`, copied one
    chunk at a time; close the records (:meth:`AttachmentRecord.close`) when done.
    """
    rows = cur.execute(
        "SELECT order_nr, content_id, content_type, filename, size, content FROM ebms_attachment "
        "WHERE message_pk = ? ORDER BY order_nr",
        (message_pk,),
    ).fetchall()
    out = []
    for order_nr, content_id, content_type, filename, size, content in rows:
        inline = bytes(content)
        body: bytes | PayloadFile = inline
        if len(inline) != int(size):
            body = _load_chunks(cur, message_pk, int(order_nr), int(size))
        out.append(AttachmentRecord(content_id, content_type, body, filename))
    return out


def _load_chunks(cur: Cursor, message_pk: int, order_nr: int, size: int) -> SpooledPayload:
    payload = SpooledPayload()
    # One chunk per statement: a driver that buffers whole result sets
    # (psycopg's client-side cursors) would otherwise hold the payload at once.
    for seq in range(-(-size // CHUNK_BYTES)):
        row = cur.execute(
            "SELECT data FROM ebms_payload_chunk WHERE message_pk = ? AND order_nr = ? AND seq = ?",
            (message_pk, order_nr, seq),
        ).fetchone()
        if row is None:
            payload.close()
            raise LookupError(f"payload {order_nr} of message {message_pk} lacks chunk {seq}")
        payload.write(bytes(row[0]))
    if payload.size != size:
        payload.close()
        raise LookupError(f"payload {order_nr} of message {message_pk} has the wrong size")
    return payload
