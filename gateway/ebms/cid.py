"""Content-ID references (RFC 2392), as used by the ebMS Manifest and signatures.

A MIME header says ``Content-ID: <a@b>``, the Manifest's ``xlink:href`` and a
``ds:Reference`` say ``cid:a@b`` with %-escapes allowed (RFC 2392 §2).  Both
forms are compared after :func:`norm_cid`.
"""

from __future__ import annotations

from urllib.parse import unquote


def norm_cid(value: str) -> str:
    """``cid:a%40b`` → ``a@b``, ``<a@b>`` → ``a@b``; surrounding white space dropped."""
    value = value.strip()
    if value[:4].lower() == "cid:":
        value = unquote(value[4:])
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip()
