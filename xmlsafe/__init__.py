"""Parsing untrusted XML: no DTDs, no entities, no network, bounded size.

Every XML document the gateway reads comes from outside (a partner MSH, a back
office, an operator's file).  Digikoppeling never needs a DTD, so any document
that carries one is refused outright instead of being parsed "safely": that
closes billion-laughs, external entities (XXE) and DTD-based attribute defaults
in one rule (docs/msh.md, Hostile input).

This package is the bottom layer that :mod:`cpa`, :mod:`gateway` and :mod:`adapters`
all read XML through, with the schema registry in :mod:`xmlsafe.schemas`; it imports
lxml and nothing of the gateway (docs/decisions.md, "Where the XML foundations live").
"""

from __future__ import annotations

import re

from lxml import etree

#: Default ceiling for one XML document (bytes).  Callers with a tighter or
#: looser need pass their own ``max_bytes``.
DEFAULT_MAX_BYTES = 10 * 1024 * 1024


class UnsafeXmlError(ValueError):
    """The document was refused before or while parsing.

    ``line`` is the 1-based line of the problem when the parser knows it.
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _parser(huge_text: bool = False) -> etree.XMLParser:
    # A fresh parser per call: lxml parsers keep error logs and are not
    # thread-safe, and the store calls this from a thread pool later on.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=huge_text,
        remove_blank_text=False,
        # Not collect_ids=False: with libxml2 2.14 that option makes the parser
        # load a DOCTYPE's external subset from disk despite load_dtd=False.
    )


class _RefuseExternal(etree.Resolver):  # type: ignore[misc]
    """Defence in depth: no external resource is ever fetched while parsing."""

    def resolve(self, url: str, pubid: str, context: object) -> None:
        raise UnsafeXmlError(f"external resource {url!r} refused")


# The prolog may hold an XML declaration, comments, processing instructions
# and white space; a DOCTYPE is refused before the parser ever sees it.
_PROLOG_ITEM = re.compile(rb"\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)
_DECLARED_ENCODING = re.compile(rb"<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([^\"']*)[\"']")
#: Encodings whose documents read as UTF-8 byte for byte (ASCII is a subset).
_UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def _check_prolog(data: bytes) -> None:
    if data.startswith((b"\xfe\xff", b"\xff\xfe")) or b"\x00" in data[:4]:
        raise UnsafeXmlError("only UTF-8 documents are accepted")
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    # Another declared encoding would make the byte checks here meaningless:
    # in UTF-7, say, "<!DOCTYPE" is spelt "+ADw-!DOCTYPE" and only the parser
    # would see it.  Digikoppeling messages are UTF-8 anyway.
    declared = _DECLARED_ENCODING.match(data, pos)
    if declared and declared.group(1).decode("latin-1").lower() not in _UTF8_NAMES:
        raise UnsafeXmlError("only UTF-8 documents are accepted")
    while m := _PROLOG_ITEM.match(data, pos):
        pos = m.end()
    if data.startswith(b"<!DOCTYPE", pos):
        raise UnsafeXmlError("a DOCTYPE is not allowed")


def parse_xml(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, huge_text: bool = False
) -> etree._ElementTree:
    """Parse ``data`` into an element tree, refusing anything unsafe.

    Raises :class:`UnsafeXmlError` for oversized input, a DOCTYPE of any kind,
    entity references, or malformed XML.  ``huge_text`` lifts libxml2's 10 MB
    limit on one text node (its "huge tree" option), for documents that carry
    base64 payloads inline (the SOAP API); that limit guards against entity
    expansion, which is refused here anyway, and ``max_bytes`` still bounds
    the whole document.  Nesting deeper than :data:`MAX_DEPTH` is refused
    either way.
    """
    if len(data) > max_bytes:
        raise UnsafeXmlError(f"document is {len(data)} bytes, the limit is {max_bytes}")
    _check_prolog(data)
    parser = _parser(huge_text)
    parser.resolvers.add(_RefuseExternal())
    try:
        tree = etree.ElementTree(etree.fromstring(data, parser))
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        # libxml2's messages span lines; a log line must not.
        raise UnsafeXmlError(f"not well-formed XML: {' '.join(exc.msg.split())}", line) from None
    info = tree.docinfo
    if info.internalDTD is not None or info.externalDTD is not None or info.doctype:
        raise UnsafeXmlError("a DOCTYPE is not allowed")
    # With resolve_entities=False an entity reference survives as an _Entity
    # node; none are legal once DTDs are refused, but check rather than trust.
    for node in tree.iter(etree.Entity):
        raise UnsafeXmlError(f"entity reference &{node.name}; is not allowed", node.sourceline)
    if huge_text:
        # Without the huge option libxml2 stops at depth 256; keep a bound.
        _check_depth(tree.getroot())
    return tree


#: The deepest nesting accepted with ``huge_text`` (libxml2's own default is 256).
MAX_DEPTH = 256


def _check_depth(root: etree._Element) -> None:
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UnsafeXmlError(f"elements nested deeper than {MAX_DEPTH}", node.sourceline)
        stack.extend((child, depth + 1) for child in node)
