"""benchmarks/speed_benches.py builds its trainer from a preset: settings that every preset's trainer accepts
(the GPU check's benchmark stages once failed on the celeba64 preset, which sets no training length)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import speed_benches  # noqa: E402

from ddpmkit.train.launch import check_settings  # noqa: E402

PRESETS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "src/ddpmkit/presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_bench_settings_pass_the_trainers_checks_for_every_preset(preset, tmp_path):
    s = speed_benches.bench_settings(preset, torch.device("cpu"), 4, 8, tmp_path / "run", False)
    check_settings(s, world_size=1)  # raises DdpmkitError on a setting the trainer refuses
    assert s.train.batch_size == 4 and s.data.dataset == "synthetic"
