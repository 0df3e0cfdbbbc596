"""SOAP with Attachments (``multipart/related``) without the stdlib email package.

ebMS 2.0 §2.1 packs a message as a MIME ``multipart/related`` whose first part
(or the part its ``start`` parameter names) is the SOAP envelope and whose
other parts are the payloads, each named by a ``Content-ID`` that the Manifest
references as ``cid:``.  Two properties matter and the stdlib cannot give
them (toolchain notes §2):

* **Byte exactness.**  A signature digests the payload octets, and a resend
  must repeat the first attempt byte for byte (ebMS 2.0 §6.5.3).  The
  ``email`` generator rewrites line endings inside binary parts; the builder
  here writes the package by hand and never touches a part's bytes.
* **Bounded memory.**  The parser is a push parser: the HTTP edge feeds it
  chunks as they come, each part is spooled to a temporary file once it is
  larger than a threshold, and its SHA-256 is computed on the fly, so a
  100 MB payload costs neither 100 MB of RAM nor a second pass.

Strict where it costs interoperability nothing: CRLF line endings, a
``Content-ID`` on every payload, no duplicate ids, limits on size, number of
parts and header length.  Parts are expected unencoded (Digikoppeling: "no
content-transfer-encoding"), but ``base64`` and ``quoted-printable`` parts
from other MSHs are decoded, so that digests and payloads are over the
decoded octets as ebMS 2.0 §4.1.4.1 requires.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from gateway.ebms.cid import norm_cid

__all__ = [
    "MimeError",
    "MimeLimits",
    "OutgoingPart",
    "ReceivedPart",
    "SwaMessage",
    "SwaParser",
    "build_swa",
    "parse_content_type",
    "parse_single",
]

CRLF = b"\r\n"
#: RFC 2046 §5.1.1: a boundary is 1-70 characters from this set (space not last).
#: (``\Z``, not ``$``: ``$`` also matches before a final line feed.)
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: What we allow in header values we write ourselves: printable ASCII, no CR/LF.
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]*\Z")


class MimeError(ValueError):
    """The MIME package is malformed or over a limit; the text says what (no content)."""


@dataclass(frozen=True)
class MimeLimits:
    """Ceilings the parser enforces while bytes arrive."""

    max_total_bytes: int = 100 * 1024 * 1024
    max_parts: int = 64  # the SOAP part plus payloads; real messages carry a handful
    max_header_bytes: int = 16 * 1024  # one part's header block
    max_preamble_bytes: int = 64 * 1024
    spool_memory_bytes: int = 1024 * 1024  # parts above this go to a temporary file
    spool_dir: str | None = None


# -- Content-Type ------------------------------------------------------------------


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``multipart/related; boundary="b"; start="<x>"`` → (media type, parameters).

    The media type and parameter names come back lower-case; quoted values
    are unquoted (RFC 2045 §5.1, with backslash escapes).  Raises
    :class:`MimeError` on a malformed value.
    """
    media, _, rest = value.partition(";")
    media = media.strip().lower()
    if "/" not in media or not all(_TOKEN.match(p) for p in media.split("/", 1)):
        raise MimeError(f"malformed media type {media[:60]!r}")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MimeError("Content-Type parameter without a value")
        name = rest[i:eq].strip().lower()
        if not _TOKEN.match(name):
            raise MimeError(f"malformed Content-Type parameter name {name[:40]!r}")
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            if i >= n:
                raise MimeError(f"unterminated quoted value of parameter {name!r}")
            i += 1
            param = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            param = rest[i:end].strip()
            i = end
        if name in params:
            raise MimeError(f"Content-Type parameter {name!r} given twice")
        params[name] = param
    return media, params


# -- received parts ----------------------------------------------------------------


class ReceivedPart:
    """One received MIME part: its headers and its decoded content, spooled."""

    def __init__(
        self, headers: list[tuple[str, str]], spool: IO[bytes], size: int, sha256: str
    ) -> None:
        self.headers = headers
        self._spool = spool
        self.size = size
        self.sha256 = sha256
        """Hex SHA-256 of the decoded content, computed while it arrived."""

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    @property
    def content_id(self) -> str | None:
        """The Content-ID without angle brackets, or None."""
        value = self.header("content-id")
        return norm_cid(value) if value is not None else None

    @property
    def content_type(self) -> str:
        """The part's Content-Type; RFC 2045 §5.2 default when absent."""
        return (self.header("content-type") or "text/plain; charset=us-ascii").strip()

    def open(self) -> IO[bytes]:
        """The content as a file positioned at the start (shared; do not close it)."""
        self._spool.seek(0)
        return self._spool

    def read(self) -> bytes:
        """The whole content in memory."""
        return self.open().read()

    def close(self) -> None:
        """Drop the spooled content."""
        self._spool.close()


@dataclass
class SwaMessage:
    """A parsed package: the SOAP part and the payload parts by Content-ID, in order."""

    root: ReceivedPart
    attachments: dict[str, ReceivedPart] = field(default_factory=dict)

    def close(self) -> None:
        """Release every spooled part."""
        self.root.close()
        for part in self.attachments.values():
            part.close()


def _parse_headers(block: bytes) -> list[tuple[str, str]]:
    """RFC 5322 header fields of one part, unfolded; values decoded as Latin-1."""
    headers: list[tuple[str, str]] = []
    for line in block.split(CRLF):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise MimeError("part header starts with a continuation line")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip().decode('latin-1')}")
            continue
        name_b, sep, value_b = line.partition(b":")
        name = name_b.decode("latin-1").strip()
        if not sep or not _TOKEN.match(name):
            raise MimeError("malformed part header line")
        headers.append((name, value_b.strip().decode("latin-1")))
    return headers


class _Decoder:
    """Turns a part's transfer encoding back into octets, incrementally."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._pending = b""
        self._padded = False  # base64: the padding came, the data has ended

    def feed(self, data: bytes) -> bytes:
        if self.encoding == "base64":
            data = self._pending + data.translate(None, b" \t\r\n")
            usable = len(data) - len(data) % 4
            self._pending = data[usable:]
            return self._b64(data[:usable])
        if self.encoding == "quoted-printable":
            # Soft line breaks and =XX escapes may straddle chunks: decode up to
            # the last line break and keep the rest.
            data = self._pending + data
            cut = data.rfind(b"\n") + 1
            self._pending = data[cut:]
            return binascii.a2b_qp(data[:cut])
        return data

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        if self.encoding == "base64":
            return self._b64(rest)
        if self.encoding == "quoted-printable":
            return binascii.a2b_qp(rest)
        return rest

    def _b64(self, data: bytes) -> bytes:
        # Decoded a block at a time, so the check that nothing follows the
        # padding must span blocks: else the outcome would depend on chunking.
        if data and self._padded:
            raise MimeError("a base64 part does not decode")
        try:
            decoded = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise MimeError("a base64 part does not decode") from None
        self._padded = self._padded or data.endswith(b"=")
        return decoded


_IDENTITY = frozenset({"", "binary", "8bit", "7bit"})


class _PartWriter:
    """Collects one part's body: decode, hash and spool as it arrives."""

    def __init__(self, headers: list[tuple[str, str]], limits: MimeLimits) -> None:
        self.headers = headers
        cte = next((v for k, v in headers if k.lower() == "content-transfer-encoding"), "")
        cte = cte.strip().lower()
        if cte not in _IDENTITY and cte not in ("base64", "quoted-printable"):
            raise MimeError(f"unsupported Content-Transfer-Encoding {cte[:30]!r}")
        self._decoder = _Decoder("" if cte in _IDENTITY else cte)
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - owned by the part
            max_size=limits.spool_memory_bytes, dir=limits.spool_dir
        )
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        self._emit(self._decoder.feed(data))

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self._spool.write(data)
            self._size += len(data)

    def finish(self) -> ReceivedPart:
        self._emit(self._decoder.finish())
        return ReceivedPart(self.headers, self._spool, self._size, self._hash.hexdigest())

    def discard(self) -> None:
        self._spool.close()


class SwaParser:
    """Push parser for a ``multipart/related`` body: :meth:`feed` chunks, then :meth:`close`.

    Raises :class:`MimeError` as soon as the input is known to be bad or over
    a limit; after an error the parser is unusable.
    """

    _PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY_START, _BODY, _EPILOGUE = range(6)

    def __init__(self, content_type: str, limits: MimeLimits | None = None) -> None:
        self.limits = limits or MimeLimits()
        media, params = parse_content_type(content_type)
        if media != "multipart/related":
            raise MimeError(f"expected multipart/related, got {media!r}")
        boundary = params.get("boundary")
        if not boundary or not _BOUNDARY.match(boundary):
            raise MimeError("multipart/related without a valid boundary parameter")
        self._start = norm_cid(params["start"]) if params.get("start") else None
        self._dash_boundary = b"--" + boundary.encode("ascii")
        self._delimiter = CRLF + self._dash_boundary
        self._state = self._PREAMBLE
        self._preamble_scanned = 0
        self._buffer = bytearray()
        self._total = 0
        self._writer: _PartWriter | None = None
        self._parts: list[ReceivedPart] = []
        self._failed = False
        self._closed = False

    # -- feeding -------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Take the next chunk of the body."""
        if self._failed:
            raise MimeError("the parser already failed")
        if self._closed:
            raise MimeError("the parser is already closed")
        self._total += len(data)
        if self._total > self.limits.max_total_bytes:
            self._fail()
            raise MimeError(f"message over {self.limits.max_total_bytes} bytes")
        if self._state == self._EPILOGUE:
            return  # RFC 2046: the epilogue is to be ignored
        self._buffer += data
        try:
            self._run()
        except MimeError:
            self._fail()
            raise

    def close(self) -> SwaMessage:
        """End of input: the parsed message, or :class:`MimeError` when truncated or invalid."""
        if self._failed:
            raise MimeError("the parser already failed")
        if self._closed:
            raise MimeError("the parser is already closed")
        if self._state != self._EPILOGUE:
            self._fail()
            raise MimeError("truncated: the closing boundary never came")
        self._closed = True
        try:
            return self._message()
        except MimeError:
            self._fail()
            raise

    def _fail(self) -> None:
        self._failed = True
        if self._writer is not None:
            self._writer.discard()
            self._writer = None
        for part in self._parts:
            part.close()
        self._parts = []
        self._buffer = bytearray()

    def _run(self) -> None:
        while True:
            state = self._state
            if state == self._PREAMBLE:
                progressed = self._preamble()
            elif state == self._AFTER_DELIMITER:
                progressed = self._after_delimiter()
            elif state == self._HEADERS:
                progressed = self._headers()
            elif state == self._BODY_START:
                progressed = self._body_start()
            elif state == self._BODY:
                progressed = self._body()
            else:
                self._buffer = bytearray()
                return
            if not progressed:
                return

    def _preamble(self) -> bool:
        buf = self._buffer
        if buf.startswith(self._dash_boundary):
            del buf[: len(self._dash_boundary)]
            self._state = self._AFTER_DELIMITER
            return True
        # Search only what arrived since the last look (minus a delimiter's
        # length, which may straddle the chunks): no rescans of the preamble.
        at = buf.find(self._delimiter, max(0, self._preamble_scanned - len(self._delimiter) + 1))
        if at >= 0:
            del buf[: at + len(self._delimiter)]
            self._state = self._AFTER_DELIMITER
            return True
        if len(buf) > self.limits.max_preamble_bytes:
            raise MimeError("no MIME boundary in the first bytes of the body")
        self._preamble_scanned = len(buf)
        return False

    def _after_delimiter(self) -> bool:
        # After "--boundary": "--" closes the package; otherwise optional
        # transport padding (RFC 2046 §5.1.1) and CRLF start the next part.
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            if self._writer is None:
                raise MimeError("multipart/related with no parts")
            self._parts.append(self._writer.finish())
            self._writer = None
            self._state = self._EPILOGUE
            self._buffer = bytearray()
            return False
        end = buf.find(CRLF)
        if end < 0:
            if len(buf) > 1024:
                raise MimeError("garbage after a MIME boundary")
            return False
        if buf[:end].strip(b" \t"):
            raise MimeError("garbage after a MIME boundary")
        del buf[: end + 2]
        if self._writer is not None:
            self._parts.append(self._writer.finish())
            self._writer = None
        if len(self._parts) >= self.limits.max_parts:
            raise MimeError(f"more than {self.limits.max_parts} MIME parts")
        self._state = self._HEADERS
        return True

    def _headers(self) -> bool:
        # The header block ends with its last line's CRLF (none when the part
        # has no headers); the CRLF that follows is left in the buffer, since
        # it may be the one that starts the next delimiter.
        buf = self._buffer
        if buf.startswith(CRLF):  # a part without headers
            block, rest = b"", 0
        else:
            end = buf.find(CRLF + CRLF)
            if end < 0:
                if len(buf) > self.limits.max_header_bytes:
                    raise MimeError(f"part headers over {self.limits.max_header_bytes} bytes")
                return False
            block, rest = bytes(buf[:end]), end + 2
        if len(block) > self.limits.max_header_bytes:
            raise MimeError(f"part headers over {self.limits.max_header_bytes} bytes")
        del buf[:rest]
        self._writer = _PartWriter(_parse_headers(block), self.limits)
        self._state = self._BODY_START
        return True

    def _body_start(self) -> bool:
        # RFC 2046 §5.1.1: body-part := MIME-part-headers [CRLF *OCTET].  The
        # buffer starts with a CRLF: either the delimiter follows the headers
        # directly (a part without a body) or the CRLF opens the body.
        buf = self._buffer
        if buf.startswith(self._delimiter):
            del buf[: len(self._delimiter)]
            self._state = self._AFTER_DELIMITER
            return True
        if len(buf) < len(self._delimiter) and self._delimiter.startswith(buf):
            return False  # could still become the delimiter
        del buf[:2]
        self._state = self._BODY
        return True

    def _body(self) -> bool:
        buf = self._buffer
        writer = self._writer
        assert writer is not None
        at = buf.find(self._delimiter)
        if at >= 0:
            writer.write(bytes(buf[:at]))
            del buf[: at + len(self._delimiter)]
            self._state = self._AFTER_DELIMITER
            return True
        # Keep what could be the start of a delimiter split across chunks.
        keep = len(self._delimiter) - 1
        if len(buf) > keep:
            writer.write(bytes(buf[:-keep]))
            del buf[:-keep]
        return False

    # -- the result ----------------------------------------------------------------

    def _message(self) -> SwaMessage:
        parts, self._parts = self._parts, []
        try:
            root = parts[0]
            if self._start is not None:
                matches = [p for p in parts if p.content_id == self._start]
                if not matches:
                    raise MimeError("no part has the Content-ID the start parameter names")
                root = matches[0]
            attachments: dict[str, ReceivedPart] = {}
            for part in parts:
                if part is root:
                    continue
                cid = part.content_id
                if not cid:
                    raise MimeError("a payload part has no Content-ID")
                if cid in attachments or cid == root.content_id:
                    raise MimeError("two parts share one Content-ID")
                attachments[cid] = part
        except MimeError:
            for part in parts:
                part.close()
            raise
        return SwaMessage(root, attachments)


def parse_single(content_type: str, body: bytes) -> SwaMessage:
    """A plain ``text/xml`` body: the SOAP part alone, as a message without payloads."""
    parse_content_type(content_type)  # refuses a malformed header
    headers = [("Content-Type", content_type)]
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=len(body) + 1)  # noqa: SIM115
    spool.write(body)
    return SwaMessage(ReceivedPart(headers, spool, len(body), hashlib.sha256(body).hexdigest()))


# -- building ------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingPart:
    """A payload to send: its Content-ID (without brackets), type and bytes or file."""

    content_id: str
    content_type: str
    content: bytes | IO[bytes]
    filename: str | None = None

    def size(self) -> int:
        """Length of the content in bytes (a file is measured without moving it)."""
        if isinstance(self.content, bytes | bytearray | memoryview):
            return len(self.content)
        here = self.content.tell()
        end = self.content.seek(0, 2)
        self.content.seek(here)
        return end - here


def _check_header_value(value: str, what: str) -> str:
    if not _HEADER_VALUE.match(value):
        raise ValueError(f"{what} must be printable ASCII without line breaks")
    return value


def _part_header(part: OutgoingPart) -> bytes:
    lines = [
        f"Content-Type: {_check_header_value(part.content_type, 'content type')}",
        "Content-Transfer-Encoding: binary",
        f"Content-ID: <{_check_header_value(part.content_id, 'Content-ID')}>",
    ]
    if "<" in part.content_id or ">" in part.content_id or not part.content_id:
        raise ValueError("a Content-ID is an addr-spec without angle brackets")
    if part.filename:
        # Only what survives every receiver: no quotes, backslashes or paths.
        safe = re.sub(r'[^\x20-\x7e]|["\\/]', "_", part.filename)
        lines.append(f'Content-Disposition: attachment; filename="{safe}"')
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def build_swa(
    envelope: bytes,
    parts: Iterable[OutgoingPart],
    *,
    boundary: str | None = None,
    start_cid: str | None = None,
) -> tuple[str, Iterator[bytes], int]:
    """The package as (Content-Type, chunks, total length).

    Payload bytes go out untouched (``Content-Transfer-Encoding: binary``);
    the chunks can be joined or streamed into an HTTP body producer, and the
    length is what ``Content-Length`` must say.  Pass ``boundary`` and
    ``start_cid`` to rebuild a stored message byte for byte.
    """
    parts = list(parts)
    boundary = boundary or f"MIMEBoundary_{uuid.uuid4().hex}"
    start_cid = start_cid or f"soap-{uuid.uuid4().hex}@localhost"
    if not _BOUNDARY.match(boundary):
        raise ValueError("invalid MIME boundary")
    _check_header_value(start_cid, "start Content-ID")
    if "<" in start_cid or ">" in start_cid:
        raise ValueError("a Content-ID is an addr-spec without angle brackets")
    ids = [start_cid, *(p.content_id for p in parts)]
    if len(set(ids)) != len(ids):
        raise ValueError("two parts share one Content-ID")
    dash = b"--" + boundary.encode("ascii")
    delimiter = CRLF + dash
    for content in (envelope, *(p.content for p in parts)):
        # A part's content follows a CRLF (the blank line after its headers),
        # so content that starts with "--boundary" would end the part as well.
        if isinstance(content, bytes | bytearray | memoryview) and (
            delimiter in bytes(content) or bytes(content[: len(dash)]) == dash
        ):
            raise ValueError("the MIME boundary occurs inside a part")
    content_type = (
        f'multipart/related; type="text/xml"; boundary="{boundary}"; start="<{start_cid}>"'
    )
    root_header = (
        dash
        + CRLF
        + b"Content-Type: text/xml; charset=UTF-8\r\nContent-ID: <"
        + start_cid.encode("ascii")
        + b">\r\n\r\n"
    )
    headers = [delimiter + CRLF + _part_header(p) for p in parts]
    closing = delimiter + b"--" + CRLF
    length = len(root_header) + len(envelope) + len(closing)
    length += sum(len(h) + p.size() for h, p in zip(headers, parts, strict=True))

    def chunks() -> Iterator[bytes]:
        yield root_header
        yield envelope
        for header, part in zip(headers, parts, strict=True):
            yield header
            content: Any = part.content
            if isinstance(content, bytes | bytearray | memoryview):
                yield bytes(content)
            else:
                while block := content.read(1 << 16):
                    yield block
        yield closing

    return content_type, chunks(), length
