"""torch.compile for training and sampling: when it is on, where its cache lives, and the fall-back.

`train.compile` and `sample.compile` are auto, true or false. auto compiles on CUDA, where the
compiled U-Net is faster and its compile time (a minute or two the first time, seconds once
Inductor's cache holds the kernels) is small beside a run; it stays off on the CPU, where it was
measured not to repay itself (celeba32: 76 s of compiling for 1.00x the eager rate,
benchmarks/results_compile.md), and on MPS.

Inductor's cache goes to the user's cache folder ($XDG_CACHE_HOME/ddpmkit/inductor, default
~/.cache/ddpmkit/inductor) unless $TORCHINDUCTOR_CACHE_DIR says otherwise, so a second run of the
same network on the same machine starts in seconds.

A compile that fails must never cost a run: `Compiled` runs the compiled network, and on its
first failure runs the eager one instead, says so in one warning line and stays eager. An error
that the eager network raises too is the caller's error and is raised as it would be uncompiled.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from ddpmkit.io_utils import user_cache_dir

INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
BACKEND: Any = "inductor"  # torch.compile's backend for every Compiled (the tests swap in one that fails)
COLD_COMPILE = "1-2 min the first time, seconds from the cache"  # what the plan line promises on CUDA


@dataclass(frozen=True)
class CompileDecision:
    on: bool
    why: str

    def describe(self) -> str:
        if not self.on:
            return f"compile off ({self.why})"
        return f"compile on ({self.why}; the network compiles before the first step: {COLD_COMPILE} in {inductor_cache_dir()})"


def decide_compile(asked: Union[bool, str], device_type: str) -> CompileDecision:
    """Whether to compile for `asked` (True, False or "auto") on a device of `device_type`."""
    if asked is True:
        return CompileDecision(True, "asked")
    if asked is False:
        return CompileDecision(False, "asked")
    if asked != "auto":
        raise ValueError(f"compile must be auto, true or false, not {asked!r}")
    if device_type == "cuda":
        return CompileDecision(True, "auto: cuda")
    if device_type == "cpu":
        return CompileDecision(False, "auto: does not repay on a cpu")
    return CompileDecision(False, f"auto: off on {device_type}")


def inductor_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels: $TORCHINDUCTOR_CACHE_DIR, else the user cache."""
    return Path(os.environ.get(INDUCTOR_CACHE_ENV) or user_cache_dir() / "inductor")


def use_cache_dir() -> Path:
    """Point Inductor at `inductor_cache_dir()` (a user's own $TORCHINDUCTOR_CACHE_DIR is kept)."""
    path = inductor_cache_dir()
    os.environ.setdefault(INDUCTOR_CACHE_ENV, str(path))
    return path


class Compiled:
    """`torch.compile(eager)` with `eager` as the fall-back; called like the network.

    mode: torch.compile's mode ("default", "reduce-overhead": CUDA graphs, "max-autotune").
    `log` gets the one warning line.
    """

    def __init__(self, eager: Callable[..., Any], *, what: str, log: Callable[[str], None], mode: str = "default") -> None:
        use_cache_dir()
        self.eager, self.what, self.log = eager, what, log
        self.fast = torch.compile(eager, mode=None if mode == "default" else mode, backend=BACKEND)
        self.failed = False  # after a failure: eager from then on
        self._said = False  # the warning is said once

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        out: list[Any] = []
        self.first_call(lambda: out.append(self.fast(*args, **kwargs)), lambda: out.append(self.eager(*args, **kwargs)))
        return out[-1]

    def first_call(self, work: Callable[[], None], eager_work: Optional[Callable[[], None]] = None) -> Optional[float]:
        """Run `work` (which calls this network: a forward, or a forward and backward); if it fails,
        run `eager_work` (default `work` again, now eager) and, when that succeeds, fall back for
        good with one warning. Returns the seconds `work` took, None after a fall-back."""
        t0 = time.perf_counter()
        try:
            work()
        except Exception as e:  # any failure of the compiled path; the eager run below tells whose
            was, self.failed = self.failed, True
            try:
                (eager_work or work)()
            except Exception:
                self.failed = was  # the eager network fails too: the caller's error, not the compiler's
                raise
            self.fall_back(e)
            return None
        return time.perf_counter() - t0

    def fall_back(self, error: Optional[BaseException] = None) -> None:
        """Run eager from now on; say why in one line (not again when already said)."""
        self.failed = True
        if not self._said:
            self._said = True
            reason = f" ({one_line(error)})" if error is not None else ""
            self.log(f"warning: torch.compile of {self.what} failed{reason}; running it eager")


def one_line(error: BaseException, limit: int = 200) -> str:
    """`Type: first line` of what went wrong, cut to `limit` characters: the innermost cause, since
    the compiler wraps it ("backend='inductor' raised:") in reports that run to pages."""
    seen = {id(error)}
    while True:
        inner = getattr(error, "inner_exception", None) or error.__cause__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        error = inner
    text = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), "")
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
