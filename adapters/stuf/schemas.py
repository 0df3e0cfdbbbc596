"""XSD registry: the ggk0210 envelope, StUF Fo01 and the iStandaarden payloads.

Schemas are copies in ``wsdl/xsd/stuf`` and ``wsdl/xsd/istandaarden`` (each
folder's README.md names the public source).  Each is a
:class:`xmlsafe.schemas.Schema`: compiled once under the process-wide lock
(``dkgw serve`` compiles them all at its start) and shared.  Imports and
includes resolve from those folders only: a ``schemaLocation`` pointing
anywhere else (network or elsewhere on disk) fails the compilation instead
of being fetched.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from adapters.stuf.catalogue import payload_id
from wsdl import XSD_DIR
from xmlsafe import UnsafeXmlError, parse_xml
from xmlsafe.schemas import Schema

XSD_ROOT = XSD_DIR
ENVELOPE_XSD = XSD_ROOT / "stuf/ggk0210/ggk0210/ggkberichten/ggk0210_msg_ggkberichten.xsd"
STUF_XSD = XSD_ROOT / "stuf/ggk0210/0301/stuf0301.xsd"
ISTANDAARDEN = XSD_ROOT / "istandaarden"

#: Payload size bound for parsing; the envelope limit bounds it in practice.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


class SchemaUnavailable(LookupError):
    """No XSD for this standard, release and message in this gateway."""


@dataclass(frozen=True)
class Finding:
    """One schema or well-formedness error, located.

    ``path`` uses local names (``/Bericht/Client/Geboortedatum``); ``message``
    is libxml2's text with namespace URIs shortened and values masked, so it
    is safe to log and to return in a Fo01.
    """

    line: int | None
    column: int | None
    path: str | None
    message: str

    def __str__(self) -> str:
        where = [f"line {self.line}"] if self.line else []
        if self.path:
            where.append(self.path)
        return f"{', '.join(where)}: {self.message}" if where else self.message

    @property
    def location(self) -> str | None:
        """``line N, /path`` or None."""
        parts = ([f"line {self.line}"] if self.line else []) + ([self.path] if self.path else [])
        return ", ".join(parts) or None


class _LocalOnly(etree.Resolver):  # type: ignore[misc]
    """Resolve schemaLocations inside XSD_ROOT; refuse everything else."""

    def resolve(self, url: str, pubid: str, context: Any) -> Any:
        path = Path(url.removeprefix("file://")).resolve()
        if path.is_relative_to(XSD_ROOT) and path.is_file():
            return self.resolve_filename(str(path), context)
        # An empty string is not a schema: compilation fails, nothing is fetched.
        return self.resolve_string("", context)


def _load(path: Path) -> etree._ElementTree:
    parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
    parser.resolvers.add(_LocalOnly())
    return etree.parse(str(path), parser)


_cache: dict[Path, Schema] = {}
_cache_lock = threading.Lock()


def _schema(path: Path) -> Schema:
    with _cache_lock:
        entry = _cache.get(path)
        if entry is None:
            name = str(path.relative_to(XSD_ROOT))
            entry = _cache[path] = Schema(name, lambda: _load(path))
        return entry


def _validate(path: Path, tree: etree._ElementTree) -> list[Finding]:
    errors = _schema(path).validate(tree)
    return [] if errors is None else [_finding(e) for e in errors]


_CLARK = re.compile(r"\{[^}]*\}")
_PREFIX = re.compile(r"(?<=/)[A-Za-z_][\w.-]*:")
# Values from the document: "Element 'X': 'v' is not a valid value ..." and
# "[facet ...] The value 'v' ...".  They may be BSNs or names.
_VALUE = re.compile(r"(': |The value )'[^']*'")
# Identity constraints quote the key values: "key-sequence ['v', 'w']".
_KEY_SEQUENCE = re.compile(r"key-sequence \[[^\]]*\]")


def _finding(entry: Any) -> Finding:
    message = _VALUE.sub(r"\1'…'", _CLARK.sub("", str(entry.message)))
    message = _KEY_SEQUENCE.sub("key-sequence […]", message)
    path = _PREFIX.sub("", entry.path) if entry.path else None
    return Finding(entry.line or None, entry.column or None, path, message.strip())


def validate_envelope(tree: etree._ElementTree) -> list[Finding]:
    """Validate a parsed envelope against ggk0210_msg_ggkberichten.xsd [XSD-GGk]."""
    return _validate(ENVELOPE_XSD, tree)


def validate_fo01(tree: etree._ElementTree) -> list[Finding]:
    """Validate a parsed Fo01 against stuf0301.xsd [StUF]."""
    return _validate(STUF_XSD, tree)


def message_xsd(standard: str, release: str, functie: str) -> Path:
    """The XSD file for a message; raises :class:`SchemaUnavailable`."""
    name = f"{functie.upper()}.xsd"
    path = ISTANDAARDEN / standard / release / name
    # The names come from a parsed namespace; refuse anything path-like anyway.
    if not re.fullmatch(r"[a-z]+", standard) or not re.fullmatch(r"[0-9]+\.[0-9]+", release):
        raise SchemaUnavailable(f"no schema for {standard} {release} {functie}")
    if not path.is_file():
        raise SchemaUnavailable(f"no schema for {standard} {release} {functie}")
    return path


def validate_payload_tree(tree: etree._ElementTree, release: str) -> list[Finding]:
    """Validate a parsed payload; its root namespace picks the message XSD.

    A payload of another release than ``release``, or without an iStandaarden
    namespace, yields a single finding.  Raises :class:`SchemaUnavailable`
    when this gateway has no XSD for the message.
    """
    root = tree.getroot()
    pid = payload_id(etree.QName(root).namespace or "")
    if pid is None:
        return [
            Finding(
                root.sourceline,
                None,
                "/" + etree.QName(root).localname,
                "root namespace is not an iStandaarden message namespace",
            )
        ]
    if pid.release != release:
        return [
            Finding(
                root.sourceline,
                None,
                "/" + etree.QName(root).localname,
                f"payload is release {pid.release}, expected {release}",
            )
        ]
    return _validate(message_xsd(pid.standard.value, release, pid.functie), tree)


def validate_payload(data: bytes, release: str) -> list[Finding]:
    """Parse and validate an iWmo/iJw/iEb payload (see :func:`validate_payload_tree`).

    Not well-formed or unsafe XML gives one finding with the parser's line.
    """
    try:
        tree = parse_xml(data, max_bytes=MAX_PAYLOAD_BYTES, huge_text=True)
    except UnsafeXmlError as exc:
        return [Finding(exc.line, None, None, str(exc))]
    return validate_payload_tree(tree, release)


def available() -> list[tuple[str, str, str]]:
    """Every (standard, release, functie) with an XSD here, sorted."""
    return sorted(
        (p.parent.parent.name, p.parent.name, p.stem)
        for p in ISTANDAARDEN.glob("*/*/*.xsd")
        if p.stem != "basisschema"
    )


# Registered now, so ``dkgw serve`` compiles every schema of the relay at its
# start, in its main thread (xmlsafe/schemas.py); about 0.2 s for all.
for _path in (ENVELOPE_XSD, STUF_XSD, *(message_xsd(*key) for key in available())):
    _schema(_path)
