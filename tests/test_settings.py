"""The declared configuration sections: defaults in one place, refusals, the reference.

Every section is a frozen dataclass whose fields declare their option
(gateway/settings/options.py).  These tests hold the declarations to what the
loader, ``dkgw config reference``, docs/configuration.md and
``deploy/example.toml`` say.  No store, no sockets.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config
from gateway.settings.options import (
    PAIRS,
    POSITIVE,
    Context,
    Declared,
    at_least,
    option,
    option_names,
    read_options,
    refuse_unknown,
)
from gateway.settings.reference import default_toml, render_markdown, render_reference
from gateway.settings.registry import Section, sections

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "deploy" / "example.toml"

TLS = """
[tls]
certificate = "c.pem"
key = "k.pem"
client_certificate = "cc.pem"
client_key = "ck.pem"
trust_anchors = "ta.pem"
"""

#: What a section needs besides the option under test before its options are read.
PRELUDE = {
    "admin": 'listen = "127.0.0.1:9100"\n',
    "api": 'listen = "127.0.0.1:9101"\n',
    "stuf": 'role = "gemeente"\ncpa_id = "c"\ngemeentecodes = ["0363"]\n',
    "webhook": 'url = "https://bo.example/events"\n',
    "filedrop": 'name = "wmo"\ncpa_id = "c"\nservice = "s"\ninbox = "in"\n',
}


@pytest.fixture
def write(tmp_path: Path):
    for name in ("c.pem", "k.pem", "cc.pem", "ck.pem", "ta.pem"):
        (tmp_path / name).write_text("-", encoding="utf-8")

    def write(text: str) -> Path:
        # A [tls] table under test replaces the usual one.
        path = tmp_path / "gateway.toml"
        tls = "" if text.startswith("[tls]") else TLS
        path.write_text(text + tls, encoding="utf-8")
        return path

    return write


def _table(s: Section, body: str) -> str:
    if s.name == "tls":
        return TLS.lstrip() + body
    header = f"[[{s.name}]]" if s.array else f"[{s.name}]"
    return f"{header}\n{PRELUDE.get(s.name, '')}{body}"


def _options() -> list[tuple[Section, Declared]]:
    return [(s, d) for s in sections() for d in s.options()]


def test_each_package_declares_its_own_section() -> None:
    owners = {s.name: s.cls.__module__ for s in sections()}
    assert owners["api"] == "adapters.api.config"
    assert owners["stuf"] == "adapters.stuf.config"
    assert owners["filedrop"] == "adapters.filedrop.config"
    assert owners["webhook"] == "adapters.webhooks.config"
    assert owners["retention"] == "gateway.store.retention"
    assert all(m.startswith("gateway.settings.") for n, m in owners.items() if n in ("http", "tls"))


def test_a_file_without_options_gets_the_declared_defaults(write) -> None:
    config = load_config(write(""))
    for s in sections():
        if s.attribute is None or s.array or s.name == "tls":
            continue  # [tls] has required options; [gateway] and arrays are not one value
        assert getattr(config, s.attribute) == s.cls(), s.name
    assert config.tls.chain is None


@pytest.mark.parametrize(("s", "d"), _options(), ids=lambda x: getattr(x, "name", ""))
def test_the_reference_writes_each_default_as_the_loader_reads_it(s: Section, d: Declared) -> None:
    written = default_toml(s, d)
    if written is None:
        assert d.required or d.default is None or d.option.default_text is not None
        return
    value = tomllib.loads(f"x = {written}")["x"]
    if d.option.kind.fills and value == "":
        assert s.cls().port is None  # an optional listener, off
        return
    read = d.option.kind.read(value, d.name, Context(f"[{s.name}]", Path("/")))
    if isinstance(read, list):  # an option TrustSettings reads passes through as is
        read = tuple(read)
    if d.option.kind.fills:
        assert read == tuple(getattr(s.cls, f) for f in d.option.kind.fills)
    elif d.option.kind is PAIRS:
        assert dict(read) == dict(d.default)
    elif d.option.empty_is_default and not read:
        assert value == [] or value == {}
    else:
        assert read == d.default


def test_an_unknown_option_is_refused_in_every_section(write) -> None:
    for s in sections():
        with pytest.raises(ConfigError) as caught:
            load_config(write(_table(s, "bogus_option = 1\n")))
        assert str(caught.value) == f"unknown option 'bogus_option' in [{s.name}]"


def test_an_unknown_section_is_refused(write) -> None:
    with pytest.raises(ConfigError, match=r"^unknown section \[htpp\]$"):
        load_config(write("[htpp]\n"))


def test_a_wrong_type_is_refused_with_the_option_and_value(write) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write('[delivery]\nconcurrency = "eight"\n'))
    assert str(caught.value) == "option 'concurrency' must be int, got 'eight'"


#: Values tried against each bound, by the declared default's type.
CANDIDATES: dict[type, list[Any]] = {
    int: [-1, 0, 1023, 1 << 40],
    float: [-1.0, 0.0, 1.0, 1e12],
    str: ["", "x", "123", "x" * 60],
}


def _bounded() -> list[tuple[Section, Declared, Any]]:
    found = []
    for s, d in _options():
        bound = d.option.bound
        if bound is None:
            continue
        bad = next(v for v in CANDIDATES[type(d.default)] if not bound.test(v))
        found.append((s, d, bad))
    return found


@pytest.mark.parametrize(
    ("s", "d", "bad"), _bounded(), ids=lambda x: getattr(x, "name", None) or repr(x)
)
def test_a_value_outside_its_bound_is_refused(write, s: Section, d: Declared, bad: Any) -> None:
    value = f'"{bad}"' if isinstance(bad, str) else repr(bad)
    where = f"[[{s.name}]]" if s.array else f"[{s.name}]"
    if s.name == "webhook":
        where = "[[webhook]] #1"
    elif s.name == "filedrop":
        where = "[[filedrop]] wmo"
    with pytest.raises(ConfigError) as caught:
        load_config(write(_table(s, f"{d.name} = {value}\n")))
    assert str(caught.value) == str(d.option.refuse(d.name, where))


def test_every_bound_admits_its_default() -> None:
    for s, d in _options():
        if d.option.bound is not None:
            assert d.option.bound.test(d.default), f"[{s.name}] {d.name}"


@dataclasses.dataclass(frozen=True)
class _Demo:
    """A section declared for these tests only (never registered)."""

    rate: int = option(5, "How often.", bound=at_least(1))
    window: float = option(2.0, "Over how long.", bound=POSITIVE, refusal="{where} window: no")
    names: tuple[str, ...] = option(("a",), "Which.")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, _Demo()),
        ({"rate": 7}, _Demo(rate=7)),
        ({"window": 3}, _Demo(window=3.0)),  # an integer where a number goes
        ({"names": []}, _Demo()),  # an empty list: the default
        ({"names": ["b", "c"]}, _Demo(names=("b", "c"))),
        ({"rate": 0}, "[demo] rate must be at least 1"),
        ({"window": -1.0}, "[demo] window: no"),
        ({"rate": True}, "option 'rate' must be int, got True"),
        ({"rate": 1.5}, "option 'rate' must be int, got 1.5"),
        ({"names": [""]}, "[demo] names must be a list of strings"),
    ],
)
def test_a_declaration_alone_gives_defaults_types_and_bounds(table, expected) -> None:
    ctx = Context("[demo]", Path("/"))
    if isinstance(expected, str):
        with pytest.raises(ConfigError) as caught:
            _Demo(**read_options(_Demo, table, ctx))
        assert str(caught.value) == expected
    else:
        assert _Demo(**read_options(_Demo, table, ctx)) == expected


def test_options_are_named_by_their_declaration() -> None:
    assert option_names(_Demo) == ["rate", "window", "names"]
    with pytest.raises(ConfigError, match=r"^unknown option 'rates' in \[demo\]$"):
        refuse_unknown({"rates": 1}, option_names(_Demo), "[demo]")


def test_docs_configuration_md_is_the_generated_reference() -> None:
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    regenerate = "dkgw config reference --markdown > docs/configuration.md"
    assert text == render_markdown(), f"run: {regenerate}"


def test_the_reference_names_every_option() -> None:
    text = render_reference()
    for s, d in _options():
        assert f"\n{d.name} =" in text or f"\n# {d.name} =" in text, f"[{s.name}] {d.name}"


def _comment_above(lines: list[str], index: int) -> str:
    """The comment lines above an option, over the options of its group."""
    found = []
    for line in reversed(lines[:index]):
        if not line.strip() or line.startswith("["):
            break
        if line.startswith("#"):
            found.append(line)
        elif found:
            break
    return "\n".join(found)


def _example_options() -> list[tuple[Section, Declared]]:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    return [(s, d) for s, d in _options() if s.name in data]


@pytest.mark.parametrize(("s", "d"), _example_options(), ids=lambda x: getattr(x, "name", ""))
def test_the_example_states_each_default_it_departs_from(s: Section, d: Declared) -> None:
    """deploy/example.toml: a value other than the default says what the default is."""
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    header = f"[[{s.name}]]" if s.array else f"[{s.name}]"
    start = lines.index(header)
    index = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"{d.name} ="))
    value = tomllib.loads(lines[index])[d.name]
    written = default_toml(s, d)
    shown = '""' if written is None and d.default is None else written
    if shown is not None and value == tomllib.loads(f"x = {shown}")["x"]:
        return  # the example has the default
    if d.option.empty_is_default and value in ([], {}):
        return
    comment = _comment_above(lines, index)
    if shown is None:
        assert "default" in comment.lower() or d.required, f"[{s.name}] {d.name}"
    else:
        said = {shown, shown.replace(".0", "")}
        if shown == '""':
            said |= {"none", "None"}
        if d.option.empty_is_default:
            said.add("[]")
        assert any(x in comment for x in said), f"[{s.name}] {d.name}: say the default {shown}"
