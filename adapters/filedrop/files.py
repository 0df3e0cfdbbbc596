"""File-system steps the file drop is built from: durable, atomic, never clobbering."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "FILE_MODE",
    "FOLDER_MODE",
    "atomic_write",
    "ensure_folder",
    "fsync_folder",
    "move_no_clobber",
    "numbered",
    "safe_name",
]

FOLDER_MODE = 0o750
FILE_MODE = 0o640
_CHUNK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def ensure_folder(path: Path) -> None:
    """Create ``path`` (and its parents) with mode 0750 unless it exists."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)


def fsync_folder(path: Path) -> None:
    """Make the renames and creations in ``path`` durable (a no-op where not supported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(folder: Path, name: str, source: IO[bytes] | bytes) -> tuple[int, str]:
    """Write ``folder/name`` whole or not at all; returns (size, sha256 hex).

    The content goes to ``.tmp-<uuid>-<name>`` first, is fsynced and then renamed
    over ``name`` (replacing an earlier copy: rewriting is idempotent).  A file
    source is copied in 1 MiB pieces, never read whole.  The folder itself is not
    fsynced: the caller does that once for a group of files.
    """
    tmp = folder / f".tmp-{uuid.uuid4().hex}-{name}"
    digest = hashlib.sha256()
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(source, bytes):
                out.write(source)
                digest.update(source)
                size = len(source)
            else:
                while chunk := source.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return size, digest.hexdigest()


def numbered(name: str, n: int) -> str:
    """``name`` for n = 0, else with ``-n`` before its extensions: ``a.tar.gz`` → ``a-2.tar.gz``."""
    if n == 0:
        return name
    head, dot, ext = name.partition(".")
    if not head:  # no stem before the first dot: add the number at the end
        return f"{name}-{n}"
    return f"{head}-{n}{dot}{ext}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def move_no_clobber(
    src: Path,
    folder: Path,
    name: str,
    *,
    free: Callable[[Path], bool] = lambda _: True,
    before: Callable[[Path], None] = lambda _: None,
) -> Path:
    """Move ``src`` into ``folder`` as ``name``, or as ``name-1``, ``name-2``... when taken.

    Nothing there is ever overwritten: the file is hard-linked under the new name
    (which fails if the name exists) and then unlinked from ``src``.  A move cut
    short between the two (a crash) is finished by the next call: the name that
    already is ``src`` is reused.  ``free`` may refuse a candidate name beyond it
    not existing; ``before`` runs for the chosen name just before the file appears
    there (to write its ``.error`` first).  File systems without hard links get a
    rename after an existence check instead.
    """
    n = 0
    while True:
        dest = folder / numbered(name, n)
        n += 1
        if _same_file(src, dest):
            before(dest)
            break  # linked by a move that was cut short
        if dest.exists() or not free(dest):
            continue
        before(dest)
        try:
            os.link(src, dest)
        except FileExistsError:
            continue  # taken meanwhile (another node)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            os.rename(src, dest)
            return dest
        break
    os.unlink(src)
    return dest


def safe_name(value: str, limit: int = 120) -> str:
    """``value`` as a file name of letters, digits, ``.``, ``_`` and ``-`` only.

    Other characters become ``_``; then, so that two values never share a name,
    a short hash of the original is appended.  A leading dot (a hidden file) is
    replaced too, and long values are cut to ``limit`` characters before the hash.
    """
    safe = _UNSAFE.sub("_", value)
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe == value and len(safe) <= limit and safe:
        return safe
    return (
        f"{safe[:limit]}-{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
    )
