"""The run directory: everything one training run writes, in one place.

    config.yaml   the resolved settings (`ddpmkit train --config runs/x/config.yaml` repeats the run)
    run.json      versions, device, parameter count
    log.jsonl     one JSON object per logged step: step, epoch, loss, lr, img_per_s, time
    samples/      EMA sample grids, step_00001000.png
    checkpoints/  see checkpoint.py
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ddpmkit import __version__
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import write_text_atomic
from ddpmkit.settings import Settings
from ddpmkit.checkpoint import latest_checkpoint


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


class JsonlLogger:
    """Appends one JSON line per record; optionally mirrors scalars to TensorBoard."""

    def __init__(self, path: Path, tensorboard: bool = False) -> None:
        self.path = path
        self._fh = open(path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(str(path.parent / "tb"))
            except ImportError:
                self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


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
