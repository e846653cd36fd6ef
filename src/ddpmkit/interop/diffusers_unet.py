"""ddpmkit's U-Net as diffusers' `UNet2DModel`: the config and the tensor names, both ways.

Pure mapping (torch tensors in, torch tensors out; diffusers is never imported). The two networks
are the same network: one maps onto the other tensor for tensor, no parameter left over.

    ddpmkit                            UNet2DModel
    timestep_embedding(ch)             time_proj: Timesteps(ch, flip_sin_to_cos, freq_shift)
                                         DDPM's [sin, cos] and 10000^(-i/(h-1)): False, 1
    temb.0, temb.2                     time_embedding.linear_1, .linear_2
    conv_in                            conv_in
    down[i].res[j]                     down_blocks[i].resnets[j]
    down[i].attn[j] (attention level)  down_blocks[i].attentions[j] (AttnDownBlock2D)
    down[i].resample.conv              down_blocks[i].downsamplers[0].conv (downsample_padding 0:
                                         one pixel right and bottom, as model.downsample_pad)
    mid1, mid_attn, mid2               mid_block.resnets[0], .attentions[0], .resnets[1]
    up[i] (num_res_blocks + 1 res)     up_blocks[L-1-i] (layers_per_block + 1 resnets: diffusers
                                         lists the up path deepest first)
    up[i].resample.conv                up_blocks[L-1-i].upsamplers[0].conv
    norm_out, conv_out                 conv_norm_out, conv_out
    ResBlock norm1 conv1 emb_proj      ResnetBlock2D norm1 conv1 time_emb_proj
             norm2 conv2 shortcut                    norm2 conv2 conv_shortcut (output_scale 1)
    AttnBlock norm                     Attention group_norm
              qkv (1x1 conv C -> 3C)     to_q, to_k, to_v (Linear C -> C each; rows q|k|v, heads
                                         in order inside each), older files: query, key, value
              proj (1x1 conv)            to_out.0 (older files: proj_attn)

Heads: model.head_channels = attention_head_dim (0 = None = one head per layer). GroupNorm eps:
model.norm_eps = norm_eps. scale_shift = resnet_time_scale_shift "scale_shift" (the same
norm(h)·(1 + scale) + shift, scale first), which in diffusers drops the middle attention's
GroupNorm unless attn_norm_num_groups is set: export sets it, import requires it.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import ModelConfig

DIFFUSERS_FORMAT = "0.30.0"  # the diffusers release whose file layout exported folders follow
UNET_CLASS = "UNet2DModel"

# UNet2DModel's defaults (diffusers 0.30-0.42) for every key read here: a config file lists only
# the keys its writer knew, so a missing key means diffusers' default, not DDPM's convention.
UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None,
}
DOWN_BLOCKS = {False: "DownBlock2D", True: "AttnDownBlock2D"}  # by "this level has attention"
UP_BLOCKS = {False: "UpBlock2D", True: "AttnUpBlock2D"}
_PAD = {"bottom_right": 0, "all_sides": 1}  # model.downsample_pad -> downsample_padding


# ------------------------------------------------------------------ configs


def unet2d_config(m: ModelConfig) -> dict[str, Any]:
    """The UNet2DModel config.json of the network `m` describes (image_size resolved).
    Raises DdpmkitError (one line) for what UNet2DModel cannot express: attribute conditioning."""
    if m.cond_dim:
        raise DdpmkitError(
            f"cannot export a model conditioned on {m.cond_dim} attributes (model.cond_dim): diffusers' "
            "UNet2DModel adds one class label's embedding to the time embedding, not a projected attribute "
            "vector with a learned null embedding (classifier-free guidance)")
    size = int(m.image_size or 0)
    attn = [size // 2**i in m.attn_resolutions for i in range(len(m.ch_mult))]
    shift = float(m.temb_freq_shift)
    return {
        "_class_name": UNET_CLASS, "_diffusers_version": DIFFUSERS_FORMAT,
        "sample_size": size, "in_channels": m.in_channels, "out_channels": m.in_channels,
        "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
        "freq_shift": int(shift) if shift.is_integer() else shift, "flip_sin_to_cos": m.temb_cos_first,
        "down_block_types": [DOWN_BLOCKS[a] for a in attn], "mid_block_type": "UNetMidBlock2D",
        "up_block_types": [UP_BLOCKS[a] for a in reversed(attn)],
        "block_out_channels": [m.ch * k for k in m.ch_mult], "layers_per_block": m.num_res_blocks,
        "mid_block_scale_factor": 1, "downsample_padding": _PAD[m.downsample_pad], "downsample_type": "conv",
        "upsample_type": "conv", "dropout": m.dropout, "act_fn": "silu",
        "attention_head_dim": m.head_channels or None, "norm_num_groups": m.num_groups,
        "attn_norm_num_groups": m.num_groups, "norm_eps": m.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if m.scale_shift else "default", "add_attention": True,
        "class_embed_type": None, "num_class_embeds": None,
    }


def _refuse(key: str, value: Any, why: str) -> DdpmkitError:
    return DdpmkitError(f"UNet2DModel config {key} = {value!r}: {why}")


def _require(c: Mapping[str, Any], key: str, allowed: Sequence[Any], why: str) -> None:
    if c[key] not in allowed:
        raise _refuse(key, c[key], why)


def _block_types(c: Mapping[str, Any], levels: int) -> list[bool]:
    """Which levels have attention, from the block types; refuses a block type ddpmkit's U-Net has
    no counterpart for, and attention on only one of a level's two paths."""
    down = [str(b).removeprefix("UNetRes") for b in c["down_block_types"]]
    up = [str(b).removeprefix("UNetRes") for b in c["up_block_types"]]
    if not len(down) == len(up) == levels:
        raise DdpmkitError(f"UNet2DModel config has {len(down)} down blocks, {len(up)} up blocks and "
                           f"{levels} block_out_channels: they must be equal")
    known = "DownBlock2D, AttnDownBlock2D, UpBlock2D and AttnUpBlock2D"
    for name, kinds, blocks in (("down", DOWN_BLOCKS, down), ("up", UP_BLOCKS, up)):
        for i, b in enumerate(blocks):
            if b not in kinds.values():
                raise DdpmkitError(f"block type {b} ({name}_block_types[{i}]) has no counterpart in ddpmkit's "
                                   f"U-Net, which holds {known} only")
    attn = [b == DOWN_BLOCKS[True] for b in down]
    for i, a in enumerate(attn):
        if a != (up[levels - 1 - i] == UP_BLOCKS[True]):
            raise DdpmkitError(f"level {i} is {down[i]} on the way down but {up[levels - 1 - i]} on the way up: "
                               "ddpmkit's U-Net has attention on both paths of a level or on neither")
    return attn


def _image_size(value: Any) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse("sample_size", value, "ddpmkit needs the side of square images (one whole number)")
    return value


def _widths(channels: Any) -> tuple[int, tuple[int, ...]]:
    """ch and ch_mult from block_out_channels: every width a whole multiple of the first."""
    if not channels or not all(isinstance(w, int) and w > 0 for w in channels):
        raise _refuse("block_out_channels", channels, "expected a list of positive whole numbers")
    ch = channels[0]
    if any(w % ch for w in channels):
        raise _refuse("block_out_channels", list(channels), f"ddpmkit's widths are whole multiples of the first ({ch})")
    return ch, tuple(w // ch for w in channels)


def _check_plain(c: Mapping[str, Any], ch: int) -> None:
    """Everything beyond the layout that must be UNet2DModel's plain DDPM network."""
    _require(c, "time_embedding_type", ["positional"], "ddpmkit's U-Net has the sinusoidal (positional) "
             "timestep embedding only")
    _require(c, "time_embedding_dim", [None, 4 * ch], f"ddpmkit's time embedding is 4 x {ch} = {4 * ch} wide")
    _require(c, "center_input_sample", [False], "ddpmkit's network takes x_t in [-1, 1] as it is")
    _require(c, "class_embed_type", [None], "class conditioning has no counterpart in ddpmkit's U-Net")
    _require(c, "num_class_embeds", [None], "class conditioning has no counterpart in ddpmkit's U-Net")
    _require(c, "act_fn", ["silu", "swish"], "ddpmkit's U-Net uses SiLU")
    _require(c, "out_channels", [c["in_channels"]], "ddpmkit's network predicts ε or v, as many channels as "
             "it takes (a learned variance doubles them)")
    _require(c, "mid_block_type", ["UNetMidBlock2D"], "ddpmkit's U-Net has the middle block "
             "ResBlock-attention-ResBlock")
    _require(c, "add_attention", [True], "ddpmkit's middle block always has attention")
    _require(c, "mid_block_scale_factor", [1, 1.0], "ddpmkit's blocks do not rescale their output")
    _require(c, "downsample_type", ["conv"], "ddpmkit downsamples with a stride-2 convolution")
    _require(c, "upsample_type", ["conv"], "ddpmkit upsamples with nearest-neighbour and a convolution")
    _require(c, "downsample_padding", [0, 1], "ddpmkit pads one pixel right and bottom (0) or on every side (1)")
    _require(c, "resnet_time_scale_shift", ["default", "scale_shift"], "ddpmkit's residual blocks add the "
             "embedding (default) or scale and shift by it (scale_shift)")
    groups = c["attn_norm_num_groups"]
    if groups not in (None, c["norm_num_groups"]) or (groups is None and c["resnet_time_scale_shift"] != "default"):
        raise _refuse("attn_norm_num_groups", groups, f"ddpmkit's middle attention normalises with "
                      f"norm_num_groups ({c['norm_num_groups']}) groups, as every other layer")


def model_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ddpmkit `model` settings of a UNet2DModel config.json (a dict read from JSON).
    Raises DdpmkitError (one line, naming the key or block type) for what ddpmkit's U-Net cannot hold."""
    cls = config.get("_class_name", UNET_CLASS)
    if cls != UNET_CLASS:
        raise DdpmkitError(f"the network is a {cls}: ddpmkit imports {UNET_CLASS} (the DDPM U-Net) only")
    c = {**UNET2D_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    ch, mult = _widths(c["block_out_channels"])
    _check_plain(c, ch)
    size = _image_size(c["sample_size"])
    attn = _block_types(c, len(mult))
    layers = c["layers_per_block"]
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise _refuse("layers_per_block", layers, "expected one whole number of at least 1")
    heads = c["attention_head_dim"]
    if heads is not None and (not isinstance(heads, int) or isinstance(heads, bool) or heads < 1):
        raise _refuse("attention_head_dim", heads, "expected null (one head) or a whole number of channels")
    return {
        "image_size": size, "in_channels": c["in_channels"], "ch": ch, "ch_mult": mult,
        "num_res_blocks": layers, "attn_resolutions": tuple(size // 2**i for i, a in enumerate(attn) if a),
        "dropout": float(c["dropout"]), "num_groups": c["norm_num_groups"], "head_channels": heads or 0,
        "cond_dim": 0, "scale_shift": c["resnet_time_scale_shift"] == "scale_shift",
        "norm_eps": float(c["norm_eps"]), "temb_cos_first": bool(c["flip_sin_to_cos"]),
        "temb_freq_shift": float(c["freq_shift"]),
        "downsample_pad": {v: k for k, v in _PAD.items()}[c["downsample_padding"]],
    }


# ------------------------------------------------------------------ tensor names

_RES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "proj": "to_out.0", "qkv": ("to_q", "to_k", "to_v")}
_TOP = {"temb.0": "time_embedding.linear_1", "temb.2": "time_embedding.linear_2", "conv_in": "conv_in",
        "norm_out": "conv_norm_out", "conv_out": "conv_out"}
_MID = {"mid1": "mid_block.resnets.0", "mid2": "mid_block.resnets.1"}
_LEVEL = re.compile(r"(down|up)\.(\d+)\.(res|attn)\.(\d+)\.(\w+)\.(weight|bias)")
_RESAMPLE = re.compile(r"(down|up)\.(\d+)\.resample\.conv\.(weight|bias)")
_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.15 files


def _layer(kind: str, layer: str) -> tuple[str, ...]:
    names = (_RES if kind == "res" else _ATTN).get(layer)
    if names is None:
        raise KeyError(layer)
    return names if isinstance(names, tuple) else (names,)


def diffusers_names(key: str, levels: int) -> tuple[str, ...]:
    """UNet2DModel's name(s) of ddpmkit tensor `key` (three for an attention's qkv: q, k, v).
    levels: len(model.ch_mult). KeyError for a tensor UNet2DModel has no place for (cond_proj)."""
    param = key.rsplit(".", 1)[-1]
    if (m := _LEVEL.fullmatch(key)) is not None:
        path, i, kind, j, layer, _ = m.groups()
        block = f"down_blocks.{i}" if path == "down" else f"up_blocks.{levels - 1 - int(i)}"
        group = "resnets" if kind == "res" else "attentions"
        return tuple(f"{block}.{group}.{j}.{n}.{param}" for n in _layer(kind, layer))
    if (m := _RESAMPLE.fullmatch(key)) is not None:
        path, i, _ = m.groups()
        if path == "down":
            return (f"down_blocks.{i}.downsamplers.0.conv.{param}",)
        return (f"up_blocks.{levels - 1 - int(i)}.upsamplers.0.conv.{param}",)
    base = key[: -len(param) - 1]
    module, _, layer = base.partition(".")
    if module in _MID:
        return tuple(f"{_MID[module]}.{n}.{param}" for n in _layer("res", layer))
    if module == "mid_attn":
        return tuple(f"mid_block.attentions.0.{n}.{param}" for n in _layer("attn", layer))
    if base in _TOP:
        return (f"{_TOP[base]}.{param}",)
    raise KeyError(key)


def _is_attention_conv(key: str) -> bool:
    """A 1x1 conv of an attention block (qkv, proj): a Linear in diffusers, same numbers."""
    return key.endswith((".qkv.weight", ".proj.weight")) and (".attn." in key or key.startswith("mid_attn."))


def diffusers_shapes(own: Mapping[str, Sequence[int]], levels: int) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a UNet2DModel file must hold for ddpmkit's tensors `own` (name -> shape)."""
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in own.items():
        names = diffusers_names(key, levels)
        shape = tuple(shape)
        if _is_attention_conv(key):
            shape = shape[:2]
        if len(names) == 3:  # q, k, v: a third of the rows each
            shape = (shape[0] // 3, *shape[1:])
        out.update({n: shape for n in names})
    return out


def to_diffusers(state: Mapping[str, Tensor], levels: int) -> dict[str, Tensor]:
    """ddpmkit's state dict as UNet2DModel's (contiguous tensors, same dtype)."""
    out: dict[str, Tensor] = {}
    for key, t in state.items():
        names = diffusers_names(key, levels)
        if _is_attention_conv(key):
            t = t[:, :, 0, 0]
        parts = t.chunk(3, dim=0) if len(names) == 3 else (t,)
        out.update({n: p.contiguous() for n, p in zip(names, parts)})
    return out


def rename_legacy(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Attention tensors of files written before diffusers 0.15 (query, key, value, proj_attn)
    under today's names (to_q, to_k, to_v, to_out.0); other names unchanged."""
    out = {}
    for name, t in state.items():
        head, _, param = name.rpartition(".")
        owner, _, layer = head.rpartition(".")
        if ".attentions." in name and layer in _LEGACY:
            name = f"{owner}.{_LEGACY[layer]}.{param}"
        out[name] = t
    return out


def from_diffusers(theirs: Mapping[str, Tensor], own: Mapping[str, Sequence[int]], levels: int) -> dict[str, Tensor]:
    """ddpmkit's state dict (the keys of `own`, name -> shape) from UNet2DModel's tensors `theirs`
    (already checked against `diffusers_shapes`)."""
    out: dict[str, Tensor] = {}
    for key, shape in own.items():
        parts = [theirs[n] for n in diffusers_names(key, levels)]
        t = torch.cat(parts, dim=0) if len(parts) == 3 else parts[0]
        out[key] = t.reshape(tuple(shape)).contiguous()
    return out
