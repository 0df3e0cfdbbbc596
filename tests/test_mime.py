"""SOAP with Attachments: the ``multipart/related`` builder and the streaming push parser."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ebms.mime import (
    MimeError,
    MimeLimits,
    OutgoingPart,
    SwaMessage,
    SwaParser,
    build_swa,
    parse_content_type,
    parse_single,
)

CT = 'multipart/related; type="text/xml"; boundary="b0undary"; start="<root@x>"'
CT_NO_START = 'multipart/related; type="text/xml"; boundary="b0undary"'
ROOT = b"--b0undary\r\nContent-Type: text/xml\r\nContent-ID: <root@x>\r\n\r\n<Envelope/>"


def feed_all(parser: SwaParser, body: bytes, sizes: Sequence[int]) -> None:
    """Feed ``body`` in chunks of the given sizes, cycling through them."""
    pos, k = 0, 0
    while pos < len(body):
        size = sizes[k % len(sizes)]
        parser.feed(body[pos : pos + size])
        pos += size
        k += 1


def parse(
    body: bytes,
    content_type: str = CT,
    sizes: Sequence[int] | None = None,
    limits: MimeLimits | None = None,
) -> SwaMessage:
    parser = SwaParser(content_type, limits)
    feed_all(parser, body, sizes or [max(len(body), 1)])
    return parser.close()


def package(*parts: bytes, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    """A package with boundary ``b0undary`` whose parts are given as header+body bytes."""
    body = preamble + b"".join(b"--b0undary\r\n" + p + b"\r\n" for p in parts)
    return body + b"--b0undary--" + epilogue


def attachment(cid: str, content: bytes, *headers: str) -> bytes:
    lines = [f"Content-ID: <{cid}>", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def contents(msg: SwaMessage) -> dict[str, bytes]:
    return {cid: part.read() for cid, part in msg.attachments.items()}


def join(chunks: Iterable[bytes]) -> bytes:
    return b"".join(chunks)


# -- build and parse round trip ----------------------------------------------------

_BCHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=? "
boundaries = st.one_of(
    st.just("MIMEBoundary_0123456789abcdef"),
    st.text(st.sampled_from(_BCHARS), min_size=1, max_size=70).filter(
        lambda b: not b.endswith(" ")
    ),
)
_ID = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"),
    min_size=1,
    max_size=20,
)
_DOMAIN = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-"),
    min_size=1,
    max_size=20,
)
content_ids = st.builds(lambda a, b: f"{a}@{b}", _ID, _DOMAIN)
content_types = st.sampled_from(
    [
        "application/xml",
        "application/octet-stream",
        "text/plain; charset=utf-8",
        'application/pdf; name="report.pdf"',
        "image/png",
        "text/xml; charset=ISO-8859-1",
    ]
)
filenames = st.none() | st.text(max_size=30)


@st.composite
def tricky_bytes(
    draw: st.DrawFn, boundary: str, max_size: int = 20 * 1024, *, delimiters: bool = False
) -> bytes:
    """Binary content full of CR, LF, dashes and near-miss boundary lines.

    Every real delimiter (CRLF, "--", boundary; or the dash-boundary at the very
    start) that the pieces happen to form is broken; with ``delimiters`` one is
    put back in, which the builder must refuse.
    """
    dash = b"--" + boundary.encode()
    delimiter = b"\r\n" + dash
    near_misses = [
        b"\r\n",
        b"\r",
        b"\n",
        b"--",
        b"\r\n--",
        b"\r\n\r\n",
        b"x" + dash,  # the boundary, but not at the start of a line
        b"\n" + dash,  # a bare LF before it
        b"\r" + dash,  # a bare CR before it
        b"\r\n-" + boundary.encode(),  # one dash short
        b"\r\n" + dash[:-1],  # a proper prefix of the delimiter
        b"\r\n--" + boundary.swapcase().encode(),  # boundaries are case-sensitive
        b"\r\n--other-boundary--\r\n",
        dash + b"--",
        delimiter,
        delimiter + b"--\r\n",
    ]
    piece = st.one_of(
        st.binary(max_size=64),
        st.sampled_from(near_misses),
        # Cheap bulk: a short block repeated.
        st.builds(
            lambda b, n: b * n,
            st.binary(min_size=1, max_size=256),
            st.sampled_from([1, 4, 16, 64, 160]),
        ),
    )
    content = b"".join(draw(st.lists(piece, max_size=12)))
    size = draw(st.sampled_from([None, None, 1024, 8192, max_size]))
    if size and content:  # bulk up by repeating the tricky pieces
        content = content * (size // len(content) + 1)
    content = content[: size or max_size]
    # "\r\n-x-boundary" cannot combine with its neighbours into a delimiter.
    content = (b"\r\n" + content).replace(delimiter, b"\r\n-x-" + boundary.encode())[2:]
    if delimiters:  # one real delimiter, somewhere
        at = draw(st.integers(0, len(content)))
        inserted = draw(st.sampled_from([dash, delimiter])) if at == 0 else delimiter
        content = content[:at] + inserted + content[at:]
    return content


def _refused(boundary: str, content: bytes) -> bool:
    """Whether the builder must refuse ``content``: it could end the part early."""
    return b"\r\n--" + boundary.encode() in b"\r\n" + content


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_build_then_parse_round_trip(data: st.DataObject) -> None:
    boundary = data.draw(boundaries, label="boundary")
    # Now and then a real delimiter in a part: the builder must refuse those.
    rarely = st.sampled_from([True] + [False] * 19)
    envelope = data.draw(tricky_bytes(boundary, 4096, delimiters=data.draw(rarely)))
    cids = data.draw(st.lists(content_ids, min_size=1, max_size=6, unique=True), label="cids")
    start_cid, cids = cids[0], cids[1:]
    parts = [
        OutgoingPart(
            cid,
            data.draw(content_types),
            data.draw(tricky_bytes(boundary, delimiters=data.draw(rarely))),
            data.draw(filenames),
        )
        for cid in cids
    ]
    sizes = data.draw(
        st.lists(st.one_of(st.integers(1, 16), st.integers(1, 8192)), min_size=1, max_size=6),
        label="chunk sizes",
    )
    if _refused(boundary, envelope) or any(
        isinstance(p.content, bytes) and _refused(boundary, p.content) for p in parts
    ):
        with pytest.raises(ValueError, match="boundary"):
            build_swa(envelope, parts, boundary=boundary, start_cid=start_cid)
        return

    content_type, chunks, length = build_swa(
        envelope, parts, boundary=boundary, start_cid=start_cid
    )
    body = join(chunks)
    assert len(body) == length

    media, params = parse_content_type(content_type)
    assert media == "multipart/related"
    assert params == {"type": "text/xml", "boundary": boundary, "start": f"<{start_cid}>"}

    parser = SwaParser(content_type)
    parser.feed(b"")
    feed_all(parser, body, sizes)
    msg = parser.close()
    try:
        assert msg.root.read() == envelope
        assert msg.root.size == len(envelope)
        assert msg.root.sha256 == hashlib.sha256(envelope).hexdigest()
        assert msg.root.content_id == start_cid
        assert msg.root.content_type == "text/xml; charset=UTF-8"
        assert list(msg.attachments) == cids
        for part, got in zip(parts, msg.attachments.values(), strict=True):
            assert isinstance(part.content, bytes)
            assert got.read() == part.content
            assert got.size == len(part.content)
            assert got.sha256 == hashlib.sha256(part.content).hexdigest()
            assert got.content_id == part.content_id
            assert got.content_type == part.content_type
            assert got.header("content-transfer-encoding") == "binary"
            disposition = got.header("Content-Disposition")
            if part.filename:
                assert disposition is not None and disposition.startswith("attachment; filename=")
            else:
                assert disposition is None
    finally:
        msg.close()

    # A resend rebuilds the same bytes from the same boundary and start.
    again_type, again_chunks, again_length = build_swa(
        envelope, parts, boundary=boundary, start_cid=start_cid
    )
    assert (again_type, join(again_chunks), again_length) == (content_type, body, length)


def test_build_picks_a_fresh_boundary_and_start() -> None:
    part = OutgoingPart("p@x", "application/xml", b"<a/>")
    first_type, first_chunks, _ = build_swa(b"<e/>", [part])
    second_type, _, _ = build_swa(b"<e/>", [part])
    assert first_type != second_type
    msg = parse(join(first_chunks), first_type)
    assert msg.root.read() == b"<e/>"
    assert contents(msg) == {"p@x": b"<a/>"}


def test_build_without_payloads() -> None:
    content_type, chunks, length = build_swa(b"<e/>", [], boundary="bb", start_cid="s@x")
    body = join(chunks)
    assert len(body) == length
    assert body == (
        b"--bb\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-ID: <s@x>\r\n\r\n"
        b"<e/>\r\n--bb--\r\n"
    )
    msg = parse(body, content_type)
    assert msg.root.read() == b"<e/>" and msg.attachments == {}


@settings(max_examples=25, deadline=None)
@given(content=st.binary(max_size=3000), sizes=st.lists(st.integers(1, 700), min_size=1))
def test_parse_is_independent_of_chunking(content: bytes, sizes: list[int]) -> None:
    body = package(ROOT[len(b"--b0undary\r\n") :], attachment("a@x", content))
    whole = parse(body)
    chunked = parse(body, sizes=sizes)
    assert contents(whole) == contents(chunked) == {"a@x": content}


# -- parse_content_type ------------------------------------------------------------


def test_content_type_with_quoted_and_plain_parameters() -> None:
    assert parse_content_type(
        'multipart/related; type="text/xml"; boundary="MIME_b"; start="<a@b>"'
    ) == ("multipart/related", {"type": "text/xml", "boundary": "MIME_b", "start": "<a@b>"})
    assert parse_content_type("text/xml; charset=UTF-8") == ("text/xml", {"charset": "UTF-8"})
    assert parse_content_type("text/xml") == ("text/xml", {})
    assert parse_content_type("text/xml;") == ("text/xml", {})
    assert parse_content_type('  text/xml ;  charset = utf-8 ; q="" ') == (
        "text/xml",
        {"charset": "utf-8", "q": ""},
    )
    assert parse_content_type('a/b; p="x;y=z"; r=1') == ("a/b", {"p": "x;y=z", "r": "1"})


def test_content_type_backslash_escapes() -> None:
    assert parse_content_type(r'a/b; p="x\"y\\z\q"') == ("a/b", {"p": 'x"y\\zq'})


def test_content_type_names_are_case_insensitive_values_are_not() -> None:
    media, params = parse_content_type("Multipart/RELATED; BOUNDARY=AbC; Start=<X@Y>")
    assert media == "multipart/related"
    assert params == {"boundary": "AbC", "start": "<X@Y>"}


@pytest.mark.parametrize(
    "value",
    ["a/b; p=1; p=2", "a/b; p=1; P=2", 'a/b; Charset="x"; charset=y'],
)
def test_content_type_duplicate_parameter_refused(value: str) -> None:
    with pytest.raises(MimeError, match="given twice"):
        parse_content_type(value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "malformed media type"),
        ("text", "malformed media type"),
        ("text/", "malformed media type"),
        ("/xml", "malformed media type"),
        ("te xt/xml", "malformed media type"),
        ("text/xml/x", "malformed media type"),
        ("text/x@ml", "malformed media type"),
        ("text\n/xml", "malformed media type"),
        ("tëxt/xml", "malformed media type"),
        ("a/b; =x", "parameter name"),
        ("a/b; p q=1", "parameter name"),
        ("a/b; p", "without a value"),
        ('a/b; p="x"junk', "without a value"),
        ('a/b; p="unterminated', "unterminated"),
        ('a/b; p="ends in backslash\\', "unterminated"),
    ],
)
def test_content_type_malformed_refused(value: str, fragment: str) -> None:
    with pytest.raises(MimeError, match=fragment):
        parse_content_type(value)


_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_tokens = st.text(st.sampled_from(_TOKEN_CHARS), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.lists(
            st.one_of(_tokens, st.sampled_from(["/", ";", "=", '"', "\\", " ", "\t", "\n"])),
            max_size=20,
        ).map("".join),
    )
)
def test_content_type_parser_raises_only_mime_error(value: str) -> None:
    try:
        media, params = parse_content_type(value)
    except MimeError:
        return
    kind, _, sub = media.partition("/")
    for token in (kind, sub, *params):
        assert token and all(c in _TOKEN_CHARS for c in token), (value, token)


@settings(max_examples=100, deadline=None)
@given(
    media=st.builds(lambda a, b: f"{a}/{b}", _tokens, _tokens),
    params=st.dictionaries(_tokens, st.text(st.characters(min_codepoint=32), max_size=20)),
)
def test_content_type_quoted_values_round_trip(media: str, params: dict[str, str]) -> None:
    quoted = "".join(
        f'; {name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for name, value in params.items()
    )
    assert parse_content_type(media + quoted) == (media, params)


# -- the parser on hostile input ---------------------------------------------------


def _outcome(body: bytes, sizes: Sequence[int]) -> object:
    """The parse result as plain data, or "error"; only MimeError may escape."""
    parser = SwaParser(CT_NO_START, MimeLimits(max_parts=8, max_header_bytes=512))
    try:
        feed_all(parser, body, sizes)
        msg = parser.close()
    except MimeError:
        return "error"
    try:
        return (msg.root.headers, msg.root.read(), msg.root.sha256, contents(msg))
    finally:
        msg.close()


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), sizes=st.lists(st.integers(1, 64), min_size=1))
def test_parser_on_arbitrary_bytes_raises_only_mime_error(body: bytes, sizes: list[int]) -> None:
    _outcome(body, sizes)
    _outcome(b"--b0undary\r\n" + body, sizes)


_FRAGMENTS = [
    b"--b0undary",
    b"--b0undary--",
    b"\r\n",
    b"\r\n\r\n",
    b"--",
    b" ",
    b"\t",
    b":",
    b"Content-ID: <a@x>",
    b"Content-ID: <b@x>",
    b"Content-Type: text/xml",
    b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable",
    b"Content-Transfer-Encoding: x-gzip",
    b"QUJD",
    b"QQ==",
    b"=",
    b"=\r\n",
    b"=4",
    b"=41",
]


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=8)), max_size=40),
    sizes=st.lists(st.integers(1, 32), min_size=1, max_size=5),
)
def test_parser_outcome_does_not_depend_on_chunking(pieces: list[bytes], sizes: list[int]) -> None:
    """Near-valid packages: only MimeError escapes, and chunking never changes the result."""
    body = b"".join(pieces)
    assert _outcome(body, sizes) == _outcome(body, [max(len(body), 1)])


# -- refused packages --------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/related",
        'multipart/related; type="text/xml"',
        'multipart/related; boundary=""',
        'multipart/related; boundary="ends with space "',
        'multipart/related; boundary="has@at"',
        'multipart/related; boundary="line\nbreak"',
        'multipart/related; boundary="trailing newline\n"',
        "multipart/related; boundary=" + "x" * 71,
    ],
)
def test_missing_or_invalid_boundary(content_type: str) -> None:
    with pytest.raises(MimeError, match="boundary"):
        SwaParser(content_type)


def test_boundary_of_70_characters_is_fine() -> None:
    boundary = "x" * 70
    msg = parse(
        f"--{boundary}\r\n\r\n<e/>\r\n--{boundary}--".encode(),
        f"multipart/related; boundary={boundary}",
    )
    assert msg.root.read() == b"<e/>"


@pytest.mark.parametrize(
    "content_type",
    ["multipart/mixed; boundary=b0undary", "text/xml; boundary=b0undary", "application/soap+xml"],
)
def test_not_multipart_related(content_type: str) -> None:
    with pytest.raises(MimeError, match="expected multipart/related"):
        SwaParser(content_type)


def test_malformed_content_type() -> None:
    with pytest.raises(MimeError, match="malformed media type"):
        SwaParser("garbage")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"preamble only",
        b"--b0undary",
        b"--b0undary\r\n",
        b"--b0undary\r\nContent-ID: <root@x>\r\n",
        ROOT,
        ROOT + b"\r\n--b0undary",
        ROOT + b"\r\n--b0undary-",
        ROOT + b"\r\n--b0undary\r\n" + attachment("a@x", b"payload"),
    ],
)
def test_truncated_body(body: bytes) -> None:
    parser = SwaParser(CT)
    feed_all(parser, body, [3])
    with pytest.raises(MimeError, match="truncated"):
        parser.close()


@pytest.mark.parametrize("junk", [b"junk", b" \tx", b"-", b"\x00"])
def test_garbage_after_delimiter(junk: bytes) -> None:
    parser = SwaParser(CT)
    with pytest.raises(MimeError, match="garbage after a MIME boundary"):
        parser.feed(ROOT + b"\r\n--b0undary" + junk + b"\r\n")


def test_endless_line_after_delimiter_refused_while_feeding() -> None:
    parser = SwaParser(CT)
    parser.feed(ROOT + b"\r\n--b0undary")
    parser.feed(b" " * 1000)  # transport padding may be long, within reason
    with pytest.raises(MimeError, match="garbage after a MIME boundary"):
        parser.feed(b" " * 1000)


@pytest.mark.parametrize("body", [b"--b0undary--", b"preamble\r\n--b0undary--\r\n"])
def test_no_parts(body: bytes) -> None:
    parser = SwaParser(CT)
    with pytest.raises(MimeError, match="no parts"):
        parser.feed(body)


def test_payload_without_content_id() -> None:
    body = package(ROOT[12:], b"Content-Type: application/xml\r\n\r\n<a/>")
    with pytest.raises(MimeError, match="no Content-ID"):
        parse(body)


def test_duplicate_content_id() -> None:
    body = package(ROOT[12:], attachment("a@x", b"1"), attachment("a@x", b"2"))
    with pytest.raises(MimeError, match="share one Content-ID"):
        parse(body)


def test_payload_with_the_root_content_id() -> None:
    body = package(ROOT[12:], attachment("root@x", b"not the envelope"))
    for content_type in (CT, CT_NO_START):
        with pytest.raises(MimeError, match="share one Content-ID"):
            parse(body, content_type)


def test_content_ids_compare_without_brackets_and_space() -> None:
    body = package(ROOT[12:], attachment("a@x", b"1"), b"Content-ID:  a@x \r\n\r\n2")
    with pytest.raises(MimeError, match="share one Content-ID"):
        parse(body)


def test_start_naming_no_part() -> None:
    body = package(ROOT[12:], attachment("a@x", b"1"))
    with pytest.raises(MimeError, match="start parameter"):
        parse(body, CT.replace("<root@x>", "<other@x>"))


def test_too_many_parts() -> None:
    limits = MimeLimits(max_parts=3)
    three = package(ROOT[12:], attachment("a@x", b"1"), attachment("b@x", b"2"))
    assert len(parse(three, limits=limits).attachments) == 2
    four = package(ROOT[12:], *(attachment(f"{c}@x", b"x") for c in "abc"))
    parser = SwaParser(CT, limits)
    with pytest.raises(MimeError, match="more than 3 MIME parts"):
        parser.feed(four)


def test_ten_thousand_tiny_parts_refused_quickly_while_feeding() -> None:
    tiny = b"".join(b"--b0undary\r\nContent-ID: <%d@x>\r\n\r\nx\r\n" % i for i in range(10_000))
    body = ROOT + b"\r\n" + tiny + b"--b0undary--"
    parser = SwaParser(CT)
    began = time.perf_counter()
    with pytest.raises(MimeError, match="more than 64 MIME parts"):
        feed_all(parser, body, [4096])
    assert time.perf_counter() - began < 2
    with pytest.raises(MimeError, match="already failed"):
        parser.close()


@pytest.mark.parametrize("sizes", [[100_000], [7]])
def test_header_block_over_the_limit(sizes: list[int]) -> None:
    limits = MimeLimits(max_header_bytes=100)
    ok = package(ROOT[12:], attachment("a@x", b"1", "X-Pad: " + "p" * 60))
    assert contents(parse(ok, limits=limits, sizes=sizes)) == {"a@x": b"1"}
    big = package(ROOT[12:], attachment("a@x", b"1", "X-Pad: " + "p" * 100))
    parser = SwaParser(CT, limits)
    with pytest.raises(MimeError, match="part headers over 100 bytes"):
        feed_all(parser, big, sizes)


def test_unterminated_header_block_refused_while_feeding() -> None:
    parser = SwaParser(CT, MimeLimits(max_header_bytes=100))
    parser.feed(b"--b0undary\r\nX-Long: ")
    with pytest.raises(MimeError, match="part headers over 100 bytes"):
        for _ in range(20):
            parser.feed(b"y" * 10)


def test_total_over_the_limit_refused_as_soon_as_exceeded() -> None:
    body = package(ROOT[12:], attachment("a@x", b"z" * 600))
    limits = MimeLimits(max_total_bytes=len(body))
    assert contents(parse(body, limits=limits)) == {"a@x": b"z" * 600}

    parser = SwaParser(CT, MimeLimits(max_total_bytes=500))
    parser.feed(body[:300])
    with pytest.raises(MimeError, match="over 500 bytes"):
        parser.feed(body[300:600])  # not yet at the closing delimiter
    with pytest.raises(MimeError, match="already failed"):
        parser.feed(b"")


def test_preamble_without_boundary_over_the_limit() -> None:
    limits = MimeLimits(max_preamble_bytes=100)
    assert parse(b"p" * 100 + b"\r\n" + package(ROOT[12:]), limits=limits).root
    parser = SwaParser(CT, limits)
    parser.feed(b"p" * 100)
    with pytest.raises(MimeError, match="no MIME boundary"):
        parser.feed(b"p")


@pytest.mark.parametrize("encoding", ["x-uuencode", "gzip", "base-64", "7-bit"])
def test_unsupported_transfer_encoding(encoding: str) -> None:
    body = package(ROOT[12:], attachment("a@x", b"x", f"Content-Transfer-Encoding: {encoding}"))
    parser = SwaParser(CT)
    with pytest.raises(MimeError, match="unsupported Content-Transfer-Encoding"):
        parser.feed(body)


@pytest.mark.parametrize(
    "encoded",
    [b"!!!!", b"QUJ", b"QUJDR", b"Q===", b"QQ==QUJD", b"QQ==\r\nQUJD", b"QQ=A", b"QUJD="],
)
@pytest.mark.parametrize("sizes", [[100_000], [1], [4], [5]])
def test_invalid_base64(encoded: bytes, sizes: list[int]) -> None:
    body = package(ROOT[12:], attachment("a@x", encoded, "Content-Transfer-Encoding: base64"))
    with pytest.raises(MimeError, match="base64"):
        parse(body, sizes=sizes)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (b"No colon here", "malformed part header"),
        (b"Bad Name: x", "malformed part header"),
        (b": no name", "malformed part header"),
        (b" folded: first", "continuation line"),
    ],
)
def test_malformed_part_headers(header: bytes, fragment: str) -> None:
    with pytest.raises(MimeError, match=fragment):
        SwaParser(CT).feed(b"--b0undary\r\n" + header + b"\r\n\r\nbody")


def test_parser_is_spent_after_an_error_or_close() -> None:
    parser = SwaParser(CT)
    with pytest.raises(MimeError):
        parser.feed(b"--b0undary\r\nNo colon\r\n\r\n")
    for call in (lambda: parser.feed(b"x"), parser.close):
        with pytest.raises(MimeError, match="already failed"):
            call()

    closed = SwaParser(CT)
    closed.feed(package(ROOT[12:]))
    closed.close()
    with pytest.raises(MimeError):
        closed.close()


# -- accepted packages -------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[1_000_000], [1], [3], [77]])
def test_base64_part_is_decoded(sizes: list[int]) -> None:
    payload = bytes(range(256)) * 40
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")  # 76-column lines
    body = package(
        ROOT[12:],
        attachment("a@x", encoded, "Content-Transfer-Encoding: BASE64"),
        attachment("b@x", b"  QUJD\tRA==  ", "Content-Transfer-Encoding: base64"),
        attachment("c@x", b"", "Content-Transfer-Encoding: base64"),
    )
    msg = parse(body, sizes=sizes)
    part = msg.attachments["a@x"]
    assert part.read() == payload
    assert part.size == len(payload)
    assert part.sha256 == hashlib.sha256(payload).hexdigest()
    assert msg.attachments["b@x"].read() == b"ABCD"
    assert msg.attachments["c@x"].read() == b""


@pytest.mark.parametrize("sizes", [[1_000_000], [1], [2], [5]])
def test_quoted_printable_part_is_decoded(sizes: list[int]) -> None:
    encoded = b"caf=C3=A9 au lait, soft =\r\nbreak\r\n=3D sign\r\nend=2E"
    decoded = b"caf\xc3\xa9 au lait, soft break\r\n= sign\r\nend."
    body = package(
        ROOT[12:], attachment("a@x", encoded, "Content-Transfer-Encoding: Quoted-Printable")
    )
    part = parse(body, sizes=sizes).attachments["a@x"]
    assert part.read() == decoded
    assert part.size == len(decoded)
    assert part.sha256 == hashlib.sha256(decoded).hexdigest()


@pytest.mark.parametrize("encoding", ["binary", "8bit", "7bit", "BINARY", " 8Bit "])
def test_identity_transfer_encodings(encoding: str) -> None:
    content = b"\x00\xff\r\n--b0undar\r\n"
    body = package(ROOT[12:], attachment("a@x", content, f"Content-Transfer-Encoding:{encoding}"))
    assert contents(parse(body)) == {"a@x": content}


def test_transport_padding_after_delimiters() -> None:
    body = (
        b"--b0undary \t \r\n"
        + ROOT[12:]
        + b"\r\n--b0undary\t\r\n"
        + attachment("a@x", b"1")
        + b"\r\n--b0undary--  \t\r\n"
    )
    for sizes in ([1000], [1]):
        msg = parse(body, sizes=sizes)
        assert msg.root.read() == b"<Envelope/>"
        assert contents(msg) == {"a@x": b"1"}


def test_preamble_and_epilogue_are_ignored() -> None:
    body = package(
        ROOT[12:],
        attachment("a@x", b"1"),
        preamble=b"This is a MIME message.\r\n--not-the-boundary\r\n\r\n",
        epilogue=b"\r\nepilogue --b0undary\r\n--b0undary\r\nContent-ID: <z@x>\r\n\r\nz\r\n",
    )
    for sizes in ([10_000], [1], [9]):
        msg = parse(body, sizes=sizes)
        assert msg.root.read() == b"<Envelope/>"
        assert contents(msg) == {"a@x": b"1"}


def test_body_may_start_with_a_line_break() -> None:
    msg = parse(b"\r\n" + package(ROOT[12:]))
    assert msg.root.read() == b"<Envelope/>"


def test_missing_start_takes_the_first_part() -> None:
    body = package(b"Content-Type: text/xml\r\n\r\n<e/>", attachment("a@x", b"1"))
    msg = parse(body, CT_NO_START)
    assert msg.root.read() == b"<e/>"
    assert msg.root.content_id is None
    assert contents(msg) == {"a@x": b"1"}


def test_start_names_the_second_part() -> None:
    body = package(attachment("a@x", b"first"), attachment("root@x", b"<e/>"))
    msg = parse(body)
    assert msg.root.read() == b"<e/>"
    assert contents(msg) == {"a@x": b"first"}


@pytest.mark.parametrize(
    ("start", "content_id"),
    [
        ("cid:soap%40host", "soap@host"),
        ("cid:s%20o%3Cap@host", "s o<ap@host"),
        ("<soap%40host>", "soap%40host"),
        (" <soap@host> ", "soap@host"),
        ("soap@host", "soap@host"),
    ],
)
def test_start_forms(start: str, content_id: str) -> None:
    body = package(attachment("a@x", b"first"), f"Content-ID: <{content_id}>\r\n\r\n<e/>".encode())
    msg = parse(body, f'multipart/related; boundary=b0undary; start="{start}"')
    assert msg.root.read() == b"<e/>"
    assert msg.root.content_id == content_id


def test_part_without_headers() -> None:
    msg = parse(package(b"\r\n<e/>", attachment("a@x", b"1")), CT_NO_START)
    assert msg.root.headers == []
    assert msg.root.read() == b"<e/>"
    assert msg.root.content_type == "text/plain; charset=us-ascii"
    assert msg.root.content_id is None


@pytest.mark.parametrize("sizes", [[1000], [1]])
def test_parts_with_empty_or_no_body(sizes: list[int]) -> None:
    # RFC 2046 §5.1.1: body-part := MIME-part-headers [CRLF *OCTET], so the
    # delimiter may follow the header block directly.
    body = (
        ROOT
        + b"\r\n--b0undary\r\nContent-ID: <empty@x>\r\n\r\n"  # CRLF, then no octets
        + b"\r\n--b0undary\r\nContent-ID: <none@x>\r\n"  # no body at all
        + b"\r\n--b0undary\r\nContent-ID: <last@x>\r\n\r\nlast"
        + b"\r\n--b0undary--"
    )
    msg = parse(body, sizes=sizes)
    assert contents(msg) == {"empty@x": b"", "none@x": b"", "last@x": b"last"}
    empty = msg.attachments["none@x"]
    assert (empty.size, empty.sha256) == (0, hashlib.sha256(b"").hexdigest())


def test_part_without_headers_or_body() -> None:
    msg = parse(b"--b0undary\r\n\r\n--b0undary--", CT_NO_START)
    assert msg.root.headers == [] and msg.root.read() == b""


def test_folded_header_lines() -> None:
    part = (
        b"content-type: application/xml;\r\n\tcharset=utf-8\r\n"
        b"CONTENT-ID:\r\n <a@x>\r\nX-Long: one\r\n  two\r\n\tthree\r\n\r\n<a/>"
    )
    msg = parse(package(ROOT[12:], part))
    got = msg.attachments["a@x"]
    assert got.content_type == "application/xml; charset=utf-8"
    assert got.header("x-long") == "one two three"
    assert got.headers[0] == ("content-type", "application/xml; charset=utf-8")


def test_large_part_spills_to_disk_small_part_stays_in_memory() -> None:
    payload = bytes(range(251)) * (5 * 1024 * 1024 // 251)
    body = package(ROOT[12:], attachment("big@x", payload))
    msg = parse(body, sizes=[64 * 1024])
    big, root = msg.attachments["big@x"], msg.root
    assert big._spool._rolled is True  # type: ignore[attr-defined]
    assert root._spool._rolled is False  # type: ignore[attr-defined]
    assert big.size == len(payload)
    assert big.sha256 == hashlib.sha256(payload).hexdigest()
    with_file = big.open()
    assert with_file.tell() == 0
    assert with_file.read(10) == payload[:10]
    assert big.open().read() == payload  # open() rewinds
    assert big.read() == payload
    msg.close()
    assert big._spool.closed and root._spool.closed


def test_spool_threshold_is_configurable(tmp_path: Path) -> None:
    body = package(ROOT[12:], attachment("a@x", b"x" * 100))
    msg = parse(body, limits=MimeLimits(spool_memory_bytes=50, spool_dir=str(tmp_path)))
    assert msg.attachments["a@x"]._spool._rolled is True  # type: ignore[attr-defined]
    assert msg.root._spool._rolled is False  # type: ignore[attr-defined]
    assert msg.attachments["a@x"].read() == b"x" * 100


def test_parse_single() -> None:
    body = b"<?xml version='1.0'?><Envelope/>"
    msg = parse_single("text/xml; charset=UTF-8", body)
    assert msg.attachments == {}
    assert msg.root.read() == body
    assert msg.root.size == len(body)
    assert msg.root.sha256 == hashlib.sha256(body).hexdigest()
    assert msg.root.content_type == "text/xml; charset=UTF-8"
    assert msg.root.content_id is None
    assert parse_single("text/xml", b"").root.read() == b""
    with pytest.raises(MimeError):
        parse_single("text", body)


# -- the builder's own checks ------------------------------------------------------


@pytest.mark.parametrize(
    "part",
    [
        OutgoingPart("a@x", "text/plain\r\nX-Injected: 1", b""),
        OutgoingPart("a@x", "text/plain\nX-Injected: 1", b""),
        OutgoingPart("a@x", "text/plain\n", b""),
        OutgoingPart("a@x", "text/plain\r", b""),
        OutgoingPart("a@x", "tëxt/plain", b""),
        OutgoingPart("a@x\r\nX-Injected: 1", "text/plain", b""),
        OutgoingPart("a@x\n", "text/plain", b""),
        OutgoingPart("a@x>\r\n", "text/plain", b""),
        OutgoingPart("<a@x>", "text/plain", b""),
        OutgoingPart("a@x>", "text/plain", b""),
        OutgoingPart("", "text/plain", b""),
    ],
)
def test_build_refuses_header_injection(part: OutgoingPart) -> None:
    with pytest.raises(ValueError) as caught:
        build_swa(b"<e/>", [part], boundary="bb", start_cid="s@x")
    assert not isinstance(caught.value, MimeError)


@pytest.mark.parametrize(
    ("boundary", "start_cid"),
    [
        ("x" * 71, "s@x"),
        ("ends with space ", "s@x"),
        ('bad"quote', "s@x"),
        ("newline\n", "s@x"),
        ("bb", "s@x\r\nX-Injected: 1"),
        ("bb", "s@x\n"),
    ],
)
def test_build_refuses_bad_boundary_or_start(boundary: str, start_cid: str) -> None:
    with pytest.raises(ValueError):
        build_swa(b"<e/>", [], boundary=boundary, start_cid=start_cid)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ('a"b\\c/d.pdf', "a_b_c_d.pdf"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("résumé.pdf", "r_sum_.pdf"),
        ("x\r\nContent-Type: evil", "x__Content-Type: evil"),
        ("日本.txt", "__.txt"),
    ],
)
def test_build_sanitises_filenames(filename: str, expected: str) -> None:
    part = OutgoingPart("a@x", "application/pdf", b"%PDF", filename)
    content_type, chunks, _ = build_swa(b"<e/>", [part], boundary="bb", start_cid="s@x")
    body = join(chunks)
    assert f'Content-Disposition: attachment; filename="{expected}"\r\n'.encode() in body
    got = parse(body, content_type).attachments["a@x"]
    assert got.header("content-disposition") == f'attachment; filename="{expected}"'
    assert got.read() == b"%PDF"


@pytest.mark.parametrize(
    "content",
    [
        b"before\r\n--bb\r\nafter",
        b"before\r\n--bb--",
        b"\r\n--bb",
        b"--bb\r\nContent-ID: <evil@x>\r\n\r\n",  # at the start of the part, too
        bytearray(b"x\r\n--bb"),
        memoryview(b"x\r\n--bbb"),
    ],
)
def test_build_refuses_boundary_inside_a_part(content: bytes) -> None:
    with pytest.raises(ValueError, match="boundary occurs inside a part"):
        build_swa(b"<e/>", [OutgoingPart("a@x", "text/plain", content)], boundary="bb")
    with pytest.raises(ValueError, match="boundary occurs inside a part"):
        build_swa(bytes(content), [], boundary="bb")


def test_build_accepts_near_miss_boundaries() -> None:
    content = b"--b\r\n--b-\n--bb\rx--bb\r\n-bb\r\n--bB"
    content_type, chunks, _ = build_swa(
        content, [OutgoingPart("a@x", "text/plain", content)], boundary="bb"
    )
    msg = parse(join(chunks), content_type)
    assert msg.root.read() == content
    assert contents(msg) == {"a@x": content}


def test_build_accepts_bytearray_and_memoryview() -> None:
    # Not in the annotation, but the builder handles (and checks) them.
    parts = [
        OutgoingPart("a@x", "text/plain", bytearray(b"array")),  # type: ignore[arg-type]
        OutgoingPart("b@x", "text/plain", memoryview(b"view")),  # type: ignore[arg-type]
    ]
    content_type, chunks, length = build_swa(b"<e/>", parts)
    body = join(chunks)
    assert len(body) == length
    assert all(type(chunk) is bytes for chunk in build_swa(b"<e/>", parts)[1])
    assert contents(parse(body, content_type)) == {"a@x": b"array", "b@x": b"view"}


def test_build_streams_a_file_part_from_its_position() -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: several 64 KiB blocks
    source = io.BytesIO(b"skip" + data)
    source.seek(4)
    part = OutgoingPart("f@x", "application/octet-stream", source, "data.bin")
    assert part.size() == len(data)
    assert source.tell() == 4  # measured without moving

    content_type, chunks, length = build_swa(b"<e/>", [part], boundary="bb", start_cid="s@x")
    assert source.tell() == 4  # nothing read before the chunks are consumed
    pieces = list(chunks)
    assert max(len(p) for p in pieces) <= 1 << 16  # streamed, not read in one go
    body = b"".join(pieces)
    assert len(body) == length
    got = parse(body, content_type, sizes=[10_000]).attachments["f@x"]
    assert got.read() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()


def test_outgoing_part_size() -> None:
    assert OutgoingPart("a@x", "text/plain", b"abc").size() == 3
    assert OutgoingPart("a@x", "text/plain", memoryview(b"abcd")).size() == 4  # type: ignore[arg-type]
    source = io.BytesIO(b"0123456789")
    source.seek(7)
    assert OutgoingPart("a@x", "text/plain", source).size() == 3
    assert source.tell() == 7


def test_preamble_fed_byte_by_byte_is_scanned_once() -> None:
    body = b"x" * 60_000 + b"\r\n--b\r\nContent-ID: <r@x>\r\n\r\n<r/>\r\n--b--\r\n"
    parser = SwaParser('multipart/related; boundary="b"')
    started = time.process_time()  # CPU time: other processes on the machine do not count
    for i in range(len(body)):
        parser.feed(body[i : i + 1])
    message = parser.close()
    assert message.root.read() == b"<r/>"
    assert time.process_time() - started < 1.5  # linear: a rescan per byte took seconds


@pytest.mark.parametrize(
    ("start", "ids"), [("s@x", ("a@x", "a@x")), ("a@x", ("a@x",)), ("<s@x>", ("a@x",))]
)
def test_builder_refuses_ambiguous_content_ids(start: str, ids: tuple[str, ...]) -> None:
    parts = [OutgoingPart(cid, "text/plain", b"x") for cid in ids]
    with pytest.raises(ValueError, match="Content-ID"):
        build_swa(b"<e/>", parts, start_cid=start)
