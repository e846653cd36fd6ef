"""Choosing a subset of the T training steps to sample with (respacing).

The names follow diffusers' `timestep_spacing` for DDPMScheduler / DDIMScheduler, so every one of
its conventions has a match here (its DPMSolverMultistepScheduler's `linspace` and `leading` take
N + 1 points and drop the last, a different grid).
"""

from __future__ import annotations

import numpy as np

from ddpmkit.errors import DdpmkitError

SPACINGS = ("uniform", "trailing", "leading", "quadratic")


def space_timesteps(T: int, num_steps: int, spacing: str = "uniform") -> list[int]:
    """N = num_steps distinct training indices in [0, T) to visit, increasing.

    uniform: round(linspace(0, T-1, N)), diffusers' `linspace`: from 0 to T-1 both included, so
      N = T gives every step. It spends its last network call at t = 0, where ᾱ ≈ 1.
    trailing: round(T - i·T/N) - 1 for i < N, diffusers' `trailing` (Lin et al. 2024): starts at
      T-1 and ends at T/N - 1, not at 0.
    leading: i·(T // N) for i < N, diffusers' `leading` (steps_offset 0): starts at 0 and ends at
      T - T//N, short of T-1, so x_T ~ N(0, I) enters the chain at a step that is less noisy.
    quadratic: t_i ∝ i², denser near t = 0, up to 0.8·T (DDIM's CIFAR-10 choice).
    """
    if not 1 <= num_steps <= T:
        raise DdpmkitError(f"steps must be between 1 and T={T}, got {num_steps}")
    if spacing == "uniform":
        steps = np.linspace(0, T - 1, num_steps).round().astype(int).tolist()
    elif spacing == "trailing":
        steps = [max(0, int(round(T - i * T / num_steps)) - 1) for i in range(num_steps)]
    elif spacing == "leading":
        steps = [i * (T // num_steps) for i in range(num_steps)]
    elif spacing == "quadratic":
        steps = (np.linspace(0, np.sqrt(T * 0.8), num_steps) ** 2).astype(int).tolist()
        steps = _dedupe_upwards(steps, T)
    else:
        raise DdpmkitError(f"unknown spacing '{spacing}'; choose one of: {', '.join(SPACINGS)}")
    if len(set(steps)) != num_steps:
        raise DdpmkitError(f"cannot pick {num_steps} distinct steps of {T} with {spacing} spacing")
    return sorted(steps)


def _dedupe_upwards(steps: list[int], T: int) -> list[int]:
    """Quadratic spacing repeats small indices for large N: push duplicates up by one."""
    out: list[int] = []
    for s in steps:
        s = max(s, out[-1] + 1) if out else s
        out.append(min(s, T - 1))
    return out
