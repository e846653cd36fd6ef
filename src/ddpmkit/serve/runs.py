"""The runs a server offers: every run with a checkpoint under the served folders, newest first.

The page knows a run by its name only (its folder's name, or `FOLDER/NAME` when two served
folders hold runs of one name); a name from the page is looked up in this listing and never
opened as a path. A run is listed only when the run folder and the weights it would sample from
resolve inside the folder it was found in: a symlink (the run's, `checkpoints/`'s or a step
folder's) pointing elsewhere leaves it out, with the reason among `problems`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import ValidationError

from ddpmkit.checkpoint import read_metadata, resolve_checkpoint, settings_of, step_of
from ddpmkit.conditioning import unconditional_reason
from ddpmkit.errors import DdpmkitError
from ddpmkit.generate import OpenRun, load_run
from ddpmkit.runfolder import RunFolder
from ddpmkit.samplers import SAMPLERS, default_steps
from ddpmkit.settings import (GUIDANCE, MASK_NAMES, REPAINT_JUMP, REPAINT_RESAMPLE, REPAINT_STEPS, SampleConfig,
                              Settings, format_validation_error)

KEEP_OPEN = 2  # networks kept in memory: switching between two runs reloads nothing
MAX_COUNT = 64  # images a generate job may ask for (the page's limit; the CLI has none)


@dataclass(frozen=True)
class RunInfo:
    """One listed run: its page name, resolved folder, the weights it samples from, their step
    and settings."""

    name: str
    path: Path
    weights: Path
    step: int
    settings: Settings
    touched: float = field(compare=False)


def inside(path: Path, root: Path) -> bool:
    """Whether `path`, every symlink resolved, lies in `root` (itself resolved)."""
    try:
        path.resolve(strict=True).relative_to(root.resolve(strict=True))
    except (OSError, ValueError):
        return False
    return True


def candidates(roots: list[Path]) -> list[tuple[Path, Path]]:
    """(run folder, the served folder it was found in) for every run under `roots`: a root that is
    a run is served alone; otherwise each run folder directly inside it."""
    found = []
    for root in roots:
        if RunFolder(root).is_run():
            found.append((root, root))
        elif root.is_dir():
            found.extend((p, root) for p in sorted(root.iterdir()) if RunFolder(p).is_run())
    return found


def sample_defaults(settings: Settings, asked: dict[str, Any]) -> SampleConfig:
    """The run's own `sample` settings under the asked ones (--config, --set), steps resolved
    (None: the sampler's default) and at most T. One line for a bad value."""
    try:
        cfg = SampleConfig.model_validate({**settings.sample.model_dump(), **asked})
    except ValidationError as e:
        raise DdpmkitError(format_validation_error(e, "--config/--set sample settings")) from None
    T = settings.diffusion.timesteps
    return cfg.model_copy(update={"steps": min(cfg.steps or default_steps(cfg.sampler, T), T)})


class ServedRuns:
    """The runs under `roots`, listed afresh on every call (training adds checkpoints as it goes),
    and the networks opened for sampling on `device` (the last KEEP_OPEN kept)."""

    def __init__(self, roots: list[Path], device: torch.device, *, asked: Optional[dict[str, Any]] = None,
                 fallback: Optional[Settings] = None, ema: bool = True) -> None:
        self.roots = [Path(r) for r in roots]
        self.device, self.asked, self.fallback, self.ema = device, dict(asked or {}), fallback, ema
        self.problems: list[str] = []
        self._open: dict[str, tuple[Path, float, OpenRun]] = {}
        self._lock = threading.Lock()

    def listing(self) -> list[RunInfo]:
        """Every servable run, newest first; what was left out, and why, in `problems`."""
        runs, problems = [], []
        for path, root in candidates(self.roots):
            try:
                runs.append(self._info(path, root))
            except DdpmkitError as e:
                problems.append(f"{path}: {e}")
        self.problems = problems
        runs.sort(key=lambda r: r.touched, reverse=True)
        return _unique_names(runs)

    def _info(self, path: Path, root: Path) -> RunInfo:
        if not inside(path, root):
            raise DdpmkitError("it leads outside the served folder")
        if not RunFolder(path).has_checkpoint():
            raise DdpmkitError("no checkpoint yet")
        weights = resolve_checkpoint(path).weights
        if not inside(weights, root):
            raise DdpmkitError("its checkpoint leads outside the served folder")
        settings = settings_of(weights) or self.fallback
        if settings is None:
            raise DdpmkitError("weights not written by ddpmkit: give --preset or --config describing them")
        return RunInfo(path.name, path.resolve(), weights.resolve(), step_of(read_metadata(weights)), settings,
                       RunFolder(path).touched())

    def find(self, name: Any) -> RunInfo:
        """The listed run called `name`; a path, or a name not listed, is refused in one line."""
        for run in self.listing():
            if run.name == name:
                return run
        shown = str(name)[:80]
        raise DdpmkitError(f"no run named {shown!r} under the served folder"
                           " (runs are chosen by name from the list, never by path)")

    def open(self, name: str) -> OpenRun:
        """The run's network ready to sample; reopened when its newest checkpoint changed."""
        info = self.find(name)
        stamp = info.weights.stat().st_mtime
        with self._lock:
            held = self._open.get(name)
            if held is not None and held[:2] == (info.weights, stamp):
                return held[2]
            opened = load_run(info.path, self.device, ema=self.ema, fallback_settings=self.fallback)
            self._open.pop(name, None)
            self._open[name] = (info.weights, stamp, opened)
            while len(self._open) > KEEP_OPEN:
                self._open.pop(next(iter(self._open)))
            return opened

    def describe(self, run: RunInfo) -> dict[str, Any]:
        """What the page shows and starts from for one run (JSON)."""
        s = run.settings
        T = s.diffusion.timesteps
        cfg = sample_defaults(s, self.asked)
        reason = unconditional_reason(s.model.cond_dim, s.model.cond_names)
        return {
            "name": run.name, "step": run.step, "size": s.data.size, "dataset": s.data.dataset, "T": T,
            "prediction": s.diffusion.prediction, "samplers": list(SAMPLERS),
            "sample": {"sampler": cfg.sampler, "steps": cfg.steps, "eta": cfg.eta, "seed": cfg.seed,
                       "n": min(cfg.n, MAX_COUNT), "max_n": MAX_COUNT},
            "attributes": [] if reason else list(s.model.cond_names), "no_attributes": reason, "guidance": GUIDANCE,
            "inpaint": {"steps": min(REPAINT_STEPS, T), "jump": REPAINT_JUMP, "resample": REPAINT_RESAMPLE,
                        "masks": list(MASK_NAMES)},
            # as `ddpmkit interpolate`: the run's steps when it samples with DDIM, else DDIM's default
            "interpolate": {"steps": cfg.steps if cfg.sampler == "ddim" else default_steps("ddim", T)},
        }


def _unique_names(runs: list[RunInfo]) -> list[RunInfo]:
    """Runs of one folder name from two served folders are told apart as PARENT/NAME."""
    names = [r.name for r in runs]
    return [r if names.count(r.name) == 1 else RunInfo(f"{r.path.parent.name}/{r.name}", r.path, r.weights, r.step,
                                                       r.settings, r.touched) for r in runs]
