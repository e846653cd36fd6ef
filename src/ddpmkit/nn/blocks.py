"""U-Net building blocks of Ho et al. (2020): residual block, self-attention, resampling.

All blocks take and return feature maps `(B, C, H, W)`; they work in channels_last memory
format, under bf16 autocast and under torch.compile (no data-dependent Python branches).

Initialisation follows DDPM's code: every conv / linear weight is Xavier-uniform (TensorFlow's
variance_scaling(1, "fan_avg", "uniform")) with zero bias, and the last layer of each residual
branch (ResBlock.conv2, AttnBlock.proj) is zero (DDPM's `init_scale=0`, i.e. 1e-10), so every
block starts as the identity and the untrained network is a stack of skips.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.settings import GROUPNORM_EPS


def init_layer(layer: nn.Conv2d | nn.Linear, zero: bool = False) -> nn.Conv2d | nn.Linear:
    """DDPM's default_init: Xavier-uniform weight (or zero if `zero`), zero bias. Returns layer."""
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv3x3(c_in: int, c_out: int, zero: bool = False) -> nn.Conv2d:
    return init_layer(nn.Conv2d(c_in, c_out, 3, padding=1), zero)  # type: ignore[return-value]


def conv1x1(c_in: int, c_out: int, zero: bool = False) -> nn.Conv2d:
    return init_layer(nn.Conv2d(c_in, c_out, 1), zero)  # type: ignore[return-value]


class ResBlock(nn.Module):
    """h = conv2(drop(SiLU(GN(conv1(SiLU(GN(x))) + W·SiLU(emb))))); returns shortcut(x) + h.

    x: (B, c_in, H, W); emb: (B, emb_dim), the time (+ condition) embedding before its SiLU.
    Returns (B, c_out, H, W). The shortcut is a 1x1 conv (DDPM's `nin_shortcut`) when
    c_in != c_out, else the identity. With scale_shift the embedding gives a per-channel scale
    and shift of the normalised features instead of a bias, GN(h)·(1 + s) + b (improved DDPM's
    and ADM's `use_scale_shift_norm`): a condition can then multiply features, not only offset them.
    """

    def __init__(
        self, c_in: int, c_out: int, emb_dim: int, num_groups: int, dropout: float, scale_shift: bool = False,
        eps: float = GROUPNORM_EPS,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(num_groups, c_in, eps=eps)
        self.conv1 = conv3x3(c_in, c_out)
        self.emb_proj = init_layer(nn.Linear(emb_dim, 2 * c_out if scale_shift else c_out))
        self.norm2 = nn.GroupNorm(num_groups, c_out, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(c_out, c_out, zero=True)
        self.shortcut: nn.Module = conv1x1(c_in, c_out) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # per channel, broadcast over H and W
        if self.scale_shift:  # fixed at construction, not a data-dependent branch
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H·W positions: x + proj(softmax(q kᵀ / √d) v).

    x: (B, C, H, W) -> (B, C, H, W). head_channels = 0 gives one head of width d = C (DDPM);
    otherwise C / head_channels heads of width d = head_channels. q, k, v come from one 1x1 conv
    (same parameter count as DDPM's three `nin` layers).
    """

    def __init__(self, channels: int, num_groups: int, head_channels: int = 0, eps: float = GROUPNORM_EPS) -> None:
        super().__init__()
        # head_channels divides channels: `settings.check_unet_shape` (the UNet calls it) sees to that
        self.heads = channels // head_channels if head_channels else 1
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps)
        self.qkv = conv1x1(channels, 3 * channels)
        self.proj = conv1x1(channels, channels, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        d = C // self.heads
        # (B, 3C, H, W) -> 3 x (B, heads, H·W, d): sequence = pixels, features = head channels.
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, d, H * W).transpose(-1, -2)
        q, k, v = qkv.unbind(dim=1)
        h = F.scaled_dot_product_attention(q, k, v)  # scale 1/√d, DDPM's C^-1/2 for one head
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Stride-2 3x3 conv: (B, C, H, W) -> (B, C, H/2, W/2), H and W even.

    pad "bottom_right": one pixel on the right and bottom only, as TensorFlow's 'SAME' stride-2
    conv in DDPM and the explicit pad in the DDIM code: the same parameters as padding=1 but the
    same sampling grid as those models, so their published weights map onto this block unchanged.
    pad "all_sides": one pixel on every side (PyTorch's padding=1; diffusers' downsample_padding 1).
    """

    def __init__(self, channels: int, pad: str = "bottom_right") -> None:
        super().__init__()
        if pad not in ("bottom_right", "all_sides"):
            raise ValueError(f"unknown downsample padding {pad!r}")
        self.pad = (0, 1, 0, 1) if pad == "bottom_right" else (1, 1, 1, 1)
        self.conv = init_layer(nn.Conv2d(channels, channels, 3, stride=2, padding=0))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pad))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
