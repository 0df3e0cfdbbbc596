"""The two XML Schema value types a CPA leans on: xsd:dateTime and xsd:duration."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(
    r"^(?P<sign>-)?P(?!$)"
    r"(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """Parse an xsd:duration such as ``PT5M``, ``P1D`` or ``P1DT2H30M``.

    Years and months have no fixed length; a CPA interval is an operational
    setting, so they are taken as 365 and 30 days rather than refused.
    Raises :class:`ValueError` for anything that is not an xsd:duration.
    """
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"not an xsd:duration: {text!r}")
    parts = {k: v for k, v in m.groupdict().items() if v is not None and k != "sign"}
    try:
        delta = _delta(parts)
    except OverflowError:
        raise ValueError(f"xsd:duration out of range: {text!r}") from None
    return -delta if m.group("sign") else delta


def _delta(parts: dict[str, str]) -> timedelta:
    return timedelta(
        days=int(parts.get("years", 0)) * 365
        + int(parts.get("months", 0)) * 30
        + int(parts.get("days", 0)),
        hours=int(parts.get("hours", 0)),
        minutes=int(parts.get("minutes", 0)),
        seconds=float(parts.get("seconds", 0)),
    )


_DATETIME = re.compile(
    r"^(?P<date>-?\d{4,}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2})(?P<frac>\.\d+)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?$"
)


def parse_datetime(text: str) -> datetime:
    """Parse an xsd:dateTime into an aware UTC datetime.

    A value without a time zone is read as UTC: ebMS 2.0 requires UTC and the
    CPAs seen in the field that omit the zone mean UTC.
    """
    m = _DATETIME.match(text.strip())
    if not m:
        raise ValueError(f"not an xsd:dateTime: {text!r}")
    frac = (m.group("frac") or "")[:7]  # fromisoformat takes at most 6 digits after the dot
    base = f"{m.group('date')}T{m.group('time')}{frac[:7]}"
    tz = m.group("tz") or "Z"
    value = datetime.fromisoformat(base + ("+00:00" if tz == "Z" else tz))
    return value.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """Format an aware datetime as xsd:dateTime in UTC with a ``Z`` suffix."""
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{value.microsecond // 1000:03d}Z" if value.microsecond // 1000 else "Z"
    )
