"""Findings that are known and being fixed: exceptions the fuzz targets accept for now.

Each entry is one exception signature: the target, the exception type, the
innermost function of the gateway's own code (``gateway``, ``adapters``,
``cpa``) the traceback passes through, and a pattern of its message.  An
escape that matches is not reported; anything else still is.  Every entry
must be matched by an input in ``tests/fuzz/regressions/<target>/``
(``tests/test_fuzz.py`` checks that), so when a fix lands its entry fails
that check and is removed.  The list is meant to become empty.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

#: The packages whose frames locate an exception.
_OWN = ("gateway", "adapters", "cpa")


@dataclass(frozen=True)
class Known:
    """One accepted exception signature."""

    target: str
    exception: str
    """The exception type's name (``OverflowError``, ``C14NError``)."""
    where: str
    """``module:function`` of the innermost frame in the gateway's own code."""
    message: str
    """A regular expression searched in ``str(exception)``."""
    what: str
    """One line: the finding."""


KNOWN: tuple[Known, ...] = (
    Known(
        "envelope",
        "OverflowError",
        "cpa.xsdtypes:parse_datetime",
        r"date value out of range",
        "an xsd:dateTime at the edge of the range (0001-01-01T00:00:00+14:00) overflows",
    ),
    Known(
        "inbound",
        "OverflowError",
        "cpa.xsdtypes:parse_datetime",
        r"date value out of range",
        "the same timestamp escapes InboundProcessor.handle",
    ),
    Known(
        "inbound",
        "AssertionError",
        "gateway.msh.inbound:_status_of",
        r"",
        "a StatusRequest message without an eb:StatusRequest element hits an assert",
    ),
    Known(
        "xmldsig",
        "C14NError",
        "gateway.ebms.xmldsig:apply",
        r"C14N failed",
        "a relative namespace URI in the signed XML fails canonicalisation",
    ),
    Known(
        "inbound",
        "C14NError",
        "gateway.ebms.xmldsig:apply",
        r"C14N failed",
        "the same C14N failure escapes InboundProcessor.handle through open_inbound",
    ),
    Known(
        "xmldsig",
        "InvalidVersion",
        "gateway.ebms.xmldsig:keyinfo_certificates",
        r"is not a valid X509 version",
        "a KeyInfo certificate with an invalid version number",
    ),
    Known(
        "xmldsig",
        "UnsupportedAlgorithm",
        "gateway.ebms.xmldsig:<genexpr>",
        r"Unknown key type",
        "a KeyInfo certificate whose public key algorithm is unknown",
    ),
    Known(
        "xmldsig",
        "ValueError",
        "gateway.ebms.xmldsig:<genexpr>",
        r"Could not deserialize key data",
        "a KeyInfo certificate whose public key does not decode",
    ),
    Known(
        "stuf_bare",
        "ValueError",
        "adapters.stuf.bare:read_bare",
        r"Invalid input tag",
        "a comment or processing instruction in BerichtIdentificatie",
    ),
    Known(
        "rest",
        "RecursionError",
        "adapters.api.rest:json",
        r"maximum recursion depth",
        "a deeply nested JSON body",
    ),
)


def where(exc: BaseException) -> str:
    """``module:function`` of the innermost frame of the gateway's own code, or ``?``."""
    found = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = frame.filename.replace("\\", "/").split("/")
        for n in range(len(parts) - 1, -1, -1):
            if parts[n] in _OWN:
                module = ".".join([*parts[n:-1], parts[-1].removesuffix(".py")])
                found = f"{module}:{frame.name}"
                break
    return found


def signature(exc: BaseException) -> str:
    """How an exception is described in reports and matched here."""
    return f"{type(exc).__name__} at {where(exc)}: {str(exc)[:200]}"


def accepted(target: str, exc: BaseException) -> Known | None:
    """The entry that accepts ``exc`` escaping from ``target``, or None."""
    location = where(exc)
    for entry in KNOWN:
        if (
            entry.target == target
            and type(exc).__name__ == entry.exception
            and entry.where == location
            and re.search(entry.message, str(exc))
        ):
            return entry
    return None


@dataclass(frozen=True)
class KnownLog:
    """One accepted problem record in a gateway's log, for the wire fuzzer."""

    pattern: str
    """A regular expression searched in the log record (a JSON line)."""
    what: str
    """One line: the finding."""


#: The same findings as :data:`KNOWN`, as the HTTP edge logs them ("inbound request
#: failed" with the traceback) when they escape InboundProcessor.handle.
KNOWN_WIRE: tuple[KnownLog, ...] = (
    KnownLog(
        r"inbound request failed: .*parse_datetime.*OverflowError: date value out of range",
        "envelope timestamp at the edge of the xsd:dateTime range (OverflowError)",
    ),
    KnownLog(
        r"inbound request failed: .*xmldsig\.py.*C14NError: C14N failed",
        "relative namespace URI in signed XML (C14NError)",
    ),
    KnownLog(
        r"inbound request failed: .*keyinfo_certificates.*InvalidVersion: ",
        "KeyInfo certificate with an invalid version (InvalidVersion)",
    ),
    KnownLog(
        r"inbound request failed: .*_check_key_info.*UnsupportedAlgorithm: Unknown key type",
        "KeyInfo certificate with an unknown key type (UnsupportedAlgorithm)",
    ),
    KnownLog(
        r"inbound request failed: .*_check_key_info.*ValueError: Could not deserialize key data",
        "KeyInfo certificate whose public key does not decode (ValueError)",
    ),
    KnownLog(
        r"inbound request failed: .*_status_of.*AssertionError",
        "StatusRequest message without eb:StatusRequest (AssertionError)",
    ),
)


def accepted_log(record: str) -> KnownLog | None:
    """The entry that accepts this problem log record, or None."""
    for entry in KNOWN_WIRE:
        if re.search(entry.pattern, record, re.S):
            return entry
    return None
