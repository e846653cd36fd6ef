"""benchmarks/quality_cpu.py without training: its --report table from a hand-written results
file, and the training command it builds from its options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import quality_cpu  # noqa: E402

COLOUR = {
    "samples": {"n": 1000, "mean": [150.2, 120.0, 101.5], "std": [79.0, 78.0, 80.0],
                "saturated": [0.11, 0.1, 0.117], "saturated_all": 0.109},
    "reference": {"n": 5000, "mean": [130.0, 105.0, 93.0], "std": [68.0, 66.0, 70.0],
                  "saturated": [0.03, 0.03, 0.036], "saturated_all": 0.032},
}


def _record(**kw):
    r = {"name": "base", "preset": "celeba32", "sets": ["train.lr=2e-3"], "step": 1500, "images_seen": 96000,
         "train_wall_s": 312.0, "img_per_s": 321.5, "sampler": "ddim", "steps": 50, "x0": "clip_eps", "n": 1000,
         "fid": 87.654, "colour": COLOUR, "date": "2026-11-29T14:00:00+00:00", "run_dir": "runs/q/base",
         "machine": {"cpu": "AMD EPYC", "threads": "1", "load": "0.10 on 2 cores"},
         "command": "python benchmarks/quality_cpu.py --name base --preset celeba32 --steps 1500"}
    r.update(kw)
    return r


def test_report_makes_one_row_per_evaluation(tmp_path):
    results = tmp_path / "runs.jsonl"
    lines = [json.dumps(_record()), json.dumps(_record(x0="none", fid=150.0, colour=None)),
             json.dumps(_record(name="cosine", sets=[], step=700, stopped_by_time=True, run_dir="runs/q/cosine",
                                command="python benchmarks/quality_cpu.py --name cosine --minutes 5")),
             '{"name": "cut', ""]  # a line cut by a crash, and a blank one
    results.write_text("\n".join(lines))
    md = tmp_path / "results_quality.md"
    assert quality_cpu.main(["--report", "--out", str(results), "--md", str(md)]) == 0
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| base") or line.startswith("| cosine")]
    assert len(rows) == 3
    first = rows[0]
    for cell in ("| celeba32 `train.lr=2e-3` |", "1,500", "96,000", "5.2", "321.5", "ddim 50", "clip_eps", "87.65",
                 "10.9 (3.2)", "150/120/102 (130/105/93)", "79/78/80 (68/66/70)", "2026-11-29"):
        assert cell in first, cell
    assert "| none |" in rows[1] and "150.00" in rows[1] and "—" in rows[1]  # no colour recorded
    assert "| celeba32 |" in rows[2] and "700 (time)" in rows[2]
    assert "1 unreadable line" in text
    # the commands: each run once, with its machine, and the command that wrote the file
    assert text.count("--name base --preset celeba32") == 1 and "**cosine**" in text and "AMD EPYC" in text
    assert "--name cosine --minutes 5" in text
    assert f"--report --out {results}" in text


def test_report_without_results_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no results file"):
        quality_cpu.main(["--report", "--out", str(tmp_path / "none.jsonl"), "--md", str(tmp_path / "x.md")])


def test_training_command_keeps_the_checkpoints_to_evaluate(tmp_path):
    a = quality_cpu.parse_args(["--name", "b", "--steps", "1500", "--evals-at", "500,1000", "--run-root",
                                str(tmp_path), "--set", "train.lr=2e-3", "--x0", "none,dynamic"])
    cmd = quality_cpu.train_command(a)
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
    assert "train.ckpt_every=500" in sets and "train.keep_checkpoints=4" in sets
    assert sets.index("train.sample_every=0") < sets.index("train.lr=2e-3")  # the user's --set wins
    assert cmd[cmd.index("--max-steps") + 1] == "1500" and cmd[cmd.index("--run-dir") + 1] == str(tmp_path / "b")
    assert a.x0_modes == ["none", "dynamic"] and a.samplers == ["ddim"] and a.step_list == [50]
    # a budgeted run's length is unknown here: its later checkpoints must not push out the eval points
    timed = quality_cpu.train_command(quality_cpu.parse_args(["--name", "t", "--time", "60m", "--evals-at", "1200,2400"]))
    assert "train.keep_checkpoints=64" in timed and "train.ckpt_every=1200" in timed


def test_a_time_budget_reaches_the_training_command_and_the_table(tmp_path):
    """--time fits the length to the machine: it goes to `ddpmkit train` and its rows say so."""
    a = quality_cpu.parse_args(["--name", "hour", "--time", "60m", "--run-root", str(tmp_path)])
    cmd = quality_cpu.train_command(a)
    assert cmd[cmd.index("--time") + 1] == "60m" and "--max-steps" not in cmd
    from quality_report import row

    assert "| celeba32 `--time 60m` `train.lr=2e-3` |" in row(_record(time_budget="60m", step=4812))
    assert "| celeba32 `--max-steps 2600` |" in row(_record(max_steps=2600, sets=[]))


@pytest.mark.parametrize("args, message", [
    (["--steps", "10", "--x0", "clamp"], "clamp"),
    (["--steps", "10", "--evals-at", "20"], "evals-at"),
    (["--steps", "10", "--sampler", "ddim,ddpm", "--eval-steps", "5,6,7"], "eval-steps"),
    ([], "budget"),
])
def test_bad_options_are_refused(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        quality_cpu.parse_args(["--name", "b", "--run-root", str(tmp_path), *args])
    assert message in capsys.readouterr().err


def test_rate_excludes_the_first_window_and_wall_counts_from_launch():
    log = [{"step": 5, "img_per_s": 1.0, "time": 110.0}, {"step": 10, "img_per_s": 50.0, "time": 120.0},
           {"step": 15, "img_per_s": 60.0, "time": 130.0}, {"step": 20, "img_per_s": 70.0, "time": 140.0}]
    assert quality_cpu.steady_rate(log, 20) == 60.0 and quality_cpu.steady_rate(log, 10) == 50.0
    assert quality_cpu.wall_at(log, 15, start=100.0) == 30.0 and quality_cpu.wall_at(log, 17, 100.0) == 30.0


def test_quality_figures_curves_and_rows(tmp_path: Path) -> None:
    """quality_figures: the FID rows of one name, in step order, and the curves picture drawn from a
    run's log (loss panel + FID panel side by side)."""
    import quality_figures
    from PIL import Image

    jsonl = tmp_path / "runs.jsonl"
    rows = [_record(name="a", step=200, fid=90.0), _record(name="b", step=100, fid=1.0), _record(name="a", step=100, fid=120.0)]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = quality_figures.fid_rows(jsonl, "a")
    assert [(r["step"], r["fid"]) for r in got] == [(100, 120.0), (200, 90.0)]
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("diffusion: {prediction: v}\ntrain: {loss_weight: min_snr}\n")
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 40)))
    one = quality_figures.curves(run, [])
    two = quality_figures.curves(run, got)
    assert isinstance(two, Image.Image) and two.width > one.width and two.height == one.height
