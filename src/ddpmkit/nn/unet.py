"""The ε-prediction U-Net of Ho et al. (2020), in the CelebA-64 shape of Song et al. (2021, DDIM).

Layout (DDPM's `diffusion_tf/models/unet.py`, the DDIM repository's `Model`):

- time embedding: sinusoidal(ch) -> Linear(ch, 4ch) -> SiLU -> Linear(4ch, 4ch);
- conv_in 3x3: in_channels -> ch;
- down path, level i = 0..L-1 at resolution image_size / 2^i: num_res_blocks ResBlocks to
  ch·ch_mult[i] (each followed by an AttnBlock when the resolution is in attn_resolutions), then a
  Downsample except at the last level; every block output is kept as a skip;
- middle: ResBlock, AttnBlock, ResBlock;
- up path, levels L-1..0: num_res_blocks + 1 ResBlocks, each on concat(features, popped skip)
  (attention as on the way down), then an Upsample except at level 0;
- out: GroupNorm, SiLU, conv 3x3 to in_channels.

Initialisation is DDPM's (see `blocks.py`): Xavier-uniform everywhere, zero for the last conv
of every ResBlock, every attention projection and the output conv, so a fresh network predicts
ε = 0 for every input.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpmkit.nn.blocks import AttnBlock, Downsample, ResBlock, Upsample, conv3x3, init_layer
from ddpmkit.nn.embeddings import timestep_embedding
from ddpmkit.settings import GROUPNORM_EPS, ModelConfig, check_unet_shape


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `module` (shared tensors counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class _Level(nn.Module):
    """One resolution level: ResBlocks, each followed by attention or an identity, then resampling."""

    def __init__(self, res: list[ResBlock], attn: list[nn.Module], resample: Optional[nn.Module]) -> None:
        super().__init__()
        self.res = nn.ModuleList(res)
        self.attn = nn.ModuleList(attn)
        self.resample = resample


class _BlockMaker:
    """Builds the U-Net's levels; every ResBlock and AttnBlock of one network shares these settings."""

    def __init__(self, emb_dim: int, num_groups: int, dropout: float, head_channels: int,
                 attn_resolutions: tuple[int, ...], scale_shift: bool, eps: float, downsample_pad: str) -> None:
        self.emb_dim, self.num_groups, self.dropout = emb_dim, num_groups, dropout
        self.head_channels, self.attn_resolutions, self.scale_shift = head_channels, attn_resolutions, scale_shift
        self.eps, self.downsample_pad = eps, downsample_pad

    def res(self, c_in: int, c_out: int) -> ResBlock:
        return ResBlock(c_in, c_out, self.emb_dim, self.num_groups, self.dropout, self.scale_shift, self.eps)

    def attn(self, channels: int) -> AttnBlock:
        return AttnBlock(channels, self.num_groups, self.head_channels, self.eps)

    def attn_or_identity(self, channels: int, size: int) -> nn.Module:
        return self.attn(channels) if size in self.attn_resolutions else nn.Identity()

    def down_path(self, ch: int, widths: list[int], num_res_blocks: int, size: int) -> tuple[nn.ModuleList, list[int]]:
        """Levels at size, size/2, ...; also the channels of every kept skip, in push order."""
        skip_ch, cur, levels = [ch], ch, nn.ModuleList()
        for i, out in enumerate(widths):
            res, att = [], []
            for _ in range(num_res_blocks):
                res.append(self.res(cur, out))
                att.append(self.attn_or_identity(out, size))
                cur = out
                skip_ch.append(cur)
            last = i == len(widths) - 1
            levels.append(_Level(res, att, None if last else Downsample(cur, self.downsample_pad)))
            if not last:
                skip_ch.append(cur)
                size //= 2
        return levels, skip_ch

    def up_path(self, widths: list[int], num_res_blocks: int, image_size: int, skip_ch: list[int]) -> nn.ModuleList:
        """Levels indexed like the down path (up[i] runs at image_size / 2^i), built deepest first;
        each ResBlock takes the popped skip's channels on top of the running ones."""
        up: list[_Level] = []
        cur = widths[-1]
        for i in reversed(range(len(widths))):
            size = image_size // 2**i
            res, att = [], []
            for _ in range(num_res_blocks + 1):
                res.append(self.res(cur + skip_ch.pop(), widths[i]))
                att.append(self.attn_or_identity(widths[i], size))
                cur = widths[i]
            up.insert(0, _Level(res, att, Upsample(cur) if i != 0 else None))
        assert not skip_ch, "every skip connection must be consumed"
        return nn.ModuleList(up)


class UNet(nn.Module):
    """ε_θ(x_t, t[, c]): predicts the noise in x_t.

    Plain arguments (see `settings.ModelConfig` for their meaning); `UNet.from_config(cfg)` builds
    it from settings. attn_resolutions are feature-map sides (image_size / 2^level) that get
    self-attention. With cond_dim > 0 a Linear(cond_dim, 4ch) of a condition vector is added to
    the time embedding, and a learned null embedding stands in where no condition is given.
    scale_shift: the embedding scales and shifts each residual block's features (see ResBlock).
    norm_eps, temb_cos_first, temb_freq_shift, downsample_pad: conventions of other U-Nets of this
    shape (diffusers' UNet2DModel); the defaults are DDPM's (see `settings.ModelConfig`).
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_groups: int = 32,
        head_channels: int = 0,
        cond_dim: int = 0,
        scale_shift: bool = False,
        norm_eps: float = GROUPNORM_EPS,
        temb_cos_first: bool = False,
        temb_freq_shift: float = 1.0,
        downsample_pad: str = "bottom_right",
    ) -> None:
        super().__init__()
        check_unet_shape(image_size, ch, ch_mult, attn_resolutions, head_channels)  # ValueError naming the misfit
        self.image_size, self.in_channels, self.ch, self.cond_dim = image_size, in_channels, ch, cond_dim
        self.temb_cos_first, self.temb_freq_shift = temb_cos_first, temb_freq_shift
        emb_dim = 4 * ch
        self.num_levels = len(ch_mult)
        self._size_multiple = 2 ** (self.num_levels - 1)

        make = _BlockMaker(emb_dim, num_groups, dropout, head_channels, tuple(attn_resolutions), scale_shift,
                           norm_eps, downsample_pad)

        self.temb = nn.Sequential(
            init_layer(nn.Linear(ch, emb_dim)), nn.SiLU(), init_layer(nn.Linear(emb_dim, emb_dim))
        )
        self.cond_proj: Optional[nn.Linear] = None
        self.null_cond: Optional[nn.Parameter] = None
        if cond_dim > 0:
            self.cond_proj = init_layer(nn.Linear(cond_dim, emb_dim))  # type: ignore[assignment]
            # Zero: "no condition" starts out adding nothing to the time embedding.
            self.null_cond = nn.Parameter(torch.zeros(emb_dim))

        self.conv_in = conv3x3(in_channels, ch)
        # (modules are created in forward order: the initial weights depend on that order)
        widths = [ch * m for m in ch_mult]
        self.down, skip_ch = make.down_path(ch, widths, num_res_blocks, image_size)
        cur = widths[-1]
        self.mid1 = make.res(cur, cur)
        self.mid_attn = make.attn(cur)
        self.mid2 = make.res(cur, cur)
        self.up = make.up_path(widths, num_res_blocks, image_size, skip_ch)
        self.norm_out = nn.GroupNorm(num_groups, widths[0], eps=norm_eps)
        self.conv_out = conv3x3(widths[0], in_channels, zero=True)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "UNet":
        """The U-Net that `cfg` (settings' model section, image_size resolved) describes."""
        if cfg.image_size is None:
            raise ValueError("model.image_size is unresolved: build the model from Settings, which take it from data.size")
        return cls(**cfg.model_dump(exclude={"cond_names"}))  # names mean nothing to the network

    def embed(self, t: Tensor, cond: Optional[Tensor] = None, drop_cond: Optional[Tensor] = None) -> Tensor:
        """Time (+ condition) embedding, (B, 4ch). Arguments as in `forward`."""
        w = self.temb[0].weight
        sinus = timestep_embedding(t, self.ch, self.temb_cos_first, self.temb_freq_shift)
        emb = self.temb(sinus.to(w.dtype))
        if self.cond_proj is None or self.null_cond is None:
            if cond is not None or drop_cond is not None:
                raise ValueError("a condition was passed but this model has model.cond_dim = 0")
            return emb
        B = t.shape[0]
        if cond is None:
            c = emb.new_zeros(B, self.cond_dim)
            drop = torch.ones(B, dtype=torch.bool, device=emb.device)
        else:
            if cond.shape != (B, self.cond_dim):
                raise ValueError(f"cond must have shape ({B}, {self.cond_dim}), got {tuple(cond.shape)}")
            c = cond.to(w.dtype)
            drop = (
                torch.zeros(B, dtype=torch.bool, device=emb.device) if drop_cond is None else drop_cond.bool()
            )
        # torch.where, not a Python branch: cond_proj and null_cond are both in every graph, so
        # DDP without find_unused_parameters and torch.compile see one structure per call shape.
        return emb + torch.where(drop[:, None], self.null_cond.to(emb.dtype), self.cond_proj(c))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        cond: Optional[Tensor] = None,
        drop_cond: Optional[Tensor] = None,
    ) -> Tensor:
        """Predict ε.

        x: (B, in_channels, H, W) float, x_t in roughly [-1, 1]; H and W divisible by
           2^(len(ch_mult)-1) (attention sits where it was placed for image_size).
        t: (B,) long or float timestep indices in [0, T), or a scalar for the whole batch.
        cond: optional (B, cond_dim) condition (e.g. CelebA attributes), only when cond_dim > 0;
           None means the learned null (unconditional) embedding for every sample.
        drop_cond: optional (B,) bool, True where the null embedding replaces cond (condition
           dropout in training; the unconditional half of classifier-free guidance).
        Returns ε̂: (B, in_channels, H, W), in x's dtype unless autocast is on (then bf16/fp16).
        Raises ValueError on a wrong shape or on cond given to an unconditional model.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self._size_multiple or x.shape[3] % self._size_multiple:
            raise ValueError(
                f"x height and width must be multiples of {self._size_multiple}, got {tuple(x.shape)}"
            )
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.embed(t, cond, drop_cond)

        hs = [self.conv_in(x)]
        for level in self.down:
            for res, attn in zip(level.res, level.attn):
                hs.append(attn(res(hs[-1], emb)))
            if level.resample is not None:
                hs.append(level.resample(hs[-1]))

        h = self.mid2(self.mid_attn(self.mid1(hs[-1], emb)), emb)

        for i in reversed(range(self.num_levels)):
            level = self.up[i]
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))
            if level.resample is not None:
                h = level.resample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
