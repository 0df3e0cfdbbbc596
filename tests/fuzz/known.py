"""Findings that are known and being fixed: exceptions the fuzz targets accept for now.

Each entry is one exception signature: the target, the exception type, the
innermost function of the gateway's own code (``gateway``, ``adapters``,
``cpa``) the traceback passes through, and a pattern of its message.  An
escape that matches is not reported; anything else still is.  Every entry
must be matched by an input in ``tests/fuzz/regressions/<target>/``
(``tests/test_fuzz.py`` checks that), so when a fix lands its entry fails
that check and is removed.  The list is meant to become empty.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

#: The packages whose frames locate an exception.
_OWN = ("gateway", "adapters", "cpa")


@dataclass(frozen=True)
class Known:
    """One accepted exception signature."""

    target: str
    exception: str
    """The exception type's name (``OverflowError``, ``C14NError``)."""
    where: str
    """``module:function`` of the innermost frame in the gateway's own code."""
    message: str
    """A regular expression searched in ``str(exception)``."""
    what: str
    """One line: the finding."""


KNOWN: tuple[Known, ...] = ()


def where(exc: BaseException) -> str:
    """``module:function`` of the innermost frame of the gateway's own code, or ``?``."""
    found = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = frame.filename.replace("\\", "/").split("/")
        for n in range(len(parts) - 1, -1, -1):
            if parts[n] in _OWN:
                module = ".".join([*parts[n:-1], parts[-1].removesuffix(".py")])
                found = f"{module}:{frame.name}"
                break
    return found


def signature(exc: BaseException) -> str:
    """How an exception is described in reports and matched here."""
    return f"{type(exc).__name__} at {where(exc)}: {str(exc)[:200]}"


def accepted(target: str, exc: BaseException) -> Known | None:
    """The entry that accepts ``exc`` escaping from ``target``, or None."""
    location = where(exc)
    for entry in KNOWN:
        if (
            entry.target == target
            and type(exc).__name__ == entry.exception
            and entry.where == location
            and re.search(entry.message, str(exc))
        ):
            return entry
    return None


@dataclass(frozen=True)
class KnownLog:
    """One accepted problem record in a gateway's log, for the wire fuzzer."""

    pattern: str
    """A regular expression searched in the log record (a JSON line)."""
    what: str
    """One line: the finding."""


#: The same findings as :data:`KNOWN`, as the HTTP edge logs them ("inbound request
#: failed" with the traceback) when they escape InboundProcessor.handle.
KNOWN_WIRE: tuple[KnownLog, ...] = ()


def accepted_log(record: str) -> KnownLog | None:
    """The entry that accepts this problem log record, or None."""
    for entry in KNOWN_WIRE:
        if re.search(entry.pattern, record, re.S):
            return entry
    return None
