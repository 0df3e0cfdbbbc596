"""Apply a decision's effects with the store functions, in the caller's transaction.

The one place where the MSH's receiving decisions (:mod:`gateway.msh.effects`)
become writes; the caller holds the transaction, so the reply goes out only
after every effect is committed (ebMS 2.0 §6.5, persist before acting).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from gateway.msh.effects import (
    AddEvent,
    Effect,
    Known,
    MessageRef,
    QueueReply,
    ResendReply,
    SettleReferenced,
    StoreInbound,
    StoreReply,
)
from gateway.store.database import Cursor
from gateway.store.messages import (
    Direction,
    OutboundStatus,
    add_event,
    insert_message,
    insert_task,
    release_task,
    resend_task,
    set_status,
)

__all__ = ["apply"]


def apply(cur: Cursor, effects: Iterable[Effect], *, now: datetime) -> str | None:
    """Write ``effects`` in order; returns the outcome a guarded effect ended with, if any.

    Raises :class:`~gateway.store.database.IntegrityConflict` when a message
    to store is already there (the same message arrived twice at once).
    """
    stored: dict[tuple[str, Direction], int] = {}
    outcome = None

    def pk_of(ref: MessageRef) -> int:
        if isinstance(ref, Known):
            return ref.pk
        return stored[(ref.message_id, ref.direction)]

    for effect in effects:
        match effect:
            case StoreInbound(record, payloads):
                pk = insert_message(cur, record, payloads, now=now)
                stored[(record.message_id, record.direction)] = pk
            case StoreReply(record):
                pk = insert_message(cur, record, (), now=now)
                stored[(record.message_id, record.direction)] = pk
            case AddEvent(message, message_id, event):
                add_event(cur, pk_of(message), message_id, event, now=now)
            case QueueReply(reply, endpoint, max_attempts, retry_interval):
                insert_task(
                    cur,
                    pk_of(reply),
                    endpoint,
                    now=now,
                    max_attempts=max_attempts,
                    retry_interval=retry_interval,
                )
            case ResendReply(pk, attempts):
                resend_task(cur, pk, now=now, attempts=attempts)
            case SettleReferenced():
                outcome = _settle(cur, effect, now)
    return outcome


def _settle(cur: Cursor, effect: SettleReferenced, now: datetime) -> str:
    """Our message leaves CREATED (the store's guard); then its event and the end of its task."""
    if not set_status(
        cur,
        effect.pk,
        effect.status.value,
        now=now,
        reason=effect.reason,
        only_from=(OutboundStatus.CREATED.value,),
    ):
        return effect.already
    add_event(cur, effect.pk, effect.message_id, effect.event, now=now)
    release_task(cur, effect.pk, effect.task, now=now)
    return effect.settled
