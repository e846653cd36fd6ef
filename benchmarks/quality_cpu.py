"""Sample quality of ONE training configuration at a budget: FID, colour statistics and img/s.

    PYTHONPATH=src .venv/bin/python benchmarks/quality_cpu.py --name base --preset celeba32 --time 60m \\
        [--steps N] [--minutes M] [--set train.lr=2e-3 ...] [--eval-n 1000] [--sampler ddim] [--eval-steps 50] \\
        [--x0 clip_eps,clip,none,dynamic] [--ref-n 5000] [--evals-at 500,1000] [--seed S] \\
        [--out benchmarks/quality_runs.jsonl] [--run-root runs/quality] [--cache-dir data/cache]
    PYTHONPATH=src .venv/bin/python benchmarks/quality_cpu.py --report [--out FILE] [--md benchmarks/results_quality.md]

It trains with the real CLI (`ddpmkit train --preset P --time D` or `--max-steps N`, `--set ...`,
run directory RUN_ROOT/NAME, which must not exist yet), then runs `ddpmkit fid` on the final checkpoint (and
on those at --evals-at: the script sets train.ckpt_every and keep_checkpoints so they are kept)
for every sampler x x̂_0 mode asked, and appends one JSON line per evaluation to --out. The
reference is the first --ref-n images of the training split (fid.ref_n; its FID and colour
statistics are cached under CACHE_DIR/fid). --time fits the step count and the lr schedule to
that much wall-clock on this machine (train.time_budget); --steps fixes them (and wins over --time);
with neither, the preset's own length holds (celeba32's is a budget, 60m). --minutes stops training
(SIGTERM: the step ends and a checkpoint is saved) after that much wall-clock, whatever the schedule.
Each record names the length it used (time_budget, max_steps, total_steps).

Preview grids are off (train.sample_every=0) unless --set turns them on: the wall-clock is the
training's. img/s is the median of the log windows after the first one (start-up excluded).
Data and weights come from the environment as for any ddpmkit command (DDPMKIT_DATA_ROOT,
DDPMKIT_FID_WEIGHTS). Numbers are worth keeping only from a machine that runs nothing else.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, load_average  # noqa: E402  (benchmarks/machine.py)
from quality_report import write_report  # noqa: E402
from runs import REPO, cli_env, read_log, steady_rate, train_for  # noqa: E402  (benchmarks/runs.py)

X0_MODES = ("none", "clip", "clip_eps", "dynamic")
SCRIPT_SETS = ["train.sample_every=0"]  # before the user's --set, which may turn previews back on


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="store_true", help="write the Markdown table of --out to --md, train nothing")
    p.add_argument("--md", type=Path, default=REPO / "benchmarks" / "results_quality.md", help="--report's output")
    p.add_argument("--name", help="the configuration's name (and its run directory under --run-root)")
    p.add_argument("--eval-only", action="store_true",
                   help="train nothing: evaluate the existing run RUN_ROOT/NAME (its final checkpoint and --evals-at); "
                   "--set then only labels the rows with the settings it was trained with")
    p.add_argument("--preset", default="celeba32")
    p.add_argument("--steps", type=int, help="train.max_steps (also the lr schedule's length)")
    p.add_argument("--time", help="train.time_budget, e.g. 60m: the step count fitted to this machine")
    p.add_argument("--minutes", type=float, help="stop training after this much wall-clock")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a setting for training")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--eval-n", type=int, default=1000, help="samples per FID")
    p.add_argument("--sampler", default="ddim", help="comma list: ddpm, ddim, dpmsolver++")
    p.add_argument("--eval-steps", default="50", help="sampler steps, one value or one per --sampler")
    p.add_argument("--x0", default="clip_eps", help=f"comma list of x̂_0 modes: {', '.join(X0_MODES)}")
    p.add_argument("--ref-n", type=int, default=5000, help="reference images: the first n of the train split")
    p.add_argument("--evals-at", default="", help="comma list of earlier steps to evaluate as well")
    p.add_argument("--eval-batch", type=int, help="images per sampling / Inception batch (fid.batch_size)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "quality_runs.jsonl", help="JSON lines, appended")
    p.add_argument("--run-root", type=Path, default=Path("runs/quality"))
    p.add_argument("--cache-dir", type=Path, default=Path("data/cache"), help="data.cache_dir (prepared data, FID stats)")
    a = p.parse_args(argv)
    if not a.report:
        _check(p, a)
    return a


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if not a.name or not (a.steps or a.time or a.minutes or a.eval_only):
        p.error("--name and a budget (--time, --steps and/or --minutes) are required")
    a.samplers = [s.strip() for s in a.sampler.split(",") if s.strip()]
    a.step_list = _ints(a.eval_steps)
    if len(a.step_list) == 1:
        a.step_list *= len(a.samplers)
    if len(a.step_list) != len(a.samplers):
        p.error("--eval-steps: one value, or one per --sampler")
    a.x0_modes = [m.strip() for m in a.x0.split(",") if m.strip()]
    if bad := [m for m in a.x0_modes if m not in X0_MODES]:
        p.error(f"--x0 {bad[0]!r} is not one of {', '.join(X0_MODES)}")
    a.evals = sorted(set(_ints(a.evals_at)))
    if a.steps and any(s <= 0 or s > a.steps for s in a.evals):
        p.error("--evals-at: steps between 1 and --steps")
    a.run_dir = a.run_root / a.name
    if a.eval_only:
        if not (a.run_dir / "checkpoints").is_dir():
            p.error(f"--eval-only: {a.run_dir} holds no checkpoints")
    elif a.run_dir.exists():
        p.error(f"{a.run_dir} exists: choose another --name or --run-root, or delete it")


def train_command(a: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "ddpmkit", "train", "--preset", a.preset, "--run-dir", str(a.run_dir),
           "--device", a.device, "--set", f"data.cache_dir={a.cache_dir}"]
    if a.steps:
        cmd += ["--max-steps", str(a.steps)]
    if a.time:
        cmd += ["--time", a.time]
    if a.seed is not None:
        cmd += ["--seed", str(a.seed)]
    extra = list(SCRIPT_SETS)
    if a.evals:
        every = math.gcd(*a.evals, *([a.steps] if a.steps else []))
        # every checkpoint of the run is kept: a --time run's length is known only once it is fitted,
        # and keeping fewer let the last checkpoints push out the first eval point
        keep = a.steps // every + 1 if a.steps else 64
        extra += [f"train.ckpt_every={every}", f"train.keep_checkpoints={keep}"]
    for s in extra + a.sets:
        cmd += ["--set", s]
    return cmd


def train(a: argparse.Namespace) -> tuple[float, bool]:
    """Run training; returns (its wall-clock start as time.time(), whether --minutes stopped it)."""
    cmd = train_command(a)
    print("$", shlex.join(cmd), flush=True)
    start = time.time()
    # SIGTERM after --minutes: the trainer ends the step and saves a checkpoint
    code, stopped, _ = train_for(cmd, a.minutes * 60 if a.minutes else None, env=cli_env())
    if code not in (0, 130) or (code == 130 and not stopped):
        raise SystemExit(f"training failed (exit {code}): {shlex.join(cmd)}")
    return start, stopped


def wall_at(log: list[dict[str, Any]], step: int, start: float) -> Optional[float]:
    """Seconds from launching training to the log record of `step` (or the last before it)."""
    times = [r["time"] for r in log if r["step"] <= step]
    return round(times[-1] - start, 1) if times else None


def final_step(run_dir: Path) -> int:
    """The step of the run's newest complete checkpoint (checkpoints/latest names it)."""
    ckpts = run_dir / "checkpoints"
    latest = ckpts / "latest"
    name = latest.read_text().strip() if latest.is_file() else max((p.name for p in ckpts.glob("step_*")), default="")
    if not name.startswith("step_"):
        raise SystemExit(f"{run_dir} holds no checkpoint")
    return int(name.removeprefix("step_"))


def evaluate(a: argparse.Namespace, ckpt: Path, sampler: str, steps: int, x0: str) -> tuple[dict[str, Any], float, str]:
    """`ddpmkit fid` of one checkpoint with one sampler and x̂_0 mode: (its --out JSON, seconds, command)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fid.json"
        cmd = [sys.executable, "-m", "ddpmkit", "fid", str(ckpt), "--n", str(a.eval_n), "--sampler", sampler,
               "--steps", str(steps), "--device", a.device, "--set", f"sample.x0={x0}", "--set", f"fid.ref_n={a.ref_n}",
               "--set", f"data.cache_dir={a.cache_dir}", "--out-json", str(out)]
        if a.eval_batch:
            cmd += ["--batch-size", str(a.eval_batch)]
        t0 = time.time()
        done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"evaluation failed (exit {done.returncode}): {shlex.join(cmd)}")
        result = json.loads(out.read_text())
    if result.get("x0") != x0 or result.get("sampler") != sampler:
        raise SystemExit(f"ddpmkit fid sampled with {result.get('sampler')} x0={result.get('x0')}, not {sampler} x0={x0}")
    return result, round(time.time() - t0, 1), shlex.join(cmd)


def _run_facts(a: argparse.Namespace, load: str) -> dict[str, Any]:
    """What every record of this run shares: settings, machine, command."""
    import yaml  # a ddpmkit dependency

    config = yaml.safe_load((a.run_dir / "config.yaml").read_text()) or {}
    try:
        info = json.loads((a.run_dir / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    torch_version = info.get("torch")
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
               "load": load, "torch": torch_version}
    return {"name": a.name, "preset": a.preset, "sets": a.sets, "script_sets": SCRIPT_SETS, "seed": a.seed,
            "batch_size": int(config.get("train", {}).get("batch_size", 0)), "ref_n": a.ref_n,
            "time_budget": (info.get("budget") or {}).get("time"), "max_steps": config.get("train", {}).get("max_steps"),
            "total_steps": info.get("total_steps"),
            "run_dir": str(a.run_dir), "machine": machine,
            "command": shlex.join(["python", "benchmarks/quality_cpu.py", *a.argv])}


def _say(r: dict[str, Any]) -> None:
    s, d = r["colour"].get("samples") or {}, r["colour"].get("reference") or {}
    colour = ""
    if s and d:
        colour = (f", saturated {100 * s['saturated_all']:.1f}% (data {100 * d['saturated_all']:.1f}%)"
                  f", std {sum(s['std']) / 3:.0f} (data {sum(d['std']) / 3:.0f})")
    kid = f", KID x10^3 {r['kid']['mean_x1e3']:.1f}" if r.get("kid") else ""
    print(f"{r['name']} step {r['step']}: {r['sampler']} {r['steps']} x0={r['x0']}: FID {r['fid']:.2f}{kid} "
          f"(n {r['n']}){colour}, train {r['img_per_s']} img/s", flush=True)


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    load = load_average()
    # an existing run (--eval-only): its wall-clock from its own log, counted from its first record
    start, stopped = (None, False) if a.eval_only else train(a)
    log, final = read_log(a.run_dir), final_step(a.run_dir)
    if start is None:
        start = log[0]["time"] if log else time.time()
    facts = _run_facts(a, load)
    records = []
    for step in [s for s in a.evals if s < final] + [final]:
        ckpt = a.run_dir / "checkpoints" / f"step_{step:08d}"
        for sampler, steps in zip(a.samplers, a.step_list):
            for x0 in a.x0_modes:
                result, seconds, cmd = evaluate(a, ckpt, sampler, steps, x0)
                r = {**facts, "step": step, "images_seen": step * facts["batch_size"],
                     "train_wall_s": wall_at(log, step, start), "img_per_s": steady_rate(log, step),
                     "stopped_by_time": stopped and step == final, "sampler": sampler, "steps": steps, "x0": x0,
                     "n": result["n"], "fid": round(result["fid"], 4), "kid": result.get("kid"),
                     "colour": result.get("colour"),
                     "sample_seed": result.get("seed"), "eval_s": seconds, "eval_command": cmd,
                     "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
                a.out.parent.mkdir(parents=True, exist_ok=True)
                with open(a.out, "a") as fh:  # one line per evaluation, as soon as it is known
                    fh.write(json.dumps(r) + "\n")
                _say(r)
                records.append(r)
    return records


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    a.argv = argv
    if a.report:
        if not a.out.is_file():
            raise SystemExit(f"no results file {a.out}: run a configuration first, or pass --out")
        write_report(a.out, a.md, shlex.join(["python", "benchmarks/quality_cpu.py", *argv]))
        print(f"wrote {a.md}")
        return 0
    run(a)
    print(f"appended to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
