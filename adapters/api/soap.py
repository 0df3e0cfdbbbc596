"""The SOAP back-office API (ebms-core's CPAService, URLMappingService,
CertificateMappingService and EbMSMessageService) with its WSDL in ``wsdl/``."""

from __future__ import annotations

from typing import Any

from twisted.web import resource

from adapters.api.service import BackOffice


def soap_resources(
    backoffice: BackOffice, run_in_thread: Any, reactor: Any
) -> dict[bytes, resource.Resource]:
    """The SOAP endpoints to mount under ``/service``, by path segment."""
    return {}
