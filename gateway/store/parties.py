"""The codec between a message's PartyIds and its ``from_party``/``to_party`` column.

A message header names its sender and receiver by one or more ``eb:PartyId``
elements (ebMS 2.0 §3.1.1.1); the store keeps them in one text column as
ebms-core spells them: each id ``type:value`` (or the bare value when it has
no type, :meth:`cpa.model.PartyId.key`), joined by commas.  This module is the
only place that joins or splits that text.

The text is not fully reversible for ids whose value holds a comma, or an
untyped id whose value holds a colon: such an id reads back split
differently.  Digikoppeling PartyIds are OINs (``urn:osb:oin:`` and 20
digits), where neither occurs.
"""

from __future__ import annotations

from collections.abc import Iterable

from cpa.model import PartyId

__all__ = ["Parties", "decode", "encode", "like_patterns"]

Parties = tuple[PartyId, ...]
"""A message's sender or receiver: its PartyIds in header order."""


def encode(ids: Iterable[PartyId]) -> str:
    """The stored text of ``ids``: ``type:value`` (or ``value``) joined by commas."""
    return ",".join(p.key() for p in ids)


def decode(text: str) -> Parties:
    """The PartyIds of a stored column: the inverse of :func:`encode` for ordinary ids.

    The type is everything before an id's last colon; an id without a colon
    has no type.
    """
    if not text:
        return ()
    out = []
    for key in text.split(","):
        type_, _, value = key.rpartition(":")
        out.append(PartyId(value, type_ or None))
    return tuple(out)


def like_patterns(party: str) -> tuple[str, str]:
    """``LIKE`` patterns matching one whole id (``type:value`` or the bare value) in a column.

    An id is matched as the last one of the list or followed by a comma; with
    the type left off, the value still matches at the end of its key.
    """
    return f"%{party}", f"%{party},%"
