"""The sections of the configuration file: each package registers its own.

The gateway's sections are declared in :mod:`gateway.settings.sections` and
:mod:`gateway.settings.security`; the adapters declare theirs next to their
code (``adapters/api/config.py``, ``adapters/stuf/config.py``...).  The modules
are imported by name when the sections are first needed, as
``gateway.serve.SCHEMA_MODULES`` are, so that the configuration does not import
the adapters' code at its own import.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.settings.options import Context, Declared, declared

#: The modules that register a section when imported, in the order the file is read.
SECTION_MODULES = (
    "gateway.settings.sections",
    "gateway.settings.security",
    "adapters.api.config",
    "adapters.webhooks.config",
    "adapters.filedrop.config",
    "adapters.stuf.config",
)

#: ``read(table, context, read_so_far)``: the section's value from its TOML table
#: (for an array section, the list of tables), given the sections read before it
#: by attribute.
Reader = Callable[[Any, Context, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Section:
    """One section of the file: its name, the dataclass that declares it, how it is read."""

    name: str
    """``api`` for ``[api]``, ``webhook`` for ``[[webhook]]``."""
    cls: type
    """The frozen dataclass whose :func:`~gateway.settings.options.option` fields declare it."""
    attribute: str | None
    """The field of :class:`gateway.config.GatewayConfig` it fills; None: the reader's
    mapping is spread over several (``[gateway]``)."""
    read: Reader
    array: bool = False
    """Written as an array of tables (``[[webhook]]``), one entry each."""
    order: int = 0
    """Sections are read in this order (then by registration)."""
    extra: tuple[Declared, ...] = ()
    """Options read by another's code (``[security]``'s trust options) or that are
    sub-tables (``[[stuf.gemeente]]``), declared here for the reference and the check
    of unknown options."""

    def summary(self) -> str:
        """The first line of the declaring class's docstring, without its markup."""
        line = (self.cls.__doc__ or "").strip().splitlines()[0]
        line = re.sub(r"^``\[+[a-z.]+\]+``: ", "", line)
        line = re.sub(r":[a-z]+:`([^`]+)`", r"\1", line)
        line = line.replace("``", "`")
        return line[:1].upper() + line[1:]

    def options(self) -> list[Declared]:
        """Every option of the section, in the order the reference lists them."""
        return [*declared(self.cls), *self.extra]

    def option_names(self) -> set[str]:
        """The names the file may use in this section."""
        return {d.name for d in self.options()}


_REGISTERED: dict[str, Section] = {}


def register(section: Section) -> Section:
    """Add a section; a name registered twice is a programming error."""
    if section.name in _REGISTERED and _REGISTERED[section.name] is not section:
        raise ValueError(f"section [{section.name}] is registered twice")
    _REGISTERED[section.name] = section
    return section


def sections() -> list[Section]:
    """Every section, in the order the file is read; imports the declaring modules once."""
    for module in SECTION_MODULES:
        importlib.import_module(module)
    ordered = sorted(enumerate(_REGISTERED.values()), key=lambda pair: (pair[1].order, pair[0]))
    return [section for _, section in ordered]


def section(name: str) -> Section:
    """The section called ``name``."""
    return {s.name: s for s in sections()}[name]


def default_of(name: str) -> Callable[[], Any]:
    """A default factory for a section's value, for fields of another package's type."""

    def make() -> Any:
        return section(name).cls()

    return make
