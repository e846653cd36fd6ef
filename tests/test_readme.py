"""The README's commands are real: every `ddpmkit ...` line in its shell blocks parses as the CLI
reads it (the command, its options and their values), and every command it names is run through
the CLI by some test (the demo script runs the first block)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from ddpmkit.cli.app import app

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def readme_commands(text: str) -> list[list[str]]:
    """The argument lists of the `ddpmkit` commands in the shell blocks of `text` (a torchrun line
    counts from its `-m ddpmkit`), comments removed."""
    found = []
    for block in BLOCK.findall(text):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["torchrun"] and "ddpmkit" in words:
                words = words[words.index("ddpmkit"):]
            if words[:1] == ["ddpmkit"] and len(words) > 1:
                found.append(words[1:])
    return found


COMMANDS = readme_commands((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 15
    assert readme_commands("```bash\nddpmkit sample --n 4  # a comment\nls\n```\n") == [["sample", "--n", "4"]]


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_each_readme_command_parses(args: list[str]):
    group = typer.main.get_command(app)
    cmd = group.get_command(click.Context(group), args[0])
    assert cmd is not None, f"no command {args[0]}"
    cmd.make_context(args[0], list(args[1:]))  # raises on an unknown option or a bad value


def test_a_wrong_command_does_not_parse():
    group = typer.main.get_command(app)
    with pytest.raises(Exception, match="No such option"):  # Typer's own click raises its NoSuchOption
        group.get_command(click.Context(group), "sample").make_context("sample", ["--no-such-option"])


def test_every_readme_command_is_run_by_a_test():
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").glob("test_*.py") if p.name != Path(__file__).name)
    for name in sorted({a[0] for a in COMMANDS}):
        assert re.search(rf"""["']{re.escape(name)}["']""", tests), f"no test runs `ddpmkit {name}`"
