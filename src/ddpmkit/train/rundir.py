"""The run directory: everything one training run writes, in one place.

    config.yaml   the resolved settings (`ddpmkit train --config runs/x/config.yaml` repeats the run)
    run.json      versions, device, parameter count, data, total_steps (the planned length)
    log.jsonl     one JSON object per logged step: step, epoch, loss, lr, img_per_s, time
    samples/      EMA sample grids, step_00001000.png
    checkpoints/  see checkpoint.py
    report.html   the run report (ddpmkit.report), rewritten at every checkpoint
    tb/           TensorBoard events (train.tensorboard, optional package)
"""

from __future__ import annotations

import importlib
import json
import platform
import time
from pathlib import Path
from typing import Any, Optional, TextIO

import torch

from ddpmkit import __version__
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import write_text_atomic
from ddpmkit.settings import Settings
from ddpmkit.checkpoint import latest_checkpoint
from ddpmkit.train.logfile import LogFile


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.info = self.path / "run.json"
        self.log = self.path / "log.jsonl"
        self.samples = self.path / "samples"
        self.checkpoints = self.path / "checkpoints"

    def holds_run(self) -> bool:
        return self.config.exists() or self.checkpoints.exists()

    def latest(self) -> Optional[Path]:
        return latest_checkpoint(self.checkpoints) if self.checkpoints.exists() else None

    def checkpoint_to_resume(self, resume: bool) -> Optional[Path]:
        """The checkpoint a resume continues from, or None for a new run. Refuses to start a new
        run over an existing one, and to resume where there is nothing. Reads only."""
        if not resume:
            if self.holds_run():
                latest = self.latest()
                what = f"checkpoint {latest.name}" if latest else "a run"
                raise DdpmkitError(
                    f"run directory {self.path} already holds {what}; use --resume to continue it "
                    "or --run-dir to start a new one"
                )
            return None
        if not self.holds_run():
            raise DdpmkitError(f"nothing to resume: {self.path} holds no run")
        return self.latest()

    def create(self, settings: Settings, extra: dict[str, Any]) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise DdpmkitError(f"run directory {self.path} exists and is a file")
        self.samples.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.config, settings.to_yaml())
        info = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ddpmkit": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            **extra,
        }
        write_text_atomic(self.info, json.dumps(info, indent=2) + "\n")

    def update_info(self, **values: Any) -> None:
        """Change run.json's values (e.g. total_steps when a resume changes the run's length)."""
        try:
            info = json.loads(self.info.read_text())
        except (OSError, ValueError):
            info = {}
        if all(info.get(k) == v for k, v in values.items()):
            return
        write_text_atomic(self.info, json.dumps({**info, **values}, indent=2) + "\n")


TENSORBOARD_MISSING = (
    "note: train.tensorboard is on but the tensorboard package is not installed "
    "(pip install tensorboard; in a clone: pip install -e '.[tensorboard]'): logging to log.jsonl only"
)


class TensorBoard:
    """Scalars and sample grids for TensorBoard in `path` (RUN/tb). The writer opens on first use,
    so one can be made before the run directory exists."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: Any = None

    @staticmethod
    def available() -> bool:
        """Whether the optional tensorboard package is installed."""
        try:  # optional: the tensorboard package is an extra, not a dependency
            importlib.import_module("torch.utils.tensorboard")
        except ImportError:
            return False
        return True

    def _open(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # optional, see available()

            self._writer = SummaryWriter(str(self.path))
        return self._writer

    def scalars(self, record: dict[str, Any]) -> None:
        step = int(record.get("step", 0))
        for k, v in record.items():
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                self._open().add_scalar(k, v, step)

    def image(self, tag: str, img: Any, step: int) -> None:
        """img: a PIL RGB image (e.g. a sample grid)."""
        import numpy as np

        self._open().add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class JsonlLogger:
    """Appends one JSON line per record; mirrors the numbers to TensorBoard when given one.

    Nothing is opened before the first record, so a logger can be made before the run directory.
    """

    def __init__(self, path: Path, tensorboard: Optional[TensorBoard] = None) -> None:
        self.path = path
        self.tensorboard = tensorboard
        self._fh: Optional[TextIO] = None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = LogFile(self.path)  # unbuffered; a failed append is one line (train/logfile.py)
        self._fh.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.scalars(record)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    return out
