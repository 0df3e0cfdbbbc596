"""The command line as one tool: help and examples everywhere, ``--config`` everywhere,
``--version``, and no store made or used where none was named."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import NO_STORE_COMMANDS, _leaves, build_parser, main
from gateway.commands.common import version
from gateway.commands.examples import EXAMPLES

LEAVES = dict(_leaves(build_parser()))


def test_every_option_has_help_text() -> None:
    missing = [
        (" ".join(path), action.option_strings or action.dest)
        for path, parser in LEAVES.items()
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert missing == []


def test_the_message_subcommands_have_help_examples_and_config() -> None:
    from gateway.commands.message import EXAMPLES as MESSAGE_EXAMPLES
    from gateway.commands.message import SUBCOMMANDS, _subparser

    assert set(MESSAGE_EXAMPLES) == set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        parser = _subparser(name)
        assert all(a.help for a in parser._actions), name
        assert "--config" in parser.format_help() and "examples:" in parser.format_help()
        for line in MESSAGE_EXAMPLES[name]:
            words = shlex.split(line)
            assert words[:4] == ["dkgw", "--config", "/etc/dkgw/dkgw.toml", "message"]
            assert words[4] == name
            parser.parse_args(words[5:])


def test_every_command_has_examples_that_parse_to_it() -> None:
    assert set(EXAMPLES) == set(LEAVES)
    for path, lines in EXAMPLES.items():
        handler = LEAVES[path].get_default("handler")
        for line in lines:
            words = shlex.split(line)
            assert words[0] == "dkgw", line
            for redirect in (">", ">>", "|"):  # the shell's part of the line
                if redirect in words:
                    words = words[: words.index(redirect)]
            args = build_parser().parse_args(words[1:])
            assert args.handler is handler, line
        assert "examples:" in LEAVES[path].format_help()


@pytest.mark.parametrize("path", sorted(set(LEAVES) - NO_STORE_COMMANDS), ids=" ".join)
def test_every_store_command_takes_config_after_its_name(path: tuple[str, ...]) -> None:
    options = {o for action in LEAVES[path]._actions for o in action.option_strings}
    assert "--config" in options


def test_version_is_printed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"dkgw {version()}" and version() != "unknown"


def _config(write: Callable[[str], Path], store: Path) -> Path:
    return write(f'[gateway]\ndata_dir = "{store.parent}"\nstore = "sqlite:///{store}"\n')


@pytest.mark.parametrize("where", ["before", "after", "environment"])
def test_config_names_the_store_before_or_after_the_command(
    where: str,
    write: Callable[[str], Path],
    tmp_path: Path,
    cpa_xml: Callable[..., bytes],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = tmp_path / "state" / "gw.sqlite3"
    config = _config(write, store)
    cpa = tmp_path / "cpa.xml"
    cpa.write_bytes(cpa_xml(cpa_id="config-cpa"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DKGW_CONFIG", raising=False)
    monkeypatch.delenv("DKGW_STORE", raising=False)
    monkeypatch.delenv("DKGW_DATA_DIR", raising=False)
    if where == "environment":
        monkeypatch.setenv("DKGW_CONFIG", str(config))

    def dkgw(*words: str) -> int:
        if where == "before":
            return main(["--config", str(config), *words])
        if where == "after":
            return main([*words, "--config", str(config)])
        return main(list(words))

    assert dkgw("cpa", "import", str(cpa)) == 0
    assert store.exists()
    capsys.readouterr()
    assert dkgw("cpa", "list") == 0
    assert "config-cpa" in capsys.readouterr().out
    assert not (tmp_path / "var").exists()


def test_an_explicit_store_wins_over_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DKGW_DATA_DIR", str(tmp_path / "from-env"))
    assert main(["--data-dir", str(tmp_path / "named"), "urlmap", "list"]) == 1
    assert f"no store at {tmp_path / 'named' / 'gateway.sqlite3'}" in capsys.readouterr().err
    assert main(["urlmap", "list"]) == 1
    assert f"no store at {tmp_path / 'from-env' / 'gateway.sqlite3'}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "words",
    [
        ("cpa", "list"),
        ("message", "x@y"),
        ("urlmap", "list"),
        ("log",),
        ("check", "ping"),
        ("ping", "cpa", "--from", "a", "--to", "b"),
    ],
    ids=" ".join,
)
def test_no_store_named_is_one_line_and_makes_nothing(
    words: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DKGW_CONFIG", "DKGW_STORE", "DKGW_DATA_DIR"}
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *words],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert done.returncode in (1, 3)  # 3: the monitoring check's UNKNOWN
    text = (done.stdout + done.stderr).strip()
    assert len(text.splitlines()) == 1, text
    assert "no store named: give --config FILE, --store URL or --data-dir DIR" in text
    assert list(tmp_path.iterdir()) == []


def test_serve_without_config_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 1
    assert (
        capsys.readouterr().err == "dkgw: serve needs the gateway's configuration: --config FILE\n"
    )
