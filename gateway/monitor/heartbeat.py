"""When each worker loop last finished a tick: the liveness the readiness check reads.

Every loop (delivery, pings, webhooks, file drop, StUF relay) calls
:func:`beat` with its name after a tick that ran to the end, whatever the
tick's tasks came to: one failed task is the task's affair, a tick that
raised (the store unreachable, a bug) is the loop's.  :func:`last` says
when that was, :func:`all_beats` gives every loop's.  The times live in this
process, on the wall clock (UTC); loops that never ticked are absent.

Names in use: ``delivery``, ``pinger``, ``webhooks``, ``filedrop``, ``stuf-relay``.
"""

from __future__ import annotations

import threading
from datetime import datetime

from gateway.store.timeutil import utcnow

__all__ = ["all_beats", "beat", "forget", "last"]

_lock = threading.Lock()
_beats: dict[str, datetime] = {}


def beat(name: str, at: datetime | None = None) -> None:
    """Record that loop ``name`` finished a tick now (or at ``at``)."""
    with _lock:
        _beats[name] = at if at is not None else utcnow()


def last(name: str) -> datetime | None:
    """When loop ``name`` last finished a tick, or None if it never did."""
    with _lock:
        return _beats.get(name)


def all_beats() -> dict[str, datetime]:
    """Every loop's last tick, by name."""
    with _lock:
        return dict(_beats)


def forget(name: str) -> None:
    """Drop loop ``name``'s record (it stopped: a stale beat must not look alive)."""
    with _lock:
        _beats.pop(name, None)
