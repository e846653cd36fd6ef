"""Training for a time budget (`ddpmkit train --time 20s`, train.time_budget).

The step count chosen from measured costs is a plain function, tested as a table and against
counting by brute force; real tiny runs check that the fitted run ends near its budget (with a
margin for a busy machine: the sharp check is the plan's own arithmetic), that its schedule is
sized to the steps it trains, that the trial steps are undone (a budgeted run equals a run of the
same fixed length), and that a stopped run resumes to the same length.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ddpmkit.runfolder import RunFolder
from ddpmkit.cli.app import app
from ddpmkit.errors import DdpmkitError
from ddpmkit.human import parse_duration
from ddpmkit.settings import build_settings
from ddpmkit.train import train
from ddpmkit.train.budget import Costs, Every, events, length_rule, run_seconds, steps_within
from ddpmkit.train.optim import lr_at, warmup_of
from ddpmkit.train.refit import refit_steps

from conftest import REPO, tiny

# a cosine decay with a warm-up that is a share of the run: what a budget sizes (None drops the
# tiny settings' fixed length and warm-up; the demo preset sets neither)
BUDGETED = {"max_steps": None, "lr_decay": "cosine", "warmup_steps": None, "warmup_fraction": 0.1, "log_every": 5}


def _quiet(settings, **kw):
    return train(settings, log=lambda m: None, progress=False, **kw)


def _budgeted(run_dir, budget: str, **train_kw):
    return tiny(run_dir, train={**BUDGETED, "time_budget": budget, **train_kw})


def _info(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


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


def test_the_cpu_presets_are_budgets_and_repeat_their_fixed_runs():
    for preset, budget, steps, warmup in (("celeba32", "60m", 2600, 200), ("demo", "5m", 1500, 100)):
        tc = build_settings(preset=preset).train
        assert tc.time_budget == budget and tc.max_steps is None and tc.epochs is None
        assert length_rule(tc) is None
        # --max-steps N: the run measured before budgets, warm-up included
        assert warmup_of(tc, steps) == warmup
        fixed = build_settings(preset=preset, overrides={"train": {"max_steps": steps}}).train
        assert "train.max_steps" in length_rule(fixed) and "wins" in length_rule(fixed)
        # a warm-up in steps wins over the preset's share, as a step count wins over a budget
        assert warmup_of(build_settings(preset=preset, sets=["train.warmup_steps=20"]).train, steps) == 20


# ------------------------------------------------------------------ real runs


def test_a_20s_run_through_the_cli_ends_at_its_budget(tmp_path):
    """`ddpmkit train --time 20s` as a user runs it, its wall-clock taken from outside."""
    run = tmp_path / "run"
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(tiny(run, train={**BUDGETED, "max_steps": 6, "ckpt_every": 100, "sample_every": 150,
                                    "num_samples": 4}).to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ddpmkit", "train", "--config", str(cfg), "--time", "20s",
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=180)
    wall = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    info = _info(run)
    n, budget = info["total_steps"], info["budget"]
    assert f"{n:,} steps fit in 20s at" in out and "wins" not in out  # --time alone: the file's max_steps goes
    # the plan fills the budget: the run it chose fits, one more step would not
    costs = Costs(budget["step_s"], budget["checkpoint_s"], budget["preview_s"], budget["fid_s"])
    every = Every(**budget["every"])
    left = budget["seconds"] - budget["spent_s"]
    assert n > 5 and run_seconds(0, n, costs, every) <= left < run_seconds(0, n + 1, costs, every)
    # and the run kept to it; a generous margin, as another process may take the cores meanwhile
    assert 20 / 3 < wall < 20 + 25, out
    # the schedule is sized to the steps trained: every logged rate is that of an n-step schedule
    # (warm-up a tenth of it), and the last step ran at its last rate
    log = _log(run)
    tc = build_settings(config=cfg).train
    assert log[-1]["step"] == n and warmup_of(tc, n) == round(0.1 * n)
    schedule = [lr_at(r["step"] - 1, tc.lr, warmup_of(tc, n), n, "cosine") for r in log]
    assert [r["lr"] for r in log] == pytest.approx(schedule, rel=1e-9, abs=1e-15)
    assert log[-1]["lr"] == min(schedule) < 0.1 * tc.lr


def _weights(run_dir) -> dict[str, torch.Tensor]:
    ckpt = RunFolder(run_dir).latest_checkpoint(resumable=True)
    ema = {f"ema.{k}": v for k, v in load_file(ckpt / "ema.safetensors").items()}
    return {**load_file(ckpt / "model.safetensors"), **ema}


def test_a_stopped_budget_run_resumes_to_its_length_and_equals_a_fixed_run(tmp_path):
    """Ctrl-C (request_stop) at step 5, then --resume: the planned length is kept, not fitted
    again; and the trial steps left no trace: the weights equal those of a fixed-length run."""
    run = tmp_path / "run"
    s = _budgeted(run, "8s")
    first = _quiet(s, on_step=[lambda tr: tr.request_stop() if tr.step == 5 else None])
    assert first.interrupted and first.step == 5
    n = _info(run)["total_steps"]
    assert n > 5 and _info(run)["budget"]["total_steps"] == n
    said: list[str] = []
    second = train(s, resume=True, log=said.append, progress=False)
    assert second.step == n and not second.interrupted
    assert any(f"keeps its planned length, {n:,} steps" in m for m in said), said
    assert not any("fitting" in m for m in said)  # no trial on a resume
    assert [r["step"] for r in _log(run)][-1] == n

    fixed = tiny(tmp_path / "fixed", train={**BUDGETED, "max_steps": n})
    _quiet(fixed)
    a, b = _weights(run), _weights(tmp_path / "fixed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_replan_fits_the_rest_of_a_resumed_run_to_the_budget(tmp_path):
    run = tmp_path / "run"
    _quiet(_budgeted(run, "6s"), on_step=[lambda tr: tr.request_stop() if tr.step == 3 else None])
    planned = _info(run)["total_steps"]
    said: list[str] = []
    result = train(_budgeted(run, "8s"), resume=True, replan=True, log=said.append, progress=False)
    info = _info(run)
    assert info["budget"]["fitted_at_step"] == 3 and info["budget"]["time"] == "8s"
    assert result.step == info["total_steps"] > 3
    assert any("steps 3 → " in m and "fit in 8s" in m for m in said), said
    if info["total_steps"] != planned:  # the length moved: the note says so, with the learning rate
        assert any(f"planned for {planned} steps and now goes to {info['total_steps']}" in m for m in said), said


@pytest.mark.slow
@pytest.mark.fid_weights
def test_previews_and_fid_probes_are_timed_and_counted_as_they_happen(tmp_path):
    """With grids and FID during training the trial times one grid and estimates one probe; the
    run then does as many of each as the plan counted. (A probe costs seconds on a CPU, mostly
    its Fréchet distance of 2048-d features, whatever its n: the budget leaves room for one.)"""
    run = tmp_path / "run"
    s = tiny(run, train={**BUDGETED, "time_budget": "40s", "sample_every": 7, "num_samples": 4},
             data={"cache_dir": str(tmp_path / "cache")},
             fid={"every": 10, "every_n": 6, "every_steps": 2, "ref_n": 8, "batch_size": 8})
    result = _quiet(s)
    budget = _info(run)["budget"]
    assert budget["preview_s"] > 0 and budget["fid_s"] > 0
    assert budget["every"] == {"checkpoint": 0, "preview": 7, "fid": 10}
    planned = events(0, result.step, Every(**budget["every"]))
    assert result.step == budget["total_steps"] and planned.probes >= 1
    assert len([r for r in _log(run) if "fid" in r]) == planned.probes
    assert len(list((run / "samples").glob("*.png"))) == planned.previews


def test_a_budget_too_short_for_one_step_is_refused_before_the_run_is_created(tmp_path):
    with pytest.raises(DdpmkitError, match="time_budget 1s is spent before the first step"):
        _quiet(_budgeted(tmp_path / "run", "1s"))  # the trial alone takes 2 s
    assert not (tmp_path / "run").exists()


def test_a_step_count_wins_over_a_budget_in_one_line(tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(tiny(tmp_path / "run", train={"max_steps": 3}).to_yaml())
    r = runner.invoke(app, ["train", "--config", str(cfg), "--time", "10m", "--max-steps", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.output.count("train.max_steps 3 wins over train.time_budget 10m") == 1
    assert "done: step 3" in r.output
    r = runner.invoke(app, ["train", "--config", str(cfg), "--replan", "--no-progress"])
    assert r.exit_code == 2 and "error: --replan" in r.output and "--resume" in r.output


# ------------------------------------------------------------------ the early refit


@pytest.mark.parametrize("start,end,budget_s,step_s,at", [
    (0, 5524, 3600, 0.65, (167, 1381)),      # an hour: after 3% of it (108 s of steps), then at a quarter
    (0, 1500, 300, 0.2, (300,)),             # five minutes: after the one-minute floor; a quarter is too near
    (0, 100, 20, 0.2, ()),                   # 20 s: the minute would be past a quarter of the run
    (2000, 6000, 3600, 0.65, (2167, 3000)),  # a --replan from step 2,000
])
def test_the_refit_steps(start, end, budget_s, step_s, at):
    assert refit_steps(start, end, budget_s, step_s) == at


class _Run:
    """What Refit touches of a Trainer: a one-process run of `total` steps at `step`."""

    def __init__(self, total: int) -> None:
        from ddpmkit.device import DistInfo

        self.step, self.total, self.dist = 0, total, DistInfo(0, 1)
        self.cfg = build_settings(preset="demo").train
        self.run_info: dict = {"budget": {"total_steps": total}}
        self.run_dir, self.retotalled = self, 0
        self.info_updates: list = []

    def set_total(self, total: int) -> None:
        self.total = total

    def retotal_progress(self) -> None:
        self.retotalled += 1

    def update_info(self, **values) -> None:
        self.info_updates.append(values)


@pytest.mark.parametrize("real_step_s,changes", [(0.5, True), (0.7, False)])
def test_a_run_refits_once_when_its_steps_run_faster_than_the_trial_said(monkeypatch, real_step_s, changes):
    """The trial said 0.7 s a step and fitted 1,000 steps to 700 s; if the run's steps take 0.5 s,
    the refit at step 100 lengthens it to what fits (about 100 + 630 / 0.5 steps) and says so; at
    the trial's pace nothing changes. Either way it happens once."""
    from ddpmkit.train import refit as R

    clock = {"now": 0.0}
    monkeypatch.setattr(R.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(R.time, "monotonic", lambda: clock["now"])
    lines: list[str] = []
    run = _Run(1000)
    cb = R.Refit(budget_s=700.0, started=-0.0, costs=Costs(step_s=0.7), every=Every(), at=(100,), log=lines.append)
    for step in range(1, 200):
        clock["now"] += real_step_s
        run.step = step
        cb(run)
    if changes:
        expected = steps_within(700.0 - 100 * real_step_s, 100, Costs(step_s=real_step_s), Every())
        assert run.total == expected > 1000 and run.retotalled == 1
        assert run.info_updates[0]["total_steps"] == expected and run.run_info["budget"]["refits"][0]["at_step"] == 100
        assert len(lines) == 1 and "refitted to the budget after 100 steps" in lines[0] and "(was 1,000)" in lines[0]
    else:
        assert run.total == 1000 and run.retotalled == 0 and not lines
    assert cb.done


def test_a_machine_that_slows_after_the_first_refit_is_caught_by_the_second(monkeypatch):
    """Steps of 0.5 s up to the first refit (step 100) lengthen the run; when the machine then slows
    to 0.625 s a step, the second refit (step 300) measures only the steps since the first and
    shortens the run to what fits in the rest of the 700 s."""
    from ddpmkit.train import refit as R

    clock = {"now": 0.0}
    monkeypatch.setattr(R.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(R.time, "monotonic", lambda: clock["now"])
    lines: list[str] = []
    run = _Run(1000)
    cb = R.Refit(budget_s=700.0, started=0.0, costs=Costs(step_s=0.7), every=Every(), at=(100, 300), log=lines.append)
    for step in range(1, 400):
        clock["now"] += 0.5 if step <= 100 else 0.625  # binary fractions: the clock adds up exactly
        run.step = step
        cb(run)
    first = steps_within(700.0 - 50.0, 100, Costs(step_s=0.5), Every())
    second = steps_within(700.0 - 50.0 - 200 * 0.625, 300, Costs(step_s=0.625), Every())
    assert second < first and run.total == second and run.retotalled == 2 and cb.done
    assert [r["at_step"] for r in run.run_info["budget"]["refits"]] == [100, 300]
    assert run.run_info["budget"]["refits"][1]["total_before"] == first
    assert len(lines) == 2 and f"(was {first:,})" in lines[1]


def test_a_real_run_refits_early_and_still_ends_on_its_schedule(tmp_path, monkeypatch):
    """With the first refit brought forward to the run's third step (and any change taken), a
    budgeted run refits there and at a quarter of the run, records both, and ends at the new
    length with the last learning rate of the new schedule: the log's last step is the run's
    total and its lr the schedule's last."""
    from ddpmkit.train import refit as R

    monkeypatch.setattr(R, "REFIT_MIN_S", 0.0)
    monkeypatch.setattr(R, "REFIT_SHARE", 1e-9)
    monkeypatch.setattr(R, "REFIT_TOLERANCE", -1.0)  # even the same length counts as a change
    run = tmp_path / "run"
    said: list[str] = []
    result = train(_budgeted(run, "8s"), log=said.append, progress=False)
    info = _info(run)
    refits = info["budget"]["refits"]
    assert sum("refitted to the budget after" in m for m in said) == len(refits) == 2, said
    assert refits[0]["at_step"] <= 3 < refits[1]["at_step"]
    assert info["total_steps"] == info["budget"]["total_steps"] == result.step
    log, tc, n = _log(run), _budgeted(run, "8s").train, result.step
    assert log[-1]["step"] == n
    assert log[-1]["lr"] == pytest.approx(lr_at(n - 1, tc.lr, warmup_of(tc, n), n, "cosine"), rel=1e-9)
