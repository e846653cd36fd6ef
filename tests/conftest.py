"""Shared fixtures: tiny settings that train in seconds on a CPU, and the path to ../shared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ddpmkit.settings import Settings, build_settings, deep_merge

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

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
    "diffusion": {"timesteps": 100},
    "data": {"dataset": "synthetic", "size": 16, "synthetic_count": 64},
    "train": {
        "batch_size": 16,
        "lr": 2e-3,
        "warmup_steps": 0,
        "lr_decay": "constant",  # runs here stop and resume at other max_steps
        "max_steps": 6,
        "log_every": 1,
        "sample_every": 0,
        "ckpt_every": 0,
        "ema_decay": 0.9,
        "tensorboard": False,
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
