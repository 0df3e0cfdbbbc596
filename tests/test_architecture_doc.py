"""docs/architecture.md against the code: its state tables, its paths, its contracts.

The page is the newcomer's map; these checks keep it from going stale.  The
state tables must say exactly what :mod:`gateway.msh.states` says, every file
or folder it names must exist, and the import contracts it lists must be those
of ``[tool.importlinter]`` in pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.msh.states import INBOUND, OUTBOUND, TASK, WEBHOOK, StateMachine

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"

MACHINES: dict[str, StateMachine[Any, Any]] = {
    "OUTBOUND": OUTBOUND,
    "INBOUND": INBOUND,
    "TASK": TASK,
    "WEBHOOK": WEBHOOK,
}

#: A repository path in backquotes: ``gateway/msh/receive.py``, ``adapters/api/``.
PATH = re.compile(r"`((?:[a-z_]+/)+(?:[a-z_]+\.(?:py|md))?)`")
#: A relative link to another page in docs/: ``[msh.md](msh.md)``.
LINK = re.compile(r"\]\(([a-z_]+\.md)\)")
#: A page in docs/ named in the text: ``docs/msh.md``.
DOC = re.compile(r"\bdocs/([a-z_]+\.md)\b")


def _text() -> str:
    return PAGE.read_text(encoding="utf-8")


def _cell(value: str) -> str | None:
    value = value.strip()
    if value == "—":
        return None
    assert value.startswith("`") and value.endswith("`"), value
    return value.strip("`")


def parse_table(text: str, name: str) -> dict[str, dict[str, str]]:
    """The table after ``<!-- states: NAME -->`` as ``{state: {event: next state}}``."""
    marker = f"<!-- states: {name} -->"
    assert text.count(marker) == 1, f"{marker} must appear once"
    lines = text.split(marker, 1)[1].strip().splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c for c in line.strip().strip("|").split("|")])
    header, _rule, *body = rows
    states = [_cell(c) for c in header[1:]]
    table: dict[str, dict[str, str]] = {s: {} for s in states if s is not None}
    for row in body:
        event = _cell(row[0])
        assert event is not None
        assert len(row) == len(header), f"{name}: row {event} has {len(row)} cells"
        for state, cell in zip(states, row[1:], strict=True):
            after = _cell(cell)
            if after is not None:
                assert state is not None
                table[state][event] = after
    return table


def expected(machine: StateMachine[Any, Any]) -> dict[str, dict[str, str]]:
    return {
        state.value: {event.value: after.value for event, after in moves.items()}
        for state, moves in machine.table.items()
    }


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_state_table_matches_the_code(name: str) -> None:
    assert parse_table(_text(), name) == expected(MACHINES[name])


def test_parse_table_sees_a_wrong_cell() -> None:
    # The comparison above can fail: one changed cell is one different table.
    text = _text()
    wrong = text.replace(
        "| `retried` | — | — | `CREATED` | `CREATED` |", "| `retried` | — | — | `CREATED` | — |"
    )
    assert wrong != text
    assert parse_table(wrong, "OUTBOUND") != expected(OUTBOUND)


def test_every_named_path_exists() -> None:
    text = _text()
    named = set(PATH.findall(text))
    assert len(named) > 40, "the page names the modules it describes"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == []


def test_every_linked_doc_exists() -> None:
    text = _text()
    pages = set(LINK.findall(text)) | set(DOC.findall(text))
    assert pages
    missing = sorted(p for p in pages if not (ROOT / "docs" / p).exists())
    assert missing == []


def test_contracts_are_those_of_pyproject() -> None:
    text = _text()
    block = text.split("<!-- contracts -->", 1)[1].split("<!-- /contracts -->", 1)[0]
    listed = [line[2:].strip() for line in block.strip().splitlines()]
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = [c["name"] for c in config["tool"]["importlinter"]["contracts"]]
    assert listed == declared
