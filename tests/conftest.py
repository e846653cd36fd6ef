"""Shared fixtures: tiny settings that train in seconds on a CPU, the path to ../shared, and the
FID weights from ../shared for the whole session (through $DDPMKIT_FID_WEIGHTS, as a user would)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from ddpmkit.sections import FID_WEIGHTS_ENV
from ddpmkit.settings import Settings, build_settings, deep_merge

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FID_WEIGHTS = SHARED / "fid" / "pt_inception-2015-12-05-fid-nofc.pth"


@pytest.fixture(scope="session", autouse=True)
def fid_weights_env() -> Iterator[Path]:
    """$DDPMKIT_FID_WEIGHTS -> ../shared/fid/<file> for every test (product code knows no such path)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FID_WEIGHTS_ENV, str(FID_WEIGHTS))
        yield FID_WEIGHTS

TINY: dict[str, Any] = {
    "model": {
        "image_size": 16,
        "ch": 16,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.0,
        "num_groups": 8,
    },
    # the papers' recipe (ε, uniform weights) on top of the demo preset's v-prediction and min-SNR:
    # these tests check the machinery at tolerances set for it; test_recipe.py covers v and min-SNR
    "diffusion": {"timesteps": 100, "prediction": "eps"},
    "data": {"dataset": "synthetic", "size": 16, "synthetic_count": 64},
    "train": {
        "batch_size": 16,
        "loss_weight": "uniform",
        "lr": 2e-3,
        "warmup_steps": 0,
        "lr_decay": "constant",  # runs here stop and resume at other max_steps
        "max_steps": 6,
        "log_every": 1,
        "sample_every": 0,
        "ckpt_every": 0,
        "ema_decay": 0.9,
        "tensorboard": False,
        "report": False,  # report.html at every checkpoint costs a second of plotting; tests that want it say so
        "device": "cpu",
    },
    "sample": {"n": 4, "batch_size": 4, "steps": 10},
}


def tiny(run_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a 16x16, ~60k-parameter model; keyword sections override TINY."""
    over = deep_merge(TINY, {"train": {"run_dir": str(run_dir)}})
    over = deep_merge(over, sections)
    return build_settings(preset="demo", overrides=over)


@pytest.fixture
def tiny_settings(tmp_path):
    return lambda **sections: tiny(tmp_path / "run", **sections)


def torchrun(args: list[str], cwd: Path, nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node=nproc ARGS`, checked.

    --standalone lets the rendezvous pick a free port itself, so parallel CI jobs cannot collide.
    Every child gets OMP_NUM_THREADS=1 so the processes do not fight over the cores, and the
    launch a timeout, so a deadlock fails the test instead of blocking CI.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:  # subprocess.run kills the launcher on timeout
        pytest.fail(f"torchrun hung for {timeout}s (a deadlock?): {' '.join(cmd)}\n{e.stderr!s:.4000}")
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc
