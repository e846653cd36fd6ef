"""Where a diffusers folder keeps a UNet2DModel and its scheduler (read only, nothing imported).

Two layouts:

    pipeline folder (DDPMPipeline.save_pretrained, most Hub repositories)
      model_index.json            {"unet": ["diffusers", "UNet2DModel"], "scheduler": [...], ...}
      unet/config.json, unet/diffusion_pytorch_model.safetensors
      scheduler/scheduler_config.json
    bare model folder (UNet2DModel.save_pretrained; the google/ddpm-* repositories hold both)
      config.json, diffusion_pytorch_model.safetensors, and beside it scheduler_config.json,
      scheduler/scheduler_config.json or ../scheduler/scheduler_config.json (or --scheduler-json FILE)

Weights are read from safetensors only: a folder holding only a pickled diffusion_pytorch_model.bin
is refused with the command that converts it (ddpmkit never unpickles a file it is given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ddpmkit.errors import DdpmkitError

MODEL_INDEX = "model_index.json"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED = "diffusion_pytorch_model.bin"
MAX_JSON_BYTES = 1 << 20  # configs are a few kB; a larger "config" is not one
# diffusers reads a pickled .bin with torch.load(weights_only=True) and writes safetensors
CONVERT = ("python -c \"from diffusers import {cls}; {cls}.from_pretrained('{src}')"
           ".save_pretrained('{name}-safetensors', safe_serialization=True)\"")


@dataclass(frozen=True)
class DiffusersFolder:
    """The files of one UNet2DModel and its scheduler, and what the folder says about them."""

    root: Path
    unet_config: Path
    weights: Path
    scheduler_config: Path
    pipeline: Optional[str]  # model_index.json's _class_name (DDPMPipeline, ...), None for a bare model


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`; DdpmkitError (one line) for a missing, large or malformed file."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise DdpmkitError(f"{what} {path} is {path.stat().st_size:,} bytes: too large for a config file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DdpmkitError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DdpmkitError(f"{what} {path} is not readable JSON ({str(e).splitlines()[0][:100]})") from None
    if not isinstance(data, dict):
        raise DdpmkitError(f"{what} {path} holds a JSON {type(data).__name__}, not an object")
    return data


def locate(src: Path, scheduler: Optional[Path] = None, label: str = "") -> DiffusersFolder:
    """The files of the UNet2DModel in folder `src` (a pipeline or a bare model folder); the
    scheduler config `scheduler` if given. label: what the user named (a Hub id), for messages.
    Raises DdpmkitError naming what is missing."""
    if not src.is_dir():
        raise DdpmkitError(f"{src} is not a folder: give a diffusers pipeline or UNet2DModel folder")
    pipeline = None
    unet_dir = src
    if (src / MODEL_INDEX).is_file():
        index = read_json(src / MODEL_INDEX, "pipeline index")
        pipeline = str(index.get("_class_name", "pipeline"))
        unet = index.get("unet")
        if not (isinstance(unet, list) and len(unet) == 2):
            raise DdpmkitError(f"{pipeline} in {src} has no unet: ddpmkit imports pipelines built on a UNet2DModel")
        if unet[1] != "UNet2DModel":
            raise DdpmkitError(f"{pipeline} in {src} is built on a {unet[1]}: ddpmkit imports UNet2DModel "
                               "pipelines (DDPMPipeline, DDIMPipeline) only")
        if (src / "unet" / CONFIG).is_file():
            unet_dir = src / "unet"
    if not (unet_dir / CONFIG).is_file():
        raise DdpmkitError(f"no {CONFIG} in {unet_dir}: not a diffusers UNet2DModel or pipeline folder")
    weights = weights_file(unet_dir, label or str(src), pipeline is not None)
    return DiffusersFolder(src, unet_dir / CONFIG, weights, scheduler or _scheduler(src, unet_dir), pipeline)


def weights_file(unet_dir: Path, label: str, pipeline: bool) -> Path:
    """The safetensors weights in `unet_dir`; refuses pickled or sharded ones (one line: how to
    convert them with diffusers). label: the folder or Hub id the user named; pipeline: whether it
    is a pipeline folder (model_index.json), converted whole."""
    if (unet_dir / WEIGHTS).is_file():
        return unet_dir / WEIGHTS
    if (unet_dir / f"{WEIGHTS}.index.json").is_file():
        raise DdpmkitError(f"{label} holds its weights split into shards: save them as one file first "
                           "(UNet2DModel.save_pretrained with max_shard_size='100GB')")
    convert = CONVERT.format(cls="DDPMPipeline" if pipeline else "UNet2DModel", src=label, name=Path(label).name)
    found = f"only pickled weights ({PICKLED})" if (unet_dir / PICKLED).is_file() else f"no {WEIGHTS}"
    raise DdpmkitError(f"{label} holds {found}; ddpmkit reads weights from safetensors only and never unpickles "
                       f"a file it is given. Convert them once with diffusers, then import that folder: {convert}")


def _scheduler(src: Path, unet_dir: Path) -> Path:
    """The scheduler config beside the model: in the folder, in scheduler/, or in ../scheduler/."""
    places = [src / "scheduler" / SCHEDULER_CONFIG, src / SCHEDULER_CONFIG,
              unet_dir.parent / "scheduler" / SCHEDULER_CONFIG]
    for p in places:
        if p.is_file():
            return p
    raise DdpmkitError(f"no {SCHEDULER_CONFIG} found for the model in {src} (looked in {src}/scheduler/ and "
                       f"beside it): give the scheduler config of its training with --scheduler-json FILE")
