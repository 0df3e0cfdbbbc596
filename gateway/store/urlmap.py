"""URL mappings: post to another URL than the endpoint a CPA names.

A mapping replaces a partner endpoint URL from a CPA (the *source*) by another URL (the
*destination*) when the delivery worker sends: to go through a forward proxy, or to reach
a test stub, without editing the CPA.  It is ebms-core's URL mapping (its REST model
``URLMapping(source, destination)``).  The source is matched exactly against the whole
URL the CPA has (no prefix or host matching), so a mapping never applies by accident to
an endpoint it was not written for; a URL without a mapping stays what it is.

What the mapping does not change: the delivery task keeps the CPA's URL (it is resolved
again at every attempt, so a new or deleted mapping applies to the next attempt), and
the server certificate pinned for the connection is still the one the CPA names for the
source endpoint (see docs/msh.md, "URL mappings").

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside the
caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from gateway.store.database import Cursor, Row
from gateway.store.identifiers import MAX_URL, xml_safe
from gateway.store.timeutil import from_db, to_db, utcnow

__all__ = [
    "UrlMapping",
    "check_url",
    "delete_url_mapping",
    "list_url_mappings",
    "resolve_url",
    "set_url_mapping",
]


@dataclass(frozen=True)
class UrlMapping:
    """One stored mapping."""

    source: str
    """The endpoint URL as the CPA has it."""
    destination: str
    """The URL posted to instead."""
    created_at: datetime
    updated_at: datetime


def check_url(url: str, what: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; ValueError otherwise.

    Checked before storing, so that a typo is refused by ``dkgw urlmap set`` rather
    than found as a connection error in the delivery log hours later.
    """
    if not isinstance(url, str):
        raise TypeError(f"{what} URL must be a string, not {type(url).__name__}")
    if len(url) > MAX_URL:
        raise ValueError(f"{what} URL is longer than {MAX_URL} characters")
    if not url or any(c.isspace() for c in url) or not xml_safe(url):
        raise ValueError(f"{what} URL {url!r} is empty or contains white space or controls")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{what} URL {url!r} is not an absolute http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{what} URL {url!r} has no host")
    try:
        parts.port  # noqa: B018 - evaluated for its check: urlsplit parses the port lazily
    except ValueError:
        raise ValueError(f"{what} URL {url!r} has an invalid port") from None
    return url


_COLUMNS = "source, destination, created_at, updated_at"


def _mapping(row: Row) -> UrlMapping:
    return UrlMapping(
        source=str(row[0]),
        destination=str(row[1]),
        created_at=from_db(row[2]),
        updated_at=from_db(row[3]),
    )


def set_url_mapping(
    cur: Cursor, source: str, destination: str, *, now: datetime | None = None
) -> UrlMapping:
    """Map the CPA endpoint ``source`` to ``destination``; replaces an existing mapping.

    Raises ValueError when either is not an absolute http(s) URL with a host.
    """
    check_url(source, "source")
    check_url(destination, "destination")
    stamp = to_db(now if now is not None else utcnow())
    row = cur.execute(
        "INSERT INTO url_mapping (source, destination, created_at, updated_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (source) DO UPDATE SET "
        "destination = excluded.destination, updated_at = excluded.updated_at "
        f"RETURNING {_COLUMNS}",
        (source, destination, stamp, stamp),
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING always yields the row
    return _mapping(row)


def delete_url_mapping(cur: Cursor, source: str) -> bool:
    """Remove the mapping of ``source``; True if there was one."""
    cur.execute("DELETE FROM url_mapping WHERE source = ?", (source,))
    return cur.rowcount > 0


def list_url_mappings(cur: Cursor) -> list[UrlMapping]:
    """Every mapping, by source URL."""
    rows = cur.execute(f"SELECT {_COLUMNS} FROM url_mapping").fetchall()
    # Sorted here, not by ORDER BY: PostgreSQL sorts text by its locale's collation,
    # SQLite by code point, and the listing should not depend on the store.
    return sorted((_mapping(row) for row in rows), key=lambda m: m.source)


def resolve_url(cur: Cursor, url: str) -> str:
    """The URL to post to for the CPA endpoint ``url``: its mapping's destination, or itself."""
    row = cur.execute("SELECT destination FROM url_mapping WHERE source = ?", (url,)).fetchone()
    return url if row is None else str(row[0])
