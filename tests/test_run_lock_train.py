"""The run-directory lock in real trainings (issue 12 §1): real `python -m ddpmkit train`
processes on one run directory; readers keep working; under torchrun a refusal reaches every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ddpmkit.cli.app import app
from ddpmkit.runlock import LOCK_NAME, RunLock

from conftest import TINY

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT_S = 180  # a process that hangs fails the test instead of blocking CI

pytestmark = pytest.mark.slow  # real processes: a few seconds of start-up each


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "1000"}


def _config(tmp: Path, **train) -> Path:
    cfg = tmp / "tiny.yaml"
    data = {**TINY, "train": {**TINY["train"], "run_dir": str(tmp / "run"), **train}}
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _ddpmkit(*args: object) -> list[str]:
    return [sys.executable, "-m", "ddpmkit", *map(str, args)]


def _finish(p: subprocess.Popen) -> str:
    """Wait for `p`; its stderr. A process still running after TIMEOUT_S is killed and fails the test."""
    try:
        _, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"{p.args} was not refused: still running after {TIMEOUT_S}s")
    return err


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_a_second_training_and_a_resume_are_refused_while_a_run_goes(tmp_path):
    run = tmp_path / "run"
    cfg = _config(tmp_path, max_steps=1_000_000, ckpt_every=2, keep_checkpoints=2)
    with open(tmp_path / "holder.err", "w") as holder_err:
        holder = subprocess.Popen(_ddpmkit("train", "--config", cfg, "--seed", "1", "--no-progress"),
                                  stdout=subprocess.DEVNULL, stderr=holder_err, env=_env(), cwd=tmp_path)
    try:
        deadline = time.time() + TIMEOUT_S
        while not (run / "checkpoints" / "latest").exists() and holder.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert holder.poll() is None, (tmp_path / "holder.err").read_text()
        assert (run / "checkpoints" / "latest").exists(), "the first training wrote no checkpoint in time"
        pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True, "env": _env(), "cwd": tmp_path}
        second = subprocess.Popen(_ddpmkit("train", "--config", cfg, "--seed", "2", "--no-progress"), **pipes)
        resume = subprocess.Popen(_ddpmkit("train", "--run-dir", run, "--resume", "--no-progress"), **pipes)
        for p in (second, resume):
            err = _finish(p)
            assert p.returncode == 2, err
            line = _one_error(err)
            assert f"error: run directory {run} is in use by PID {holder.pid} on host " in line
            assert line.endswith("wait for it to finish or use another --run-dir")
        # readers never take the lock: they work on the run while it trains
        runner = CliRunner()
        r = runner.invoke(app, ["inspect", str(run)], catch_exceptions=False)
        assert r.exit_code == 0 and "step" in r.output, r.output
        r = runner.invoke(app, ["sample", str(run), "--n", "1", "--steps", "2", "--out", str(tmp_path / "s")],
                          catch_exceptions=False)
        assert r.exit_code == 0 and (tmp_path / "s" / "grid.png").exists(), r.output
        assert holder.poll() is None
    finally:
        holder.send_signal(signal.SIGTERM)  # finish the step, save, exit 130
        try:
            holder.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
    assert holder.returncode == 130, (tmp_path / "holder.err").read_text()
    assert not (run / LOCK_NAME).exists()  # released on the way out
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once


def test_under_torchrun_every_rank_learns_of_the_refusal(tmp_path):
    run = tmp_path / "run"
    cfg = _config(tmp_path, max_steps=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ddpmkit", "train", "--config", str(cfg), "--no-progress"]
    with RunLock(run):  # this test process is the holder
        before = sorted(p.name for p in run.iterdir())
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"a rank hung after the lock was refused: {e.stderr!s:.3000}")
        assert sorted(p.name for p in run.iterdir()) == before == [LOCK_NAME]
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert f"is in use by PID {os.getpid()}" in out  # rank 0
    assert f"the main process could not lock run directory {run}" in out  # rank 1
    assert "Traceback" not in out.split("torch/distributed/elastic")[0], out  # the ranks'; torchrun adds its own
