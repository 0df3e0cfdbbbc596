"""How a configuration option is declared once: default, kind, bounds and help in one place.

A section of the configuration file (``[http]``, ``[api]``...) is a frozen
dataclass whose fields are declared with :func:`option`.  The field's default is
the option's default; the metadata holds the option's kind (how a TOML value is
read and checked), its bounds and a one-line help text.  From that one
declaration come:

* reading a TOML table (:func:`read_options`): unknown options refused, values
  type-checked, paths made absolute, bounds checked;
* the generated reference (:mod:`gateway.settings.reference`, ``dkgw config
  reference``, docs/configuration.md);
* the checks that ``deploy/example.toml`` names every option with its default.

The error texts are those the gateway has always given (tests hold them): a
wrong type is ``option 'x' must be int, got 'y'``, an unknown option
``unknown option 'x' in [section]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import OperatorError


class ConfigError(OperatorError, ValueError):
    """The configuration file is missing, unreadable or wrong; the text says where."""


@dataclass(frozen=True)
class Context:
    """Where a table is read: its name in messages (``[api]``) and the config's directory."""

    where: str
    base: Path


@dataclass(frozen=True)
class Kind:
    """How the TOML value of one option is read; ``read`` raises :class:`ConfigError`."""

    name: str
    """The kind in the reference: ``integer``, ``path``, ``list of strings``..."""
    read: Callable[[Any, str, Context], Any]
    """``read(value, option_name, context)``: the value as the section's field holds it."""
    fills: tuple[str, ...] = ()
    """When set, ``read`` gives a tuple spread over these fields (``listen``: host, port)."""


def _typed(kind: type) -> Callable[[Any, str, Context], Any]:
    def read(value: Any, key: str, ctx: Context) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ConfigError(f"option {key!r} must be {kind.__name__}, got {value!r}")
        return value

    return read


INT = Kind("integer", _typed(int))
FLOAT = Kind("number", _typed(float))
BOOL = Kind("boolean", _typed(bool))
STR = Kind("string", _typed(str))


def _strings(value: Any, key: str, ctx: Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{ctx.where} {key} must be a list of strings")
    return tuple(value)


#: A list of non-empty strings; an empty list means the default.
STRINGS = Kind("list of strings", _strings)


def _path(value: Any, key: str, ctx: Context) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{ctx.where} {key} must be a file path")
    return (ctx.base / value).resolve()


def _existing(value: Any, key: str, ctx: Context) -> Path | None:
    target = _path(value, key, ctx)
    if target is not None and not target.exists():
        raise ConfigError(f"{ctx.where} {key}: {target} does not exist")
    return target


#: A file or folder relative to the config's directory; ``""`` for none.
PATH = Kind("path", _path)
#: As :data:`PATH`, and it must exist when given.
EXISTING_PATH = Kind("path (must exist)", _existing)


def _pairs(value: Any, key: str, ctx: Context) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        raise ConfigError(f"{ctx.where} {key} must be a table of strings")
    return tuple(sorted(value.items()))


#: A table of strings (``{ iwmo = "urn:..." }``), held as sorted pairs; empty means the default.
PAIRS = Kind("table of strings", _pairs)


@dataclass(frozen=True)
class Bound:
    """A bound on a number: ``test`` says whether a value is within, ``words`` says what is."""

    test: Callable[[Any], bool]
    words: str


POSITIVE = Bound(lambda v: v > 0, "positive")
NOT_NEGATIVE = Bound(lambda v: v >= 0, "0 (off) or positive")


def at_least(low: float) -> Bound:
    """A bound ``value >= low``."""
    return Bound(lambda v: v >= low, f"at least {low:g}")


def between(low: float, high: float, words: str | None = None) -> Bound:
    """A bound ``low <= value <= high``."""
    return Bound(lambda v: low <= v <= high, words or f"between {low:g} and {high:g}")


def one_of(choices: tuple[str, ...]) -> Bound:
    """A bound: one of ``choices``."""
    return Bound(lambda v: v in choices, f"one of {', '.join(choices)}")


def fraction() -> Bound:
    """A bound ``0 <= value < 1``."""
    return Bound(lambda v: 0 <= v < 1, "at least 0 and below 1")


@dataclass(frozen=True)
class Option:
    """What a section's field declares about its option in the configuration file."""

    help: str
    kind: Kind
    bound: Bound | None = None
    refusal: str | None = None
    """The message when the bound fails, ``{where}`` standing for the section; default
    ``{where} {name} must be {bound}``."""
    name: str | None = None
    """The option's name in the file, when it is not the field's."""
    default_text: str | None = None
    """How the reference shows a default computed at load time (``the host name``)."""
    empty_is_default: bool = False
    """A list or table given empty means the default (``releases = []``)."""

    def refuse(self, name: str, where: str) -> ConfigError:
        """The error for a value outside the bound."""
        assert self.bound is not None
        if self.refusal is not None:
            return ConfigError(self.refusal.format(where=where))
        return ConfigError(f"{where} {name} must be {self.bound.words}")


_META = "dkgw.option"

_KINDS: dict[type, Kind] = {bool: BOOL, int: INT, float: FLOAT, str: STR}


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    kind: Kind | None = None,
    bound: Bound | None = None,
    refusal: str | None = None,
    name: str | None = None,
    default_text: str | None = None,
) -> Any:
    """A dataclass field that is an option of the configuration file.

    ``kind`` follows from the default when it is a bool, int, float, str or a
    tuple of strings; paths and tables name theirs.  Without a default the
    option is required.
    """
    if kind is None:
        if isinstance(default, tuple) and all(isinstance(v, str) for v in default):
            kind = STRINGS
        elif type(default) in _KINDS:
            kind = _KINDS[type(default)]
        else:
            raise TypeError(f"option with default {default!r} needs a kind")
    meta = Option(
        help=help,
        kind=kind,
        bound=bound,
        refusal=refusal,
        name=name,
        default_text=default_text,
        empty_is_default=kind in (STRINGS, PAIRS),
    )
    return dataclasses.field(default=default, metadata={_META: meta})


@dataclass(frozen=True)
class Declared:
    """One declared option of a section: the field, its name in the file and its declaration."""

    field: str
    name: str
    option: Option
    default: Any
    """The field's default, or :data:`dataclasses.MISSING` for a required option."""

    @property
    def required(self) -> bool:
        """Whether the file must give it."""
        return self.default is dataclasses.MISSING


def declared(cls: type) -> list[Declared]:
    """The options of a section dataclass, in declaration order."""
    found = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_META)
        if isinstance(meta, Option):
            found.append(Declared(f.name, meta.name or f.name, meta, f.default))
    return found


def option_names(cls: type) -> list[str]:
    """The names of a section's options in the file."""
    return [d.name for d in declared(cls)]


def refuse_unknown(table: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Refuse the first option of ``table`` that is not ``known``."""
    allowed = set(known)
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown option {key!r} in {where}")


def read_options(
    cls: type, table: Mapping[str, Any], ctx: Context, *, only: list[str] | None = None
) -> dict[str, Any]:
    """The values of ``cls``'s options in ``table``, by field name, type-checked.

    An option not in the table keeps its default (and is left out of the
    result); so does an empty list or table.  Bounds are checked after all types,
    in declaration order.  ``only`` limits the options read (the others are
    the section's own business).
    """
    values: dict[str, Any] = {}
    options = [d for d in declared(cls) if only is None or d.name in only]
    for d in options:
        if d.name not in table:
            continue
        value = d.option.kind.read(table[d.name], d.name, ctx)
        if d.option.empty_is_default and not value:
            continue
        if d.option.kind.fills:
            values.update(zip(d.option.kind.fills, value, strict=True))
        else:
            values[d.field] = value
    for d in options:
        if d.option.bound is None:
            continue
        value = values.get(d.field, d.default)
        if (
            value is not dataclasses.MISSING
            and value is not None
            and not d.option.bound.test(value)
        ):
            raise d.option.refuse(d.name, ctx.where)
    return values
