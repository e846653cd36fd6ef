"""The network as sampling runs it: cast once to the sampling dtype, channels_last on CUDA, compiled.

Training runs under autocast, which re-casts every weight at every call; sampling changes no
weight, so the sampling network holds them in its dtype once (bf16 on cards with native bf16,
fp16 on older CUDA cards, fp32 on the CPU: `precision.choose_precision`), takes x_t in float32,
and returns ε̂ in float32, with autocast switched off inside (an outer autocast, e.g. `eps_fn`'s,
would put the norms back in float32). With `sample.compile` (auto: on CUDA) it is compiled, with
the eager network as the fall-back (`compiling.Compiled`); `sample.compile_mode reduce-overhead`
adds CUDA graphs of the fixed batch.

`sample.batch_size` None picks the batch from free memory on CUDA (`auto_batch_size`, a plain
function of the numbers) and `DEFAULT_SAMPLE_BATCH` elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ddpmkit.compiling import Compiled, decide_compile
from ddpmkit.precision import resolve_precision
from ddpmkit.settings import DEFAULT_SAMPLE_BATCH, SampleConfig

AUTOCAST_DEVICES = ("cuda", "cpu", "mps")  # where torch.autocast exists to be switched off
PROBE_BATCH = 4  # images of the forward that measures a CUDA network's memory per image
MAX_AUTO_BATCH = 1024  # beyond this a GPU is saturated: larger batches only delay the first images
MEMORY_SHARE = 0.8  # of the free memory, for the batch's activations: the rest is headroom


class SamplingNetwork(nn.Module):
    """`model` in the sampling dtype and layout, optionally compiled; forward(x, t, cond, drop)
    as the U-Net's: x (B, C, H, W) float32 in about [-1, 1] -> ε̂ (B, C, H, W) float32.

    copy=False casts `model` itself (a network loaded to sample); copy=True works on a copy and
    `refresh()` copies `model`'s current weights into it (the EMA network during training)."""

    def __init__(self, model: nn.Module, device: torch.device, cfg: SampleConfig, *,
                 log: Callable[[str], None] = print, copy_weights: bool = False) -> None:
        super().__init__()
        self.device = device
        self.precision = resolve_precision(cfg.precision, device)
        self.compiling = decide_compile(cfg.compile, device.type)
        self.channels_last = device.type == "cuda"
        self._source = [model]  # not a submodule: its weights are the caller's
        net = copy.deepcopy(model) if copy_weights else model
        net = net.eval().requires_grad_(False).to(self.precision.dtype)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.compiled: Optional[Compiled] = (
            Compiled(net, what="the sampling network", log=log, mode=cfg.compile_mode) if self.compiling.on else None
        )
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    def describe(self) -> str:
        """e.g. "bf16 (auto: sm 9.0 has native bf16), compiled"."""
        return f"{self.precision.name} ({self.precision.why}), {'compiled' if self.compiling.on else 'eager'}"

    @torch.no_grad()
    def refresh(self) -> "SamplingNetwork":
        """Copy the source network's current weights and buffers in (cast to the sampling dtype)."""
        (source,) = self._source
        if source is not self.net:
            for mine, theirs in zip(self.net.state_dict().values(), source.state_dict().values()):
                mine.copy_(theirs)
        return self

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None, drop: Optional[Tensor] = None) -> Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(self.dtype, memory_format=fmt)
        run = self.compiled or self.net
        with self._no_autocast():
            out = run(x, t) if cond is None else run(x, t, cond.to(self.dtype), drop)
        return out.float()

    def _no_autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type in AUTOCAST_DEVICES:
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def batch_size(self, asked: Optional[int], n: int, shape: tuple[int, int, int], calls: int = 1) -> int:
        """The batch to sample `n` images of `shape` in: `asked`, else (CUDA) as many as free memory
        holds, else DEFAULT_SAMPLE_BATCH. calls: network images per image (2 with guidance)."""
        if asked is not None:
            return asked
        if self.device.type != "cuda":
            return min(n, DEFAULT_SAMPLE_BATCH)
        free, per_image = cuda_free_bytes(self.device), self.bytes_per_image(shape) * calls
        return auto_batch_size(free, per_image, n)

    @torch.no_grad()
    def bytes_per_image(self, shape: tuple[int, int, int]) -> int:
        """Peak CUDA memory of one forward per image (eager, at PROBE_BATCH images)."""
        torch.cuda.synchronize(self.device)
        base = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        x = torch.zeros((PROBE_BATCH, *shape), device=self.device)
        t = torch.zeros(PROBE_BATCH, dtype=torch.long, device=self.device)
        with self._no_autocast():
            self.net(x.to(self.dtype, memory_format=torch.channels_last), t)
        peak = torch.cuda.max_memory_allocated(self.device)
        return max(1, (peak - base) // PROBE_BATCH)


def sampling_batch(net: nn.Module, asked: Optional[int], n: int, shape: tuple[int, int, int]) -> int:
    """The batch for n images from `net`: a SamplingNetwork's choice, else `asked` or the default."""
    if isinstance(net, SamplingNetwork):
        return net.batch_size(asked, n, shape)
    return min(n, asked or DEFAULT_SAMPLE_BATCH)


def cuda_free_bytes(device: torch.device) -> int:
    """Free device memory plus what torch's caching allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def auto_batch_size(free_bytes: int, bytes_per_image: int, n: int, share: float = MEMORY_SHARE,
                    cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch whose activations fit in `share` of `free_bytes` (at most `cap` and n),
    evened out so that n images take the fewest batches of (nearly) one size: a compiled network
    meets one shape, not a small last batch. At least 1."""
    fits = max(1, min(cap, n, int(free_bytes * share) // max(1, bytes_per_image)))
    batches = -(-n // fits)
    return -(-n // batches)
