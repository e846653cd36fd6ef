"""Distributed training: 2 gloo processes under torchrun follow one process with the same global batch.

Each process takes half of every global batch of 16; DDP averages the gradients, so after a few
steps both ranks hold identical weights, equal (to float rounding of the all-reduce) to a
single-process run. A run also resumes with a different number of processes. Every torchrun
child gets OMP_NUM_THREADS=1 so two processes do not fight over two cores, and a timeout, so a
deadlock fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpmkit.runfolder import STATE_FILE
from ddpmkit.train import TrainResult, train

from conftest import latest_checkpoint, tiny, torchrun


WORKER = Path(__file__).resolve().parent / "ddp_worker.py"
TIMEOUT_S = 180  # a hung collective fails the test instead of blocking CI
# The all-reduce sums the two half-batch gradients in another order than one process does, so
# the runs agree to float32 rounding (measured max |diff| ~2e-6), not bit for bit. The weights
# move ~8e-3 from their initial values in 4 steps, so this tolerance is still a sharp test.
ATOL = 1e-5
STEPS = 4
BUDGET = "8s"  # the budgeted job: trial steps for 2 s, then some tens of steps

pytestmark = pytest.mark.slow  # each torchrun launch costs a few seconds of process start-up


def _quiet(settings, **kw) -> TrainResult:
    return train(settings, log=lambda m: None, progress=False, **kw)


def _write_config(path: Path, run_dir: Path, max_steps: int) -> Path:
    """The tiny settings (16x16, ch 16, dropout 0, global batch 16, cpu) as a --config YAML."""
    path.write_text(tiny(run_dir, train={"max_steps": max_steps}).to_yaml())
    return path


def _torchrun(args: list[str], cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    return torchrun(args, cwd, nproc, TIMEOUT_S)


def _checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None, f"no checkpoint in {run_dir}"
    state = torch.load(ckpt / STATE_FILE, weights_only=True)
    return load_file(ckpt / "model.safetensors"), load_file(ckpt / "ema.safetensors"), state


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One process, global batch 16, 4 steps: the trajectory every other run must follow."""
    root = tmp_path_factory.mktemp("single")
    result = _quiet(tiny(root / "run", train={"max_steps": STEPS}))
    model, ema, state = _checkpoint(root / "run")
    assert state["step"] == STEPS
    init = _initial_weights()
    return {"model": model, "ema": ema, "losses": [r["loss"] for r in result.history], "init": init}


def _initial_weights() -> dict[str, torch.Tensor]:
    """A freshly initialised tiny U-Net (seed 0): where training starts, to within init noise."""
    from ddpmkit.nn import UNet

    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in UNet.from_config(tiny(Path("unused")).model).state_dict().items()}


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory) -> Path:
    """One torchrun launch of tests/ddp_worker.py with 2 processes and three jobs:

    fresh:    a new 4-step run;
    scale_up: resume to step 4 a run that 1 process trained for 2 steps;
    stop:     a new 4-step run in which rank 1 alone asks to stop after step 2;
    budget:   a new run fitted to a time budget of BUDGET.
    accum:    a new 4-step run in 2 micro-batches per process (train.grad_accum 2).
    """
    root = tmp_path_factory.mktemp("ddp")
    fresh = _write_config(root / "fresh.yaml", root / "fresh", STEPS)
    _quiet(tiny(root / "scale_up", train={"max_steps": 2}))
    scale_up = _write_config(root / "scale_up.yaml", root / "scale_up", STEPS)
    stop = _write_config(root / "stop.yaml", root / "stop", STEPS)
    budget = root / "budget.yaml"
    budget.write_text(tiny(root / "budget", train={"max_steps": None, "time_budget": BUDGET}).to_yaml())
    accum = root / "accum.yaml"
    accum.write_text(tiny(root / "accum", train={"max_steps": STEPS, "grad_accum": 2}).to_yaml())
    jobs = [str(fresh), f"resume:{scale_up}", f"stop:2:{stop}", str(budget), str(accum)]
    _torchrun([str(WORKER), str(root / "ranks"), *jobs], cwd=root)
    return root


def _rank_weights(out: Path) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Each rank's own (model, EMA) state dicts, as the worker saved them after training."""
    assert [(out / f"rank{r}.step").read_text().strip() for r in (0, 1)] == [str(STEPS)] * 2
    models = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    emas = [load_file(out / f"rank{r}_ema.safetensors") for r in (0, 1)]
    for k in models[0]:  # DDP broadcasts the start and all-reduces every gradient: bit-identical
        assert torch.equal(models[0][k], models[1][k]), f"rank 1 differs from rank 0 in {k}"
        assert torch.equal(emas[0][k], emas[1][k]), f"rank 1's EMA differs from rank 0's in {k}"
    return models, emas


def test_two_gloo_ranks_hold_identical_weights_equal_to_one_process(reference, worker_runs):
    run_dir = worker_runs / "fresh"
    # the comparison has teeth: 4 steps move the weights far more than the tolerance
    assert _max_diff(reference["model"], reference["init"]) > 100 * ATOL

    models, emas = _rank_weights(worker_runs / "ranks" / "fresh")
    assert _max_diff(models[0], reference["model"]) < ATOL
    assert _max_diff(emas[0], reference["ema"]) < ATOL

    # what rank 0 saved is what the ranks hold, and is written once
    model, ema, state = _checkpoint(run_dir)
    assert _max_diff(model, models[0]) == 0.0 and _max_diff(ema, emas[0]) == 0.0
    assert state["step"] == STEPS and state["world_size"] == 2
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*"))] == [f"step_{STEPS:08d}"]
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))  # a second writer would duplicate lines
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    # the logged loss is the mean over both halves: the single process's loss of the global batch
    logged = [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert logged == pytest.approx(reference["losses"], rel=1e-4)


def test_one_process_resumes_on_two(reference, worker_runs):
    """Scaling up mid-run: 1 process for 2 steps, then 2 gloo processes to step 4."""
    run_dir = worker_runs / "scale_up"
    models, emas = _rank_weights(worker_runs / "ranks" / "scale_up")
    model, ema, state = _checkpoint(run_dir)
    assert state["step"] == STEPS and state["world_size"] == 2
    assert _max_diff(model, models[0]) == 0.0
    assert _max_diff(model, reference["model"]) < ATOL
    assert _max_diff(ema, reference["ema"]) < ATOL
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))


def test_a_stop_asked_on_one_rank_stops_every_rank_at_the_same_step(worker_runs):
    """Stop requests are agreed every step: rank 1's request after step 2 reaches both ranks, which
    stop together one step later (the vote is read a step late so the GPU never waits for it)."""
    out = worker_runs / "ranks" / "stop"
    steps = [(out / f"rank{r}.step").read_text().strip() for r in (0, 1)]
    assert steps == ["3", "3"]
    assert [(out / f"rank{r}.interrupted").read_text().strip() for r in (0, 1)] == ["True", "True"]
    models = [load_file(out / f"rank{r}.safetensors") for r in (0, 1)]
    assert _max_diff(models[0], models[1]) == 0.0
    _, _, state = _checkpoint(worker_runs / "stop")
    assert state["step"] == 3


def test_two_gloo_ranks_agree_on_one_step_count_for_a_time_budget(worker_runs):
    """Rank 0 fits the length from its own clock and every rank takes its number: both train to
    the step run.json records (ranks that disagreed would wait for each other forever)."""
    out, run_dir = worker_runs / "ranks" / "budget", worker_runs / "budget"
    steps = [int((out / f"rank{r}.step").read_text()) for r in (0, 1)]
    info = json.loads((run_dir / "run.json").read_text())
    assert steps[0] == steps[1] == info["total_steps"] == info["budget"]["total_steps"] > STEPS
    assert info["budget"]["time"] == BUDGET and info["world_size"] == 2
    _, _, state = _checkpoint(run_dir)
    assert state["step"] == steps[0] and _logged_steps(run_dir) == list(range(1, steps[0] + 1))


def test_accumulated_micro_batches_all_reduce_once_per_step_and_follow_one_process(reference, worker_runs):
    """grad_accum 2 on 2 ranks: micro-batches of 4, only the last of each step all-reduces (no_sync
    before it), and the run follows the single process with the whole batch of 16."""
    counts = {job: [int((worker_runs / "ranks" / job / f"rank{r}.allreduces").read_text()) for r in (0, 1)]
              for job in ("fresh", "accum")}
    assert counts["fresh"][0] >= STEPS  # one per step and gradient bucket
    assert counts["accum"] == counts["fresh"]
    models, emas = _rank_weights(worker_runs / "ranks" / "accum")
    assert _max_diff(models[0], reference["model"]) < ATOL
    assert _max_diff(emas[0], reference["ema"]) < ATOL


def test_torchrun_cli_on_two_processes_resumes_on_one(reference, tmp_path):
    """The real entry point: `torchrun -m ddpmkit train` for 2 steps, then 1 process to step 4."""
    run_dir = tmp_path / "run"
    config = _write_config(tmp_path / "tiny.yaml", run_dir, STEPS)
    proc = _torchrun(["-m", "ddpmkit", "train", "--config", str(config), "--max-steps", "2", "--no-progress"], cwd=tmp_path)
    assert proc.stderr.count("done: step 2") == 2  # both ranks finish the same step
    assert proc.stderr.count("training ") == 1  # only rank 0 talks
    _, _, state = _checkpoint(run_dir)
    assert state["step"] == 2 and state["world_size"] == 2

    result = _quiet(tiny(run_dir, train={"max_steps": STEPS}), resume=True)
    assert result.step == STEPS
    model, ema, state = _checkpoint(run_dir)
    assert state["step"] == STEPS and state["world_size"] == 1
    assert _max_diff(model, reference["model"]) < ATOL
    assert _max_diff(ema, reference["ema"]) < ATOL
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))
