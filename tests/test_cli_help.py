"""The CLI's help and small things a user trips on: --version, a fast --help, plain usage lines,
flags without a type, examples that fit each command, option errors that name the option."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddpmkit import __version__
from ddpmkit.cli.app import app
from ddpmkit.cli.options import preset_default

SRC = Path(__file__).resolve().parents[1] / "src"
COMMANDS = ["prepare", "train", "sample", "noise-demo", "inspect", "fid", "report", "export", "import"]
MINE = ["prepare", "noise-demo", "inspect", "fid"]  # the commands whose help these tests hold to examples
HEAVY = ("torch", "numpy", "PIL", "matplotlib", "scipy", "torchvision")

runner = CliRunner()


def _help(*args: str) -> str:
    r = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"ddpmkit {__version__}"


def test_help_and_version_load_no_heavy_modules():
    """`ddpmkit --help`, each command's --help and --version answer without torch, numpy or PIL."""
    code = (
        "import sys\n"
        "from ddpmkit.cli.app import app\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n"
        "        app(args.split(), prog_name='ddpmkit')\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    calls = ["--help", "--version", *(f"{c} --help" for c in COMMANDS)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code, *calls], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage: ddpmkit noise-demo [OPTIONS] IMAGE" in proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_lines_and_flags_are_plain(command: str):
    text = _help(command)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert re.search(r"Usage: \S+ " + re.escape(command) + r" \[OPTIONS\]", usage), usage
    assert "<bool>" not in text
    assert "<list[" not in text  # repeatable options show what one value looks like


def test_argument_names_in_usage():
    assert "[OPTIONS] IMAGE" in _help("noise-demo")
    assert "[OPTIONS] SOURCE [REFERENCE]" in _help("fid")
    assert "[OPTIONS] [PATH]" in _help("inspect")
    top = _help()
    assert "<bool>" not in top and "--version" in top and "ddpmkit prepare --size 64" in top


@pytest.mark.parametrize(
    "command,example",
    [("noise-demo", "diffusion.schedule=cosine"), ("fid", "fid.ref_split=test"), ("inspect", "model.ch=64"),
     ("prepare", "data.dataset=folder")],
)
def test_examples_fit_the_command(command: str, example: str):
    text = _help(command)
    assert "train.lr" not in text  # a training setting is no example for this command
    assert f"--set {example}" in " ".join(text.split())  # the --set help, however it wraps
    assert "Examples:" in text and f"ddpmkit {command} " in text
    assert "KEY=VALUE" in text


def test_defaults_from_the_presets_in_help():
    assert preset_default("fid.n") == "default 10,000"  # every preset agrees
    size = preset_default("data.size")
    assert size.startswith("default by preset:") and "demo 32" in size and "celeba64 64" in size
    assert "demo 32" in " ".join(_help("prepare").split())


def _error(*args: str) -> str:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


def test_option_errors_name_the_option(tmp_path: Path):
    line = _error("prepare", "--size", "0", "--cache-dir", str(tmp_path / "c"))
    assert "--size 0" in line and "8" in line
    assert "data.size" not in line and "model.image_size" not in line and "preset" not in line
    assert "--workers -1" in _error("prepare", "--workers", "-1")
    assert "--crop square" in _error("prepare", "--crop", "square")
    assert not (tmp_path / "c").exists()
    # a bad --set value is still reported under its setting's name
    assert "data.size" in _error("prepare", "--set", "data.size=0")
    assert "--n 1" in _error("fid", str(tmp_path), "--n", "1")


def test_commands_run_with_a_typer_that_has_no_display_type(monkeypatch):
    """Typer before 0.29 (the GPU image's) has no Option.display_type: the type tweak for help is skipped and
    the command still parses (it once crashed every command there). Typer 0.29's own help needs the method,
    so help is not invoked here."""
    from typer.core import TyperOption

    owner = next(c for c in TyperOption.__mro__ if "display_type" in vars(c))
    monkeypatch.delattr(owner, "display_type")
    assert not hasattr(TyperOption, "display_type")
    r = runner.invoke(app, ["train", "--preset", "demo", "--set", "train.no_such_key=1"])
    assert not isinstance(r.exception, AttributeError), r.exception
    assert r.exit_code not in (0, None) and "no_such_key" in r.output  # got as far as reading the settings
