"""The run folder: where each file of a run lives, and the one reading of what a run holds.

    RUN/config.yaml     the resolved settings (`ddpmkit train --config RUN/config.yaml` repeats the run)
    RUN/run.json        versions, device, parameter count, data, total_steps (the planned length),
                        "budget" (what a run fitted to train.time_budget was fitted from)
    RUN/log.jsonl       one JSON object per logged step, FID measurement, ...
    RUN/samples/        preview grids, step_00001000.png
    RUN/checkpoints/    step_00001000/{model,ema}.safetensors + state.pt, and `latest` (its name)
    RUN/report.html     the run report
    RUN/tb/             TensorBoard events (optional)

Torch-free, so the report, the CLI and `--help` read runs without loading torch. What is inside a
checkpoint folder's files is `checkpoint.py`'s business; where they are is this module's.

One rule for "a checkpoint" (`is_checkpoint`): a folder named step_N under checkpoints/ holding
weights to sample from (the EMA's or the raw ones); a resume point also holds the raw weights and
the training state (older checkpoints keep only their EMA: `train.keep_full`). Checkpoints are
written under a temporary name and renamed when complete, and pruned by renaming first, so a
folder with a final name is never half written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import write_text_atomic

CONFIG_FILE = "config.yaml"
INFO_FILE = "run.json"
LOG_FILE = "log.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
REPORT_FILE = "report.html"
TENSORBOARD_DIR = "tb"
# inside checkpoints/step_N/
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
LATEST = "latest"  # checkpoints/latest: the name of the newest checkpoint folder

STEP_NAME = re.compile(r"step_([0-9]+)")
RUNS = Path("runs")  # where runs go unless told otherwise, and where a command looks for the newest


def step_dir_name(step: int) -> str:
    """step_00001000: eight digits, so names sort in step order up to 10^8 steps."""
    return f"step_{step:08d}"


def step_of_name(name: str) -> Optional[int]:
    """N of a folder or file stem named step_N, else None."""
    m = STEP_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def is_checkpoint(folder: Path, resumable: bool = False) -> bool:
    """The one rule: a step_N folder holding weights to sample from; `resumable`: one that training
    can continue from (raw weights and training state)."""
    if step_of_name(folder.name) is None:
        return False
    if resumable:
        return (folder / MODEL_FILE).is_file() and (folder / STATE_FILE).is_file()
    return (folder / EMA_FILE).is_file() or (folder / MODEL_FILE).is_file()


def by_step(folders: Iterable[Path]) -> list[Path]:
    """The step_N entries among `folders`, oldest first (by N: step_100000000 after step_99999999)."""
    return sorted((p for p in folders if step_of_name(p.name) is not None), key=lambda p: step_of_name(p.name) or 0)


class RunFolder:
    """The paths of one run folder and what can be read from it (nothing here writes but
    `create` and `update_info`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.info = self.path / INFO_FILE
        self.log = self.path / LOG_FILE
        self.samples = self.path / SAMPLES_DIR
        self.checkpoints = self.path / CHECKPOINTS_DIR
        self.report = self.path / REPORT_FILE
        self.tensorboard = self.path / TENSORBOARD_DIR

    @staticmethod
    def of_checkpoint(folder: Path) -> Optional["RunFolder"]:
        """The run a checkpoint folder (RUN/checkpoints/step_N) belongs to, or None."""
        folder = Path(folder)
        return RunFolder(folder.parent.parent) if folder.parent.name == CHECKPOINTS_DIR else None

    def is_run(self) -> bool:
        """A folder holding settings or checkpoints (a run, begun or finished, or an import)."""
        return self.path.is_dir() and (self.config.is_file() or self.checkpoints.is_dir())

    def checkpoint_folders(self, resumable: bool = False) -> list[Path]:
        """Every checkpoint (`is_checkpoint`), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return by_step(p for p in self.checkpoints.iterdir() if is_checkpoint(p, resumable))

    def latest_checkpoint(self, resumable: bool = False) -> Optional[Path]:
        """The folder `latest` names when it is a checkpoint, else the newest checkpoint, else None
        (`resumable`: the same among resume points; `latest` always names one, as training writes it).
        A `latest` naming anything but a step_N folder beside it (`../..`, a path) is refused."""
        pointer = self.checkpoints / LATEST
        if pointer.is_file():
            name = pointer.read_bytes()[:256].decode("utf-8", "replace").strip()
            if step_of_name(name) is None:
                raise DdpmkitError(f"{pointer} names {name[:60]!r}, not a checkpoint folder (step_N) beside it; "
                                   "put the newest step_N name in it or delete it")
            if is_checkpoint(self.checkpoints / name, resumable):
                return self.checkpoints / name
        folders = self.checkpoint_folders(resumable)
        return folders[-1] if folders else None

    def has_checkpoint(self) -> bool:
        return bool(self.checkpoint_folders())

    def touched(self) -> float:
        """When the run last changed: its log, settings, `latest` pointer or the folder itself."""
        files = [self.log, self.config, self.checkpoints / LATEST, self.path]
        return max(f.stat().st_mtime for f in files if f.exists())

    def read_info(self) -> dict[str, Any]:
        """run.json as a mapping; {} when it is missing or unreadable."""
        try:
            info = json.loads(self.info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def write_info(self, info: dict[str, Any]) -> None:
        write_text_atomic(self.info, json.dumps(info, indent=2) + "\n")

    def update_info(self, **values: Any) -> None:
        """Change run.json's values (e.g. total_steps when a resume changes the run's length)."""
        info = self.read_info()
        if any(info.get(k) != v for k, v in values.items()):
            self.write_info({**info, **values})

    def create(self, config_yaml: str, info: dict[str, Any]) -> None:
        """Make the folder with samples/ and checkpoints/, and write config.yaml and run.json."""
        if self.path.exists() and not self.path.is_dir():
            raise DdpmkitError(f"run directory {self.path} exists and is a file")
        self.samples.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config, config_yaml)
        self.write_info(info)

    def read_log(self, problems: Optional[list[str]] = None) -> list[dict[str, Any]]:
        """log.jsonl's records (JSON objects), in order. Lines that are not JSON objects (the last
        line of a run killed mid-write) are skipped; with `problems`, how many is noted there."""
        return read_jsonl(self.log, problems)


def read_jsonl(path: Path, problems: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file ([] when it is missing); see `RunFolder.read_log`."""
    if not path.is_file():
        return []
    out, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            out.append(record)
    if bad and problems is not None:
        problems.append(f"{path.name}: skipped {bad} unreadable line(s)")
    return out


def newest_run(root: Path = RUNS, need_checkpoint: bool = False) -> Path:
    """The run folder under `root` touched last; with need_checkpoint, only runs holding a
    checkpoint to sample from. One line when there is none."""
    runs = [RunFolder(p) for p in root.iterdir()] if root.is_dir() else []
    runs = [r for r in runs if r.is_run() and (r.has_checkpoint() or not need_checkpoint)]
    if not runs:
        what = "run with a checkpoint" if need_checkpoint else "run directory"
        raise DdpmkitError(f"no RUN given and no {what} under {root}/: give RUN, or train one first (ddpmkit train)")
    return max(runs, key=RunFolder.touched).path
