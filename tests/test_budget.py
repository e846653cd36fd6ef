"""Training for a time budget (`ddpmkit train --time 20s`, train.time_budget): the arithmetic.

The step count chosen from measured costs is a plain function, tested as a table and against
counting the work step by step as the trainer does it.
"""

from __future__ import annotations

import pytest
import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.human import parse_duration
from ddpmkit.settings import build_settings
from ddpmkit.train.budget import Costs, Every, events, run_seconds, steps_within


# ------------------------------------------------------------------ the arithmetic


@pytest.mark.parametrize("seconds, start, costs, every, end", [
    (10, 0, Costs(1.0), Every(), 10),  # steps only (a free checkpoint)
    (10, 0, Costs(1.0, checkpoint_s=2.0), Every(), 8),  # the final checkpoint always
    (10, 0, Costs(1.0, checkpoint_s=1.0), Every(checkpoint=3), 7),  # at 3 and 6, and the final
    (20, 0, Costs(1.0, preview_s=2.0), Every(preview=4), 12),  # 13 steps need a 4th grid
    (20, 0, Costs(0.5, fid_s=5.0), Every(fid=10), 20),  # exactly full: the probe at 20 fits
    (60, 100, Costs(1.0, checkpoint_s=1.0), Every(checkpoint=50), 158),  # a resume: 150 and the final
    (3600, 0, Costs(0.75, checkpoint_s=1.5, preview_s=3.0), Every(500, 1000), 4760),  # celeba32-like hour
    (1.5, 0, Costs(1.0, checkpoint_s=1.0), Every(), 0),  # not one step with its checkpoint
    (-5, 7, Costs(1.0), Every(), 7),  # the budget is spent already
])
def test_steps_within_a_budget(seconds, start, costs, every, end):
    assert steps_within(seconds, start, costs, every) == end


def test_steps_within_is_the_longest_run_that_fits():
    """Against counting the work step by step, as the trainer does it, over many cases."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        r = torch.rand(6, generator=gen).tolist()
        costs = Costs(0.05 + r[0], r[1] * 3, r[2] * 5, r[3] * 20)
        every = Every(*[int(v) for v in torch.randint(0, 15, (3,), generator=gen)])
        start, seconds = int(r[4] * 30), r[5] * 60

        def brute(end: int) -> float:
            total = 0.0
            for step in range(start + 1, end + 1):
                total += costs.step_s
                total += costs.checkpoint_s if every.checkpoint and step % every.checkpoint == 0 and step < end else 0
                total += costs.preview_s if every.preview and step % every.preview == 0 else 0
                total += costs.fid_s if every.fid and step % every.fid == 0 else 0
            total += costs.checkpoint_s  # the final checkpoint
            total += costs.preview_s if every.preview and end % every.preview else 0  # the final grid
            return total

        end = steps_within(seconds, start, costs, every)
        if end > start:
            assert run_seconds(start, end, costs, every) == pytest.approx(brute(end))
            assert brute(end) <= seconds + 1e-9
        assert brute(end + 1) > seconds


def test_periodic_work_is_counted_as_the_trainer_does_it():
    # checkpoints at 4 and 8 (not at the end: the final one is written anyway), grids at 3, 6, 9
    # and the final one at 10, probes at 5 and 10
    e = events(0, 10, Every(checkpoint=4, preview=3, fid=5))
    assert (e.checkpoints, e.previews, e.probes) == (3, 4, 2)
    e = events(10, 12, Every(checkpoint=4, preview=3, fid=5))  # resumed at 10: checkpoint 12, grid 12
    assert (e.checkpoints, e.previews, e.probes) == (1, 1, 0)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1h 30m", 5400),
                                           ("1.5h", 5400), ("2d", 172800), (" 5M ", 300)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["60", "5 minutes", "30m1h", "1h1h", "-5m", "", "m"])
def test_bad_durations_name_the_text(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_bad_time_budget_is_one_line_naming_the_setting():
    for value, why in (("60", "not a duration"), ("0s", "no time at all")):
        with pytest.raises(DdpmkitError, match=f"train.time_budget.*{why}"):
            build_settings(preset="demo", sets=[f"train.time_budget={value}"])
