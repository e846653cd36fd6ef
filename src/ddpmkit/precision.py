"""Which floating-point precision a device computes in, and why.

`auto` takes what the device does natively: bf16 on CUDA cards of compute capability 8.0 and up
(Ampere, Ada, Hopper, Blackwell), fp16 with dynamic loss scaling on older CUDA cards (a T4 or a
V100 has no native bf16: emulated bf16 is several times slower there), fp32 on the CPU (bf16 on
a CPU is slow and lossy) and on MPS. An explicit choice is taken as given; the reason says when
the device does it poorly.

`choose_precision` is a plain function of the device's type and compute capability, so the table
is testable without the cards; `resolve_precision` reads them from a torch.device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

NATIVE_BF16 = (8, 0)  # the first compute capability with bf16 tensor cores (Ampere)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class PrecisionChoice:
    """name: bf16, fp16 or fp32; why: a few words for the plan line."""

    name: str
    why: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling (a GradScaler); bf16 has fp32's range."""
        return self.name == "fp16"

    @property
    def mixed(self) -> bool:
        """Whether autocast runs (anything but fp32)."""
        return self.name != "fp32"

    def describe(self) -> str:
        scaling = " with loss scaling" if self.scaled else ""
        return f"{self.name}{scaling} ({self.why})"


def choose_precision(asked: str, device_type: str, capability: Optional[tuple[int, int]] = None) -> PrecisionChoice:
    """The precision for `asked` (auto, bf16, fp16, fp32) on a device of `device_type` (cuda,
    cpu, mps, ...) whose CUDA compute capability is `capability` (None off CUDA)."""
    if asked not in ("auto", *DTYPES):
        raise ValueError(f"unknown precision {asked!r}; choose auto, bf16, fp16 or fp32")
    sm = f"sm {capability[0]}.{capability[1]}" if capability else ""
    native = device_type == "cuda" and capability is not None and tuple(capability) >= NATIVE_BF16
    if asked == "auto":
        if device_type != "cuda":
            return PrecisionChoice("fp32", f"auto: {device_type}")
        if native:
            return PrecisionChoice("bf16", f"auto: {sm} has native bf16")
        return PrecisionChoice("fp16", f"auto: {sm} has no native bf16")
    if asked == "bf16" and device_type == "cuda" and not native:
        return PrecisionChoice("bf16", f"asked; {sm} has no native bf16: slow, try fp16")
    if asked != "fp32" and device_type == "cpu":
        return PrecisionChoice(asked, "asked; on a CPU slower and less exact than fp32")
    return PrecisionChoice(asked, "asked")


def resolve_precision(asked: str, device: torch.device) -> PrecisionChoice:
    """`choose_precision` for a real device (reads a CUDA card's compute capability)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision(asked, device.type, capability)
