"""Kill a real training with SIGKILL at random moments, resume it each time, and count the damage.

    .venv/bin/python benchmarks/fault_kill.py --kills 20 --seed 0 --results benchmarks/results_fault_kill.md

Runs `python -m ddpmkit train` (a tiny 16x16 model on generated faces, a checkpoint every 2 steps)
in a child process, kills it with SIGKILL at a random moment, then starts it again with
`--resume`, N times; finally it lets one resumed run finish. By default 20 % of the kills strike
during start-up, 30 % are aimed at a checkpoint write (0-5 ms after its temporary folder
appears), the rest at a uniformly random time in the first 4 s of training. After every kill it
checks the checkpoints on disk.

Prints and (with --results) writes:
- resumed: restarts that came back at the step of the checkpoint `latest` names (0 if none yet);
- corrupted: checkpoint folders under their final name that do not load: a resume point (one
  with `state.pt`) must load whole (safetensors weights and EMA, `torch.load(weights_only=True)`
  state, the step inside matching the folder name); an older one trimmed to its EMA weights
  (train.keep_full) must still have loadable EMA weights; and a `latest` pointer naming a
  missing checkpoint;
- steps lost: steps trained (logged) before a kill but not in the checkpoint resumed from;
- leftovers: temporaries (dot-named ``*.tmp`` / ``*.old``) in the run directory at the end; also
  how many kills left a new one behind, i.e. struck in the middle of writing a checkpoint.
Not a unit test; it takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "src"))
from machine import cpu_model, load_average  # noqa: E402  (benchmarks/machine.py)

TINY = [
    "data.dataset=synthetic", "data.size=16", "data.synthetic_count=64", "model.ch=16", "model.ch_mult=[1,2]",
    "model.attn_resolutions=[8]", "model.num_res_blocks=1", "model.num_groups=8", "model.dropout=0.0",
    "diffusion.timesteps=100", "train.batch_size=16", "train.warmup_steps=0", "train.lr_decay=constant",
    "train.log_every=1", "train.sample_every=0", "train.ckpt_every=2", "train.keep_checkpoints=2",
    "train.tensorboard=false",
    # report.html (a view of the run, written through the same atomic_path) would take most of the
    # time between checkpoints here; off, so the kills land in training and checkpoint writes
    "train.report=false",
]


@dataclass
class Tally:
    resumed: int = 0
    resume_failures: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    leftovers_seen: int = 0  # kills after which a new temporary was found: kills inside a write
    phases: dict[str, int] = field(default_factory=dict)


class Training:
    """One `ddpmkit train` child; its stderr lines are collected by a thread."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.started = threading.Event()  # the "training ..." line is out: set-up is done
        self.p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, errors="replace")
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("training "):
                self.started.set()

    def resumed_from(self) -> int:
        for line in self.lines:
            m = re.search(r"resuming .* from step (\d+)", line)
            if m:
                return int(m.group(1))
        return 0

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()
        self.t.join(timeout=10)


def check_checkpoints(ckpt_root: Path) -> tuple[list[str], int]:
    """(problems with complete-looking checkpoints, newest complete step)."""
    import torch
    from safetensors.torch import load_file

    problems: list[str] = []
    newest = 0
    if not ckpt_root.is_dir():
        return problems, newest
    for d in sorted(ckpt_root.glob("step_*")):
        if not d.is_dir():
            continue
        try:
            load_file(str(d / "ema.safetensors"))  # every checkpoint keeps what `sample` uses
            if not (d / "state.pt").exists():  # trimmed to its EMA weights (train.keep_full)
                continue
            load_file(str(d / "model.safetensors"))
            state = torch.load(d / "state.pt", map_location="cpu", weights_only=True)
            if int(state["step"]) != int(d.name.split("_")[1]):
                raise ValueError(f"state.pt says step {state['step']}")
            newest = max(newest, int(state["step"]))
        except Exception as e:  # noqa: BLE001 - any failure to load is corruption
            problems.append(f"{d.name}: {type(e).__name__}: {str(e)[:120]}")
    pointer = ckpt_root / "latest"
    if pointer.exists() and not (ckpt_root / pointer.read_text().strip()).is_dir():
        problems.append(f"latest -> {pointer.read_text().strip()} is missing")
    return problems, newest


def leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".old")))


def last_logged_step(run_dir: Path) -> int:
    step = 0
    log = run_dir / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                step = max(step, int(json.loads(line).get("step", 0)))
            except (ValueError, AttributeError):
                continue  # a line cut by the kill
    return step


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/ddpmkit-fault-kill"))
    ap.add_argument("--max-wait", type=float, default=4.0, help="longest wait after start-up before a kill, s")
    ap.add_argument("--startup-kills", type=float, default=0.2, help="share of kills during start-up")
    ap.add_argument("--save-kills", type=float, default=0.3,
                    help="share of kills aimed at a checkpoint write (when its temporary folder appears)")
    ap.add_argument("--results", type=Path, default=None)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    run_dir = args.work / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MKL_NUM_THREADS": "1",
           "COLUMNS": "1000"}  # rich must not wrap the "resuming ... from step N" line
    base = [sys.executable, "-m", "ddpmkit", "train", "--run-dir", str(run_dir), "--no-progress", "--device", "cpu",
            "--set", f"data.cache_dir={args.work / 'cache'}"]
    for s in TINY:
        base += ["--set", s]
    tally = Tally()
    t0 = time.time()
    logged_at_kill = 0  # the last step the killed run had trained (logged)
    plan = kill_plan(args, rng)
    was_left: set[str] = set()
    for k in range(args.kills):
        resume = (run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists()
        expected = library_latest(run_dir)  # the checkpoint a resume must start from
        cmd = base + ["--max-steps", "1000000"] + (["--resume"] if resume else [])
        tr = Training(cmd, args.work, env)
        if plan[k] == "start-up":
            time.sleep(rng.uniform(0.0, 3.0))
        else:
            if not tr.started.wait(timeout=180):
                raise SystemExit(f"run {k} never started: {tr.lines[-5:]}")
            if plan[k] == "write":
                wait_for_a_write(run_dir / "checkpoints", deadline=time.time() + 30)
                time.sleep(rng.uniform(0.0, 0.005))
            else:
                time.sleep(rng.uniform(0.0, args.max_wait))
        if tr.p.poll() is not None:
            raise SystemExit(f"run {k} exited by itself ({tr.p.returncode}): {tr.lines[-5:]}")
        tr.kill()
        phase = "training" if tr.started.is_set() else "start-up"
        tally.phases[phase] = tally.phases.get(phase, 0) + 1
        if tr.started.is_set():
            got = tr.resumed_from()
            if k > 0:  # the first start is a new run, not a resume
                if got == expected:
                    tally.resumed += 1
                else:
                    tally.resume_failures.append(f"start {k}: came back at step {got}, expected {expected}")
                tally.lost.append(max(0, logged_at_kill - got))
            logged_at_kill = last_logged_step(run_dir)
        problems, newest = check_checkpoints(run_dir / "checkpoints")
        tally.corrupted += [f"after kill {k + 1}: {p}" for p in problems]
        now_left = set(leftovers(run_dir))
        tally.leftovers_seen += bool(now_left - was_left)  # a name not there before: this kill's
        was_left = now_left
        print(f"kill {k + 1:2d}/{args.kills} ({phase}): logged step {logged_at_kill}, newest checkpoint "
              f"{newest}, leftovers {len(leftovers(run_dir))}", flush=True)
    expected = library_latest(run_dir)
    final = subprocess.run(base + ["--max-steps", str(expected + 4), "--resume"], cwd=args.work, env=env,
                           capture_output=True, text=True)
    m = re.search(r"resuming .* from step (\d+)", final.stderr)
    if m:
        tally.lost.append(max(0, logged_at_kill - int(m.group(1))))
        tally.resumed += int(m.group(1)) == expected
    problems, newest = check_checkpoints(run_dir / "checkpoints")
    tally.corrupted += [f"at the end: {p}" for p in problems]
    report(args, tally, final, newest, expected, leftovers(run_dir), time.time() - t0)


def _temporaries(ckpt_root: Path) -> set[str]:
    with os.scandir(ckpt_root) if ckpt_root.is_dir() else contextlib.nullcontext([]) as it:
        return {e.name for e in it if e.name.startswith(".step_") and e.name.endswith(".tmp")}


def kill_plan(args: argparse.Namespace, rng: random.Random) -> list[str]:
    """Which kind of moment each kill aims at, in random order: exact shares, the first kill after
    start-up (a start-up kill needs a run to resume)."""
    n_start = round(args.startup_kills * args.kills)
    n_write = round(args.save_kills * args.kills)
    plan = ["start-up"] * n_start + ["write"] * n_write + ["random"] * (args.kills - n_start - n_write)
    rng.shuffle(plan)
    first = next((i for i, kind in enumerate(plan) if kind != "start-up"), 0)
    plan[0], plan[first] = plan[first], plan[0]
    return plan


def wait_for_a_write(ckpt_root: Path, deadline: float) -> None:
    """Return as soon as a new checkpoint temporary (``.step_*.tmp``) appears: a save is under way."""
    before = _temporaries(ckpt_root)  # leftovers of earlier kills do not count
    while time.time() < deadline:
        if _temporaries(ckpt_root) - before:
            return
        time.sleep(0.0005)


def library_latest(run_dir: Path) -> int:
    """The step `ddpmkit` itself resumes from: runfolder.RunFolder.latest_checkpoint's choice (0: none)."""
    from ddpmkit.runfolder import RunFolder

    found = RunFolder(run_dir).latest_checkpoint()
    return int(found.name.split("_")[1]) if found else 0


def report(args, tally: Tally, final, newest: int, expected: int, left: list[str], seconds: float) -> None:
    restarts = tally.resumed + len(tally.resume_failures)
    lines = [
        f"kills: {args.kills} (SIGKILL; {tally.phases.get('training', 0)} after start-up, "
        f"{tally.phases.get('start-up', 0)} during start-up; {round(args.save_kills * args.kills)} aimed at a "
        f"checkpoint write, the rest at random times), checkpoint every 2 steps",
        f"resumed: {tally.resumed} of {restarts} starts came back at the step of the checkpoint `latest` names",
        f"corrupted: {len(tally.corrupted)} checkpoints",
        f"steps lost per kill: max {max(tally.lost, default=0)}, mean "
        f"{sum(tally.lost) / max(1, len(tally.lost)):.2f} (the checkpoint interval is 2)",
        f"final resumed run: exit {final.returncode}, newest checkpoint step {newest} (asked {expected + 4})",
        f"leftovers at the end: {len(left)} {left[:6]}{' ...' if len(left) > 6 else ''}",
        f"kills that left a new temporary behind (they hit a checkpoint or file write): {tally.leftovers_seen}",
    ]
    lines += [f"  {p}" for p in tally.resume_failures + tally.corrupted]
    if final.returncode != 0:
        lines.append(f"  final run stderr: {final.stderr.strip().splitlines()[-1:]}")
    print("\n".join(lines + [f"wall time: {seconds:.0f} s (not in the results: a shared machine)"]))
    if args.results:
        write_results(args, lines)


def write_results(args, lines: list[str]) -> None:
    import torch

    cmd = f".venv/bin/python benchmarks/fault_kill.py --kills {args.kills} --seed {args.seed}"
    text = [
        "# fault injection: SIGKILL during training, then --resume",
        "",
        f"Command: `{cmd}`",
        f"Machine: {os.cpu_count()} cores (CPU \"{cpu_model()}\"), no GPU used; torch {torch.__version__}.",
        f"Date: {dt.date.today().isoformat()}. Load average {load_average()} (shared machine).",
        "",
        "```",
        *lines,
        "```",
        "",
    ]
    args.results.write_text("\n".join(text))


if __name__ == "__main__":
    main()
