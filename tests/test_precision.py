"""The precision each device computes in, and fp16 training with dynamic loss scaling.

The choice is a plain function of the device's type and compute capability, tested as a table of
the cards people own. fp16 + GradScaler runs on the CPU too (as CUDA's older cards run it): an
overflowing gradient, injected through a hook, makes the scaler skip that step and halve its scale;
the skip is counted in log.jsonl, the scale travels in state.pt, and a run resumed after the skip
ends bit for bit where the uninterrupted one does.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import latest_checkpoint, tiny
from ddpmkit.runfolder import STATE_FILE
from ddpmkit.device import autocast
from ddpmkit.precision import choose_precision
from ddpmkit.train import build_trainer

# (asked, device, compute capability) -> (precision, loss scaling)
TABLE = [
    ("auto", "cuda", (9, 0), "bf16", False),  # H100 / H200
    ("auto", "cuda", (8, 9), "bf16", False),  # RTX 4090, L4
    ("auto", "cuda", (8, 0), "bf16", False),  # A100
    ("auto", "cuda", (8, 6), "bf16", False),  # RTX 3090, A10
    ("auto", "cuda", (7, 5), "fp16", True),  # T4, RTX 2080: no native bf16
    ("auto", "cuda", (7, 0), "fp16", True),  # V100
    ("auto", "cuda", (6, 1), "fp16", True),  # GTX 1080, P40
    ("auto", "cpu", None, "fp32", False),
    ("auto", "mps", None, "fp32", False),
    ("bf16", "cuda", (7, 5), "bf16", False),  # asked: taken, with a word that it is slow
    ("fp16", "cuda", (9, 0), "fp16", True),
    ("fp32", "cuda", (9, 0), "fp32", False),
    ("bf16", "cpu", None, "bf16", False),
    ("fp16", "cpu", None, "fp16", True),
]


@pytest.mark.parametrize("asked, device, capability, name, scaled", TABLE)
def test_the_precision_of_each_card(asked, device, capability, name, scaled):
    choice = choose_precision(asked, device, capability)
    assert (choice.name, choice.scaled) == (name, scaled)
    assert choice.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
    assert ("auto" in choice.why) == (asked == "auto")
    if capability:
        assert f"sm {capability[0]}.{capability[1]}" in choice.why or asked != "auto"
    assert ("no native bf16: slow" in choice.why) == (asked == "bf16" and device == "cuda" and capability < (8, 0))
    assert ("slower" in choice.why) == (asked in ("bf16", "fp16") and device == "cpu")
    assert ("loss scaling" in choice.describe()) == scaled


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision"):
        choose_precision("fp8", "cuda", (9, 0))


@pytest.mark.parametrize("precision, dtype", [("auto", torch.float32), ("fp32", torch.float32),
                                              ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_on_the_cpu_follows_the_choice(precision, dtype):
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), precision):
        assert (a @ b).dtype == dtype


def _snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _fp16_trainer(run_dir, max_steps: int, overflow_at: int | None = None):
    """A tiny fp16 run; the first parameter's gradient is made inf during step `overflow_at` (0-based)."""
    t = build_trainer(tiny(run_dir, train={"precision": "fp16", "max_steps": max_steps}), log=lambda m: None,
                      progress=False)
    if overflow_at is not None:
        p = next(t.state.model.parameters())
        p.register_hook(lambda g: torch.full_like(g, float("inf")) if t.state.step == overflow_at else g)
    return t


def test_an_overflowing_fp16_step_is_skipped_counted_and_lowers_the_scale(tmp_path):
    t = _fp16_trainer(tmp_path / "run", max_steps=3, overflow_at=1)
    assert t.state.scaler.is_enabled()
    weights = []
    t.on_step.append(lambda tr: weights.append(_snapshot(tr.state.model)))
    t.open(resume=False)
    result = t.run()
    assert result.step == 3
    init = t.state.scaler.get_scale()
    assert init == 2.0**15  # 2**16 halved once by the one overflow (growth needs 2,000 good steps)
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1])), "the overflowing step changed the weights"
    assert not all(torch.equal(a, b) for a, b in zip(weights[1], weights[2])), "the step after it did not train"
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if "loss" in r] == [0, 1, 0]
    state = torch.load(latest_checkpoint(tmp_path / "run" / "checkpoints") / STATE_FILE, weights_only=True)
    assert state["grad_scaler"]["scale"] == 2.0**15


def test_a_resume_after_a_skipped_fp16_step_is_bit_exact(tmp_path):
    whole = _fp16_trainer(tmp_path / "whole", max_steps=4, overflow_at=1)
    whole.open(resume=False)
    whole.run()
    first = _fp16_trainer(tmp_path / "parts", max_steps=2, overflow_at=1)
    first.open(resume=False)
    first.run()
    rest = _fp16_trainer(tmp_path / "parts", max_steps=4)
    rest.open(resume=True)
    assert rest.state.scaler.get_scale() == 2.0**15
    rest.run()
    assert rest.state.scaler.get_scale() == whole.state.scaler.get_scale()
    for a, b in zip(whole.state.model.parameters(), rest.state.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(whole.state.ema.model.parameters(), rest.state.ema.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_the_card_at_hand_gets_the_tables_precision_and_trains_in_it(tmp_path):
    """On CUDA the card's own compute capability decides (bf16 from 8.0, else fp16 with a scaler);
    on the CPU in CI: fp32."""
    from ddpmkit.precision import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choice = resolve_precision("auto", device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    assert choice == choose_precision("auto", device.type, capability)
    t = build_trainer(tiny(tmp_path / "run", train={"max_steps": 2, "device": str(device), "compile": False}),
                      log=lambda m: None, progress=False)
    assert t.state.scaler.is_enabled() == choice.scaled
    t.open(resume=False)
    result = t.run()
    assert result.step == 2 and result.last_loss == result.last_loss  # finite: not nan
