"""Readiness (``/ready``): the reasons a running gateway cannot do its work now.

The store must answer within ``[admin] ready_store_timeout``, every loop must
have ticked within three of its intervals (:mod:`gateway.monitor.heartbeat`),
``data_dir`` must have ``[admin] ready_min_free_mb`` free and no XML Schema may
have failed to compile (docs/operations.md, "Health and readiness").
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.config import AdminConfig
from gateway.errors import describe
from gateway.monitor.heartbeat import Heartbeats
from gateway.store.database import Database
from xmlsafe import schemas as xmlschemas

__all__ = ["readiness"]

_MIB = 1024 * 1024


def disk_reasons(data_dir: Path, min_free_mb: int) -> list[str]:
    """Why ``data_dir`` is not fit to write to: too little free space, unreadable."""
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError as exc:
        return [f"disk: cannot read the free space of {data_dir}: {exc.strerror}"]
    if free < min_free_mb * _MIB:
        return [f"disk: {free // _MIB} MiB free in {data_dir}, below {min_free_mb} MiB"]
    return []


def _store_answers(db: Database) -> None:
    with db.transaction() as cur:
        cur.execute("SELECT 1").fetchone()


def readiness(
    admin: AdminConfig,
    data_dir: Path,
    heartbeats: Heartbeats,
    db: Database | None,
    run_in_thread: Callable[..., Deferred[Any]],
    reactor: Any,
) -> Deferred[list[str]]:
    """Every reason the gateway is not ready; an empty list when it is."""
    reasons = xmlschemas.problems() + heartbeats.stale()
    reasons += disk_reasons(data_dir, admin.ready_min_free_mb)

    def ask() -> None:
        assert db is not None
        _store_answers(db)

    d = run_in_thread(ask)
    d.addTimeout(admin.ready_store_timeout, reactor)

    def answered(_: object) -> list[str]:
        return reasons

    def failed(failure: Failure) -> list[str]:
        if failure.check(defer.TimeoutError):  # type: ignore[no-untyped-call]
            reasons.append(f"store: no answer within {admin.ready_store_timeout:g} s")
        else:
            said = describe(failure.value) if failure.value is not None else None
            reasons.append(f"store: {said or failure.getErrorMessage()}")
        return reasons

    d.addCallbacks(answered, failed)
    return d
