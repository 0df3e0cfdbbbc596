"""The CPA registry: validated agreements kept in the gateway's store (table ``cpa``).

The original XML is stored byte-exact (it is a signed-off agreement; the
gateway must be able to hand back exactly what was imported).  A small JSON
summary is stored next to it so listing does not reparse every CPA.

Row functions take a store cursor so they can run inside any transaction (the
CLI's, or a Twisted thread-pool interaction later); :class:`CpaRegistry` wraps
them for callers that just want to do one thing.  The agreements themselves (model,
parser, validation) are :mod:`cpa`'s, which knows nothing of the store.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cpa.model import Cpa
from cpa.parse import parse_cpa
from cpa.validate import ValidationOptions, ValidationReport, validate_cpa
from gateway.store.database import Cursor, Database, IntegrityConflict
from gateway.store.pending import fail_pending, pending_count
from gateway.store.timeutil import from_db, to_db, utcnow


class RegistryError(Exception):
    """Base for registry refusals; the message is meant for the operator."""


class CpaInvalid(RegistryError):
    """The CPA failed validation; ``report`` says why."""

    def __init__(self, report: ValidationReport) -> None:
        first = report.errors[0] if report.errors else None
        super().__init__(
            f"invalid CPA ({len(report.errors)} errors)" + (f"; first: {first}" if first else "")
        )
        self.report = report


class CpaExists(RegistryError):
    """A CPA with this id is stored and overwrite was not asked for."""


class CpaNotFound(RegistryError, KeyError):
    """No CPA with this id is stored."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "CPA not found"


class CpaInUse(RegistryError):
    """Outbound messages are still pending on the CPA to delete."""

    def __init__(self, cpa_id: str, pending: int) -> None:
        self.cpa_id = cpa_id
        self.pending = pending
        noun = "message" if pending == 1 else "messages"
        super().__init__(f"CPA {cpa_id} has {pending} pending {noun}")


@dataclass(frozen=True)
class StoredCpa:
    """A registry row without the XML."""

    cpa_id: str
    status: str
    start: datetime
    end: datetime
    sha256: str
    summary: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def summarise(report: ValidationReport) -> dict[str, Any]:
    """The JSON summary kept with a CPA: parties, ids, roles and profiles."""
    assert report.cpa is not None
    return {
        "parties": [
            {
                "name": p.party_name,
                "party_ids": [i.key() for i in p.party_ids],
                "roles": sorted({r.role for r in p.roles}),
            }
            for p in report.cpa.parties
        ],
        "profiles": report.profiles,
        "actions": len(report.actions),
    }


_COLUMNS = "cpa_id, status, start_at, end_at, sha256, summary, created_at, updated_at"


def _row(row: tuple[Any, ...]) -> StoredCpa:
    cpa_id, status, start, end, sha, summary, created, updated = row
    return StoredCpa(
        cpa_id,
        status,
        from_db(start),
        from_db(end),
        sha,
        json.loads(summary),
        from_db(created),
        from_db(updated),
    )


def insert_row(
    cur: Cursor, cpa: Cpa, xml: bytes, summary: dict[str, Any], *, overwrite: bool
) -> bool:
    """Store ``xml`` under ``cpa.cpa_id``; returns True when an existing row was replaced.

    Raises :class:`CpaExists` when the id is taken and ``overwrite`` is false.
    """
    now = to_db(utcnow())
    values = (
        cpa.status,
        to_db(cpa.start),
        to_db(cpa.end),
        hashlib.sha256(xml).hexdigest(),
        json.dumps(summary, sort_keys=True),
    )
    if overwrite:
        cur.execute(
            "UPDATE cpa SET xml = ?, status = ?, start_at = ?, end_at = ?, sha256 = ?, "
            "summary = ?, updated_at = ? WHERE cpa_id = ?",
            (xml, *values, now, cpa.cpa_id),
        )
        if cur.rowcount == 1:
            return True
    try:
        cur.execute(
            f"INSERT INTO cpa ({_COLUMNS}, xml) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cpa.cpa_id, *values, now, now, xml),
        )
    except IntegrityConflict:
        raise CpaExists(f"CPA {cpa.cpa_id!r} already exists; use overwrite to replace it") from None
    return False


def select_row(cur: Cursor, cpa_id: str) -> StoredCpa:
    """The row for ``cpa_id``; raises :class:`CpaNotFound`."""
    row = cur.execute(f"SELECT {_COLUMNS} FROM cpa WHERE cpa_id = ?", (cpa_id,)).fetchone()
    if row is None:
        raise CpaNotFound(f"no CPA {cpa_id!r}")
    return _row(row)


def select_xml(cur: Cursor, cpa_id: str) -> bytes:
    """The stored XML of ``cpa_id``, byte-exact; raises :class:`CpaNotFound`."""
    row = cur.execute("SELECT xml FROM cpa WHERE cpa_id = ?", (cpa_id,)).fetchone()
    if row is None:
        raise CpaNotFound(f"no CPA {cpa_id!r}")
    return bytes(row[0])


def select_all(cur: Cursor) -> list[StoredCpa]:
    """Every stored CPA, ordered by id."""
    return [_row(r) for r in cur.execute(f"SELECT {_COLUMNS} FROM cpa ORDER BY cpa_id").fetchall()]


def delete_row(cur: Cursor, cpa_id: str) -> None:
    """Remove ``cpa_id``; raises :class:`CpaNotFound`."""
    cur.execute("DELETE FROM cpa WHERE cpa_id = ?", (cpa_id,))
    if cur.rowcount != 1:
        raise CpaNotFound(f"no CPA {cpa_id!r}")


#: Parsed CPAs kept in memory (least recently used go first); a deployment has a
#: few dozen partners, each with one CPA in force.
PARSED_CPAS = 256


class CpaRegistry:
    """Validate, store, fetch, list and delete CPAs."""

    def __init__(
        self,
        db: Database,
        options: ValidationOptions | None = None,
        *,
        max_parsed: int = PARSED_CPAS,
    ) -> None:
        self.db = db
        self.options = options or ValidationOptions()
        # sha256 -> model; a CPA is immutable once stored.  Bounded: every import of
        # a new version (through the API too) adds one, and old ones are never asked for.
        self._parsed: OrderedDict[str, Cpa] = OrderedDict()
        self._parsed_lock = threading.Lock()  # the store's threads share the registry
        self._max_parsed = max_parsed

    def validate(self, xml: bytes) -> ValidationReport:
        """Validate without storing."""
        return validate_cpa(xml, self.options)

    def insert(
        self, xml: bytes, *, overwrite: bool = False
    ) -> tuple[StoredCpa, bool, ValidationReport]:
        """Validate and store; returns the row, whether it replaced one, and the report.

        Raises :class:`CpaInvalid` or :class:`CpaExists`; nothing is stored then.
        """
        report = self.validate(xml)
        if not report.ok or report.cpa is None:
            raise CpaInvalid(report)
        with self.db.transaction() as cur:
            replaced = insert_row(cur, report.cpa, xml, summarise(report), overwrite=overwrite)
            row = select_row(cur, report.cpa.cpa_id)
        return row, replaced, report

    def get(self, cpa_id: str) -> StoredCpa:
        """The stored row; raises :class:`CpaNotFound`."""
        with self.db.transaction() as cur:
            return select_row(cur, cpa_id)

    def get_xml(self, cpa_id: str) -> bytes:
        """The stored XML, exactly as imported."""
        with self.db.transaction() as cur:
            return select_xml(cur, cpa_id)

    def get_cpa(self, cpa_id: str, cur: Cursor | None = None) -> Cpa:
        """The parsed model of a stored CPA, inside ``cur``'s transaction if given.

        The model is parsed once per content (keyed by its SHA-256) and reused;
        each call still asks the store for the current digest, so a CPA
        replaced or deleted on another node is noticed at once.
        """
        if cur is None:
            with self.db.transaction() as own:
                return self._get_cpa(own, cpa_id)
        return self._get_cpa(cur, cpa_id)

    def _get_cpa(self, cur: Cursor, cpa_id: str) -> Cpa:
        row = cur.execute("SELECT sha256 FROM cpa WHERE cpa_id = ?", (cpa_id,)).fetchone()
        if row is None:
            raise CpaNotFound(f"no CPA {cpa_id!r}")
        with self._parsed_lock:
            cached = self._parsed.get(row[0])
            if cached is not None:
                self._parsed.move_to_end(row[0])
                return cached
        parsed = parse_cpa(select_xml(cur, cpa_id))
        with self._parsed_lock:
            self._parsed[row[0]] = parsed
            while len(self._parsed) > self._max_parsed:
                self._parsed.popitem(last=False)
        return parsed

    def list(self) -> list[StoredCpa]:
        """All stored CPAs."""
        with self.db.transaction() as cur:
            return select_all(cur)

    def delete(self, cpa_id: str, *, force: bool = False) -> int:
        """Delete one CPA; returns how many pending messages were failed with it.

        Raises :class:`CpaNotFound`, and :class:`CpaInUse` when outbound
        messages are still pending on it, unless ``force``: then they are
        failed ("CPA deleted by operator") in the same transaction.
        """
        with self.db.transaction() as cur:
            select_row(cur, cpa_id)
            pending = pending_count(cur, cpa_id)
            if pending and not force:
                raise CpaInUse(cpa_id, pending)
            failed = fail_pending(cur, cpa_id, now=utcnow()) if pending else 0
            delete_row(cur, cpa_id)
        return failed
