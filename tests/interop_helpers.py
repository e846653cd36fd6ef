"""What both interop test files need: random weights in every tensor, and equal outputs."""

from __future__ import annotations

import torch


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every tensor moved off its initial value (zero-initialised layers and GroupNorm's ones and
    zeros too, so no tensor hides a wrong name or layout); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def assert_same_output(ours: torch.nn.Module, theirs: torch.nn.Module, size: int, batch: int = 2,
                       x_scale: float = 1.0) -> None:
    """ddpmkit's network and diffusers' UNet2DModel answer alike on random x_t at t = 3 and 977,
    float32, to 1e-5 of the output's size. x_scale: small inputs make GroupNorm's eps count."""
    g = torch.Generator().manual_seed(1)
    x = x_scale * torch.randn(batch, 3, size, size, generator=g)
    t = torch.tensor([3, 977][:batch])
    with torch.no_grad():
        a, b = ours(x, t), theirs(x, t).sample
    scale = a.abs().max().item()
    assert scale > 0.1  # a network that answers something
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * scale)
