"""The CLI convention (CONTRIBUTING.md, `cli/options.py`), checked over every command:

- one option name per setting, the same in every command (`SETTING_OPTIONS`); every other option
  is a declared plain option (`PLAIN`), so a new name has to be registered to pass;
- `--out` is an output folder; an option that takes a file says so in its name (`--out-json`);
- `-n` beside `--n`;
- usage lines name the arguments as they are used, without Typer's braces;
- each command's `--set` example is a real key in a section that command reads;
- the commands that read settings take --preset, --config and --set.

The checker runs on the real app, and on a made-up command that breaks each rule, so the test
fails when a command breaks the convention."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import click
import pytest
import typer
from typing_extensions import Annotated

from ddpmkit.cli.app import Command, app
from ddpmkit.cli.options import SETTING_OPTIONS
from ddpmkit.settings import Settings

USAGE = {
    "prepare": "[OPTIONS]", "train": "[OPTIONS]", "sample": "[OPTIONS] [RUN]", "inpaint": "[OPTIONS] [RUN] IMAGE",
    "noise-demo": "[OPTIONS] IMAGE", "inspect": "[OPTIONS] [PATH]", "fid": "[OPTIONS] SOURCE [REFERENCE]",
    "report": "[OPTIONS] [RUN]", "interpolate": "[OPTIONS] [RUN]", "export": "[OPTIONS] RUN OUT",
    "import": "[OPTIONS] SRC", "serve": "[OPTIONS] [RUN]...",
}
# the settings sections each command reads (its --set example must be one of them)
READS = {
    "prepare": {"data"}, "train": {"model", "diffusion", "data", "train", "sample", "fid"},
    "sample": {"sample"}, "inpaint": {"sample"}, "interpolate": {"sample"}, "fid": {"fid", "data", "sample"},
    "noise-demo": {"diffusion"}, "inspect": {"model", "diffusion", "data", "train", "sample", "fid"},
    "import": {"data", "train", "sample", "fid"}, "serve": {"sample"},
}
NO_SETTINGS = {"report", "export"}  # read a run folder only: no --preset/--config/--set
# options that set no setting: what to write, where, and how to show it
PLAIN = {
    "--help", "--config", "--preset", "--set", "--out", "--out-json", "--preview-png", "--force", "--gif", "--scale",
    "--no-ema", "--progress", "--no-progress", "--resume", "--mask", "--jump", "--resample", "--attr", "--guidance",
    "--seeds", "--images", "--frames", "--refine", "--bounce", "--no-bounce", "--t", "--no-compile",
    "--format", "--scheduler-json", "--revision", "--replan", "--host", "--port", "--max-upload-mb",
}
FILE_SUFFIXES = ("-json", "-png", "-yaml")


def commands(group: click.Group) -> dict[str, click.Command]:
    ctx = click.Context(group)
    return {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}


def long_names(param: Any) -> list[str]:
    return [o for o in [*param.opts, *param.secondary_opts] if o.startswith("--")]


def broken_rules(name: str, cmd: click.Command) -> list[str]:
    """What `cmd` does against the convention (empty: nothing)."""
    problems: list[str] = []
    options = [p for p in cmd.params if p.param_type_name == "option"]
    names = {n for p in options for n in long_names(p)}
    for n in sorted(names - PLAIN - set(SETTING_OPTIONS)):
        problems.append(f"{n} is neither a registered setting option nor a plain option")
    for p in options:
        if "--n" in p.opts and "-n" not in p.opts:
            problems.append("--n without -n")
        takes_file = (p.metavar or "").upper() == "FILE"
        if takes_file and not any(n.endswith(FILE_SUFFIXES) for n in long_names(p)):
            problems.append(f"{long_names(p)[0]} takes a file but its name does not say so")
        if "--out" in p.opts and (takes_file or "folder" not in (p.help or "").lower()):
            problems.append("--out is not an output folder")
    usage = cmd.collect_usage_pieces(click.Context(cmd, info_name=name))
    if " ".join(usage) != USAGE.get(name, " ".join(usage)) or "{" in " ".join(usage):
        problems.append(f"usage {' '.join(usage)!r}")
    if name in NO_SETTINGS:
        return problems
    missing = {"--preset", "--config", "--set"} - names
    if missing:
        problems.append(f"no {', '.join(sorted(missing))}")
    set_help = next((p.help or "" for p in options if "--set" in p.opts), "")
    m = re.search(r"--set (\w+)\.(\w+)=", set_help)
    if m is None or m.group(1) not in READS.get(name, set()) or m.group(2) not in _fields(m.group(1)):
        problems.append(f"--set example {m.group(0) if m else '(none)'} is not a key {name} reads")
    return problems


def _fields(section: str) -> set[str]:
    model = Settings.model_fields.get(section)
    return set(model.annotation.model_fields) if model is not None else set()


@pytest.mark.parametrize("name", sorted(USAGE))
def test_every_command_keeps_the_convention(name: str):
    cmd = commands(typer.main.get_command(app))[name]
    assert broken_rules(name, cmd) == []


def test_every_command_is_checked():
    assert set(commands(typer.main.get_command(app))) == set(USAGE)


def test_one_option_name_per_setting():
    """Two option names for one setting (say --root and --data-root for data.root) are refused."""
    targets = list(SETTING_OPTIONS.values())
    assert len(targets) == len(set(targets)), sorted(t for t in targets if targets.count(t) > 1)
    for target in targets:
        section, key = target.split(".")
        sections = ("train", "sample", "fid") if section == "{own}" else (section,)
        assert any(key in _fields(s) for s in sections), target


def test_the_checker_catches_each_broken_rule():
    bad = typer.Typer(add_completion=False)

    @bad.command(cls=Command)
    def sample(
        run: Annotated[Optional[Path], typer.Argument(metavar="[[RUN]]")] = None,
        root: Annotated[Optional[Path], typer.Option("--root")] = None,
        n: Annotated[Optional[int], typer.Option("--n")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Write the JSON here.")] = None,
        result: Annotated[Optional[Path], typer.Option("--result", metavar="FILE")] = None,
        sets: Annotated[Optional[list[str]], typer.Option("--set", help="e.g. --set train.lr=1e-4")] = None,
    ) -> None:
        """A command that breaks every rule."""

    cmd = typer.main.get_command(bad)
    problems = " | ".join(broken_rules("sample", cmd))
    for needle in ("--root is neither", "--n without -n", "--result takes a file", "--out is not an output folder",
                   "usage", "no --config, --preset", "--set example --set train.lr="):
        assert needle in problems, (needle, problems)
