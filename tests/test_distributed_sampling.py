"""`torchrun -m ddpmkit sample` and `fid` on 2 gloo processes: each makes its share of the image
indices, and because every image's noise is seeded by (seed, index), the PNGs are byte for byte a
single process's, and so is the FID with its colour statistics.

torchrun's own argument parser takes `--n` for an abbreviation of its options, so the image count
goes in as `--set sample.n=N` / `--set fid.n=N` (docs/gpus.md says so).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import tiny, torchrun
from ddpmkit.cli.app import app
from ddpmkit.train import train

pytestmark = pytest.mark.slow  # each torchrun launch costs a few seconds of process start-up
N = 6  # 3 per process: shares of unequal batches (2 + 1) on each side
OPTS = ["--sampler", "ddim", "--steps", "3", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sampling")
    train(tiny(root / "run", train={"max_steps": 2}), log=lambda m: None, progress=False)
    return root


def _one_process(args: list[str]) -> None:
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output


def test_two_processes_write_the_images_of_one(run):
    _one_process(["sample", str(run / "run"), "--n", str(N), *OPTS, "--out", str(run / "one")])
    proc = torchrun(["-m", "ddpmkit", "sample", str(run / "run"), "--set", f"sample.n={N}", *OPTS,
                     "--out", str(run / "two")], cwd=run)
    one = sorted((run / "one" / "images").glob("*.png"))
    two = sorted((run / "two" / "images").glob("*.png"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == N
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert (run / "one" / "grid.png").read_bytes() == (run / "two" / "grid.png").read_bytes()
    assert proc.stderr.count("sampling 6 images") == 1 and "x 2 processes" in proc.stderr  # process 0 speaks


@pytest.mark.fid_weights
def test_two_processes_give_the_fid_of_one(run):
    _one_process(["sample", str(run / "run"), "--n", "4", *OPTS, "--out", str(run / "ref")])
    fid = ["fid", str(run / "run"), str(run / "ref" / "images"), "--set", f"fid.n={N}", *OPTS,
           "--set", f"data.cache_dir={run / 'cache'}"]
    _one_process([*fid, "--out-json", str(run / "one.json")])
    torchrun(["-m", "ddpmkit", *fid, "--out-json", str(run / "two.json")], cwd=run)
    one, two = (json.loads((run / f"{k}.json").read_text()) for k in ("one", "two"))
    assert two["n"] == one["n"] == N
    # the images are the same bytes; Inception sees them in other batches, whose float32
    # convolutions round differently in the last bits (1e-8 of the FID here)
    assert two["fid"] == pytest.approx(one["fid"], rel=1e-6)
    assert two["colour"] == one["colour"]
