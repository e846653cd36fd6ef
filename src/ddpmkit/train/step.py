"""One optimizer step: the noise draws, micro-batches, mixed precision, loss scaling, clipping, EMA.

`train.batch_size` is the global batch; each of W processes takes batch_size/W images of it. The
timesteps and noise of a global batch come from one generator that every rank advances
identically, so W processes follow the same trajectory as one process with the same global batch.

With `train.grad_accum` k each process runs its share in k micro-batches of batch_size/(W k): each
backward adds 1/k of the step's gradient, and under DDP only the last one all-reduces (`no_sync`
for the others), so k micro-batches give the gradient of the whole batch (to float rounding).

In fp16 (`precision.choose_precision`: CUDA cards without native bf16) the loss is scaled by the
state's GradScaler before backward; a step whose gradients overflowed is skipped by the scaler,
which lowers the scale, and `run` reports it (no host sync: a 0-d tensor read at the next log).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ddpmkit.compiling import Compiled
from ddpmkit.conditioning import draw_condition
from ddpmkit.device import DistInfo, autocast
from ddpmkit.diffusion import sample_timesteps, training_loss
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import TrainConfig
from ddpmkit.train.state import TrainState

Net = Callable[..., Tensor]


class OptimizerStep:
    """The step of one rank. net: state.model as trained (DDP- and/or compile-wrapped);
    ddp: its DDP wrapper under torchrun, else None."""

    def __init__(self, state: TrainState, sched: NoiseSchedule, cfg: TrainConfig, *, net: nn.Module | Compiled,
                 ddp: Optional[nn.parallel.DistributedDataParallel], dist: DistInfo) -> None:
        self.state, self.sched, self.cfg, self.net, self.ddp, self.dist = state, sched, cfg, net, ddp, dist
        self.device = state.device
        self.local_batch = cfg.batch_size // dist.world_size
        self.micro_batch = self.local_batch // cfg.grad_accum
        self.warmed = False  # the compiled network has had its first call (`warm_up`)

    def run(self, x0: Tensor, attributes: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """One optimizer step on this rank's slice of a global batch, at the learning rate already set.
        x0: (b, 3, H, W) in [-1, 1]; attributes: (b, K) in {-1, 0, +1} for a conditional run
        (conditioning.draw_condition). Returns (the loss, a 0-d tensor on the device; for fp16
        whether the step was skipped, a 0-d bool tensor, else None)."""
        c, st = self.cfg, self.state
        t_all = sample_timesteps(c.batch_size, self.sched.T, self.device, st.gen)
        noise_all = torch.randn((c.batch_size, *x0.shape[1:]), generator=st.gen, device=self.device)
        lo = self.dist.rank * self.local_batch
        t, noise = t_all[lo : lo + self.local_batch], noise_all[lo : lo + self.local_batch]
        cond = drop = None
        if attributes is not None:
            cond, drop = draw_condition(attributes, c.p_uncond, c.hide_attributes, st.gen,
                                        global_batch=c.batch_size, offset=lo)
        x0, noise = self._layout(x0), self._layout(noise)
        st.optimizer.zero_grad(set_to_none=True)
        k, m = c.grad_accum, self.micro_batch
        losses = []
        for i in range(k):
            part = slice(i * m, (i + 1) * m)
            with self._no_sync() if i < k - 1 else contextlib.nullcontext():
                losses.append(self._backward(x0[part], t[part], noise[part], _part(cond, part), _part(drop, part)))
        skipped = self._optimizer_step()
        st.ema.update(st.model)
        return (losses[0] if k == 1 else torch.stack(losses).mean()), skipped

    def _layout(self, x: Tensor) -> Tensor:
        if self.device.type == "cuda" and self.cfg.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _backward(self, x0: Tensor, t: Tensor, noise: Tensor, cond: Optional[Tensor], drop: Optional[Tensor]) -> Tensor:
        """Forward and backward of one micro-batch; its gradient, 1/grad_accum of the step's, is
        added to .grad (times the fp16 loss scale). Returns the micro-batch's loss, detached."""
        c, st = self.cfg, self.state
        net: Net = self.net
        if cond is not None:
            net = lambda xt, tt: self.net(xt, tt, cond, drop)  # noqa: E731
        with autocast(self.device, c.precision):
            loss = training_loss(net, self.sched, x0, t, noise, st.settings.diffusion.prediction,
                                 c.loss_weight, c.min_snr_gamma)
        st.scaler.scale(loss / c.grad_accum if c.grad_accum > 1 else loss).backward()
        return loss.detach()

    def _optimizer_step(self) -> Optional[Tensor]:
        """Unscale (fp16), clip, step through the scaler, which skips a step whose gradients hold an
        inf or a nan and lowers the scale. Returns, for fp16, whether it skipped (0-d bool tensor)."""
        c, st = self.cfg, self.state
        scaled = st.scaler.is_enabled()
        st.scaler.unscale_(st.optimizer)  # a no-op unless fp16
        norm = None
        if c.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(st.model.parameters(), c.grad_clip)
        elif scaled:
            norm = torch.nn.utils.get_total_norm([p.grad for p in st.model.parameters() if p.grad is not None])
        st.scaler.step(st.optimizer)
        st.scaler.update()
        # the norm of the unscaled gradients is inf or nan exactly when one of them is: when the scaler skipped
        return ~torch.isfinite(norm) if scaled and norm is not None else None

    def _no_sync(self) -> contextlib.AbstractContextManager:
        """Under DDP, the gradients of this backward stay local (all but the last micro-batch)."""
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def warm_up(self, log: Callable[[str], None]) -> None:
        """Compile the network before the first step: one forward and backward of a micro-batch of
        zeros, with no all-reduce and the RNG states and gradients put back, so the run is the one
        it would be uncompiled. A compile failure falls back to eager (one warning line). `log`:
        the main rank's log (silent elsewhere)."""
        if not isinstance(self.net, Compiled) or self.net.failed or self.warmed:
            return
        self.warmed = True  # once: a run fitted to a time budget compiles before its trial steps
        st, m = self.state, self.micro_batch
        x0 = self._layout(torch.zeros((m, st.settings.model.in_channels, st.settings.data.size, st.settings.data.size),
                                      device=self.device))
        t = torch.zeros(m, dtype=torch.long, device=self.device)
        cond = drop = None
        if st.settings.model.cond_dim:
            cond = torch.zeros(m, st.settings.model.cond_dim, device=self.device)
            drop = torch.zeros(m, dtype=torch.bool, device=self.device)
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        log("compiling the network (torch.compile) before the first step ...")
        with self._no_sync():
            seconds = self.net.first_call(lambda: self._backward(x0, t, torch.zeros_like(x0), cond, drop))
        st.optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.device)
        if self.dist.any_rank(self.net.failed):  # every rank runs alike: eager if any rank fell back
            self.net.fall_back()
        elif seconds is not None:
            log(f"compiled in {seconds:.1f} s")


def _part(x: Optional[Tensor], part: slice) -> Optional[Tensor]:
    return None if x is None else x[part]
