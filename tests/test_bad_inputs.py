"""Bad inputs through the real Typer app (issue 12 §2, §5): each one is exit status 2, exactly one
`error:` line naming the culprit, no traceback, and the files it must not touch unchanged."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ddpmkit.cli import app as app_module
from ddpmkit.cli.app import app
from ddpmkit.settings import PRESET_DIR
from ddpmkit.train import train

from conftest import TINY, tiny

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny run (checkpoint step_00000002), its config file, and damaged weights files."""
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    train(tiny(run, train={"max_steps": 2}), log=lambda m: None, progress=False)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "max_steps": 2}}))
    ema = run / "checkpoints" / "step_00000002" / "ema.safetensors"
    tensors = load_file(str(ema))
    with safe_open(str(ema), framework="pt") as f:
        meta = dict(f.metadata())
    declared = json.loads(meta["settings"])
    declared["model"]["ch"] = 256
    for name, change in {
        "settings_not_json": {"settings": "{'model': oops"},
        "step_not_a_number": {"step": "12abc"},
        "declares_ch256": {"settings": json.dumps(declared)},
    }.items():
        save_file(tensors, str(root / f"{name}.safetensors"), {**meta, **change})
    return {"root": root, "run": run, "cfg": cfg}


def _copy_run(made: dict[str, Path], tmp: Path) -> Path:
    dst = tmp / "run_copy"
    shutil.copytree(made["run"], dst)
    return dst


# Each case: (made, tmp) -> (arguments, paths that must be left exactly as they were, needle).
# A path that does not exist must still not exist afterwards.
Case = Callable[[dict, Path], tuple[list, list[Path], str]]


def _train(made, tmp, *extra):
    return ["train", "--config", made["cfg"], "--run-dir", tmp / "new", "--no-progress", *extra]


def _preset_outside(made, tmp):
    evil = tmp / "evil.yaml"  # a complete, valid settings file: without the check it trains
    evil.write_text(made["cfg"].read_text())
    rel = os.path.relpath(tmp / "evil", PRESET_DIR)
    return ["train", "--preset", rel, "--run-dir", tmp / "new", "--no-progress"], [tmp / "new"], "preset name"


def _config_not_utf8(made, tmp):
    bad = tmp / "latin1.yaml"
    text = made["cfg"].read_text().splitlines()
    text[2] += "  # caf\xe9"
    bad.write_bytes("\n".join(text).encode("latin-1"))
    return ["train", "--config", bad, "--run-dir", tmp / "new"], [tmp / "new"], f"{bad} line 3 is not UTF-8"


def _state_not_a_dict(made, tmp):
    run = _copy_run(made, tmp)
    torch.save([1, 2, 3], run / "checkpoints" / "step_00000002" / "state.pt")
    return ["train", "--run-dir", run, "--resume", "--max-steps", "4", "--no-progress"], [run], "holds a list"


def _latest_outside(made, tmp):
    run = _copy_run(made, tmp)
    (run / "checkpoints" / "latest").write_text("../..\n")
    args = ["train", "--run-dir", run, "--resume", "--max-steps", "4", "--no-progress"]
    return args, [run], "not a checkpoint folder"


def _sample(made, tmp, weights: str, *extra):
    source = made["root"] / f"{weights}.safetensors" if weights else made["run"]
    return ["sample", source, "--n", "1", "--steps", "2", "--out", tmp / "out", *extra]


CASES: dict[str, Case] = {
    "train --seed 2**64": lambda m, t: (_train(m, t, "--seed", str(2**64)), [t / "new"], "train.seed"),
    "sample --seed 2**64": lambda m, t: (_sample(m, t, "", "--seed", str(2**64)), [m["run"], t / "out"], "seed"),
    "--preset ../x": _preset_outside,
    "model.cond_dim=40": lambda m, t: (_train(m, t, "--set", "model.cond_dim=40"), [t / "new"], "--condition attributes"),
    "--config not UTF-8": _config_not_utf8,
    "--batch-size > dataset": lambda m, t: (_train(m, t, "--batch-size", "1000"), [t / "new"], "fewer than one batch"),
    "model.in_channels=1": lambda m, t: (_train(m, t, "--set", "model.in_channels=1"), [t / "new"], "in_channels"),
    "inspect: settings not JSON": lambda m, t: (
        ["inspect", m["root"] / "settings_not_json.safetensors"], [m["root"]], "'settings' metadata is not valid JSON"),
    "sample: settings not JSON": lambda m, t: (
        _sample(m, t, "settings_not_json"), [m["root"], t / "out"], "'settings' metadata is not valid JSON"),
    "inspect: step not a number": lambda m, t: (
        ["inspect", m["root"] / "step_not_a_number.safetensors"], [m["root"]], "'12abc' is not a whole number"),
    "sample: step not a number": lambda m, t: (
        _sample(m, t, "step_not_a_number"), [m["root"], t / "out"], "'12abc' is not a whole number"),
    "sample: declares ch=256": lambda m, t: (
        _sample(m, t, "declares_ch256"), [m["root"], t / "out"], "model.ch 256"),
    "resume: state.pt a list": _state_not_a_dict,
    "resume: latest is ../..": _latest_outside,
    "sample --out a file": lambda m, t: (
        _sample(m, t, "", "--out", _touch(t / "afile")), [m["run"], t / "afile"], "is a file, not a folder"),
    "sample --steps > T": lambda m, t: (
        _sample(m, t, "", "--steps", "2000"), [m["run"], t / "out"], "more than the model's T = 100"),
}


def _touch(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


def _snapshot(paths: list[Path]) -> dict[str, str]:
    """Every file under `paths` with a hash of its bytes ('absent' for a path that does not exist)."""
    out: dict[str, str] = {}
    for root in paths:
        if not root.exists():
            out[str(root)] = "absent"
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        out.update({str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
        out.update({str(p): "dir" for p in ([] if root.is_file() else root.rglob("*")) if p.is_dir()})
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_and_exit_2(made, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # a default output folder (outputs/...) would land here
    args, untouched, needle = CASES[name](made, tmp_path)
    before = _snapshot(untouched + [tmp_path / "outputs"])
    r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
    assert len(starts) == 1, r.output
    message = " ".join(lines[starts[0]:])  # rich wraps a long line at 80 columns in the test runner
    assert needle in message.replace(" \n", " "), (needle, r.output)
    assert "Traceback" not in r.output and "weights_only" not in r.output
    assert _snapshot(untouched + [tmp_path / "outputs"]) == before


# ---------------------------------------------------------------- start-up


def test_ctrl_c_while_the_cli_loads_is_one_word_and_status_130(tmp_path):
    # a KeyboardInterrupt raised by the import of typer, as a Ctrl-C during a slow start-up would
    script = textwrap.dedent("""
        import runpy, sys
        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if name == "typer":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, CtrlC())
        sys.argv = ["ddpmkit", "--help"]
        runpy.run_module("ddpmkit", run_name="__main__")
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == "interrupted"


def test_main_ignores_sigxfsz_and_answers_ctrl_c(monkeypatch, capsys):
    def ctrl_c(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        monkeypatch.setattr(app_module, "app", ctrl_c)
        with pytest.raises(SystemExit) as e:
            app_module.main()
        assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGXFSZ, previous)
    assert e.value.code == 130
    assert capsys.readouterr().err == "interrupted\n"
