"""Batch upload ("aanleveren"): read a zip of StUF XML messages and report on each file.

Like the GGk portal's upload, ``dkgw upload FILE.zip`` takes one zip of XML messages.
This module does the parts that need nothing but the file:

* :func:`read_upload` opens the zip and refuses it *as a whole* (:class:`UploadRefused`,
  with a ``code`` and a readable reason) when it is not a zip or is damaged, is too large,
  is empty, has folders, paths or names that are not plain ``*.xml`` file names, has
  encrypted or duplicate entries, or looks like a zip bomb.  Nothing is sent then.
* :func:`process_upload` hands every file to a *handler* (``(name, data) -> Outcome``)
  and collects the outcomes into a :class:`Report`: :class:`Accepted` with the
  message's referentienummer and functie, or :class:`Rejected` with a code and reason.
  The handler is where a message is checked, wrapped and sent; it is supplied by the
  caller (see :mod:`gateway.commands.stuf` for the seam).
* :func:`format_report` renders the processing report ("verwerkingsverslag"): one line
  per file and the totals.

Memory: the files are returned in memory, so the total uncompressed size cap
(``max_uncompressed``) bounds what one upload costs.
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from gateway.store.database import Database

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_UNCOMPRESSED",
    "Accepted",
    "FileResult",
    "Handler",
    "Outcome",
    "Rejected",
    "Report",
    "UploadItem",
    "UploadRefused",
    "UploadSession",
    "format_report",
    "process_upload",
    "read_upload",
]

DEFAULT_MAX_BYTES = 1 << 30
"""Largest zip file accepted (1 GiB, the portal's limit)."""

DEFAULT_MAX_ENTRIES = 10_000
"""Most files in one zip."""

DEFAULT_MAX_UNCOMPRESSED = 1 << 30
"""Largest total size of the files once unpacked (1 GiB)."""

DEFAULT_MAX_RATIO = 100
"""Highest compression ratio of one file above :data:`_RATIO_FLOOR` bytes.

Real messages compress 5 to 20 times; a bomb thousands of times.
"""

_RATIO_FLOOR = 1 << 20
_READ_CHUNK = 1 << 20


class UploadRefused(Exception):
    """The whole upload is refused; ``code`` says which rule, ``reason`` explains."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class UploadItem:
    """One file of the zip."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Accepted:
    """The handler took the message (checked, and sent or queued for sending)."""

    referentienummer: str
    functie: str


@dataclass(frozen=True)
class Rejected:
    """The handler refused the message; nothing was sent.

    ``code`` is short and stable (``xml``, ``envelope``, ``duplicate``, ``StUF055``,
    ...); ``reason`` is for the operator.  Envelope fields read from the file before it
    was refused may be given, for the message log (the log keeps them shortened, and a
    ``berichtcode`` other than Di01/Du01/Fo01 not at all).
    """

    code: str
    reason: str
    referentienummer: str | None = None
    functie: str | None = None
    berichtcode: str | None = None
    sender_org: str | None = None
    receiver_org: str | None = None


Outcome: TypeAlias = Accepted | Rejected
Handler: TypeAlias = Callable[[str, bytes], Outcome]


@dataclass(frozen=True)
class FileResult:
    """The outcome for one file of the upload."""

    name: str
    size: int
    outcome: Outcome


@dataclass(frozen=True)
class Report:
    """The processing report: every file of the upload in zip order."""

    results: tuple[FileResult, ...]

    @property
    def accepted(self) -> list[FileResult]:
        """The files accepted."""
        return [r for r in self.results if isinstance(r.outcome, Accepted)]

    @property
    def rejected(self) -> list[FileResult]:
        """The files rejected."""
        return [r for r in self.results if isinstance(r.outcome, Rejected)]


@dataclass(frozen=True)
class UploadSession:
    """What ``dkgw upload`` gives the factory of its handler (see gateway.commands.stuf)."""

    db: Database
    """The store: the handler logs each message it accepts here."""
    batch_id: int
    """The batch of this upload: the ``batch_id`` of every message logged for it."""
    name: str
    """The zip's file name."""
    node: str
    """This gateway node (the config's node_id, else the host name)."""


# -- reading the zip -------------------------------------------------------------------


def read_upload(
    path: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> list[UploadItem]:
    """The files of the upload zip at ``path``, in zip order.

    Raises :class:`UploadRefused` (codes in brackets) when the file cannot be read
    (``unreadable``), is larger than ``max_bytes`` (``too-large``), is not a zip
    (``not-a-zip``), is damaged: truncated, bad CRC, broken compressed data
    (``damaged``), has no files (``empty``) or more than ``max_entries``
    (``too-many-files``), or when an entry is a folder (``folder``), has a path
    (``path``: any ``/`` or ``\\``), climbs out with ``..`` (``unsafe-path``), has a
    name that is empty or has control characters or ``:`` (``bad-name``), is not
    ``*.xml`` (``not-xml``), comes twice, also differing only in case (``duplicate``),
    is encrypted (``encrypted``) or uses a compression method not supported
    (``unsupported``), or when the files would unpack to more than ``max_uncompressed``
    bytes in total (``too-large-unpacked``) or one of more than 1 MiB is compressed more
    than ``max_ratio`` times (``zip-bomb``).
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise UploadRefused("unreadable", f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UploadRefused("unreadable", f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise UploadRefused(
            "too-large",
            f"the file is {_size(info.st_size)}, more than the limit of {_size(max_bytes)}",
        )
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise _not_a_zip(path, exc) from None
    except NotImplementedError as exc:
        # zipfile refuses an entry that needs a newer version of the format.
        raise UploadRefused("unsupported", f"the zip uses a format not supported ({exc})") from None
    except UnicodeDecodeError:
        # An entry flagged as UTF-8 (APPNOTE.TXT 4.4.4, bit 11) whose name is not.
        raise UploadRefused("bad-name", "an entry name is marked UTF-8 but is not") from None
    except OSError as exc:
        raise UploadRefused("unreadable", f"cannot read {path}: {exc.strerror}") from None
    with archive:
        entries = archive.infolist()
        _check_entries(entries, max_entries, max_uncompressed, max_ratio)
        return [_read_entry(archive, entry) for entry in entries]


def _not_a_zip(path: Path, exc: zipfile.BadZipFile) -> UploadRefused:
    """Tell a zip whose end is missing (cut off in transfer) from something else."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        head = b""
    if head == b"PK\x03\x04":
        return UploadRefused(
            "damaged",
            "the zip is damaged or truncated: it starts like a zip but its table of "
            f"contents at the end is missing or broken ({exc})",
        )
    return UploadRefused("not-a-zip", f"not a zip file ({exc})")


def _check_entries(
    entries: Sequence[zipfile.ZipInfo],
    max_entries: int,
    max_uncompressed: int,
    max_ratio: float,
) -> None:
    """Refuse on the central directory alone, before anything is unpacked."""
    if not entries:
        raise UploadRefused("empty", "the zip contains no files")
    if len(entries) > max_entries:
        raise UploadRefused(
            "too-many-files", f"the zip has {len(entries)} entries, the limit is {max_entries}"
        )
    seen: dict[str, str] = {}
    total = 0
    for entry in entries:
        name = entry.filename
        if not name:
            # Before anything else: ZipInfo.is_dir() fails on an empty name.
            raise UploadRefused("bad-name", "an entry has an empty name")
        parts = name.replace("\\", "/").split("/")
        if ".." in parts:
            raise UploadRefused("unsafe-path", f"{name!r} points outside the zip ('..')")
        if entry.is_dir() or name.endswith(("/", "\\")):
            raise UploadRefused("folder", f"{name!r} is a folder; folders are not allowed")
        if len(parts) > 1:
            raise UploadRefused(
                "path", f"{name!r} is inside a folder; put the files at the top of the zip"
            )
        if not name or ":" in name or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
            raise UploadRefused("bad-name", f"{name!r} is not a usable file name")
        if not name.lower().endswith(".xml") or name.lower() == ".xml":
            raise UploadRefused("not-xml", f"{name!r} is not an .xml file; only XML is allowed")
        folded = name.casefold()
        if folded in seen:
            raise UploadRefused(
                "duplicate", f"{name!r} is in the zip twice (as {seen[folded]!r} too)"
            )
        seen[folded] = name
        if entry.flag_bits & 0x1:
            raise UploadRefused("encrypted", f"{name!r} is encrypted; upload it unencrypted")
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UploadRefused(
                "unsupported",
                f"{name!r} uses compression method {entry.compress_type}; "
                "use deflate (the normal zip compression)",
            )
        if entry.file_size > _RATIO_FLOOR and entry.file_size > max_ratio * max(
            entry.compress_size, 1
        ):
            raise UploadRefused(
                "zip-bomb",
                f"{name!r} unpacks from {_size(entry.compress_size)} to "
                f"{_size(entry.file_size)}: refused as a zip bomb",
            )
        total += entry.file_size
        if total > max_uncompressed:
            raise UploadRefused(
                "too-large-unpacked",
                f"the files unpack to more than {_size(max_uncompressed)} together",
            )


def _read_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> UploadItem:
    """The bytes of ``entry``; never more than its declared size."""
    chunks: list[bytes] = []
    size = 0
    try:
        # ZipExtFile stops at the declared size and checks the CRC at the end, so the
        # limits checked on the central directory hold for what is actually read.
        with archive.open(entry) as member:
            while chunk := member.read(_READ_CHUNK):
                size += len(chunk)
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as exc:
        raise UploadRefused("damaged", f"the zip is damaged at {entry.filename!r}: {exc}") from None
    except NotImplementedError as exc:
        raise UploadRefused("unsupported", f"{entry.filename!r}: {exc}") from None
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise UploadRefused("unreadable", f"cannot read the zip: {exc.strerror}") from None
        # A local header offset in the central directory that points before the
        # start of the file: the seek to it fails, the zip is damaged.
        raise UploadRefused(
            "damaged", f"the zip is damaged at {entry.filename!r}: a header offset is invalid"
        ) from None
    if size != entry.file_size:
        raise UploadRefused(
            "damaged",
            f"the zip is damaged at {entry.filename!r}: {size} bytes instead of {entry.file_size}",
        )
    return UploadItem(entry.filename, b"".join(chunks))


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


# -- processing and the report ---------------------------------------------------------


def process_upload(
    items: Iterable[UploadItem],
    handle: Handler,
    *,
    on_result: Callable[[FileResult], None] | None = None,
) -> Report:
    """Hand every file to ``handle`` in order; the report of what it answered.

    ``on_result`` is called with each file's result as soon as it is known (the upload
    command logs refused files with it).

    ``handle`` should answer :class:`Rejected` for anything wrong with a message.  If it
    raises instead, the file is reported as rejected with code ``error`` and the
    exception as reason, and the other files are still processed: one bad file (or a
    passing store outage) does not leave the operator without a report.  A handler must
    therefore not raise after it has sent a message.
    """
    results: list[FileResult] = []
    for item in items:
        try:
            outcome = handle(item.name, item.data)
        except Exception as exc:  # reported per file, see the docstring
            outcome = Rejected("error", f"{type(exc).__name__}: {exc}")
        if not isinstance(outcome, Accepted | Rejected):
            outcome = Rejected("error", f"the handler answered {outcome!r}")
        result = FileResult(item.name, len(item.data), outcome)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return Report(tuple(results))


def format_report(report: Report, *, title: str | None = None) -> str:
    """The processing report as text: a line per file, then the totals.

    ::

        0001.xml  accepted  WMO301  3f0c...-...
        0002.xml  rejected  [xml] not well-formed XML: ...
        100 files: 90 accepted, 10 rejected
    """
    lines = [title] if title else []
    width = max((len(r.name) for r in report.results), default=0)
    for result in report.results:
        outcome = result.outcome
        if isinstance(outcome, Accepted):
            detail = f"accepted  {outcome.functie:<6}  {outcome.referentienummer}"
        else:
            detail = f"rejected  [{outcome.code}] {_one_line(outcome.reason)}"
        lines.append(f"{result.name:<{width}}  {detail}")
    total = len(report.results)
    lines.append(
        f"{total} file{'' if total == 1 else 's'}: "
        f"{len(report.accepted)} accepted, {len(report.rejected)} rejected"
    )
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())
