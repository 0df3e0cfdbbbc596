"""What the back office reads and settles: unprocessed messages and message events.

These are the queries behind ebms-core's ``getUnprocessedMessageIds``,
``processMessage``, ``getUnprocessedMessageEvents`` and ``processMessageEvent``
(docs/api.md), shared by the REST and SOAP APIs
and the file drop.  Every function takes a
:class:`~gateway.store.database.Cursor` and runs inside the caller's
transaction.

Signals (acknowledgments, errors, pongs) are never offered: the back office
only sees business messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime

from cpa.model import MSH_SERVICE
from gateway.store.database import Cursor
from gateway.store.messages import (
    Direction,
    EventType,
    InboundStatus,
    StoredMessage,
    find_message,
    set_status,
)
from gateway.store.timeutil import to_db

__all__ = [
    "Event",
    "MessageFilter",
    "business_message",
    "find_answer",
    "process_event",
    "process_message",
    "unprocessed_events",
    "unprocessed_message_ids",
]


@dataclass(frozen=True)
class MessageFilter:
    """ebms-core's ``MessageFilter``: every field that is set must match exactly.

    Party ids and the service are ``type:value`` strings, as stored.
    """

    cpa_id: str | None = None
    from_party: str | None = None
    from_role: str | None = None
    to_party: str | None = None
    to_role: str | None = None
    service: str | None = None
    action: str | None = None
    conversation_id: str | None = None
    message_id: str | None = None
    ref_to_message_id: str | None = None

    def where(self, alias: str) -> tuple[str, list[object]]:
        """SQL conditions (joined by AND, each prefixed with `` AND ``) and their values."""
        sql = ""
        params: list[object] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                sql += f" AND {alias}.{f.name} = ?"
                params.append(value)
        return sql, params


def _limit(max_nr: int | None) -> str:
    # maxNr 0 or absent means "all", as in ebms-core.
    return f" LIMIT {int(max_nr)}" if max_nr and max_nr > 0 else ""


def _not_signal(alias: str) -> str:
    # MSH signals use the MSH service URI (ebMS 2.0 §4.4.3).
    return f" AND {alias}.service <> '{MSH_SERVICE}'"


def unprocessed_message_ids(cur: Cursor, flt: MessageFilter, max_nr: int | None) -> list[str]:
    """Ids of received business messages still RECEIVED, oldest first."""
    where, params = flt.where("m")
    rows = cur.execute(
        "SELECT m.message_id FROM ebms_message m WHERE m.direction = 'in' AND m.status = ?"
        + _not_signal("m")
        + where
        + " ORDER BY m.id"
        + _limit(max_nr),
        [InboundStatus.RECEIVED.value, *params],
    ).fetchall()
    return [str(r[0]) for r in rows]


@dataclass(frozen=True)
class Event:
    """An unprocessed event: the message, the type, and why when it failed."""

    message_id: str
    type: EventType
    error_code: str | None = None
    error_text: str | None = None


def unprocessed_events(
    cur: Cursor,
    flt: MessageFilter,
    event_types: Sequence[EventType] = (),
    max_nr: int | None = None,
) -> list[Event]:
    """Unprocessed events, oldest first."""
    where, params = flt.where("m")
    types = ""
    if event_types:
        types = f" AND e.event_type IN ({', '.join('?' for _ in event_types)})"
        params = [*(t.value for t in event_types), *params]
    rows = cur.execute(
        "SELECT e.message_id, e.event_type, e.error_code, e.error_text FROM message_event e "
        "JOIN ebms_message m ON m.id = e.message_pk WHERE e.processed_at IS NULL"
        + types
        + where
        + " ORDER BY e.id"
        + _limit(max_nr),
        params,
    ).fetchall()
    return [Event(str(r[0]), EventType(r[1]), r[2], r[3]) for r in rows]


def business_message(cur: Cursor, message_id: str) -> StoredMessage | None:
    """The business message with this id: the received one if both directions have it."""
    for direction in (Direction.IN, Direction.OUT):
        message = find_message(cur, message_id, direction)
        if message is not None and message.service != MSH_SERVICE:
            return message
    return None


def find_answer(
    cur: Cursor, ref_to_message_id: str, actions: Sequence[str]
) -> StoredMessage | None:
    """The signal the partner sent in answer to our ``ref_to_message_id`` (a Pong,
    StatusResponse or MessageError), if it has arrived."""
    marks = ", ".join("?" for _ in actions)
    row = cur.execute(
        "SELECT message_id FROM ebms_message WHERE ref_to_message_id = ? "
        f"AND direction = 'in' AND action IN ({marks}) ORDER BY id LIMIT 1",
        (ref_to_message_id, *actions),
    ).fetchone()
    return None if row is None else find_message(cur, str(row[0]), Direction.IN)


def _mark_events(cur: Cursor, message_pk: int, now: datetime, types: Sequence[str] = ()) -> int:
    sql = "UPDATE message_event SET processed_at = ? WHERE message_pk = ? AND processed_at IS NULL"
    params: list[object] = [to_db(now), message_pk]
    if types:
        sql += f" AND event_type IN ({', '.join('?' for _ in types)})"
        params.extend(types)
    cur.execute(sql, params)
    return cur.rowcount


def process_message(cur: Cursor, message_id: str, *, now: datetime) -> bool:
    """Mark a received message PROCESSED (and its RECEIVED event); False if unknown.

    Processing an already processed message changes nothing and is not an
    error: a back office that crashed after processing may well ask again.
    """
    message = find_message(cur, message_id, Direction.IN)
    if message is None or message.service == MSH_SERVICE:
        return False
    set_status(
        cur,
        message.pk,
        InboundStatus.PROCESSED.value,
        now=now,
        reason="processed by the back office",
        only_from=(InboundStatus.RECEIVED.value,),
    )
    _mark_events(cur, message.pk, now, (EventType.RECEIVED.value,))
    return True


def process_event(cur: Cursor, message_id: str, *, now: datetime) -> bool:
    """Mark the events of ``message_id`` processed; False if there is no such message.

    As in ebms-core, processing a RECEIVED event also marks the received
    message PROCESSED.
    """
    message = business_message(cur, message_id)
    if message is None:
        return False
    _mark_events(cur, message.pk, now)
    if message.direction is Direction.IN:
        set_status(
            cur,
            message.pk,
            InboundStatus.PROCESSED.value,
            now=now,
            reason="event processed by the back office",
            only_from=(InboundStatus.RECEIVED.value,),
        )
    return True
