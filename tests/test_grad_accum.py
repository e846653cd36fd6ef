"""Gradient accumulation: k micro-batches of b/k images make the gradient of one batch of b.

The same global batch (the same images, timesteps and noise) in 1, 2 or 4 micro-batches gives the
same gradient and the same step to float rounding; the learning-rate schedule, the EMA and the
step count follow optimizer steps, and the plan line shows the micro-batch beside the batch.
(Under torchrun only the last micro-batch all-reduces: tests/test_distributed.py counts it.)
"""

from __future__ import annotations

import pytest
import torch

from conftest import latest_checkpoint, tiny
from ddpmkit.errors import DdpmkitError
from ddpmkit.train import build_trainer, train
from ddpmkit.train.optim import lr_at


def _trainer(tmp_path, k: int, **train_cfg):
    cfg = {"grad_accum": k, "grad_clip": 0.0, **train_cfg}
    return build_trainer(tiny(tmp_path / f"k{k}", train=cfg), log=lambda m: None, progress=False)


@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_give_the_gradient_of_the_whole_batch(tmp_path, k):
    whole, parts = _trainer(tmp_path, 1), _trainer(tmp_path, k)
    assert parts.stepper.micro_batch == 16 // k
    for t in (whole, parts):
        t.open(resume=False)
    batch = next(iter(whole.batches.epoch(0)))
    before = [p.detach().clone() for p in whole.state.model.parameters()]
    loss_whole = whole.train_step(batch)
    loss_parts = parts.train_step(batch)
    assert torch.allclose(loss_parts, loss_whole, rtol=1e-5, atol=1e-7)
    for a, b in zip(whole.state.model.parameters(), parts.state.model.parameters()):
        assert torch.allclose(b.grad, a.grad, rtol=1e-4, atol=1e-6), (b.grad - a.grad).abs().max()
        assert torch.allclose(b, a, rtol=1e-5, atol=1e-6)
    # the step trained: the comparison is not of two untouched networks
    assert any(not torch.equal(p, q) for p, q in zip(whole.state.model.parameters(), before))


def test_the_schedule_the_ema_and_the_step_count_follow_optimizer_steps(tmp_path):
    s = tiny(tmp_path / "run", train={"grad_accum": 4, "max_steps": 3, "warmup_steps": 10})
    result = train(s, log=lambda m: None, progress=False)
    assert result.step == 3
    assert [r["lr"] for r in result.history] == [lr_at(i, s.train.lr, 10) for i in range(3)]
    from ddpmkit.runfolder import STATE_FILE

    state = torch.load(latest_checkpoint(tmp_path / "run" / "checkpoints") / STATE_FILE, weights_only=True)
    assert state["step"] == 3 and state["ema_updates"] == 3


def test_the_plan_line_shows_the_micro_batch_and_the_effective_batch(tmp_path):
    messages: list[str] = []
    train(tiny(tmp_path / "run", train={"grad_accum": 4, "max_steps": 1}), log=messages.append, progress=False)
    plan = next(m for m in messages if m.startswith("training "))
    assert "batch 16 ·" in plan and "micro-batch 4 x 4 accumulated = effective batch 16" in plan


def test_a_batch_that_does_not_split_into_micro_batches_is_refused(tmp_path):
    with pytest.raises(DdpmkitError, match="not divisible into 3 micro-batches"):
        build_trainer(tiny(tmp_path / "run", train={"grad_accum": 3}), log=lambda m: None, progress=False)
