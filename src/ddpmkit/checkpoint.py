"""Checkpoints: weights as safetensors, the rest as plain tensors and numbers.

    checkpoints/step_00001000/model.safetensors   raw weights, settings in the metadata
    checkpoints/step_00001000/ema.safetensors     EMA weights (what `sample` uses)
    checkpoints/step_00001000/state.pt            optimizer, step, data position, RNG states
    checkpoints/latest                            name of the newest complete checkpoint

A checkpoint folder is built under a temporary name and renamed when complete, so a crash or a
full disk never leaves a half-written checkpoint under a final name. `state.pt` holds only
tensors, numbers and strings and is read with `torch.load(weights_only=True)`: no pickled code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ddpmkit import __version__
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import atomic_path, write_text_atomic
from ddpmkit.nn import UNet
from ddpmkit.settings import Settings, settings_from_dict

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
LATEST = "latest"


@dataclass
class CheckpointRef:
    """A resolved checkpoint: a folder holding model/ema/state files, or a lone weights file."""

    path: Path
    weights: Path  # the safetensors file to sample from
    has_ema: bool
    has_state: bool


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _metadata(settings: Settings, step: int, kind: str) -> dict[str, str]:
    return {
        "format": "ddpmkit",
        "ddpmkit_version": __version__,
        "kind": kind,
        "step": str(step),
        "settings": json.dumps(settings.model_dump(mode="json")),
    }


def save_checkpoint(
    ckpt_root: Path,
    *,
    model: nn.Module,
    ema_model: Optional[nn.Module],
    state: dict[str, Any],
    settings: Settings,
    step: int,
    keep: int = 3,
) -> Path:
    """Write checkpoints/step_N atomically, point `latest` at it, prune all but the newest `keep`."""
    final = ckpt_root / step_dir_name(step)
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        save_file(_contiguous(model.state_dict()), str(tmp / MODEL_FILE), _metadata(settings, step, "model"))
        if ema_model is not None:
            save_file(_contiguous(ema_model.state_dict()), str(tmp / EMA_FILE), _metadata(settings, step, "ema"))
        torch.save(state, tmp / STATE_FILE)
    write_text_atomic(ckpt_root / LATEST, final.name + "\n")
    _prune(ckpt_root, keep)
    return final


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _prune(ckpt_root: Path, keep: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The newest complete checkpoint folder, or None."""
    pointer = ckpt_root / LATEST
    if pointer.exists():
        cand = ckpt_root / pointer.read_text().strip()
        if (cand / STATE_FILE).exists():
            return cand
    steps = sorted(p for p in ckpt_root.glob("step_*") if (p / STATE_FILE).exists())
    return steps[-1] if steps else None


def resolve_checkpoint(path: Path) -> CheckpointRef:
    """Accept a run directory, a checkpoint folder, or a .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise DdpmkitError(f"checkpoint or run not found: {path}")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise DdpmkitError(f"{path} is not a .safetensors weights file, a checkpoint folder or a run directory")
        return CheckpointRef(path.parent, path, path.name == EMA_FILE, (path.parent / STATE_FILE).exists())
    folder = path
    if (path / "checkpoints").is_dir():
        found = latest_checkpoint(path / "checkpoints")
        if found is None:
            raise DdpmkitError(f"run directory {path} holds no complete checkpoint yet")
        folder = found
    has_ema = (folder / EMA_FILE).exists()
    if not has_ema and not (folder / MODEL_FILE).exists():  # an old checkpoint may keep only its EMA
        raise DdpmkitError(f"{path} holds no {MODEL_FILE}: not a ddpmkit checkpoint or run directory")
    return CheckpointRef(folder, folder / (EMA_FILE if has_ema else MODEL_FILE), has_ema, (folder / STATE_FILE).exists())


def read_metadata(weights: Path) -> dict[str, str]:
    try:
        with safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise DdpmkitError(f"{weights} is not a readable safetensors file ({e})") from None


def settings_of(weights: Path) -> Optional[Settings]:
    """The settings stored in a ddpmkit weights file, or None for a foreign file."""
    meta = read_metadata(weights)
    if meta.get("format") != "ddpmkit" or "settings" not in meta:
        return None
    return settings_from_dict(json.loads(meta["settings"]), str(weights))


def load_weights(model: nn.Module, weights: Path) -> None:
    """Load safetensors weights into `model`, failing with one line if they do not fit it."""
    try:
        sd = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise DdpmkitError(f"{weights} is not a readable safetensors file ({e})") from None
    check_fits(model, sd, weights)
    model.load_state_dict(sd)


def load_model(
    path: Path,
    device: torch.device | str = "cpu",
    *,
    use_ema: bool = True,
    fallback_settings: Optional[Settings] = None,
) -> tuple[UNet, Settings, int]:
    """Build the network a checkpoint was trained as and load its (EMA) weights.

    `path`: run directory, checkpoint folder or .safetensors file. A foreign weights file carries
    no settings: then `fallback_settings` describe the model, and must fit the weights.
    Returns (model in eval mode on `device`, its settings, training step).
    """
    ref = resolve_checkpoint(path)
    weights = ref.weights
    if not use_ema and weights.name != MODEL_FILE and (ref.path / MODEL_FILE).exists():
        weights = ref.path / MODEL_FILE
    settings = settings_of(weights)
    if settings is None:
        if fallback_settings is None:
            raise DdpmkitError(f"{weights} was not written by ddpmkit: give --preset or --config describing its model")
        settings = fallback_settings
    settings.check_model()
    step = int(read_metadata(weights).get("step", 0) or 0)
    model = UNet.from_config(settings.model)
    load_weights(model, weights)
    return model.to(device).eval(), settings, step


def check_fits(model: nn.Module, sd: dict[str, torch.Tensor], source: Path | str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        n = len(missing) + len(extra)
        raise DdpmkitError(
            f"checkpoint {source} is from a different architecture: {n} keys differ ({what})"
        )
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise DdpmkitError(
                f"checkpoint {source} is from a different architecture: {k} has shape "
                f"{tuple(sd[k].shape)} there, {tuple(v.shape)} in this model"
            )


def load_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DdpmkitError(f"training state missing: {path}") from None
    except Exception as e:  # a damaged file or one holding pickled code
        raise DdpmkitError(f"cannot read training state {path}: {str(e).splitlines()[0]}") from None
