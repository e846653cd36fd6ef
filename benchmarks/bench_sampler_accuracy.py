"""Sampler accuracy on data whose answer is exact (the analytic Gaussian of the tests).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_sampler_accuracy.py [--out benchmarks/results_sampler_accuracy.md]

Data x_0 ~ N(μ, s²) element by element (48 elements; see tests/analytic_gaussian.py), so the
optimal ε-predictor ε* and the probability-flow ODE map are known exactly. Three data sets:
"narrow" (μ in [-0.5, 0.5], s in [0.05, 0.4], the tests' fixture) under the linear β schedule
(the default) and under the cosine one, and "wide spectrum" (s from 0.03 to 30, like the
principal components of images, whose low frequencies vary far more than a pixel does).

Deterministic samplers run with ε* from 256 standard-normal x_T; the number is the largest
per-element error of x_0 against the exact ODE map of the same x_T from t = T-1 (a grid that
starts later pays for starting from the wrong noise level). Stochastic samplers are compared
with the data distribution: the largest |std error| over the elements, in units of s, from 4,096
samples. No clipping (x0 = none) except in the x̂_0 table. float64 throughout and deterministic:
the numbers do not depend on the machine or its load.

Each sampler's default spacing is the one whose error is never far from the best spacing's: the
smallest worst-case ratio to the best, over the data sets and step counts of its tables.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import platform
import shlex
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fixture lives with the tests
from analytic_gaussian import GaussianData, x_T  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from ddpmkit.samplers import (  # noqa: E402
    SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPPSampler,
    Sampler,
    default_spacing,
    sample,
)
from ddpmkit.schedule import NoiseSchedule, cosine_betas, linear_betas  # noqa: E402

T = 1000
SHAPE = (3, 4, 4)
STEPS = (5, 8, 10, 15, 20, 25, 35, 50)
STOCHASTIC_STEPS = (25, 50, 100, 250, 1000)
CHOICES = ("uniform", "trailing", "leading")  # quadratic stops at 0.8 T: not a default candidate
Make = Callable[[NoiseSchedule, str], Sampler]

ODE_SAMPLERS: dict[str, Make] = {
    "DPM-Solver++ 2M": lambda s, sp: DPMSolverPPSampler(s, sp, "none"),
    "DDIM (η = 0)": lambda s, sp: DDIMSampler(s, sp, 0.0, "none"),
}
OLD_DPM: Make = lambda s, sp: DPMSolverPPSampler(s, sp, "none", first_order_into_zero=False)  # noqa: E731
STOCHASTIC: dict[str, Make] = {
    "DDPM, σ² = β̃ (fixed_small, default)": lambda s, sp: DDPMSampler(s, sp, "fixed_small", "none"),
    "DDPM, σ² = β (fixed_large)": lambda s, sp: DDPMSampler(s, sp, "fixed_large", "none"),
    "DDIM η = 1": lambda s, sp: DDIMSampler(s, sp, 1.0, "none"),
    "DDIM η = 0.5": lambda s, sp: DDIMSampler(s, sp, 0.5, "none"),
}


def ode_error(data: GaussianData, sampler: Sampler, steps: int) -> float:
    sampler.set_timesteps(steps)
    x = x_T(256, SHAPE)
    out = sample(data.eps, sampler, x.shape, x_T=x)
    return (out - data.ode_map(x, data.start_alpha_bar(T - 1))).abs().max().item()


def std_error(sched: NoiseSchedule, sampler: Sampler, steps: int) -> float:
    data = GaussianData.standard(sched, (3, 2, 2), seed=1)
    sampler.set_timesteps(steps)
    n = 4096
    out = sample(data.eps, sampler, (n, 3, 2, 2), x_T=x_T(n, (3, 2, 2), 2), generator=torch.Generator().manual_seed(2))
    return ((out - data.mu) / data.s).std(0).sub(1).abs().max().item()


def spectrum_data(sched: NoiseSchedule) -> GaussianData:
    """s from 0.03 to 30, log-spaced. A rotation of the data changes no sampler's error (every
    step is linear in x and ε), so this stands for correlated, image-like data."""
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(SHAPE, generator=g, dtype=torch.float64) - 0.5
    s = torch.logspace(-1.5, 1.5, 48, dtype=torch.float64)[torch.randperm(48, generator=g)].reshape(SHAPE)
    return GaussianData(sched, mu, s)


def label(name: str, spacing: str, default: str) -> str:
    text = f"{name}, `{spacing}`"
    return f"**{text} (default)**" if spacing == default else text


def ode_tables(data_sets: dict[str, tuple[NoiseSchedule, GaussianData]]) -> tuple[list[str], dict]:
    """One table per data set; returns the lines and the errors by (sampler, spacing, data set, steps)."""
    errors: dict[tuple[str, str, str, int], float] = {}
    lines: list[str] = []
    for ds, (sched, data) in data_sets.items():
        lines += [f"### {ds}", "", "| sampler, spacing | " + " | ".join(map(str, STEPS)) + " |", "|---|" + "--:|" * len(STEPS)]
        rows = [(n, sp, make) for n, make in ODE_SAMPLERS.items() for sp in CHOICES]
        rows.insert(0, ("DPM-Solver++ 2M, second order into t = 0 (before; = diffusers)", "uniform", OLD_DPM))
        for name, sp, make in rows:
            errs = [ode_error(data, make(sched, sp), n) for n in STEPS]
            errors.update({(name, sp, ds, n): e for n, e in zip(STEPS, errs)})
            default = default_spacing("ddim" if name.startswith("DDIM") else "dpmsolver++") if make is not OLD_DPM else ""
            lines.append(f"| {label(name, sp, default)} | " + " | ".join(f"{e:.3f}" for e in errs) + " |")
            print(lines[-1], flush=True)
        lines.append("")
    return lines, errors


def worst_ratio_table(errors: dict, families: dict[str, list[tuple[str, list]]]) -> list[str]:
    """For each sampler and spacing: the largest ratio of its error to the best spacing's, over
    every table row of that sampler (name, keys); the smallest of these is the default."""
    lines = ["| sampler | rows | " + " | ".join(f"`{sp}`" for sp in CHOICES) + " | chosen | ddpmkit's default |",
             "|---|---|" + "--:|" * len(CHOICES) + "---|---|"]
    for family, rows in families.items():
        worst = {sp: max(errors[(name, sp, *k)] / min(errors[(name, o, *k)] for o in CHOICES)
                         for name, keys in rows for k in keys) for sp in CHOICES}
        best = min(worst, key=worst.get)
        names = "; ".join(name for name, _ in rows)
        lines.append(f"| {family} | {names} | " + " | ".join(f"{worst[sp]:.2f}" for sp in CHOICES)
                     + f" | `{best}` | `{default_spacing(family)}` |")
    return lines


def dpm_vs_ddim(sched: NoiseSchedule, data: GaussianData) -> str:
    """Every step count from 5 to 50, each sampler on its default spacing: is DPM-Solver++ ahead?"""
    ratios = {n: ode_error(data, DPMSolverPPSampler(sched, None, "none"), n)
              / ode_error(data, DDIMSampler(sched, None, 0.0, "none"), n) for n in range(5, 51)}
    behind = [n for n, r in ratios.items() if r >= 1]
    verdict = "ahead at every one" if not behind else f"NOT ahead at {behind}"
    return (f"- DPM-Solver++ vs DDIM, default spacings, at every step count from 5 to 50: {verdict}; error ratio "
            f"{min(ratios.values()):.3f}-{max(ratios.values()):.3f} (at 5 steps {ratios[5]:.3f}, at 50 {ratios[50]:.3f}).")


def stochastic_table(sched: NoiseSchedule) -> tuple[list[str], dict]:
    errors: dict[tuple[str, str, str, int], float] = {}
    lines = ["| sampler, spacing | " + " | ".join(map(str, STOCHASTIC_STEPS)) + " |", "|---|" + "--:|" * len(STOCHASTIC_STEPS)]
    for (name, make), sp in itertools.product(STOCHASTIC.items(), CHOICES):
        errs = [std_error(sched, make(sched, sp), n) for n in STOCHASTIC_STEPS]
        errors.update({(name, sp, "linear", n): e for n, e in zip(STOCHASTIC_STEPS, errs)})
        default = default_spacing("ddim" if name.startswith("DDIM") else "ddpm")
        lines.append(f"| {label(name, sp, default)} | " + " | ".join(f"{e:.3f}" for e in errs) + " |")
        print(lines[-1], flush=True)
    return lines, errors


def x0_table(sched: NoiseSchedule) -> list[str]:
    """Each x̂_0 option with ε* and with a biased ε (a stand-in for a young network's error), on
    data well inside [-1, 1] (μ in [-0.5, 0.5], s in [0.05, 0.1]), so clipping never cuts the
    exact answer: RMS and largest error against the exact map, mean |bias| of x_0, share of x_0
    at ±1 (saturated pixels)."""
    g = torch.Generator().manual_seed(0)
    data = GaussianData(sched, torch.rand(SHAPE, generator=g, dtype=torch.float64) - 0.5,
                        0.05 + 0.05 * torch.rand(SHAPE, generator=g, dtype=torch.float64))
    xi = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x = x_T(1024, SHAPE)
    exact = data.ode_map(x, data.start_alpha_bar(T - 1))
    rows = ["| sampler | ε | x0 | RMS error | max error | mean bias | at ±1 |", "|---|---|---|--:|--:|--:|--:|"]
    samplers = (("DDIM, 50 steps", lambda m: DDIMSampler(sched, None, 0.0, m), 50),
                ("DPM-Solver++, 20 steps", lambda m: DPMSolverPPSampler(sched, None, m), 20))
    for (name, make, steps), amp in itertools.product(samplers, (0.0, 0.1, 0.2)):
        for mode in ("none", "clip", "clip_eps", "dynamic"):
            s = make(mode)
            s.set_timesteps(steps)
            out = sample(lambda xt, t: data.eps(xt, t) + amp * xi, s, x.shape, x_T=x)
            err = (out - exact).abs()
            rows.append(f"| {name} | ε* + {amp}·ξ | {mode} | {err.pow(2).mean().sqrt():.3f} | {err.max():.3f} "
                        f"| {(out.mean(0) - data.mu).abs().mean():.3f} | {(out.abs() >= 0.999).double().mean():.2%} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results_sampler_accuracy.md"))
    args = ap.parse_args()
    assert set(CHOICES) <= set(SPACINGS)
    torch.set_num_threads(1)
    linear, cosine = NoiseSchedule.from_betas(linear_betas(T)), NoiseSchedule.from_betas(cosine_betas(T))
    data_sets = {
        "narrow data, linear β (T = 1000, the default)": (linear, GaussianData.standard(linear, SHAPE)),
        "narrow data, cosine β (Nichol & Dhariwal 2021)": (cosine, GaussianData.standard(cosine, SHAPE)),
        "wide-spectrum data (s from 0.03 to 30), linear β": (linear, spectrum_data(linear)),
    }
    ode_lines, ode_errors = ode_tables(data_sets)
    sto_lines, sto_errors = stochastic_table(linear)
    ode_keys = [(ds, n) for ds in data_sets for n in STEPS]
    sto_keys = [("linear", n) for n in STOCHASTIC_STEPS[:-1]]
    sto = list(STOCHASTIC)
    families = {
        "dpmsolver++": [("DPM-Solver++ 2M", ode_keys)],
        "ddim": [("DDIM (η = 0)", ode_keys), (sto[2], sto_keys), (sto[3], sto_keys)],
        "ddpm": [(sto[0], sto_keys), (sto[1], sto_keys)],
    }
    lines = [
        "# Sampler accuracy on the analytic Gaussian",
        "",
        f"- Command: `PYTHONPATH=src {shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"- Machine: {cpu_model()}, {platform.system()}; torch {torch.__version__}, Python {platform.python_version()}",
        f"- Date: {datetime.date.today().isoformat()}",
        "- Data and measures: the script's docstring. float64 and deterministic: the numbers do not depend on load.",
        "",
        "## Deterministic samplers: largest error of x_0 against the exact ODE map",
        "",
        *ode_lines,
        *[dpm_vs_ddim(sched, data) + f" ({ds})" for ds, (sched, data) in data_sets.items()],
        "",
        "## Stochastic samplers: largest |std(x_0)/s - 1| over the elements (narrow data, linear β)",
        "",
        *sto_lines,
        "",
        "## Default spacing: the worst ratio of each spacing's error to the best spacing's",
        "",
        "Over every row of a sampler above: the three data sets and 5-50 steps (deterministic), 25-250 steps",
        "(stochastic; at 1000 steps every spacing is every step). The chosen spacing is never far from the best.",
        "",
        *worst_ratio_table({**ode_errors, **sto_errors}, families),
        "",
        "## x̂_0 handling (narrow data, linear β): ε* and ε* + a·ξ, ξ ~ N(0, 1) fixed per element (a young network's bias)",
        "",
        *x0_table(linear),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
