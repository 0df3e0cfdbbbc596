"""Checks on the identifiers the back-office APIs and the command line store.

A CPA id, MessageId, ConversationId, role or URL that an operator or a back
office hands us ends up in SOAP headers, XML answers, JSON listings and log
lines.  A control character in one cannot be written into XML at all (XML 1.0
§2.2, ``Char``), so a single stored row with one made every later listing that
included it fail; an unbounded one fills those answers and the log.  They are
refused at the door instead, by the store functions that write them, so the
REST API, the SOAP API and the command line refuse the same values.
"""

from __future__ import annotations

import re

__all__ = ["MAX_IDENTIFIER", "MAX_URL", "check_identifier", "xml_safe"]

#: The longest identifier stored (CPA ids, MessageIds, ConversationIds, roles,
#: services, actions).  ebMS 2.0 sets no limit; 256 is ebms-core's column width.
MAX_IDENTIFIER = 256
#: The longest URL stored in a URL mapping (RFC 9110 §4.1 recommends supporting
#: at least 8000 octets in a request line; an endpoint URL is far shorter).
MAX_URL = 2048

#: C0 and C1 controls, DEL, lone surrogates and the two noncharacters XML 1.0
#: excludes (§2.2): none of them can appear in an XML answer.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def xml_safe(value: str) -> bool:
    """True when ``value`` has no control character (XML, a header, a log line hold it)."""
    return _CONTROL.search(value) is None


def check_identifier(value: str, what: str, *, max_length: int = MAX_IDENTIFIER) -> str:
    """``value`` unchanged, or ValueError: empty, over ``max_length``, or a control character."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{what} is longer than {max_length} characters")
    if not xml_safe(value):
        raise ValueError(f"{what} contains a control character")
    return value
