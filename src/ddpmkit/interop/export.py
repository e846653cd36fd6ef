"""`ddpmkit export --format diffusers`: a run's network as a folder diffusers' DDPMPipeline loads.

    OUT/model_index.json                           DDPMPipeline: unet + scheduler
    OUT/unet/config.json                           UNet2DModel config (interop/diffusers_unet.py)
    OUT/unet/diffusion_pytorch_model.safetensors   the (EMA) weights under diffusers' names
    OUT/scheduler/scheduler_config.json            DDPMScheduler: the run's β schedule, T, prediction
    OUT/README.md                                  a model card for the Hugging Face Hub

Written with safetensors and json only (diffusers is not needed), under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddpmkit.checkpoint import resolve_checkpoint
from ddpmkit.errors import DdpmkitError
from ddpmkit.generate import load_run
from ddpmkit.interop.diffusers_schedule import scheduler_config
from ddpmkit.interop.diffusers_unet import DIFFUSERS_FORMAT, to_diffusers, unet2d_config
from ddpmkit.interop.layout import CONFIG, MODEL_INDEX, SCHEDULER_CONFIG, WEIGHTS
from ddpmkit.io_utils import atomic_path, write_text_atomic
from ddpmkit.nn import count_parameters
from ddpmkit.runfolder import EMA_FILE, MODEL_FILE
from ddpmkit.settings import Settings

PIPELINE = {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_FORMAT,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}


@dataclass
class Exported:
    out: Path
    weights: Path  # the ddpmkit file exported
    step: int
    parameters: int


def check_out(out: Path, force: bool) -> None:
    """OUT may be new or an empty folder; one holding files only with force."""
    if out.exists() and not out.is_dir():
        raise DdpmkitError(f"{out} is a file: give a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DdpmkitError(f"{out} already holds files; pass --force to replace it or choose another folder")


def _weights_used(run: Path, use_ema: bool) -> Path:
    """The weights file load_run reads for `use_ema`; refuses --no-ema where only EMA weights are kept."""
    ref = resolve_checkpoint(run)
    if use_ema or ref.weights.name == MODEL_FILE:
        return ref.weights
    if not (ref.path / MODEL_FILE).exists():
        raise DdpmkitError(f"--no-ema: {ref.path} keeps only its EMA weights ({EMA_FILE})")
    return ref.path / MODEL_FILE


def export_diffusers(run: Path, out: Path, *, use_ema: bool = True, force: bool = False) -> Exported:
    """Write the DDPMPipeline folder `out` from run (or checkpoint) `run`. Raises DdpmkitError (one
    line) for what UNet2DModel cannot express (attribute conditioning); writes nothing then."""
    check_out(out, force)
    weights = _weights_used(run, use_ema)
    opened = load_run(run, torch.device("cpu"), ema=use_ema)
    model, settings, step = opened.model, opened.settings, opened.step
    unet = unet2d_config(settings.model)
    tensors = to_diffusers(model.state_dict(), len(settings.model.ch_mult))
    with atomic_path(out) as tmp:
        (tmp / "unet").mkdir(parents=True)
        (tmp / "scheduler").mkdir()
        _write_json(tmp / MODEL_INDEX, PIPELINE)
        _write_json(tmp / "unet" / CONFIG, unet)
        _write_json(tmp / "scheduler" / SCHEDULER_CONFIG,
                    scheduler_config(settings.diffusion, settings.sample, DIFFUSERS_FORMAT))
        save_file(tensors, str(tmp / "unet" / WEIGHTS), {"format": "pt"})
        write_text_atomic(tmp / "README.md", model_card(settings, step, weights, out.name))
    return Exported(out, weights, step, count_parameters(model))


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def model_card(settings: Settings, step: int, weights: Path, name: str) -> str:
    """A short Hub model card: what the network is and how diffusers loads it."""
    m, d = settings.model, settings.diffusion
    which = "EMA" if weights.name == EMA_FILE else "raw (not EMA)"
    schedule = f"{d.schedule} β" + (f" {d.beta_start:g}..{d.beta_end:g}" if d.schedule == "linear" else "")
    return f"""---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags:
- ddpmkit
- ddpm
---
# {name}

A DDPM U-Net trained with ddpmkit and exported to diffusers' DDPMPipeline format:
{m.image_size}x{m.image_size} images, {which} weights of training step {step:,}; {schedule} over T = {d.timesteps},
predicting {'ε' if d.prediction == 'eps' else 'v'}.

```python
from diffusers import DDPMPipeline

pipe = DDPMPipeline.from_pretrained("{name}")  # this folder, or its Hub id
images = pipe(batch_size=4, num_inference_steps={d.timesteps}).images
```
"""
