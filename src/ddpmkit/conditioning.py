"""Attribute conditions: what training feeds the network, and what `sample --attr` asks for.

A condition is a vector c of K binary attributes, each +1 (present), -1 (absent) or 0 (unknown /
any). Training hides information in two ways, both drawn from the run's generator:

- condition dropout (classifier-free guidance, Ho & Salimans 2022): with probability p_uncond an
  example gets the learned null embedding instead of c, so the same network is also ε(x_t, t, ∅);
- attribute hiding: each attribute of an example is set to 0 with a probability q drawn uniformly
  in [0, 1] per example, so conditions with few known attributes are in the training
  distribution, and an attribute left unspecified at sampling (0) means "any".

Examples with no attribute row at all (every entry 0, e.g. CelebA images missing from the
attribute file) always get the null embedding: they are trained unconditionally, never dropped.
"""

from __future__ import annotations

import difflib
from typing import Optional, Sequence

import torch
from torch import Tensor

from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import GUIDANCE, MAX_GUIDANCE


def rows_missing(attributes: Tensor) -> Tensor:
    """(N,) bool: True where an attribute row is all zeros (no row in the attribute file).
    attributes: (N, K) in {-1, 0, +1}."""
    return (attributes == 0).all(dim=1)


def draw_condition(
    attributes: Tensor,
    p_uncond: float,
    hide: bool,
    generator: torch.Generator,
    *,
    global_batch: Optional[int] = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """The condition and dropout mask of one training batch.

    attributes: (b, K) int8 or float in {-1, 0, +1}, this process's slice of a global batch.
    The random numbers are drawn for the whole global batch (size `global_batch`, default b) and
    rows [offset, offset + b) taken, so every process advances `generator` identically.
    Returns (cond: (b, K) float32 with hidden entries 0, drop: (b,) bool, True = null embedding).
    """
    b, K = attributes.shape
    G = b if global_batch is None else global_batch
    dev = attributes.device
    u_drop = torch.rand(G, generator=generator, device=generator.device)[offset : offset + b].to(dev)
    cond = attributes.float()
    if hide:
        q = torch.rand(G, 1, generator=generator, device=generator.device)[offset : offset + b].to(dev)
        u = torch.rand(G, K, generator=generator, device=generator.device)[offset : offset + b].to(dev)
        cond = torch.where(u < q, torch.zeros_like(cond), cond)
    drop = (u_drop < p_uncond) | rows_missing(attributes)
    return cond, drop


def attribute_vector(names: Sequence[str], asked: Sequence[str]) -> Tensor:
    """The condition (K,) float32 for `sample --attr` values: "Name" = present (+1), "-Name" =
    absent (-1), names matched case-insensitively against `names`; every other entry 0 (any).
    Raises DdpmkitError (one line) for an unknown name, listing close matches, or a name asked twice."""
    lower = {n.lower(): i for i, n in enumerate(names)}
    c = torch.zeros(len(names))
    for spec in asked:
        text = spec.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        name = text.lstrip("+-").strip()
        i = lower.get(name.lower())
        if i is None:
            close = difflib.get_close_matches(name.lower(), list(lower), n=4, cutoff=0.6)
            hint = ("did you mean " + ", ".join(names[lower[m]] for m in close) + "?") if close \
                else f"known: {', '.join(names)}"
            raise DdpmkitError(f"--attr {spec!r}: no attribute of that name in this run; {hint}")
        if c[i] != 0:
            raise DdpmkitError(f"--attr {spec!r}: attribute {names[i]} is asked for twice")
        c[i] = sign
    return c


def attribute_label(names: Sequence[str], cond: Tensor) -> str:
    """A short file-name part for a condition, present attributes first: "attr_Eyeglasses+Smiling-Male"
    ('+' between present attributes, '-' before each absent one, in `names` order)."""
    present = [n for i, n in enumerate(names) if cond[i] > 0]
    absent = [n for i, n in enumerate(names) if cond[i] < 0]
    return "attr_" + "+".join(present) + "".join("-" + n for n in absent)


def unconditional_reason(cond_dim: int, names: Sequence[str]) -> Optional[str]:
    """Why attributes cannot be asked of a run (None: they can): an unconditional run, or one
    that stores no attribute names for its condition entries."""
    if not cond_dim:
        return "this run is unconditional (trained without --condition attributes)"
    if len(names) != cond_dim:
        return f"this run stores no attribute names for its {cond_dim} condition entries"
    return None


def asked_condition(cond_dim: int, names: Sequence[str], attrs: Sequence[str],
                    guidance: Optional[float]) -> tuple[Optional[Tensor], float, str]:
    """Asked attributes ("Name" present, "-Name" absent) and guidance against a run's attributes:
    (condition (K,) or None, guidance weight, a folder-name suffix such as
    "-attr_Eyeglasses+Smiling-Male-w3", "" when none is asked). One-line errors."""
    if not attrs:
        if guidance is not None:
            raise DdpmkitError("--guidance needs --attr: it weighs the asked attributes against none")
        return None, 1.0, ""
    reason = unconditional_reason(cond_dim, names)
    if reason is not None:
        raise DdpmkitError(f"--attr: {reason}; sample it without --attr")
    w = GUIDANCE if guidance is None else guidance
    if not 0 <= w <= MAX_GUIDANCE:
        raise DdpmkitError(f"--guidance {w:g} is out of range: 0 (unconditional) to {MAX_GUIDANCE:g}")
    cond = attribute_vector(names, attrs)
    return cond, w, f"-{attribute_label(names, cond)}-w{w:g}"
