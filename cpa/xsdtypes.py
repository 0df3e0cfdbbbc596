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


# ASCII digits only (re.ASCII): ``\d`` would also take other scripts' digits.
_DATETIME = re.compile(
    r"^(?P<date>-?\d{4,}-\d{2}-\d{2})T(?P<time>\d{2}:\d{2}:\d{2})(?P<frac>\.\d+)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?$",
    re.ASCII,
)
#: XML Schema 1.0 Second Edition §3.2.7 (and 1.1 §3.3.8): zones run from -14:00 to +14:00.
_MAX_OFFSET = timedelta(hours=14)


def parse_datetime(text: str) -> datetime:
    """Parse an xsd:dateTime into an aware UTC datetime.

    A value without a time zone is read as UTC: ebMS 2.0 requires UTC and the
    CPAs seen in the field that omit the zone mean UTC.  ``24:00:00`` is the
    first instant of the next day (XML Schema 1.0 Second Edition §3.2.7).
    Raises :class:`ValueError`, and nothing else, for anything that is not an
    xsd:dateTime or that lies outside what :class:`datetime` holds in UTC
    (years 1 to 9999): ``0001-01-01T00:00:00+14:00`` is a valid lexical
    value, but its UTC instant falls in year 0.
    """
    m = _DATETIME.match(text.strip())
    if not m:
        raise ValueError(f"not an xsd:dateTime: {_quote(text)}")
    frac = (m.group("frac") or "")[:7]  # fromisoformat takes at most 6 digits after the dot
    clock = m.group("time")
    end_of_day = clock.startswith("24:")
    if end_of_day:
        if clock != "24:00:00" or frac.strip(".0"):
            raise ValueError(f"not an xsd:dateTime: {_quote(text)}")
        clock, frac = "00:00:00", ""
    tz = m.group("tz") or "Z"
    try:
        value = datetime.fromisoformat(f"{m.group('date')}T{clock}{frac}+00:00")
        offset = timedelta(0) if tz == "Z" else _offset(tz)
        if abs(offset) > _MAX_OFFSET:
            raise ValueError("time zone offset beyond 14:00")
        if end_of_day:
            value += timedelta(days=1)
        return (value - offset).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"xsd:dateTime out of range: {_quote(text)} ({exc})") from None


def _offset(tz: str) -> timedelta:
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if minutes > 59:
        raise ValueError("time zone minutes beyond 59")
    magnitude = timedelta(hours=hours, minutes=minutes)
    return -magnitude if tz[0] == "-" else magnitude


def _quote(text: str, limit: int = 64) -> str:
    """The value as an error message may quote it: repr, cut short (it may be a peer's)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def format_datetime(value: datetime) -> str:
    """Format an aware datetime as xsd:dateTime in UTC with a ``Z`` suffix."""
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{value.microsecond // 1000:03d}Z" if value.microsecond // 1000 else "Z"
    )
