"""The sections of the settings, one pydantic model each: model, diffusion, data, train, sample, fid.

`settings.Settings` puts them together and loads them from presets, files and the command line.
Every section forbids unknown keys, so a typo is an error that names the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ddpmkit.human import parse_duration

DATA_ROOT_ENV = "DDPMKIT_DATA_ROOT"
GROUPNORM_EPS = 1e-6  # TensorFlow group_norm's default, kept by DDPM and DDIM (model.norm_eps)
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; seed + rank offsets must stay below 2**64
# inpainting: the built-in masks (`masks.py` draws them) and RePaint's settings for faces
# (Lugmayr et al. 2022: 250 steps, jump length 10, 10 resamplings)
MASK_NAMES = ("box", "left", "right", "top", "bottom", "eyes", "mouth", "random")
REPAINT_STEPS, REPAINT_JUMP, REPAINT_RESAMPLE = 250, 10, 10
DEFAULT_SAMPLE_BATCH = 64  # sample.batch_size None: this many off CUDA (CUDA: from free memory)

# train.precision / sample.precision: auto = what the device does natively (precision.choose_precision)
Precision = Literal["auto", "bf16", "fp16", "fp32"]
# train.compile / sample.compile: auto = on for CUDA, off elsewhere (compiling.decide_compile)
CompileChoice = Union[bool, Literal["auto"]]
# classifier-free guidance of a conditional run: the weight when attributes are asked for without
# one, and the largest accepted (0 = unconditional, 1 = conditional)
GUIDANCE, MAX_GUIDANCE = 3.0, 100.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(_Section):
    """The ε-prediction U-Net."""

    image_size: Optional[int] = Field(
        None, ge=8, le=1024, description="side of the square images, pixels; None = data.size (set that instead)"
    )
    in_channels: int = Field(3, ge=1)
    ch: int = Field(128, ge=8, description="base channel count")
    ch_mult: tuple[int, ...] = Field((1, 2, 2, 2, 4), min_length=1)
    num_res_blocks: int = Field(2, ge=1)
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    num_groups: int = Field(32, ge=1, description="GroupNorm groups")
    head_channels: int = Field(0, ge=0, description="channels per attention head; 0 = one head")
    cond_dim: int = Field(
        0, ge=0, description="conditioning vector size; 0 = none. Derived from the data by train.condition "
        "(the attribute count): leave it unset"
    )
    cond_names: tuple[str, ...] = Field(
        (), description="the attribute of each condition entry (derived with cond_dim; sample --attr reads them)"
    )
    scale_shift: bool = Field(
        False, description="the time (+ condition) embedding scales and shifts each residual block's normalised "
        "features (improved DDPM's use_scale_shift_norm) instead of adding a bias; off in DDPM's network"
    )
    # Conventions of other U-Nets of this shape (diffusers' UNet2DModel defaults), so their weights
    # load unchanged (docs/diffusers-and-hub.md); the defaults are DDPM's and every earlier checkpoint's.
    norm_eps: float = Field(GROUPNORM_EPS, gt=0.0, le=0.01, description="GroupNorm epsilon (1e-6: DDPM's; "
                            "1e-5: diffusers' UNet2DModel default, norm_eps)")
    temb_cos_first: bool = Field(False, description="timestep embedding ordered [cos, sin] instead of DDPM's "
                                 "[sin, cos] (diffusers' flip_sin_to_cos)")
    temb_freq_shift: float = Field(1.0, ge=0.0, description="timestep frequencies 10000^(-i/(ch/2 - shift)): "
                                   "1 is DDPM's, 0 diffusers' UNet2DModel default (freq_shift)")
    downsample_pad: Literal["bottom_right", "all_sides"] = Field(
        "bottom_right", description="padding of the stride-2 downsampling conv: one pixel right and bottom "
        "(DDPM's TensorFlow 'SAME'; diffusers' downsample_padding 0) or one on every side (downsample_padding 1)"
    )

    @model_validator(mode="after")
    def _check_groups(self) -> "ModelConfig":
        if self.cond_names and len(self.cond_names) != self.cond_dim:
            raise ValueError(f"model.cond_names has {len(self.cond_names)} names for cond_dim {self.cond_dim}")
        for m in self.ch_mult:
            if (self.ch * m) % self.num_groups:
                raise ValueError(f"ch*{m} = {self.ch * m} is not divisible by num_groups {self.num_groups}")
        if self.temb_freq_shift >= self.ch // 2:
            raise ValueError(f"model.temb_freq_shift {self.temb_freq_shift} must be below ch/2 = {self.ch // 2}")
        return self

    def check_size(self, size: int) -> None:
        """Raise ValueError unless the U-Net fits size x size images (see `check_unet_shape`)."""
        check_unet_shape(size, self.ch, self.ch_mult, self.attn_resolutions, self.head_channels)


def check_unet_shape(
    size: int, ch: int, ch_mult: Sequence[int], attn_resolutions: Sequence[int], head_channels: int
) -> None:
    """Raise ValueError unless a U-Net of these settings fits size x size images: the size halves
    cleanly at every level, every attention resolution is one of the levels' sizes, and
    head_channels divides the channels of every attention layer. The one place this is checked:
    `Settings.check_model` and the `UNet` constructor both call it."""
    down = 2 ** (len(ch_mult) - 1)
    if size % down:
        raise ValueError(f"data.size {size} is not divisible by 2**(len(model.ch_mult)-1) = {down}")
    levels = [size // 2**i for i in range(len(ch_mult))]
    for r in attn_resolutions:
        if r not in levels:
            raise ValueError(
                f"model.attn_resolutions: {r} matches no U-Net level at data.size {size} "
                f"(levels: {', '.join(map(str, levels))})"
            )
    if head_channels:
        attn_ch = {ch * m for m, r in zip(ch_mult, levels) if r in attn_resolutions}
        for c in sorted(attn_ch | {ch * ch_mult[-1]}):  # the middle block always has attention
            if c % head_channels:
                raise ValueError(
                    f"model.head_channels {head_channels} does not divide the {c} channels of an attention layer"
                )


class DiffusionConfig(_Section):
    """The forward process: β_1..β_T."""

    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: int = Field(1000, ge=2, le=100_000, description="T")
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0)
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)
    prediction: Literal["eps", "v"] = Field(
        "eps", description="what the network predicts: eps (DDPM) or v = sqrt(abar) eps - sqrt(1-abar) x_0 "
        "(Salimans & Ho 2022); samplers always receive eps"
    )

    @model_validator(mode="after")
    def _check_betas(self) -> "DiffusionConfig":
        if self.schedule == "linear" and self.beta_end < self.beta_start:
            raise ValueError("beta_end must be >= beta_start")
        return self


class DataConfig(_Section):
    """Where training images come from."""

    dataset: Literal["synthetic", "celeba", "folder"] = "synthetic"
    root: Path = Field(
        default_factory=lambda: Path(os.environ.get(DATA_ROOT_ENV, "data/celeba")),
        description=f"CelebA root or image folder (environment: {DATA_ROOT_ENV})",
    )
    cache_dir: Path = Path("data/cache")
    size: int = Field(64, ge=8, le=1024, description="prepared image side, pixels")
    crop: Literal["ddim", "center140", "full"] = "ddim"
    split: Literal["train", "val", "test", "all"] = "train"
    hflip: bool = True
    synthetic_count: int = Field(4096, ge=1, description="images in the generated demo dataset")
    synthetic_seed: int = Field(0, ge=0, description="seed of the generated demo dataset")
    workers: int = Field(0, ge=0, description="processes for prepare; 0 = all cores")


class TrainConfig(_Section):
    """Optimisation and bookkeeping."""

    run_dir: Path = Path("runs/demo")
    epochs: Optional[int] = Field(None, ge=1, description="stop after this many epochs")
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many steps")
    time_budget: Optional[str] = Field(
        None, description="train for this long, e.g. 90s, 10m, 1h30m: the step count (and with it the lr "
        "schedule) is fitted to the machine from trial steps timed at the start; train.max_steps or "
        "train.epochs, when set, win (a fixed length)"
    )
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = Field(2e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: Optional[int] = Field(
        None, ge=0, description="linear warm-up from 0, in steps; None: train.warmup_fraction of the run's steps"
    )
    warmup_fraction: Optional[float] = Field(
        None, ge=0.0, lt=1.0, description="warm-up as this share of the run's steps (rounded), so a run sized by "
        "train.time_budget warms up for its share of it; train.warmup_steps, when set, wins; neither: none"
    )
    lr_decay: Literal["constant", "cosine"] = Field(
        "constant", description="after warm-up: constant (DDPM) or cosine to 0 at the last step"
    )
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 = off")
    loss_weight: Literal["uniform", "min_snr"] = Field(
        "uniform", description="per-sample loss weights: uniform (DDPM's L_simple) or min_snr "
        "(Hang et al. 2023: min(SNR, gamma)/SNR for eps, min(SNR, gamma)/(SNR+1) for v)"
    )
    min_snr_gamma: float = Field(5.0, gt=0.0, description="gamma of loss_weight min_snr")
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0)
    ema_warmup: bool = Field(True, description="use min(decay, (1+n)/(10+n)) so early EMA is not stuck at init")
    ema: Literal["exponential", "power"] = Field(
        "exponential", description="weight average: exponential (ema_decay, ema_warmup) or power, the "
        "power-function EMA of Karras et al. 2024 (EDM2), (1-1/t)^(gamma+1) at step t, its width ema_std"
    )
    ema_std: float = Field(
        0.10, gt=0.0, lt=0.2886, description="relative width sigma_rel of the power EMA (EDM2: 0.05-0.15); "
        "0.10 is gamma 6.94"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    precision: Precision = Field(
        "auto", description="autocast dtype: auto = bf16 on CUDA cards of compute capability >= 8.0, fp16 with "
        "dynamic loss scaling on older CUDA cards, fp32 on the CPU and MPS"
    )
    compile: CompileChoice = Field(
        "auto", description="torch.compile the network: auto = on for CUDA, off on the CPU (measured: it does "
        "not repay its compile time there); a failed compile falls back to eager with one warning"
    )
    grad_accum: int = Field(
        1, ge=1, description="micro-batches per optimizer step: each process runs batch_size/(processes x "
        "grad_accum) images at a time; the optimizer, the learning-rate schedule and the EMA count steps"
    )
    channels_last: bool = Field(True, description="channels_last memory format on CUDA")
    device: str = "auto"
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(1000, ge=0, description="EMA sample grid every N steps; 0 = off")
    ckpt_every: int = Field(5000, ge=0, description="checkpoint every N steps; 0 = only at the end")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept; older ones are deleted")
    keep_full: int = Field(
        1, ge=1, description="the newest N kept checkpoints keep everything; older ones keep only "
        "ema.safetensors (enough to sample, not to resume)"
    )
    num_samples: int = Field(16, ge=1, description="images in each training sample grid")
    report: bool = Field(True, description="write report.html into the run at every checkpoint")
    tensorboard: bool = Field(
        False, description="also log scalars and sample grids for TensorBoard (pip install tensorboard)"
    )
    condition: Literal["none", "attributes"] = Field(
        "none", description="none: unconditional; attributes: condition on the data's binary attributes "
        "(CelebA's 40, the demo faces' 11) for classifier-free guidance; sets model.cond_dim"
    )
    p_uncond: float = Field(
        0.1, ge=0.0, le=1.0, description="condition dropout: the fraction of examples trained with the null "
        "embedding, so one network is also the unconditional model (Ho & Salimans 2022: 0.1-0.2)"
    )
    hide_attributes: bool = Field(
        True, description="hide each attribute of an example (value 0 = unknown) with a probability drawn "
        "uniformly per example, so that attributes left unspecified at sampling mean 'any'"
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _check_time_budget(cls, value: Any) -> Optional[str]:
        """A duration with its units (a YAML number has none: refused by parse_duration)."""
        if value is None:
            return None
        text = str(value).strip()
        if parse_duration(text) <= 0:
            raise ValueError(f"{text!r} is no time at all")
        return text

    @property
    def time_budget_s(self) -> Optional[float]:
        """train.time_budget in seconds; None when the run's length is not a time."""
        return None if self.time_budget is None else parse_duration(self.time_budget)


class SampleConfig(_Section):
    """Generation."""

    sampler: Literal["ddpm", "ddim", "dpmsolver++"] = "ddpm"
    steps: Optional[int] = Field(None, ge=1, description="network calls; None = T for ddpm, 50 otherwise")
    spacing: Optional[Literal["uniform", "trailing", "leading", "quadratic"]] = Field(
        None, description="which training steps to visit (uniform = diffusers' linspace); None = the "
        "sampler's default, chosen by measurement (trailing for every sampler today)"
    )
    eta: float = Field(0.0, ge=0.0, description="DDIM stochasticity: 0 = deterministic, 1 = DDPM-like")
    variance: Literal["fixed_small", "fixed_large"] = "fixed_small"
    x0: Optional[Literal["none", "clip", "clip_eps", "dynamic"]] = Field(
        None,
        description="what samplers do with the predicted x_0: none; clip to [-1, 1]; clip and recompute "
        "eps from it (clip_eps); dynamic thresholding (Saharia et al. 2022, p = 0.995); None = the "
        "sampler's default, chosen by measurement (docs/samplers.md)",
    )
    n: int = Field(16, ge=1)
    batch_size: Optional[int] = Field(
        None, ge=1, description=f"images per batch; None = from free memory on CUDA, {DEFAULT_SAMPLE_BATCH} elsewhere"
    )
    seed: int = Field(0, description="image i of seed s is the same for any n, batch size or device")
    use_ema: bool = True
    out_dir: Path = Path("outputs/samples")
    gif_frames: int = Field(40, ge=2)
    precision: Precision = Field(
        "auto", description="the sampling network's dtype (cast once, no autocast): auto as train.precision"
    )
    compile: CompileChoice = Field(
        "auto", description="torch.compile the sampling network (sample, fid, the training-time FID): auto = on "
        "for CUDA, off elsewhere"
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        "default", description="torch.compile mode when compiling: reduce-overhead adds CUDA graphs of the fixed "
        "batch (one graph per batch shape)"
    )

    @model_validator(mode="before")
    @classmethod
    def _clip_x0_alias(cls, data: Any) -> Any:
        """`clip_x0: bool`, the older setting (stored in checkpoints), means x0 clip_eps / none.
        Given, it overrides x0: it can only come from old settings or a user who typed it."""
        if isinstance(data, dict) and "clip_x0" in data:
            data = dict(data)
            flag = data.pop("clip_x0")
            if not isinstance(flag, bool):
                raise ValueError(f"clip_x0 must be true or false (got {flag!r}); prefer x0: none|clip|clip_eps|dynamic")
            data["x0"] = "clip_eps" if flag else "none"
        return data

    @property
    def clip_x0(self) -> bool:
        """The older flag, read-only: whether x_0 is clamped in any way (None: the sampler's
        default, which clamps for every sampler today)."""
        return self.x0 != "none"


FID_WEIGHTS_ENV = "DDPMKIT_FID_WEIGHTS"


class FidConfig(_Section):
    """FID evaluation (Inception-v3 pool3 features, pytorch-fid's network and formula)."""

    weights: Optional[Path] = Field(
        None,
        description=f"FID Inception weights file; None = ${FID_WEIGHTS_ENV}, else pytorch-fid's file in torch's "
        "hub cache (~/.cache/torch/hub/checkpoints/), downloaded there when online (docs/fid.md)",
    )
    verify_weights: bool = Field(True, description="check the weights file's sha256 against the known ones")
    n: int = Field(10_000, ge=2, description="generated images per FID")
    batch_size: int = Field(50, ge=1, description="images per Inception forward pass")
    ref_split: Optional[Literal["train", "val", "test", "all"]] = Field(
        None, description="reference split of the prepared dataset; None = data.split"
    )
    ref_n: Optional[int] = Field(None, ge=2, description="reference images (the first ref_n); None = all")
    every: int = Field(0, ge=0, description="FID during training every N steps; 0 = off")
    every_n: int = Field(500, ge=2, description="generated images for the training-time FID")
    every_sampler: Literal["ddpm", "ddim", "dpmsolver++"] = "dpmsolver++"
    every_steps: int = Field(20, ge=1, description="sampler steps for the training-time FID")
