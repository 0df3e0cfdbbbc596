"""Apply a delivery attempt's effects, in order, inside the caller's transaction.

The decision (:mod:`gateway.msh.attempt`) says what to write; this writes it
through the store's functions and says whether the task effect took.  Nothing
is decided here beyond the guards the effects name: the lease on the task, and
"only from CREATED" on the message (ebMS 2.0 §6.5: an acknowledgment or error
that settled the message first wins).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.msh.attempt_effects import (
    AttemptEffect,
    FinishTask,
    RecordAttempt,
    RescheduleTask,
    SettleMessage,
)
from gateway.store.attempts import end_task, record_attempt, reschedule_task
from gateway.store.database import Cursor
from gateway.store.messages import OutboundStatus, add_event, set_status

__all__ = ["apply_effects"]

_FROM_CREATED = (OutboundStatus.CREATED.value,)


def apply_effects(cur: Cursor, effects: Iterable[AttemptEffect]) -> bool:
    """Apply ``effects`` in ``cur``'s transaction; returns whether the task effect took.

    A task effect that finds the task no longer this node's (False) makes the
    effects marked ``after_task`` that follow it change nothing.
    """
    moved = True
    for effect in effects:
        if isinstance(effect, RecordAttempt):
            record_attempt(
                cur,
                task_id=effect.task_id,
                attempt=effect.attempt,
                node=effect.node,
                url=effect.url,
                started_at=effect.started_at,
                finished_at=effect.finished_at,
                http_status=effect.http_status,
                outcome=effect.outcome.value,
                error=effect.error,
            )
        elif isinstance(effect, RescheduleTask):
            moved = reschedule_task(
                cur,
                task_id=effect.task_id,
                node=effect.node,
                at=effect.at,
                error=effect.error,
                now=effect.now,
            )
        elif isinstance(effect, FinishTask):
            moved = end_task(
                cur,
                task_id=effect.task_id,
                node=effect.node,
                state=effect.state,
                error=effect.error,
                keep_last_error=effect.keep_last_error,
                now=effect.now,
            )
        elif isinstance(effect, SettleMessage):
            if effect.after_task and not moved:
                continue
            _settle(cur, effect)
    return moved


def _settle(cur: Cursor, effect: SettleMessage) -> None:
    if set_status(
        cur,
        effect.message_pk,
        effect.status.value,
        now=effect.now,
        reason=effect.reason,
        only_from=_FROM_CREATED,
    ):
        add_event(
            cur,
            effect.message_pk,
            effect.message_id,
            effect.event,
            now=effect.now,
            error_code=effect.error_code,
            error_text=effect.error_text,
        )
