"""ddpmkit's noise schedule and sampling defaults as a diffusers scheduler config, both ways.

Pure mapping of settings to and from scheduler_config.json (a dict); diffusers is never imported.

    diffusion.schedule linear   beta_schedule "linear", beta_start, beta_end (the same linspace)
    diffusion.schedule cosine   beta_schedule "squaredcos_cap_v2" (Nichol & Dhariwal, max β 0.999)
    diffusion.timesteps         num_train_timesteps
    diffusion.prediction        prediction_type "epsilon" | "v_prediction"
    sample.variance             variance_type "fixed_small" | "fixed_large"
    sample.x0                   clip_sample / thresholding (none: neither; dynamic: thresholding)
    sample.spacing              timestep_spacing (uniform = "linspace")

A scheduler's other settings (steps_offset, timestep_spacing on import) only choose how it samples;
ddpmkit's samplers keep their own measured defaults for those.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.schedule import cosine_betas, linear_betas
from ddpmkit.settings import DiffusionConfig, SampleConfig

SCHEDULER_CLASS = "DDPMScheduler"
_NAMES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction"}
_SPACINGS = {"uniform": "linspace", "leading": "leading", "trailing": "trailing"}
_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
              "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}
# DDPMScheduler's defaults for the keys read here (diffusers 0.30-0.42)
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
    "thresholding": False, "rescale_betas_zero_snr": False,
}
# diffusers' schedulers of noise levels rather than β_t (variance-exploding, EDM, flow matching)
NOT_DISCRETE = ("ScoreSdeVe", "ScoreSdeVp", "KarrasVe", "EDM", "FlowMatch", "CMStochastic")
DYNAMIC_RATIO = 0.995  # samplers' dynamic thresholding percentile (diffusion.x0_and_eps)
NO_CAP = 1e6  # ddpmkit's dynamic threshold has no upper bound; diffusers caps it at sample_max_value


def scheduler_config(diffusion: DiffusionConfig, sample: SampleConfig, version: str) -> dict[str, Any]:
    """A DDPMScheduler config.json for this schedule, prediction and the sample defaults."""
    x0 = sample.x0
    return {
        "_class_name": SCHEDULER_CLASS, "_diffusers_version": version,
        "num_train_timesteps": diffusion.timesteps, "beta_schedule": _NAMES[diffusion.schedule],
        "beta_start": diffusion.beta_start, "beta_end": diffusion.beta_end, "trained_betas": None,
        "prediction_type": _PREDICTIONS[diffusion.prediction], "variance_type": sample.variance,
        "clip_sample": x0 not in ("none", "dynamic"), "clip_sample_range": 1.0,
        "thresholding": x0 == "dynamic", "dynamic_thresholding_ratio": DYNAMIC_RATIO, "sample_max_value": NO_CAP,
        "timestep_spacing": _SPACINGS.get(sample.spacing or "trailing", "trailing"), "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


def _refuse(key: str, value: Any, why: str) -> DdpmkitError:
    return DdpmkitError(f"scheduler config {key} = {str(value)[:60]!r}: {why}")


def _schedule_of_betas(betas: Any, T: int) -> dict[str, Any]:
    """trained_betas as ddpmkit's linear or cosine schedule, if it is one of them."""
    try:
        b = torch.tensor(betas, dtype=torch.float64)
    except (TypeError, ValueError):
        raise _refuse("trained_betas", betas, "expected a list of numbers") from None
    if b.ndim != 1 or len(b) != T or not bool(((b > 0) & (b < 1)).all()):
        raise _refuse("trained_betas", f"{len(b)} values", f"expected num_train_timesteps ({T}) values in (0, 1)")
    candidates = {"linear": linear_betas(T, float(b[0]), float(b[-1])), "cosine": cosine_betas(T)}
    for name, ours in candidates.items():
        if torch.allclose(b, ours, rtol=1e-5, atol=1e-8):
            return {"schedule": name, "beta_start": float(b[0]), "beta_end": float(b[-1])}
    raise _refuse("trained_betas", f"{T} values", "ddpmkit holds linear and cosine schedules only, and these "
                  "betas are neither")


def diffusion_settings(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """ddpmkit's `diffusion` settings and `sample` overrides from a scheduler config.json (any of
    diffusers' discrete-β schedulers: they share these keys). Raises DdpmkitError (one line)."""
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    name = str(config.get("_class_name", SCHEDULER_CLASS))
    if name.startswith(NOT_DISCRETE):
        raise DdpmkitError(f"the scheduler is a {name}, which has no β schedule: ddpmkit imports discrete-time "
                           "DDPM schedules (DDPMScheduler, DDIMScheduler and the others built on betas)")
    T = c["num_train_timesteps"]
    if not isinstance(T, int) or isinstance(T, bool) or not 2 <= T <= 100_000:
        raise _refuse("num_train_timesteps", T, "expected a whole number from 2 to 100,000")
    if c["rescale_betas_zero_snr"]:
        raise _refuse("rescale_betas_zero_snr", True, "ddpmkit has no zero-terminal-SNR schedule")
    prediction = {v: k for k, v in _PREDICTIONS.items()}.get(c["prediction_type"])
    if prediction is None:
        raise _refuse("prediction_type", c["prediction_type"], "ddpmkit's networks predict epsilon or v_prediction")
    variance = _VARIANCES.get(c["variance_type"])
    if variance is None:
        raise _refuse("variance_type", c["variance_type"], "ddpmkit samples with a fixed variance (fixed_small "
                      "or fixed_large); a learned one needs a network with twice the output channels")
    if c["trained_betas"] is not None:
        betas = _schedule_of_betas(c["trained_betas"], T)
    elif c["beta_schedule"] == "squaredcos_cap_v2":
        betas = {"schedule": "cosine"}
    elif c["beta_schedule"] == "linear":
        betas = {"schedule": "linear", "beta_start": float(c["beta_start"]), "beta_end": float(c["beta_end"])}
    else:
        raise _refuse("beta_schedule", c["beta_schedule"], "ddpmkit holds linear and squaredcos_cap_v2 (cosine) only")
    sample: dict[str, Any] = {"variance": variance}
    x0 = _x0_mode(bool(c["thresholding"]), bool(c["clip_sample"]))
    if x0 is not None:
        sample["x0"] = x0
    return {"timesteps": T, "prediction": prediction, **betas}, sample


def _x0_mode(thresholding: bool, clip: bool) -> Optional[str]:
    """sample.x0 for a scheduler's x̂_0 handling; None: the samplers' own (clipping) defaults."""
    if thresholding:
        return "dynamic"
    return None if clip else "none"
