"""Log lines for people and for log shippers.

The gateway logs events as fields (ids, parties, service/action, outcome, sizes,
durations; never payloads or BSNs).  :func:`log_event` writes them as ``key=value``
text for a terminal and attaches the same fields to the record, so
:class:`JsonFormatter` can emit one JSON object per line for Loki, Elastic or
journald shippers without parsing text back.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging", "log_event"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _text(value: object) -> str:
    text = str(value)
    # Quote values that would break key=value parsing; never let a newline in.
    if not text or any(c in text for c in ' "=\n\r\t'):
        return json.dumps(text)
    return text


def log_event(logger: logging.Logger, level: int, fields: Mapping[str, object | None]) -> None:
    """Log ``fields`` (None values left out) as one ``key=value`` line / JSON object."""
    present = {k: v for k, v in fields.items() if v is not None}
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "%s",
        " ".join(f"{k}={_text(v)}" for k, v in present.items()),
        extra={"dkgw_fields": present},
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, then the event's fields.

    A record without fields (a plain message) carries it as ``msg``; an exception
    as ``error`` text on one line, since a shipper splits on newlines.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "dkgw_fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                entry.setdefault(
                    key, value if isinstance(value, int | float | bool) else str(value)
                )
        else:
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    """Send the gateway's logging to stderr in ``text`` or ``json`` format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
