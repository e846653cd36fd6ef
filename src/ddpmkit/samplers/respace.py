"""Choosing a subset of the T training steps to sample with (improved-diffusion's respacing)."""

from __future__ import annotations

import numpy as np

from ddpmkit.errors import DdpmkitError


def space_timesteps(T: int, num_steps: int, spacing: str = "uniform") -> list[int]:
    """Indices in [0, T) to visit, increasing, always ending the chain at 0.

    uniform: evenly strided over [0, T-1] with rounding (improved-diffusion's section spacing
      with one section), so num_steps = T gives every step.
    quadratic: denser near t = 0 (DDIM's CIFAR-10 choice), t_i ∝ i².
    trailing: t_i = round(T - i·T/N) - 1, which always includes T-1 (Lin et al. 2024).
    """
    if not 1 <= num_steps <= T:
        raise DdpmkitError(f"steps must be between 1 and T={T}, got {num_steps}")
    if spacing == "uniform":
        if num_steps == 1:
            return [0]
        frac = (T - 1) / (num_steps - 1)
        steps = [round(i * frac) for i in range(num_steps)]
    elif spacing == "quadratic":
        steps = (np.linspace(0, np.sqrt(T * 0.8), num_steps) ** 2).astype(int).tolist()
        steps = _dedupe_upwards(steps, T)
    elif spacing == "trailing":
        steps = sorted({int(round(T - i * T / num_steps)) - 1 for i in range(num_steps)})
        steps = [max(0, s) for s in steps]
    else:
        raise DdpmkitError(f"unknown spacing '{spacing}'; choose uniform, quadratic or trailing")
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
