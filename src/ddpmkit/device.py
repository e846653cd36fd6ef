"""Device choice, mixed precision and the process group of a multi-process (torchrun) run."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.precision import resolve_precision


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DdpmkitError(f"unknown device '{name}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DdpmkitError(f"device '{name}' asked for, but this machine has no CUDA GPU (use --device cpu)")
    return dev


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to the dtype `precision` (auto, bf16, fp16, fp32) resolves to on `device`
    (`precision.resolve_precision`: auto is bf16 or fp16 on CUDA by the card, fp32 elsewhere);
    no autocast for fp32."""
    choice = resolve_precision(precision, device)
    if not choice.mixed:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=choice.dtype)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job, and the collectives the trainer needs.

    With one process (world_size 1) every collective is a no-op that returns its input.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ joining and leaving

    def device(self, name: str) -> torch.device:
        """The device `name` resolves to; under DDP on CUDA, this process's GPU (made current)."""
        dev = resolve_device(name)
        if dev.type == "cuda" and self.enabled:
            dev = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(dev)
        return dev

    def joined(self) -> bool:
        """Whether this process is in a process group already."""
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def join(self, device: torch.device) -> None:
        """Join the job's process group (NCCL for CUDA, else gloo) unless one process or joined."""
        if self.enabled and not self.joined():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def leave(self) -> None:
        """Destroy the process group, if there is one."""
        if self.joined():
            torch.distributed.destroy_process_group()

    def shard(self, n: int) -> tuple[int, int]:
        """This process's contiguous share of n items (sampling, FID): (first index, count); the
        first n % world_size ranks take one more."""
        base, extra = divmod(n, self.world_size)
        first = self.rank * base + min(self.rank, extra)
        return first, base + (self.rank < extra)

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        if self.enabled and self.joined():
            torch.distributed.barrier()

    def all_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of `x` over the ranks (a new tensor; `x` is left alone)."""
        if not self.enabled:
            return x
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x / self.world_size

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every rank (each rank passes a list of the same length; whole
        numbers up to 2**53 come back exact)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        torch.distributed.broadcast(t, src=0)
        return t.tolist()

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `x` over the ranks (a new tensor on x's device)."""
        if not self.enabled:
            return x
        y = x.to(self._collective_device(), copy=True)
        torch.distributed.all_reduce(y)
        return y.to(x.device)

    def gather_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's rows of `x` (this rank's `shard(n)` of n rows, (count, ...)) in rank order:
        (n, ...), on every rank."""
        if not self.enabled:
            return x
        counts = [DistInfo(r, self.world_size).shard(n)[1] for r in range(self.world_size)]
        dev = self._collective_device()
        padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=dev)
        padded[: len(x)] = x
        parts = [torch.empty_like(padded) for _ in counts]
        torch.distributed.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(x.device)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on at least one."""
        return self.any_rank_later(flag)()

    def any_rank_later(self, flag: bool) -> Callable[[], bool]:
        """Start `any_rank(flag)` without waiting for it; the returned function waits and answers.

        On CUDA the answer comes back through pinned memory behind an event, so asking one training
        step later waits for that step only, not for the work queued since: the GPU never idles.
        """
        if not self.enabled:
            return lambda: flag
        dev = self._collective_device()
        votes = torch.full((1,), 1.0 if flag else 0.0, device=dev)  # a kernel, no host sync
        torch.distributed.all_reduce(votes, op=torch.distributed.ReduceOp.MAX)
        if dev.type != "cuda":
            return lambda: bool(votes.item() > 0)
        host = torch.empty(1, pin_memory=True)
        host.copy_(votes, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def answer() -> bool:
            done.synchronize()
            return bool(host.item() > 0)

        return answer

    def _collective_device(self) -> torch.device:
        """NCCL reduces CUDA tensors only; gloo, CPU tensors."""
        if torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def dist_from_env() -> DistInfo:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: one process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
