"""Timestamps as the store keeps them: fixed-width ISO-8601 UTC text.

Every timestamp column in the store is TEXT of the form ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
One format on both dialects means the same SQL works everywhere, and because the width
is fixed and the zone is always UTC, text comparison and ``ORDER BY`` give chronological
order without any date functions.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["from_db", "to_db", "utcnow"]

# Strict on the way back in: a value that does not have exactly this shape was not
# written by to_db(), and would silently sort wrongly next to values that were.
_DB_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def to_db(dt: datetime) -> str:
    """Render an aware datetime as the store's text form, converted to UTC.

    Raises ``ValueError`` for a naive datetime: guessing its zone would store a wrong
    instant without anyone noticing.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime cannot be stored (no timezone): {dt!r}")
    # isoformat() rather than strftime(): it zero-pads years below 1000 on every platform,
    # and timespec="microseconds" keeps the fraction even when it is zero.
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def from_db(value: str) -> datetime:
    """Parse the store's text form back into a timezone-aware UTC datetime.

    Raises ``ValueError`` when *value* is not exactly in the form ``to_db`` produces.
    """
    if not _DB_FORMAT.fullmatch(value):
        raise ValueError(f"not a store timestamp (YYYY-MM-DDTHH:MM:SS.ffffffZ): {value!r}")
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
