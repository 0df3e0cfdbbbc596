"""The SOAP back-office API: ebms-core's four SOAP services, with their WSDL in ``wsdl/``.

ebms-admin mounts ebms-core's CXF services under ``/service`` (docs/api.md); these
are the same paths, namespaces and elements, so a back office generated from
ebms-core's WSDL talks to dkgw unchanged:

- ``/service/cpa``: ``CPAService`` (``wsdl/cpa.wsdl``)
- ``/service/urlMapping``: ``UrlMappingService`` (``wsdl/urlMapping.wsdl``)
- ``/service/certificateMapping``: ``CertificateMappingService``
  (``wsdl/certificateMapping.wsdl``)
- ``/service/ebms``: ``EbMSMessageService`` (``wsdl/ebms.wsdl``)

and one of dkgw's own, in its own namespace (not an ebms-core service):

- ``/service/stuf``: ``StufService`` (``wsdl/stuf.wsdl``), the iWmo/iJw relay

SOAP handling is :mod:`adapters.api.soap_http`; the operations are in
:mod:`adapters.api.soap_cpa`, :mod:`adapters.api.soap_ebms` and
:mod:`adapters.api.soap_stuf`.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource

from adapters.api.service import BackOffice
from adapters.api.soap_cpa import (
    certificate_mapping_operations,
    cpa_operations,
    url_mapping_operations,
)
from adapters.api.soap_ebms import ebms_operations
from adapters.api.soap_http import WSDL_DIR, Handler, SoapResource, WsdlDescription, wsdl_schema
from adapters.api.soap_stuf import StufSoapResource, stuf_operations

__all__ = ["WSDLS", "soap_resources"]

#: The WSDL of every service below; their schemas are registered now, so
#: ``dkgw serve`` compiles them at its start (xmlsafe/schemas.py).
WSDLS = ("cpa.wsdl", "urlMapping.wsdl", "certificateMapping.wsdl", "ebms.wsdl", "stuf.wsdl")
for _name in WSDLS:
    wsdl_schema(WSDL_DIR / _name)


def soap_resources(
    backoffice: BackOffice, run_in_thread: Any, reactor: Any
) -> dict[bytes, resource.Resource]:
    """The SOAP endpoints to mount under ``/service``, by path segment."""

    def endpoint(wsdl: str, fault_element: str, operations: dict[str, Handler]) -> SoapResource:
        return SoapResource(
            WsdlDescription(WSDL_DIR / wsdl), operations, fault_element, run_in_thread
        )

    return {
        b"cpa": endpoint(
            "cpa.wsdl", "CPAServiceException", cpa_operations(backoffice, run_in_thread)
        ),
        b"urlMapping": endpoint(
            "urlMapping.wsdl",
            "URLMappingServiceException",
            url_mapping_operations(backoffice, run_in_thread),
        ),
        b"certificateMapping": endpoint(
            "certificateMapping.wsdl",
            "CertificateMappingServiceException",
            certificate_mapping_operations(backoffice, run_in_thread),
        ),
        b"ebms": endpoint(
            "ebms.wsdl",
            "EbMSMessageServiceException",
            ebms_operations(backoffice, run_in_thread, reactor),
        ),
        b"stuf": StufSoapResource(
            WsdlDescription(WSDL_DIR / "stuf.wsdl"),
            stuf_operations(backoffice, run_in_thread),
            run_in_thread,
        ),
    }
