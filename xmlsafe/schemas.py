"""Every XML Schema the process compiles: one lock, compiled once, shared.

libxml2 builds its table of XSD built-in types lazily, on the first schema
compilation, and that step is not thread-safe: two compilations that overlap
in a fresh process (lxml releases the GIL while compiling) can leave the table
half built, and from then on every compilation in that process fails with
"the given type is not a built-in type" or "Document is not valid XML
Schema".  So:

- every compilation goes through :meth:`Schema.compile` here, under one
  process-wide lock, so no two ever overlap;
- ``dkgw serve`` compiles every registered schema in its main thread before
  a listener opens or a pool thread runs (:func:`compile_all`), so the types
  are built once and a failure stops the start with one line;
- a compiled schema is shared by all threads.  Validation with one compiled
  schema from several threads is safe in libxml2 (each call gets its own
  validation context), but lxml keeps one error log per ``XMLSchema`` object,
  cleared and filled by each call; :meth:`Schema.validate` therefore holds the
  schema's own lock across the validation and the copy of its errors.

A compilation that fails after the start is recorded: :func:`problems` lists
it for ``/ready``, and when a known-good probe schema no longer compiles
either, :func:`engine_broken` says so for ``/health`` -- such a process
cannot recover and must be restarted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from lxml import etree

log = logging.getLogger("dkgw.xmlschemas")

#: What a schema is compiled from: a function parsing its document (tree or root).
Loader = Callable[[], Any]

_compile_lock = threading.Lock()
_registered: list[Schema] = []
_registry_lock = threading.Lock()
_failures: dict[str, str] = {}
_broken: list[str] = []

# A schema that uses built-in types in its attributes (minOccurs, use, type),
# the part of libxml2 that fails once its type table is damaged.
_PROBE = b"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="probe"><xs:complexType>
    <xs:sequence><xs:element name="v" type="xs:dateTime" minOccurs="0" maxOccurs="2"/></xs:sequence>
    <xs:attribute name="n" type="xs:nonNegativeInteger" use="optional"/>
  </xs:complexType></xs:element>
</xs:schema>"""


class SchemaCompileError(Exception):
    """An XML Schema could not be compiled; the text names it and libxml2's reason.

    The text is for the operator: :func:`gateway.errors.describe` shows it as one line,
    and ``dkgw serve`` stops its start with it.
    """


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Schema:
    """One named XML Schema: compiled once under the process-wide lock, then shared.

    ``name`` is what an operator reads in an error (a file name, a WSDL);
    ``load`` parses the schema document and is called at most until one
    compilation succeeds.  With ``register`` the schema is compiled by
    :func:`compile_all` at the start of ``dkgw serve``.
    """

    def __init__(self, name: str, load: Loader, *, register: bool = True) -> None:
        self.name = name
        self._load = load
        self._compiled: etree.XMLSchema | None = None
        # lxml's XMLSchema has one error log: one validation at a time per schema.
        self._validate_lock = threading.Lock()
        if register:
            with _registry_lock:
                _registered.append(self)

    @property
    def compiled(self) -> bool:
        """Whether this schema has been compiled in this process."""
        return self._compiled is not None

    def compile(self, *, log_failure: bool = True) -> etree.XMLSchema:
        """The compiled schema, compiling it now if needed.

        Raises :class:`SchemaCompileError` (one line) when libxml2 refuses it;
        the failure is logged too unless ``log_failure`` is false (a caller
        that ends the process with the error's line instead).
        """
        schema = self._compiled
        if schema is not None:
            return schema
        with _compile_lock:
            if self._compiled is None:
                self._compiled = _compile_locked(self.name, self._load, log_failure)
            return self._compiled

    def validate(self, doc: etree._ElementTree | etree._Element) -> Any | None:
        """None when ``doc`` is valid, else lxml's error log for it (a private copy).

        Raises :class:`SchemaCompileError` when the schema cannot be compiled.
        """
        schema = self.compile()
        with self._validate_lock:
            if schema.validate(doc):
                return None
            return schema.error_log  # lxml returns a copy: safe after the lock


def _compile_locked(name: str, load: Loader, log_failure: bool) -> etree.XMLSchema:
    try:
        document = load()
        return etree.XMLSchema(document)
    except (etree.Error, OSError, ValueError) as exc:
        # etree.Error: libxml2 refused the schema or its document; OSError: a
        # file is missing; ValueError: xmlsafe refused the document.
        reason = _one_line(str(exc)) or type(exc).__name__
        _failures.setdefault(name, reason)
        if log_failure:
            log.error("event=xml-schema-failed schema=%s reason=%s", name, reason)
        if not _broken and not _probe_locked():
            _broken.append(
                f"XML Schema compilation no longer works in this process "
                f"(after {name}: {reason}); restart it"
            )
            if log_failure:
                log.critical("event=xml-schemas-broken schema=%s reason=%s", name, reason)
        raise SchemaCompileError(f"cannot compile the XML Schema {name}: {reason}") from None


def _probe_locked() -> bool:
    try:
        etree.XMLSchema(etree.fromstring(_PROBE))
    except etree.XMLSchemaParseError:
        return False
    return True


def initialise() -> None:
    """Have libxml2 build its XSD built-in types now, in the calling thread.

    Cheap (one tiny schema); every ``dkgw`` command calls it in its main
    thread before anything else, so no later compilation, locked or not,
    builds that table while another thread uses it.
    """
    with _compile_lock:
        if not _probe_locked():
            raise SchemaCompileError("cannot compile XML Schemas: libxml2 refuses a valid one")


def compile_all() -> list[str]:
    """Compile every registered schema now; returns their names.

    ``dkgw serve`` calls this in its main thread before any other thread
    exists; it raises :class:`SchemaCompileError` for the first that fails.
    """
    initialise()
    with _registry_lock:
        schemas = list(_registered)
    for schema in schemas:
        # The caller ends the start with the error's one line: no log line too.
        schema.compile(log_failure=False)
    return [schema.name for schema in schemas]


def problems() -> list[str]:
    """One line per schema that failed to compile in this process (for ``/ready``)."""
    failures = dict(_failures)  # a copy: a pool thread may add one meanwhile
    lines = [f"xml schema: cannot compile {name}: {reason}" for name, reason in failures.items()]
    return list(_broken) + lines


def engine_broken() -> str | None:
    """Why no schema can be compiled in this process any more, or None (for ``/health``)."""
    return _broken[0] if _broken else None
