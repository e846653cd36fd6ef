"""The run folder as training writes it: opened new or resumed, its settings and run info, the
log and TensorBoard writers. Where each file lives is `ddpmkit.runfolder`'s."""

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
from ddpmkit.runfolder import RunFolder
from ddpmkit.settings import Settings
from ddpmkit.train.logfile import LogFile


class RunDir(RunFolder):
    """A run folder being trained."""

    def checkpoint_to_resume(self, resume: bool) -> Optional[Path]:
        """The checkpoint a resume continues from, or None for a new run. Refuses to start a new
        run over an existing one, and to resume where there is nothing. Reads only."""
        if not resume:
            if self.is_run():
                latest = self.latest_checkpoint(resumable=True)
                what = f"checkpoint {latest.name}" if latest else "a run"
                raise DdpmkitError(
                    f"run directory {self.path} already holds {what}; use --resume to continue it "
                    "or --run-dir to start a new one"
                )
            return None
        if not self.is_run():
            raise DdpmkitError(f"nothing to resume: {self.path} holds no run")
        return self.latest_checkpoint(resumable=True)

    def create_for(self, settings: Settings, extra: dict[str, Any]) -> None:
        """A new run: the folder, the resolved settings and run info (versions + `extra`)."""
        info = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ddpmkit": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            **extra,
        }
        self.create(settings.to_yaml(), info)


TENSORBOARD_MISSING = (
    "note: train.tensorboard is on but the tensorboard package is not installed "
    "(pip install tensorboard; in a clone: pip install -e '.[tensorboard]'): logging to the run log only"
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
