"""The training state: everything a checkpoint holds to continue a run where it stopped.

The weights go to safetensors (`checkpoint.save_checkpoint`); the rest to `state.pt` as plain
tensors, numbers and strings: step, epoch, data position, EMA update count, optimizer state,
the fp16 loss scaler's state, the RNG states and the settings. A resumed run follows the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ddpmkit import __version__
from ddpmkit.checkpoint import load_state, load_weights, save_checkpoint
from ddpmkit.runfolder import EMA_FILE, MODEL_FILE, STATE_FILE, RunFolder
from ddpmkit.errors import DdpmkitError
from ddpmkit.nn import UNet
from ddpmkit.precision import resolve_precision
from ddpmkit.settings import Settings, settings_from_dict
from ddpmkit.train.ema import EMA
from ddpmkit.train.optim import build_optimizer

# dropout masks must differ between ranks: rank r seeds its CPU/CUDA generators with seed + r * this
RANK_SEED_STRIDE = 7919


@dataclass
class TrainState:
    """The model, its EMA, the optimizer, the noise generator and the position in the data."""

    settings: Settings
    model: nn.Module  # the bare module (no DDP or torch.compile wrapper): what is saved
    ema: EMA
    optimizer: torch.optim.Optimizer
    gen: torch.Generator  # timesteps and noise of every global batch, identical on every rank
    scaler: torch.amp.GradScaler  # dynamic loss scaling for fp16 (disabled, a no-op, otherwise)
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # global batches already taken from the current epoch
    resumed_from: Optional[Settings] = None  # after load(): the settings the checkpoint was saved with

    @classmethod
    def new(cls, settings: Settings, device: torch.device, rank: int = 0) -> "TrainState":
        """A fresh state: initial weights from train.seed (the same on every rank)."""
        tc = settings.train
        torch.manual_seed(tc.seed)
        model = UNet.from_config(settings.model).to(device)
        if device.type == "cuda" and tc.channels_last:
            model = model.to(memory_format=torch.channels_last)
        ema = EMA(model, tc.ema_decay, tc.ema_warmup, kind=tc.ema, std=tc.ema_std)
        optimizer = build_optimizer(model.parameters(), tc, device)
        gen = torch.Generator(device=device).manual_seed(tc.seed + 1)
        scaler = torch.amp.GradScaler(device.type, enabled=resolve_precision(tc.precision, device).scaled)
        torch.manual_seed(tc.seed + RANK_SEED_STRIDE * rank)
        return cls(settings, model, ema, optimizer, gen, scaler)

    @property
    def device(self) -> torch.device:
        return self.gen.device

    def to_dict(self, world_size: int) -> dict[str, Any]:
        """What `state.pt` holds (the weights are saved beside it)."""
        state = {
            "ddpmkit": __version__,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": world_size,
            "ema_updates": self.ema.num_updates,
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_gen": self.gen.get_state(),
            "settings": json.dumps(self.settings.model_dump(mode="json")),
        }
        if self.scaler.is_enabled():  # floats and an int: weights_only loads them
            state["grad_scaler"] = self.scaler.state_dict()
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, ckpt_root: Path, *, world_size: int, keep: int, keep_full: Optional[int] = None) -> Path:
        """Write checkpoints/step_N (atomically) and keep the newest `keep`, of which all but the
        newest `keep_full` keep only their EMA weights. Returns its folder."""
        folder = save_checkpoint(
            ckpt_root,
            model=self.model,
            ema_model=self.ema.model,
            state=self.to_dict(world_size),
            settings=self.settings,
            step=self.step,
            keep=keep,
        )
        if keep_full is not None:
            trim_to_ema(ckpt_root, keep_full)
        return folder

    def load(self, ckpt: Path, *, rank: int = 0, log: Callable[[str], None] = print) -> None:
        """Continue from checkpoint folder `ckpt`; refuses one trained as another model."""
        state = load_state(ckpt)
        saved = _saved_settings(state["settings"], ckpt)
        change = architecture_change(saved, self.settings)
        if change is not None:
            raise DdpmkitError(f"cannot resume {ckpt}: it was trained with different {change}")
        same_batch = saved.train.batch_size == self.settings.train.batch_size
        if not same_batch and rank == 0:
            log("note: global batch size changed on resume; the data order restarts at the epoch's start")
        load_weights(self.model, ckpt / MODEL_FILE)
        load_weights(self.ema.model, ckpt / EMA_FILE)
        try:
            self._restore(state, same_batch)
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise DdpmkitError(f"cannot resume {ckpt}: its {STATE_FILE} does not fit this run ({reason})") from None
        self.resumed_from = saved
        if rank != 0:  # the saved CPU state is rank 0's: other ranks need their own dropout masks
            torch.manual_seed(self.settings.train.seed + RANK_SEED_STRIDE * rank + self.step)

    def _restore(self, state: dict[str, Any], same_batch: bool) -> None:
        """Counters, optimizer and RNG states from a `load_state` dict (raises on ill-typed values)."""
        self.ema.num_updates = _count(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = _count(state["step"]), _count(state["epoch"])
        self.batch_in_epoch = _count(state["batch_in_epoch"]) if same_batch else 0
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        self.gen.set_state(state["rng_gen"])
        if self.scaler.is_enabled() and "grad_scaler" in state:  # else: a fresh scale (fp16 newly asked)
            self.scaler.load_state_dict(state["grad_scaler"])


def _count(value: Any) -> int:
    """A non-negative whole number saved as an int (or a 0-d integer tensor)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"a count is {type(value).__name__} {str(value)[:40]}, not a whole number")
    return value


def _saved_settings(text: Any, ckpt: Path) -> Settings:
    """The settings JSON a checkpoint's state holds, as Settings; one line if it is not that."""
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DdpmkitError(f"cannot resume {ckpt}: the settings in its {STATE_FILE} are not a JSON object")
    return settings_from_dict(data, f"{ckpt / STATE_FILE}")


def trim_to_ema(ckpt_root: Path, keep_full: int) -> list[Path]:
    """Delete model.safetensors and state.pt from all but the newest `keep_full` complete
    checkpoints: the EMA weights, what `sample` uses, stay (a quarter of a full checkpoint with
    Adam's two moments). The newest complete checkpoint, the one `--resume` takes, is never
    trimmed. Returns the folders trimmed."""
    full = [p for p in RunFolder(ckpt_root.parent).checkpoint_folders(resumable=True) if (p / EMA_FILE).is_file()]
    trimmed = []
    for folder in full[: -max(1, keep_full)]:
        for name in (STATE_FILE, MODEL_FILE):  # state.pt first: without it the folder is no resume point
            (folder / name).unlink(missing_ok=True)
        trimmed.append(folder)
    return trimmed


def architecture_change(saved: Settings, asked: Settings) -> Optional[str]:
    """The first model/diffusion setting that differs, as 'section.key (x in the run, y asked)'."""
    pairs = {"model": (saved.model, asked.model), "diffusion": (saved.diffusion, asked.diffusion)}
    for section, (was_cfg, now_cfg) in pairs.items():
        was, now = was_cfg.model_dump(), now_cfg.model_dump()
        for key, value in now.items():
            if value != was.get(key):
                return f"{section}.{key} ({was.get(key)} in the run, {value} asked)"
    return None
