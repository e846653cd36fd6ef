"""Shared fixtures: tiny settings that train in seconds on a CPU, the path to ../shared, and the
FID weights from ../shared for the whole session (through $DDPMKIT_FID_WEIGHTS, as a user would)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from ddpmkit.settings import FID_WEIGHTS_ENV
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
        # the demo preset's length is a time budget: these runs have a fixed one (None in a YAML
        # file; build_settings drops None overrides, so tiny() sets it with FIXED_LENGTH)
        "time_budget": None,
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


FIXED_LENGTH = ["train.time_budget=null"]


def tiny(run_dir: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a 16x16, ~60k-parameter model; keyword sections override TINY."""
    over = deep_merge(TINY, {"train": {"run_dir": str(run_dir)}})
    over = deep_merge(over, sections)
    return build_settings(preset="demo", overrides=over, sets=FIXED_LENGTH)


@pytest.fixture
def tiny_settings(tmp_path):
    return lambda **sections: tiny(tmp_path / "run", **sections)
