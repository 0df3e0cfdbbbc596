"""The SOAP configuration services: CPAs, URL mappings and certificate mappings.

``/service/cpa`` (``wsdl/cpa.wsdl``), ``/service/urlMapping``
(``wsdl/urlMapping.wsdl``) and ``/service/certificateMapping``
(``wsdl/certificateMapping.wsdl``), ebms-core's ``CPAService``,
``URLMappingService`` and ``CertificateMappingService``.  Every operation is
a store call, so every handler runs in the thread pool.

Each service has ebms-core's ``deleteCache``: ebms-core keeps CPAs and
mappings in an (Ehcache) cache in front of its database and a back office
that changed the tables directly must clear it.  dkgw reads them from the
store on every use, so there is nothing to clear; the operation succeeds and
does nothing, so that such back offices keep working unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from lxml import etree

from adapters.api.service import BackOffice, BadRequest
from adapters.api.soap_http import Handler, add, boolean_of, in_thread, text_of
from gateway.store.identifiers import xml_safe

log = logging.getLogger("dkgw.api")

__all__ = [
    "CERTIFICATE_MAPPING_NS",
    "CPA_NS",
    "URL_MAPPING_NS",
    "certificate_mapping_operations",
    "cpa_operations",
    "url_mapping_operations",
]

CPA_NS = "http://www.ordina.nl/cpa/2.18"
URL_MAPPING_NS = "http://www.ordina.nl/cpa/urlMapping/2.18"
CERTIFICATE_MAPPING_NS = "http://www.ordina.nl/cpa/certificateMapping/2.18"


def _nothing(wrapper: etree._Element) -> list[etree._Element]:
    """``deleteCache``: no cache to clear (see the module docstring)."""
    return []


def _required(parent: etree._Element, name: str) -> str:
    # The schema has checked presence; this keeps a handler honest if the
    # WSDL and the code ever disagree.
    value = text_of(parent, name)
    if value is None:
        raise BadRequest(f"{etree.QName(parent).localname}.{name} is required")
    return value


def _leaf(name: str, value: str) -> etree._Element:
    element = etree.Element(name)
    element.text = value
    return element


def cpa_operations(backoffice: BackOffice, run_in_thread: Any) -> dict[str, Handler]:
    """The handlers of ``/service/cpa``, by operation name."""

    def validate(wrapper: etree._Element) -> list[etree._Element]:
        backoffice.validate_cpa(_required(wrapper, "cpa").encode("utf-8"))
        return []

    def insert(wrapper: etree._Element) -> list[etree._Element]:
        cpa_id = backoffice.insert_cpa(
            _required(wrapper, "cpa").encode("utf-8"),
            overwrite=bool(boolean_of(wrapper, "overwrite")),
        )
        return [_leaf("cpaId", cpa_id)]

    def delete(wrapper: etree._Element) -> list[etree._Element]:
        backoffice.delete_cpa(_required(wrapper, "cpaId").strip())
        return []

    def ids(wrapper: etree._Element) -> list[etree._Element]:
        return [_leaf("cpaId", cpa_id) for cpa_id in backoffice.cpa_ids()]

    def get(wrapper: etree._Element) -> list[etree._Element]:
        return [_leaf("cpa", backoffice.get_cpa(_required(wrapper, "cpaId").strip()))]

    return {
        "validateCPA": in_thread(run_in_thread, validate),
        "insertCPA": in_thread(run_in_thread, insert),
        "deleteCPA": in_thread(run_in_thread, delete),
        "getCPAIds": in_thread(run_in_thread, ids),
        "getCPA": in_thread(run_in_thread, get),
        "deleteCache": in_thread(run_in_thread, _nothing),
    }


def url_mapping_operations(backoffice: BackOffice, run_in_thread: Any) -> dict[str, Handler]:
    """The handlers of ``/service/urlMapping``, by operation name."""

    def set_mapping(wrapper: etree._Element) -> list[etree._Element]:
        mapping = wrapper.find("urlMapping")
        if mapping is None:
            raise BadRequest("setURLMapping.urlMapping is required")
        backoffice.set_url_mapping(
            _required(mapping, "source").strip(), _required(mapping, "destination").strip()
        )
        return []

    def delete(wrapper: etree._Element) -> list[etree._Element]:
        # ebms-core names this parameter sourceURL (URLMappingService.deleteURLMapping).
        backoffice.delete_url_mapping(_required(wrapper, "sourceURL").strip())
        return []

    def mappings(wrapper: etree._Element) -> list[etree._Element]:
        found = []
        for source, destination in backoffice.url_mappings():
            element = etree.Element("url")
            add(element, "source", source)
            add(element, "destination", destination)
            found.append(element)
        return found

    return {
        "setURLMapping": in_thread(run_in_thread, set_mapping),
        "deleteURLMapping": in_thread(run_in_thread, delete),
        "getURLMappings": in_thread(run_in_thread, mappings),
        "deleteCache": in_thread(run_in_thread, _nothing),
    }


def certificate_mapping_operations(
    backoffice: BackOffice, run_in_thread: Any
) -> dict[str, Handler]:
    """The handlers of ``/service/certificateMapping``, by operation name.

    Certificates are base64 DER both ways (xs:base64Binary, as ebms-core's
    X509CertificateAdapter writes them).
    """

    def set_mapping(wrapper: etree._Element) -> list[etree._Element]:
        mapping = wrapper.find("certificateMapping")
        if mapping is None:
            raise BadRequest("setCertificateMapping.certificateMapping is required")
        backoffice.set_certificate_mapping(
            _required(mapping, "source"),
            _required(mapping, "destination"),
            (text_of(mapping, "cpaId") or "").strip() or None,
        )
        return []

    def delete(wrapper: etree._Element) -> list[etree._Element]:
        backoffice.delete_certificate_mapping(
            _required(wrapper, "sourceCertificate"),
            (text_of(wrapper, "cpaId") or "").strip() or None,
        )
        return []

    def mappings(wrapper: etree._Element) -> list[etree._Element]:
        found = []
        for source, destination, cpa_id in backoffice.certificate_mappings():
            if cpa_id and not xml_safe(cpa_id):
                # Stored before cpaIds were checked; an altered id would not delete
                # it, so it is left out (the REST listing and the log show it).
                log.warning(
                    "getCertificateMappings: left out a mapping whose cpaId %r has a "
                    "control character; delete it through the REST API",
                    cpa_id,
                )
                continue
            element = etree.Element("certificate")
            add(element, "source", source)
            add(element, "destination", destination)
            if cpa_id:
                add(element, "cpaId", cpa_id)
            found.append(element)
        return found

    return {
        "setCertificateMapping": in_thread(run_in_thread, set_mapping),
        "deleteCertificateMapping": in_thread(run_in_thread, delete),
        "getCertificateMappings": in_thread(run_in_thread, mappings),
        "deleteCache": in_thread(run_in_thread, _nothing),
    }
