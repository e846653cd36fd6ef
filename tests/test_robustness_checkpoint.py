"""Untrusted or damaged checkpoints (issue 12 §3, §5): a killed prune, `latest` pointing outside,
weights whose metadata lies about the model, state files that are not ddpmkit's."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ddpmkit import checkpoint as ckpt_mod
from ddpmkit.checkpoint import (
    load_model,
    load_state,
    resolve_checkpoint,
    save_checkpoint,
)
from ddpmkit.errors import DdpmkitError
from ddpmkit.runfolder import MODEL_FILE, STATE_FILE, RunFolder
from ddpmkit.io_utils import remove_leftovers
from ddpmkit.nn import UNet
from ddpmkit.train import train

from conftest import latest_checkpoint, tiny



SRC = Path(__file__).resolve().parents[1] / "src"


def _save(root: Path, step: int, keep: int = 2) -> Path:
    model = nn.Linear(4, 4)
    state = {"step": step, "blob": torch.arange(10)}
    return save_checkpoint(root, model=model, ema_model=model, state=state, settings=tiny(root), step=step, keep=keep)


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (MODEL_FILE, "ema.safetensors", STATE_FILE))


def test_a_killed_prune_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        _save(root, step)
    real_rmtree = shutil.rmtree

    def killed_rmtree(path, *a, **k):  # deletes one file, then the process "dies"
        next(p for p in sorted(Path(path).iterdir()) if p.is_file()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        _save(root, 3)  # keep=2: prunes step 1
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    finals = sorted(p.name for p in root.glob("step_*"))
    assert finals == ["step_00000002", "step_00000003"]  # step 1 is gone from its final name ...
    assert all(_complete(root / name) for name in finals)  # ... and no final name is half deleted
    assert latest_checkpoint(root).name == "step_00000003"
    count, _ = remove_leftovers(root)  # what the next training does under its lock
    assert count == 1 and sorted(p.name for p in root.iterdir()) == ["latest", *finals]


def test_latest_pointing_outside_the_run_is_refused(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    _save(root, 1)
    for bad in ("../..", "/etc", "step_00000001/../../..", "..\\..", ""):
        (root / "latest").write_text(bad + "\n")
        with pytest.raises(DdpmkitError, match="not a checkpoint folder") as e:
            latest_checkpoint(root)
        assert "\n" not in str(e.value)
        with pytest.raises(DdpmkitError, match="not a checkpoint folder"):
            resolve_checkpoint(tmp_path / "run")
    (root / "latest").write_text("step_00000001\n")
    assert latest_checkpoint(root) == root / "step_00000001"


def test_a_half_written_or_missing_folder_is_not_a_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    _save(root, 2)
    (root / "step_00000002" / MODEL_FILE).unlink()  # e.g. deleted by hand
    assert latest_checkpoint(root).name == "step_00000001"
    (root / "latest").unlink()
    assert latest_checkpoint(root).name == "step_00000001"
    # its EMA is still there to sample from; with that gone too it is no checkpoint at all
    assert RunFolder(root.parent).latest_checkpoint().name == "step_00000002"
    (root / "step_00000002" / "ema.safetensors").unlink()
    assert RunFolder(root.parent).latest_checkpoint().name == "step_00000001"


# ---------------------------------------------------------------- weights that lie about their model


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("w") / "run"
    train(tiny(run, train={"max_steps": 1}), log=lambda m: None, progress=False)
    return latest_checkpoint(run / "checkpoints") / "ema.safetensors"


def _declaring(weights: Path, out: Path, **model) -> Path:
    """A copy of `weights` whose settings metadata declares other model settings."""
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata())
    settings = json.loads(meta["settings"])
    settings["model"].update(model)
    save_file(load_file(str(weights)), str(out), {**meta, "settings": json.dumps(settings)})
    return out


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """The device type of every UNet built (the default device when its constructor runs)."""
    seen: list[str] = []
    real_init = UNet.__init__

    def spy(self, *a, **k):
        seen.append(torch.empty(0).device.type)
        real_init(self, *a, **k)

    monkeypatch.setattr(UNet, "__init__", spy)
    return seen


@pytest.mark.parametrize(
    "model, needle",
    [
        ({"ch": 256}, "model.ch 256"),
        ({"in_channels": 1}, "in_channels 1"),
        ({"ch_mult": [1, 2, 2, 2]}, "4 levels"),
        ({"num_res_blocks": 40}, "num_res_blocks 40"),
        ({"ch_mult": [2, 2]}, "level 0 is 32 channels wide"),
        ({"attn_resolutions": [16]}, "different architecture"),  # passes the quick check; the meta build finds it
    ],
)
def test_declared_settings_are_checked_against_the_tensors_before_building(weights, tmp_path, builds, model, needle):
    liar = _declaring(weights, tmp_path / "liar.safetensors", **model)
    with pytest.raises(DdpmkitError, match=needle) as e:
        load_model(liar)
    assert "\n" not in str(e.value)
    assert "cpu" not in builds  # failed before a network with real memory was built


def test_an_honest_file_still_loads(weights, builds):
    model, settings, step = load_model(weights)
    assert step == 1 and settings.model.ch == 16
    assert builds == ["meta", "cpu"]  # the shape check, then the model
    for k, v in load_file(str(weights)).items():
        assert torch.equal(model.state_dict()[k], v)


# ---------------------------------------------------------------- state.pt


@pytest.mark.parametrize(
    "content, needle",
    [
        ([1, 2, 3], "it holds a list; expected a dict of step, epoch"),
        (torch.zeros(3), "it holds a Tensor; expected a dict"),
        ({"step": 1}, "it has no 'epoch'"),
    ],
)
def test_a_state_file_that_is_not_ddpmkits_is_one_line(tmp_path, content, needle):
    folder = tmp_path / "step_00000001"
    folder.mkdir()
    torch.save(content, folder / STATE_FILE)
    with pytest.raises(DdpmkitError, match="cannot read training state") as e:
        load_state(folder)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_pickled_code_in_a_state_file_is_refused_without_advice_to_unpickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "step_00000001"
    folder.mkdir()
    torch.save({"step": Evil()}, folder / STATE_FILE)
    with pytest.raises(DdpmkitError) as e:
        load_state(folder)
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert "weights_only" not in msg and "objects other than tensors" in msg


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("step", "7", "does not fit this run (a count is str 7"),
        ("rng_cpu", torch.zeros(3), "does not fit this run"),
        ("optimizer", {"state": 5}, "does not fit this run"),
        ("settings", "[1", "the settings in its state.pt are not a JSON object"),
    ],
)

def test_resume_from_a_state_with_ill_typed_values_is_one_line(tmp_path, key, value, needle):
    train(tiny(tmp_path / "run", train={"max_steps": 1}), log=lambda m: None, progress=False)
    folder = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = torch.load(folder / STATE_FILE, weights_only=True)
    torch.save({**state, key: value}, folder / STATE_FILE)
    with pytest.raises(DdpmkitError, match=f"cannot resume {folder}") as e:
        train(tiny(tmp_path / "run", train={"max_steps": 2}), resume=True, log=lambda m: None, progress=False)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_state_file_past_the_size_limit_names_the_file_and_the_reason(tmp_path):
    # state.pt is written through memory: the failed write is a plain OSError (EFBIG here), not
    # torch's "unexpected pos" from its own writer, so the line says which file and why
    script = textwrap.dedent(f"""
        import resource, torch
        from torch import nn
        from ddpmkit.checkpoint import save_checkpoint
        from ddpmkit.errors import DdpmkitError
        from ddpmkit.settings import build_settings
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        m = nn.Linear(4, 4)  # tiny weights; the state below is 1.2 MB
        try:
            save_checkpoint(__import__("pathlib").Path({str(tmp_path / "ck")!r}), model=m, ema_model=m,
                            state={{"blob": torch.zeros(300_000)}}, settings=build_settings(), step=5)
        except DdpmkitError as e:
            print(e)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "step_00000005 (state.pt): File too large (a file-size limit (ulimit -f) was reached)" in r.stdout
    assert "nothing was left half-written" in r.stdout
    assert not (tmp_path / "ck" / "step_00000005").exists()
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_while_writing_state_is_a_real_oserror(tmp_path, monkeypatch):
    real_open = open

    class FullDisk:
        def __init__(self, f) -> None:
            self.f = f

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self) -> "FullDisk":
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if str(path).endswith(STATE_FILE) and "w" in mode else f

    monkeypatch.setattr(ckpt_mod, "open", full_open, raising=False)
    with pytest.raises(DdpmkitError, match=r"\(state.pt\): No space left on device \(free some space\)"):
        _save(tmp_path / "ck", 1)
    assert not (tmp_path / "ck" / "step_00000001").exists()
