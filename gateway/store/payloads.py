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

from gateway.store.database import Cursor
from gateway.store.records import (
    CHUNK_BYTES,
    AttachmentRecord,
    PayloadFile,
    SpooledPayload,
    fingerprint,
)

__all__ = [
    "CHUNK_BYTES",
    "AttachmentRecord",
    "PayloadFile",
    "SpooledPayload",
    "fingerprint",
    "insert_attachment",
    "load_attachments",
]


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
