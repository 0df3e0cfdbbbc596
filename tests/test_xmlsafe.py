"""Untrusted XML: what the safe parser refuses, and that it never reads files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xmlsafe import UnsafeXmlError, parse_xml


@pytest.mark.parametrize(
    "xml",
    [
        b"<!DOCTYPE x><x/>",
        b'<?xml version="1.0"?>\n<!-- c --><?pi x?> <!DOCTYPE x [<!ENTITY e "v">]><x>&e;</x>',
        b'\xef\xbb\xbf<!DOCTYPE x SYSTEM "http://example.invalid/x.dtd"><x/>',
        b'<!DOCTYPE x PUBLIC "-//X//EN" "x.dtd"><x/>',
    ],
)
def test_any_doctype_is_refused(xml: bytes) -> None:
    with pytest.raises(UnsafeXmlError, match="DOCTYPE is not allowed"):
        parse_xml(xml)


def test_external_subset_is_never_opened(tmp_path: Path) -> None:
    # A FIFO blocks whoever opens it: if the parser tried, this test would hang.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeXmlError):
        parse_xml(f'<!DOCTYPE x SYSTEM "{fifo}"><x/>'.encode())


def test_utf16_is_refused() -> None:
    with pytest.raises(UnsafeXmlError, match="UTF-8"):
        parse_xml("<x/>".encode("utf-16"))


def test_size_limit() -> None:
    parse_xml(b"<x>" + b"a" * 100 + b"</x>", max_bytes=107)
    with pytest.raises(UnsafeXmlError, match="limit is 106"):
        parse_xml(b"<x>" + b"a" * 100 + b"</x>", max_bytes=106)


def test_malformed_reports_the_line() -> None:
    with pytest.raises(UnsafeXmlError) as info:
        parse_xml(b"<a>\n<b>\n</a>")
    assert info.value.line in (2, 3)


def test_bom_and_prolog_are_fine() -> None:
    tree = parse_xml(b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<!-- hi -->\n<x>y</x>')
    assert tree.getroot().text == "y"


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(UnsafeXmlError):
        parse_xml(b"<a>" * 300_000 + b"</a>" * 300_000, max_bytes=10**7)
