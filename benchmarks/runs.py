"""Running ddpmkit's command line and reading its runs, for the benchmarks and the offline GPU kit.

Standard library only: the GPU kit (gpukit/) imports this before the packages it carries are
installed, so nothing here may import ddpmkit, torch or pydantic.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]


def cli_env(paths: Sequence[Path] = (), extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for ddpmkit's CLI in a subprocess: this checkout's src first (whatever the
    venv has installed), then `paths` (e.g. carried packages), then the PYTHONPATH already set."""
    env = dict(os.environ)
    parts = [str(REPO / "src"), *map(str, paths), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The loss records of RUN/log.jsonl (none when it is not there yet); a line being written or
    cut by a stop is left out."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and "img_per_s" in r:
            records.append(r)
    return records


def steady_rate(log: list[dict[str, Any]], upto: Optional[int] = None) -> Optional[float]:
    """Median img/s of the log windows (up to step `upto`), the first (start-up) window left out;
    None without another."""
    rates = [r["img_per_s"] for r in log[1:] if upto is None or r["step"] <= upto]
    return round(statistics.median(rates), 2) if rates else None


def train_for(cmd: Sequence[str], seconds: Optional[float], *, env: dict[str, str], out: Optional[Path] = None,
              ready: Callable[[], bool] = lambda: True, limit: Optional[float] = None,
              stop: int = signal.SIGTERM) -> tuple[Optional[int], bool, float]:
    """Run a `ddpmkit train` command; once `seconds` have passed and `ready()` says so, send it
    `stop` (the trainer ends the step, saves a checkpoint and exits 130). `limit`: seconds after
    which it and everything it started are killed (exit None; it then runs in a session of its
    own, out of reach of a Ctrl-C at the terminal). Output goes to `out` (appended), else to this
    process's. Returns (exit code, whether it was stopped, seconds)."""
    t0, stopped = time.monotonic(), False
    sink = open(out, "a") if out is not None else None
    try:
        if sink is not None:
            sink.write(f"$ {' '.join(map(str, cmd))}\n")
            sink.flush()
        proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, env=env, stdout=sink,
                                stderr=subprocess.STDOUT if sink else None, start_new_session=limit is not None)
        while proc.poll() is None:
            elapsed = time.monotonic() - t0
            if limit is not None and elapsed > limit:
                kill_group(proc)
                return None, stopped, elapsed
            if not stopped and seconds is not None and elapsed >= seconds and ready():
                proc.send_signal(stop)
                stopped = True
            time.sleep(0.2)
    finally:
        if sink is not None:
            sink.close()
    return proc.returncode, stopped, time.monotonic() - t0


def kill_group(p: subprocess.Popen) -> None:
    """End a process started with start_new_session=True and everything it started (compile workers)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
