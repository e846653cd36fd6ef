"""Checkpoints: weights as safetensors, the rest as plain tensors and numbers.

    checkpoints/step_00001000/model.safetensors   raw weights, settings in the metadata
    checkpoints/step_00001000/ema.safetensors     EMA weights (what `sample` uses)
    checkpoints/step_00001000/state.pt            optimizer, step, data position, RNG states
    checkpoints/latest                            name of the newest complete checkpoint

A checkpoint folder is built under a temporary name and renamed when complete, so a crash or a
full disk never leaves a half-written checkpoint under a final name; pruning renames a folder to
a temporary name before deleting it, so a killed prune leaves no half-deleted one either (the
next training removes the temporaries). `state.pt` holds only tensors, numbers and strings and
is read with `torch.load(weights_only=True)`: no pickled code.

Weights files are not trusted: their metadata is checked (settings JSON, a whole-number step),
`latest` must name a folder beside it, and `load_model` compares the model the metadata
declares with the file's tensor shapes (read from the header) before it builds anything, so a
small file cannot make it allocate a large network.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
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
from ddpmkit.runfolder import EMA_FILE, LATEST, MODEL_FILE, STATE_FILE, RunFolder, by_step, step_dir_name
from ddpmkit.settings import ModelConfig, Settings, settings_from_dict

STATE_KEYS = ("step", "epoch", "batch_in_epoch", "ema_updates", "optimizer", "rng_cpu", "rng_gen", "settings")
_WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


@dataclass
class CheckpointRef:
    """A resolved checkpoint: a folder holding model/ema/state files, or a lone weights file."""

    path: Path
    weights: Path  # the safetensors file to sample from
    has_ema: bool
    has_state: bool


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
        _save_state(state, tmp / STATE_FILE)
    write_text_atomic(ckpt_root / LATEST, final.name + "\n")
    _prune(ckpt_root, keep)
    return final


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save through memory: torch's own file writer reports a full disk as "unexpected
    pos"; a plain write raises the OSError (ENOSPC, EFBIG, ...) that names the reason and file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        with open(path, "wb") as f:
            f.write(buf.getbuffer())
    except OSError as e:
        e.filename = e.filename or str(path)  # write errors carry no file name
        raise


def _prune(ckpt_root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints. Each is first renamed to a temporary name
    (`io_utils.remove_leftovers` deletes those a killed prune leaves), never deleted in place."""
    steps = by_step(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        doomed = old.with_name(f".{old.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.replace(old, doomed)
        except OSError:
            continue  # kept whole; the next save tries again
        shutil.rmtree(doomed, ignore_errors=True)


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
    if RunFolder(path).checkpoints.is_dir():
        found = RunFolder(path).latest_checkpoint()
        if found is None:
            raise DdpmkitError(f"run directory {path} holds no complete checkpoint yet")
        folder = found
    has_ema = (folder / EMA_FILE).exists()
    if not has_ema and not (folder / MODEL_FILE).exists():  # an old checkpoint may keep only its EMA
        raise DdpmkitError(f"{path} holds no {MODEL_FILE}: not a ddpmkit checkpoint or run directory")
    return CheckpointRef(folder, folder / (EMA_FILE if has_ema else MODEL_FILE), has_ema, (folder / STATE_FILE).exists())


def read_metadata(weights: Path) -> dict[str, str]:
    """The header metadata of a safetensors file; a `step` in it is checked to be a whole number."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise DdpmkitError(f"{weights} is not a readable safetensors file ({e})") from None
    step = meta.get("step")
    if step is not None and not _WHOLE_NUMBER.fullmatch(step):
        raise DdpmkitError(f"{weights}: its 'step' metadata {step[:40]!r} is not a whole number; the file is damaged "
                           "or was not written by ddpmkit")
    return meta


def step_of(meta: dict[str, str]) -> int:
    """The training step in `read_metadata`'s answer (0 when the file does not say)."""
    return int(meta.get("step") or 0)


def settings_of(weights: Path) -> Optional[Settings]:
    """The settings stored in a ddpmkit weights file, or None for a foreign file."""
    meta = read_metadata(weights)
    if meta.get("format") != "ddpmkit" or "settings" not in meta:
        return None
    try:
        data = json.loads(meta["settings"])
    except ValueError as e:  # JSONDecodeError, or a number too long to convert
        raise DdpmkitError(f"{weights}: its 'settings' metadata is not valid JSON ({str(e)[:80]}); the file is "
                           "damaged or was not written by ddpmkit") from None
    if not isinstance(data, dict):
        raise DdpmkitError(f"{weights}: its 'settings' metadata is a JSON {type(data).__name__}, not an object")
    return settings_from_dict(data, str(weights))


def tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (no tensor is read)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise DdpmkitError(f"{weights} is not a readable safetensors file ({e})") from None


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
    step = step_of(read_metadata(weights))
    shapes = tensor_shapes(weights)
    check_declared_model(settings.model, shapes, weights)
    with torch.device("meta"):  # the declared network's shapes, without memory
        check_shapes(_shapes(UNet.from_config(settings.model).state_dict()), shapes, weights)
    model = UNet.from_config(settings.model)
    load_weights(model, weights)
    return model.to(device).eval(), settings, step


def check_declared_model(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]], source: Path | str) -> None:
    """Refuse settings that describe another network than the tensors in a weights file: the input
    convolution (ch, in_channels), the number of levels and of ResBlocks per level, each level's
    width. Cheap, and before any model exists: the file, not its metadata, bounds what is built."""

    def refuse(what: str) -> None:
        raise DdpmkitError(f"checkpoint {source} is from a different architecture than its settings say: {what}")

    conv_in = shapes.get("conv_in.weight")
    if conv_in is None or len(conv_in) != 4:
        refuse("it has no 4-d conv_in.weight tensor")
    assert conv_in is not None
    if (conv_in[0], conv_in[1]) != (cfg.ch, cfg.in_channels):
        refuse(f"model.ch {cfg.ch} and in_channels {cfg.in_channels} declared, "
               f"conv_in.weight has {conv_in[0]} and {conv_in[1]}")
    levels = {k.split(".")[1] for k in shapes if k.startswith("down.")}
    if len(levels) != len(cfg.ch_mult):
        refuse(f"model.ch_mult has {len(cfg.ch_mult)} levels, the file {len(levels)}")
    for i, mult in enumerate(cfg.ch_mult):
        blocks = {k.split(".")[3] for k in shapes if k.startswith(f"down.{i}.res.")}
        if len(blocks) != cfg.num_res_blocks:
            refuse(f"model.num_res_blocks {cfg.num_res_blocks}, level {i} of the file has {len(blocks)}")
        conv1 = shapes.get(f"down.{i}.res.0.conv1.weight") or (None,)
        width = conv1[0]
        if width != cfg.ch * mult:
            refuse(f"level {i} is {cfg.ch * mult} channels wide in the settings, {width} in the file")


def check_fits(model: nn.Module, sd: dict[str, torch.Tensor], source: Path | str) -> None:
    """Raise DdpmkitError unless `sd` has exactly `model`'s keys and shapes."""
    check_shapes(_shapes(model.state_dict()), _shapes(sd), source)


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def check_shapes(own: dict[str, tuple[int, ...]], theirs: dict[str, tuple[int, ...]], source: Path | str) -> None:
    """Raise DdpmkitError (one line) unless `theirs` has exactly the keys and shapes of `own`."""
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        n = len(missing) + len(extra)
        raise DdpmkitError(
            f"checkpoint {source} is from a different architecture: {n} keys differ ({what})"
        )
    for k, shape in own.items():
        if theirs[k] != shape:
            raise DdpmkitError(
                f"checkpoint {source} is from a different architecture: {k} has shape "
                f"{theirs[k]} there, {shape} in this model"
            )


def load_state(folder: Path) -> dict[str, Any]:
    """`state.pt` of a checkpoint folder: a dict with STATE_KEYS, read without unpickling code."""
    path = folder / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DdpmkitError(f"training state missing: {path}") from None
    except Exception as e:  # a damaged file or one holding pickled code
        raise DdpmkitError(f"cannot read training state {path}: {_load_failure(e)}") from None
    expected = f"expected a dict of {', '.join(STATE_KEYS)}, as ddpmkit writes"
    if not isinstance(state, dict):
        raise DdpmkitError(f"cannot read training state {path}: it holds a {type(state).__name__}; {expected}")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise DdpmkitError(f"cannot read training state {path}: it has no {missing[0]!r}; {expected}")
    return state


def _load_failure(e: Exception) -> str:
    """torch.load's reason in one line, without its advice to load untrusted files unsafely."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours parts of its message
    if "weights_only" in text or "Weights only" in text:
        return "it holds objects other than tensors, numbers and strings (ddpmkit never writes those; refused unread)"
    return (text.splitlines()[0] if text else type(e).__name__)[:200]
