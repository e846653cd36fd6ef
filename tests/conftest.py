"""Shared fixtures: tiny settings that train in seconds on a CPU, CelebA as files, and the data of ../shared.

Tests that need ../shared carry a mark: `shared_celeba` (the real CelebA files, ../shared/celeba)
or `fid_weights` (the FID Inception weights: $DDPMKIT_FID_WEIGHTS as set when the tests start,
else ../shared/fid/<file>, else pytorch-fid's file in torch's hub cache). Where they are missing
such a test is skipped, its reason naming what is missing; on CI ($CI = true), where ../shared
stands beside the repository, it fails instead, so CI runs every one of them.

Every test sees the weights through $DDPMKIT_FID_WEIGHTS, as a user would (product code knows no
../shared), with a torch hub folder of its own, and nothing is ever downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.error import URLError

import pytest

from celeba_files import CelebaFiles, shared_celeba, write_generated_celeba
from ddpmkit.fid import weights as fid_weights
from ddpmkit.settings import FID_WEIGHTS_ENV
from ddpmkit.runfolder import RunFolder
from ddpmkit.settings import Settings, build_settings, deep_merge

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CELEBA = SHARED / "celeba"
SHARED_WEIGHTS = SHARED / "fid" / "pt_inception-2015-12-05-fid-nofc.pth"
ON_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _test_weights() -> Optional[Path]:
    """The FID weights the tests use: $DDPMKIT_FID_WEIGHTS as given, ../shared's, or pytorch-fid's in the hub cache."""
    given = os.environ.get(FID_WEIGHTS_ENV)
    for path in (Path(given) if given else None, SHARED_WEIGHTS, fid_weights.hub_weights_path()):
        if path is not None and path.is_file():
            return path
    return None


_FOUND_WEIGHTS = _test_weights()
FID_WEIGHTS = _FOUND_WEIGHTS or SHARED_WEIGHTS  # a path for tests to name; present iff MISSING has no fid_weights
_CELEBA_FILES = (CELEBA / "img_align_celeba" / "000001.jpg", CELEBA / "list_eval_partition.txt",
                 CELEBA / "list_attr_celeba_000001-020000.txt")
MISSING = {
    "shared_celeba": None if all(p.is_file() for p in _CELEBA_FILES) else
    f"needs the real CelebA files of ../shared: {CELEBA} is missing or incomplete",
    "fid_weights": None if _FOUND_WEIGHTS else
    f"needs the FID Inception weights: none at ${FID_WEIGHTS_ENV}, {SHARED_WEIGHTS} "
    f"or {fid_weights.hub_weights_path()}",
}


def _missing_for(item: pytest.Item) -> Optional[str]:
    """What a test marked shared_celeba or fid_weights needs and this checkout lacks, or None."""
    return "; ".join(missing for mark, missing in MISSING.items() if missing and item.get_closest_marker(mark)) or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Such a test is skipped, its reason naming what is missing (on CI it fails, see below)."""
    for item in items:
        missing = _missing_for(item)
        if missing and not ON_CI:
            item.add_marker(pytest.mark.skip(reason=missing))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """On CI, where ../shared stands beside the repository, a test that would skip for it fails."""
    missing = _missing_for(item)
    if missing and ON_CI:
        pytest.fail(f"CI=true, so ../shared must be present: this test {missing}", pytrace=False)


def _no_download(url: str, dst: str, *args: Any, **kwargs: Any) -> None:
    raise URLError(f"tests never download ({url})")


@pytest.fixture(scope="session", autouse=True)
def fid_weights_env(tmp_path_factory) -> Iterator[Path]:
    """$DDPMKIT_FID_WEIGHTS -> the tests' weights file (unset when there is none); TORCH_HOME -> an
    empty folder, and no download: the hub cache and the network never decide a test."""
    with pytest.MonkeyPatch.context() as mp:
        if MISSING["fid_weights"]:
            mp.delenv(FID_WEIGHTS_ENV, raising=False)
        else:
            mp.setenv(FID_WEIGHTS_ENV, str(FID_WEIGHTS))
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        mp.setattr(fid_weights, "download_url_to_file", _no_download)
        yield FID_WEIGHTS


@pytest.fixture(scope="session")
def generated_celeba(tmp_path_factory) -> CelebaFiles:
    """A small CelebA release drawn from the generated faces (celeba_files.py): runs anywhere."""
    return write_generated_celeba(tmp_path_factory.mktemp("generated_celeba"))


@pytest.fixture(scope="session", params=["generated", pytest.param("shared", marks=pytest.mark.shared_celeba)])
def celeba(request) -> CelebaFiles:
    """The CelebA release of the layout and prepare tests: the generated one, and the real files of ../shared."""
    if request.param == "generated":
        return request.getfixturevalue("generated_celeba")
    return shared_celeba(CELEBA)

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


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest resume point in the checkpoints folder `root` (the run folder's own rule)."""
    return RunFolder(root.parent).latest_checkpoint(resumable=True)
