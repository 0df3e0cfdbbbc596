"""The configuration reference, generated from the declarations: ``dkgw config reference``.

Every section and option with its kind, bounds, default and help, as a TOML
file of comments and defaults an operator can start from.
docs/configuration.md holds the same text (tests/test_settings.py checks it).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.settings.options import PAIRS, Declared
from gateway.settings.registry import Section, sections

_TITLE = """\
# dkgw configuration reference: every option, its kind, bounds and default.
#
# Generated from the declarations (`dkgw config reference`).  Paths are relative to
# the file's directory; unknown options are refused.  An option shown commented
# out has no default that can be written here (it is required, or computed when
# the file is read).  deploy/example.toml explains each option at more length.
"""


def toml_value(value: Any) -> str:
    """``value`` as TOML: strings quoted, tuples as arrays, pairs as an inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def default_toml(section: Section, option: Declared) -> str | None:
    """The option's default as its TOML value, or None when it cannot be written."""
    if option.required or option.option.default_text is not None:
        return None
    kind = option.option.kind
    if kind.fills:  # listen: the section's host and port
        fields = {f: getattr(section.cls, f) for f in kind.fills}
        if fields["port"] is None:
            return '""'
        return toml_value(":".join(str(v) for v in fields.values()))
    if kind is PAIRS:
        pairs = ", ".join(f"{k} = {toml_value(v)}" for k, v in option.default)
        return "{ " + pairs + " }" if pairs else "{}"
    if option.default is None:
        return None  # "none": some kinds take "", others only a real path
    return toml_value(option.default)


def _describe(option: Declared) -> str:
    details = [option.option.kind.name]
    if option.option.bound is not None:
        details.append(option.option.bound.words)
    if option.option.default_text is not None:
        details.append(f"default: {option.option.default_text}")
    elif option.required:
        details.append("required")
    elif option.default is None:
        details.append("default: none")
    return "; ".join(details)


def render_section(section: Section) -> str:
    """One section of the reference."""
    header = f"[[{section.name}]]" if section.array else f"[{section.name}]"
    lines = [header, f"# {section.summary()}"]
    for option in section.options():
        lines.append(f"# {option.option.help} ({_describe(option)})")
        value = default_toml(section, option)
        lines.append(f"# {option.name} =" if value is None else f"{option.name} = {value}")
    return "\n".join(lines) + "\n"


def render_reference() -> str:
    """The whole reference, every registered section in reading order."""
    return _TITLE + "".join("\n" + render_section(s) for s in sections())


def render_markdown() -> str:
    """docs/configuration.md: the reference in a code block."""
    return (
        "# Configuration reference\n\n"
        "Every option of the gateway's TOML file with its kind, bounds and default, as\n"
        "`dkgw config reference` prints it.  Generated from the declarations in\n"
        "`gateway/settings/` and the adapters' `config.py` modules; do not edit by hand\n"
        "(`dkgw config reference --markdown > docs/configuration.md`).  A worked example\n"
        "with longer explanations is `deploy/example.toml`.\n\n"
        "```toml\n" + render_reference() + "```\n"
    )
