"""HTTP Basic authentication for the back-office API.

Users live in a file of ``name:hash`` lines, where the hash is
``pbkdf2-sha256$<iterations>$<salt b64>$<key b64>`` as ``dkgw api
hash-password`` prints it; blank lines and ``#`` comments are ignored.  The
file is read again when it changes, so users are added or removed without a
restart.  Passwords are never stored or logged; a verified (user, password)
pair is remembered by a keyed digest so polling clients do not pay for
PBKDF2 on every request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ITERATIONS", "UsersFile", "hash_password", "parse_basic"]

#: PBKDF2 rounds for new hashes (OWASP's figure for PBKDF2-HMAC-SHA256, 2023).
ITERATIONS = 600_000
_SCHEME = "pbkdf2-sha256"


def hash_password(password: str, *, iterations: int = ITERATIONS) -> str:
    """A new salted hash of ``password`` for the users file."""
    salt = secrets.token_bytes(16)
    key = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"{_SCHEME}${iterations}${b64(salt).decode()}${b64(key).decode()}"


def _verify(password: str, stored: str) -> bool:
    try:
        scheme, rounds, salt, key = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(key, validate=True)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8"), base64.b64decode(salt, validate=True), int(rounds)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def parse_basic(header: bytes | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, None if absent or malformed."""
    if not header:
        return None
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class _Snapshot:
    mtime_ns: int
    size: int
    users: dict[str, str]


class UsersFile:
    """The users file; :meth:`check` is safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._verified: set[bytes] = set()
        self._key = secrets.token_bytes(32)  # keys the remembered pairs; never leaves memory
        self._load()

    def _load(self) -> _Snapshot:
        stat = os.stat(self.path)
        snap = self._snapshot
        if snap is not None and (snap.mtime_ns, snap.size) == (stat.st_mtime_ns, stat.st_size):
            return snap
        users: dict[str, str] = {}
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not name or not stored.startswith(_SCHEME + "$"):
                raise ValueError(f"{self.path}:{n}: expected name:{_SCHEME}$...")
            users[name] = stored
        snap = _Snapshot(stat.st_mtime_ns, stat.st_size, users)
        self._snapshot = snap
        self._verified = set()  # a changed file may have changed a password
        return snap

    def check(self, user: str, password: str) -> bool:
        """Whether ``user`` exists and ``password`` is theirs (blocking: PBKDF2)."""
        with self._lock:
            try:
                users = self._load().users
            except (OSError, ValueError):
                # Unreadable or broken now: keep what was loaded; fail closed if nothing.
                users = self._snapshot.users if self._snapshot else {}
            stored = users.get(user)
            token = hmac.new(self._key, f"{user}\0{password}\0{stored}".encode(), "sha256")
            remembered = token.digest()
            if stored is not None and remembered in self._verified:
                return True
        if stored is None:
            # Spend the same time as for a real user: no user enumeration by timing.
            hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), bytes(16), ITERATIONS)
            return False
        if not _verify(password, stored):
            return False
        with self._lock:
            self._verified.add(remembered)
        return True
