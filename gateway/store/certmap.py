"""Certificate mappings: use another certificate than the one a CPA names.

A mapping replaces a certificate found in a CPA (the *source*) by another one (the
*destination*), for every CPA or for one CPA.  It is ebms-core's certificate mapping
(docs/api.md): when a partner renews a certificate before the CPA
is reissued, the operator maps the old certificate to the new one instead of editing
the CPA.  A CPA-specific mapping wins over a global one; a certificate without a
mapping stays what it is.

Differences from ebms-core, on purpose: the source is identified by the SHA-256 of its
DER encoding (the way the CPA tooling and :mod:`gateway.tls` identify certificates),
not by issuer and serial number, so a re-encoded or re-issued certificate with the same
serial never matches by accident; and at most one global mapping per source exists
(ebms-core's unique constraint lets NULL ``cpa_id`` rows repeat).

Every function takes a :class:`~gateway.store.database.Cursor` and runs inside the
caller's transaction.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from gateway.store.database import Cursor, Row
from gateway.store.identifiers import check_identifier
from gateway.store.timeutil import from_db, to_db, utcnow

__all__ = [
    "CertificateMapping",
    "certificate_map",
    "delete_mapping",
    "list_mappings",
    "resolve_certificate",
    "set_mapping",
]


@dataclass(frozen=True)
class CertificateMapping:
    """One stored mapping."""

    id: int
    source: bytes
    """The certificate as the CPA has it, DER."""
    destination: bytes
    """The certificate to use instead, DER."""
    cpa_id: str | None
    """The CPA it applies to, or None for every CPA."""
    created_at: datetime
    updated_at: datetime

    @property
    def source_sha256(self) -> str:
        """Hex SHA-256 of the source certificate's DER."""
        return _digest(self.source)


def _digest(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _check_der(der: bytes, what: str) -> bytes:
    """The DER bytes of a certificate, refusing anything else before it is stored."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise TypeError(f"{what} certificate must be DER bytes, not {type(der).__name__}")
    data = bytes(der)
    try:
        x509.load_der_x509_certificate(data)
    except ValueError:
        # Our own sentence: the parser's text names ASN.1 internals, not the problem.
        raise ValueError(f"{what} is not a DER X.509 certificate") from None
    return data


def _check_cpa_id(cpa_id: str | None) -> None:
    # "" would be a third kind of scope next to None and a real CPA id: refuse it.
    if cpa_id is not None and not cpa_id:
        raise ValueError("cpa_id must be a CPA id or None (for every CPA), not empty")


def _check_new_cpa_id(cur: Cursor, cpa_id: str | None) -> None:
    """The scope of a new mapping: None, or a clean identifier naming a stored CPA.

    Deleting does not check this much: a row stored before the check must stay removable.
    """
    _check_cpa_id(cpa_id)
    if cpa_id is None:
        return
    check_identifier(cpa_id, "cpaId")
    # A mapping for a CPA that is not stored would never apply (ebms-core's
    # cpaId is null for every CPA, or a CPA's id); a typo is refused here
    # rather than found when the partner's certificate is not accepted.
    if cur.execute("SELECT 1 FROM cpa WHERE cpa_id = ?", (cpa_id,)).fetchone() is None:
        raise ValueError(f"cpaId {cpa_id} names no stored CPA")


_COLUMNS = "id, source, destination, cpa_id, created_at, updated_at"


def _mapping(row: Row) -> CertificateMapping:
    return CertificateMapping(
        id=int(row[0]),
        source=bytes(row[1]),
        destination=bytes(row[2]),
        cpa_id=row[3],
        created_at=from_db(row[4]),
        updated_at=from_db(row[5]),
    )


def set_mapping(
    cur: Cursor,
    source_der: bytes,
    destination_der: bytes,
    cpa_id: str | None = None,
    *,
    now: datetime | None = None,
) -> CertificateMapping:
    """Map ``source_der`` to ``destination_der`` for ``cpa_id`` (None: every CPA).

    Replaces the destination of an existing mapping for the same source and scope
    (ebms-core's ``setCertificateMapping``).  Raises ValueError when either value is
    not a DER certificate, or ``cpa_id`` is empty, has a control character, is
    over :data:`~gateway.store.identifiers.MAX_IDENTIFIER` or names no stored CPA.
    """
    source = _check_der(source_der, "source")
    destination = _check_der(destination_der, "destination")
    _check_new_cpa_id(cur, cpa_id)
    stamp = to_db(now if now is not None else utcnow())
    # The conflict target names the partial index that applies to this scope (see
    # migration 0005); both dialects infer the index from column list plus WHERE.
    target = "(source_sha256) WHERE cpa_id IS NULL"
    if cpa_id is not None:
        target = "(source_sha256, cpa_id) WHERE cpa_id IS NOT NULL"
    row = cur.execute(
        "INSERT INTO certificate_mapping "
        "(source_sha256, source, destination, cpa_id, created_at, updated_at) "
        f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT {target} DO UPDATE SET "
        "destination = excluded.destination, updated_at = excluded.updated_at "
        f"RETURNING {_COLUMNS}",
        (_digest(source), source, destination, cpa_id, stamp, stamp),
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING always yields the row
    return _mapping(row)


def delete_mapping(cur: Cursor, source_der: bytes, cpa_id: str | None = None) -> bool:
    """Remove the mapping of ``source_der`` for exactly this scope; True if there was one.

    ``cpa_id=None`` removes the global mapping only, never the CPA-specific ones
    (ebms-core's ``deleteCertificateMapping(source, cpaId)``).
    """
    source = _check_der(source_der, "source")
    _check_cpa_id(cpa_id)
    if cpa_id is None:
        cur.execute(
            "DELETE FROM certificate_mapping WHERE source_sha256 = ? AND cpa_id IS NULL",
            (_digest(source),),
        )
    else:
        cur.execute(
            "DELETE FROM certificate_mapping WHERE source_sha256 = ? AND cpa_id = ?",
            (_digest(source), cpa_id),
        )
    return cur.rowcount > 0


def list_mappings(cur: Cursor) -> list[CertificateMapping]:
    """Every mapping, oldest first."""
    rows = cur.execute(f"SELECT {_COLUMNS} FROM certificate_mapping ORDER BY id").fetchall()
    return [_mapping(row) for row in rows]


def resolve_certificate(cur: Cursor, der: bytes, cpa_id: str | None) -> bytes:
    """The certificate to use for the CPA certificate ``der`` under ``cpa_id``.

    A mapping for this CPA wins over a global one; without either, ``der`` itself
    is returned.  With ``cpa_id=None`` only a global mapping applies.
    """
    data = bytes(der)
    if cpa_id is None:
        rows = cur.execute(
            "SELECT source, destination FROM certificate_mapping "
            "WHERE source_sha256 = ? AND cpa_id IS NULL",
            (_digest(data),),
        ).fetchall()
    else:
        # NULLs sort last on both dialects when ordering by "IS NULL" (false < true).
        rows = cur.execute(
            "SELECT source, destination FROM certificate_mapping "
            "WHERE source_sha256 = ? AND (cpa_id = ? OR cpa_id IS NULL) "
            "ORDER BY cpa_id IS NULL",
            (_digest(data), cpa_id),
        ).fetchall()
    for source, destination in rows:
        # The digest finds the row; the bytes decide (no trust in a hash alone).
        if bytes(source) == data:
            return bytes(destination)
    return data


def certificate_map(cur: Cursor, cpa_id: str) -> dict[bytes, bytes]:
    """Every mapping that applies under ``cpa_id``: source DER -> destination DER.

    What :func:`resolve_certificate` answers for each source, read in one query
    so that the checks which use it need no cursor: a mapping for this CPA wins
    over a global one.
    """
    rows = cur.execute(
        "SELECT source, destination, cpa_id FROM certificate_mapping "
        "WHERE cpa_id = ? OR cpa_id IS NULL",
        (cpa_id,),
    ).fetchall()
    mapped: dict[bytes, bytes] = {}
    for source, destination, _scope in sorted(rows, key=lambda row: row[2] is not None):
        # Global rows first, so the CPA's own mapping of the same source overwrites them.
        mapped[bytes(source)] = bytes(destination)
    return mapped
