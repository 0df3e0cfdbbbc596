"""The back-office configuration operations: CPAs, URL mappings, certificate mappings.

ebms-core's ``CPAService``, ``URLMappingService`` and
``CertificateMappingService`` as plain methods over the store, mixed into
:class:`adapters.api.service.BackOffice`.  Every method blocks: the API
layers call them in the store's thread pool.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

from adapters.api.errors import BadRequest, Conflict, NotFound
from adapters.api.model import decode_base64
from gateway.logfmt import log_event
from gateway.store import certmap, urlmap
from gateway.store.cpas import CpaExists, CpaInUse, CpaInvalid, CpaNotFound, CpaRegistry
from gateway.store.database import Database

log = logging.getLogger("dkgw.api")

__all__ = ["AdminOperations"]


class AdminOperations:
    """CPAs and endpoint/certificate mappings (a part of :class:`BackOffice`)."""

    db: Database
    registry: CpaRegistry
    clock: Callable[[], datetime]

    # -- CPAs -------------------------------------------------------------------------

    def validate_cpa(self, xml: bytes) -> None:
        """Raise :class:`BadRequest` with the findings unless the CPA is valid."""
        report = self.registry.validate(xml)
        if not report.ok:
            raise BadRequest(_findings(report.errors))

    def insert_cpa(self, xml: bytes, *, overwrite: bool = False) -> str:
        """Validate and store a CPA; returns its id."""
        try:
            row, replaced, _ = self.registry.insert(xml, overwrite=overwrite)
        except CpaInvalid as exc:
            raise BadRequest(_findings(exc.report.errors)) from None
        except CpaExists as exc:
            raise BadRequest(str(exc)) from None
        _log("cpa-imported", cpa=row.cpa_id, replaced=str(replaced).lower())
        return row.cpa_id

    def delete_cpa(self, cpa_id: str) -> None:
        """Delete a CPA; :class:`NotFound` if there is none.

        :class:`Conflict` while messages are pending on it: ebms-core's
        deleteCPA has no force flag, so the API refuses with the count and
        only the command line (``dkgw cpa delete --force``) fails them.
        """
        try:
            self.registry.delete(cpa_id)
        except CpaNotFound:
            raise NotFound(f"CPA {cpa_id} not found") from None
        except CpaInUse as exc:
            raise Conflict(
                f"{exc}; wait for them, or fail them with 'dkgw cpa delete --force {cpa_id}'"
            ) from None
        _log("cpa-deleted", cpa=cpa_id)

    def cpa_ids(self) -> list[str]:
        """Ids of every stored CPA."""
        return [row.cpa_id for row in self.registry.list()]

    def get_cpa(self, cpa_id: str) -> str:
        """The CPA's XML exactly as imported."""
        try:
            return self.registry.get_xml(cpa_id).decode("utf-8")
        except CpaNotFound:
            raise NotFound(f"CPA {cpa_id} not found") from None

    # -- URL mappings ---------------------------------------------------------------

    def set_url_mapping(self, source: str, destination: str) -> None:
        """Map CPA endpoint ``source`` to ``destination`` (replacing an existing mapping)."""
        try:
            with self.db.transaction() as cur:
                urlmap.set_url_mapping(cur, source, destination, now=self.clock())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        _log("url-mapping-set", source=source, destination=destination)

    def delete_url_mapping(self, source: str) -> None:
        """Remove the mapping of ``source``; :class:`NotFound` if there is none."""
        with self.db.transaction() as cur:
            if not urlmap.delete_url_mapping(cur, source):
                raise NotFound(f"URL mapping {source} not found")
        _log("url-mapping-deleted", source=source)

    def url_mappings(self) -> list[tuple[str, str]]:
        """(source, destination) of every mapping."""
        with self.db.transaction() as cur:
            return [(m.source, m.destination) for m in urlmap.list_url_mappings(cur)]

    # -- certificate mappings -----------------------------------------------------------

    def set_certificate_mapping(self, source: str, destination: str, cpa_id: str | None) -> None:
        """Map a certificate (base64 DER) to another, for one CPA or all (``cpa_id`` None)."""
        src = decode_base64(source, "source")
        dst = decode_base64(destination, "destination")
        try:
            with self.db.transaction() as cur:
                certmap.set_mapping(cur, src, dst, cpa_id or None, now=self.clock())
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        _log("certificate-mapping-set", cpa=cpa_id or "*")

    def delete_certificate_mapping(self, source: str, cpa_id: str | None) -> None:
        """Remove a mapping; :class:`NotFound` if there is none."""
        src = decode_base64(source, "source certificate")
        try:
            with self.db.transaction() as cur:
                found = certmap.delete_mapping(cur, src, cpa_id or None)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not found:
            raise NotFound("certificate mapping not found")
        _log("certificate-mapping-deleted", cpa=cpa_id or "*")

    def certificate_mappings(self) -> list[tuple[str, str, str | None]]:
        """(source, destination, cpa id) of every mapping, certificates in base64 DER."""
        with self.db.transaction() as cur:
            return [
                (
                    base64.b64encode(m.source).decode("ascii"),
                    base64.b64encode(m.destination).decode("ascii"),
                    m.cpa_id,
                )
                for m in certmap.list_mappings(cur)
            ]


def _log(event: str, **fields: str | None) -> None:
    log_event(log, logging.INFO, {"event": event, **fields})


def _findings(errors: Sequence[object]) -> str:
    shown = [str(e) for e in errors[:20]]
    more = f"\n... and {len(errors) - 20} more" if len(errors) > 20 else ""
    return "invalid CPA:\n" + "\n".join(shown) + more
