"""SQL guards derived from the state tables in :mod:`gateway.msh.states`.

A guarded update names the states a row may be in for the move to happen
(``WHERE state IN ('pending', 'sending')``); the states come from the table
(:meth:`~gateway.msh.states.StateMachine.sources`), never from a literal
written beside the query.  They are written into the statement as literals
rather than bound: they are our own enum values, and a literal lets the
database plan with its statistics for that value, as the hand-written
statements did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

__all__ = ["in_states", "literal"]

_SAFE = re.compile(r"[A-Za-z_-]+")


def literal(state: StrEnum) -> str:
    """``state`` as an SQL string literal; only plain enum values are accepted."""
    if not _SAFE.fullmatch(state.value):
        raise ValueError(f"not a plain state value: {state.value!r}")
    return f"'{state.value}'"


def in_states(column: str, states: Iterable[StrEnum]) -> str:
    """``column = 'a'`` or ``column IN ('a', 'b')`` for ``states``, in their value order.

    Raises ValueError for no states at all: a guard that nothing passes is a
    mistake in the table, not a query to run.
    """
    values = sorted(states, key=lambda s: s.value)
    if not values:
        raise ValueError(f"no states to guard {column} with")
    if len(values) == 1:
        return f"{column} = {literal(values[0])}"
    return f"{column} IN ({', '.join(literal(s) for s in values)})"
