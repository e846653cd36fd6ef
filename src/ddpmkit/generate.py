"""From a checkpoint to images: load the EMA network, build the sampler, run the loop in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ddpmkit.device import autocast
from ddpmkit.errors import DdpmkitError
from ddpmkit.samplers import SAMPLERS, make_sampler, sample
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import SampleConfig, Settings
from ddpmkit.train.checkpoint import read_metadata, resolve_checkpoint, settings_of, load_weights


def load_for_sampling(
    path: Path,
    device: torch.device,
    *,
    use_ema: bool = True,
    fallback_settings: Optional[Settings] = None,
) -> tuple[nn.Module, Settings, int]:
    """Build the network a checkpoint was trained as and load its (EMA) weights.

    `path`: run directory, checkpoint folder or .safetensors file. A foreign weights file carries
    no settings: then `fallback_settings` describe the model, and must fit the weights.
    Returns (model in eval mode on `device`, its settings, training step).
    """
    from ddpmkit.nn import UNet

    ref = resolve_checkpoint(path)
    weights = ref.weights
    if not use_ema and ref.weights.name != "model.safetensors" and (ref.path / "model.safetensors").exists():
        weights = ref.path / "model.safetensors"
    settings = settings_of(weights)
    if settings is None:
        if fallback_settings is None:
            raise DdpmkitError(f"{weights} was not written by ddpmkit: give --preset or --config describing its model")
        settings = fallback_settings
    step = int(read_metadata(weights).get("step", 0) or 0)
    model = UNet(settings.model)
    load_weights(model, weights)
    return model.to(device).eval(), settings, step


def eps_fn(model: nn.Module, device: torch.device, precision: str = "auto") -> Callable[[Tensor, Tensor], Tensor]:
    """Wrap the network as eps(x_t, t) in float32, with bf16 autocast on CUDA."""

    def eps(x: Tensor, t: Tensor) -> Tensor:
        with autocast(device, precision):
            return model(x, t).float()

    return eps


def generate(
    model: nn.Module,
    settings: Settings,
    n: int,
    *,
    seed: int,
    batch_size: int,
    device: torch.device,
    sample_cfg: Optional[SampleConfig] = None,
    callback=None,
) -> Iterator[Tensor]:
    """Yield n images in batches: (b, 3, H, W) in [-1, 1], clamped.

    Batch k uses seed + k, so the first images do not depend on n. `callback(i, t, x, x0)`
    sees every step of the first batch (for GIFs).
    """
    cfg = sample_cfg or settings.sample
    sched = NoiseSchedule.from_config(settings.diffusion).to(device)
    eps = eps_fn(model, device)
    shape = (settings.model.in_channels, settings.model.image_size, settings.model.image_size)
    done, k = 0, 0
    while done < n:
        b = min(batch_size, n - done)
        sampler = make_sampler(sched, cfg)
        gen = torch.Generator(device=device).manual_seed(seed + k)
        x = sample(eps, sampler, (b, *shape), generator=gen, device=device, callback=callback if k == 0 else None)
        yield x.clamp(-1, 1)
        done += b
        k += 1


def preview_config(settings: Settings) -> SampleConfig:
    """A fast sampler for training-time grids: DDIM 50 steps when available, else DDPM 100."""
    if "ddim" in SAMPLERS:
        return settings.sample.model_copy(update={"sampler": "ddim", "steps": min(50, settings.diffusion.timesteps), "eta": 0.0})
    return settings.sample.model_copy(update={"sampler": "ddpm", "steps": min(100, settings.diffusion.timesteps)})


@torch.no_grad()
def training_preview(model: nn.Module, settings: Settings, path: Path, *, device: torch.device) -> Path:
    from ddpmkit.images import save_grid

    was_training = model.training
    model.eval()
    n = settings.train.num_samples
    x = torch.cat(list(generate(model, settings, n, seed=settings.train.seed, batch_size=n, device=device, sample_cfg=preview_config(settings))))
    model.train(was_training)
    save_grid(x.cpu(), path)
    return path
