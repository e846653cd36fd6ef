"""Training: the loss falls, resuming is exact, runs are never clobbered, checkpoints are checked."""

from __future__ import annotations

import json

import pytest
import torch

from ddpmkit.errors import DdpmkitError
from ddpmkit.checkpoint import load_model
from ddpmkit.generate import eps_fn, generate
from ddpmkit.samplers import make_sampler
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.runfolder import STATE_FILE
from ddpmkit.train import train

from conftest import latest_checkpoint, tiny



def _quiet(settings, **kw):
    return train(settings, log=lambda m: None, progress=False, **kw)


def test_a_tiny_run_lowers_the_loss(tmp_path):
    s = tiny(tmp_path / "run", train={"max_steps": 60, "log_every": 10})
    result = _quiet(s)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 6
    assert losses[-1] < 0.6 * losses[0], losses
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40, 50, 60]
    assert {"loss", "lr", "img_per_s", "epoch"} <= set(log[0])


def _weights(run_dir):
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return load_file(ckpt / "model.safetensors"), load_file(ckpt / "ema.safetensors"), ckpt


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    # 64 images / batch 16 = 4 batches per epoch: 10 steps cross two epoch boundaries
    full = tiny(tmp_path / "full", train={"max_steps": 10})
    _quiet(full)

    part = tiny(tmp_path / "part", train={"max_steps": 10})
    first = _quiet(part, on_step=[lambda tr: tr.request_stop() if tr.step == 5 else None])
    assert first.interrupted and first.step == 5
    second = _quiet(part, resume=True)
    assert second.step == 10 and not second.interrupted

    m_full, e_full, _ = _weights(tmp_path / "full")
    m_part, e_part, ckpt = _weights(tmp_path / "part")
    assert m_full.keys() == m_part.keys()
    for k in m_full:
        assert torch.equal(m_full[k], m_part[k]), k
        assert torch.equal(e_full[k], e_part[k]), k
    state = torch.load(ckpt / STATE_FILE, weights_only=True)
    assert state["step"] == 10 and state["epoch"] == 2


def test_a_run_directory_is_never_silently_overwritten(tmp_path):
    s = tiny(tmp_path / "run", train={"max_steps": 2})
    _quiet(s)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(DdpmkitError, match="already holds"):
        _quiet(s)
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert before == after


def test_resume_refuses_another_architecture(tmp_path):
    _quiet(tiny(tmp_path / "run", train={"max_steps": 2}))
    other = tiny(tmp_path / "run", model={"ch": 24}, train={"max_steps": 4})
    with pytest.raises(DdpmkitError, match="model.ch"):
        _quiet(other, resume=True)


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(DdpmkitError, match="nothing to resume"):
        _quiet(tiny(tmp_path / "empty"), resume=True)


def test_training_length_is_required(tmp_path):
    s = tiny(tmp_path / "run")
    s.train.max_steps = None
    with pytest.raises(DdpmkitError, match="--epochs"):
        _quiet(s)
    assert not (tmp_path / "run").exists()


def test_epochs_bound_the_run(tmp_path):
    s = tiny(tmp_path / "run", train={"epochs": 2})
    s.train.max_steps = None
    assert _quiet(s).step == 8  # 64 images, batch 16


def test_checkpoints_are_complete_and_pruned(tmp_path):
    s = tiny(tmp_path / "run", train={"max_steps": 8, "ckpt_every": 2, "keep_checkpoints": 2})
    _quiet(s)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_00000006", "step_00000008"]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_seeded_sampling_is_reproducible(tmp_path):
    s = tiny(tmp_path / "run", train={"max_steps": 3})
    _quiet(s)
    model, settings, step = load_model(tmp_path / "run", torch.device("cpu"))
    assert step == 3 and settings.model == s.model
    sched = NoiseSchedule.from_config(settings.diffusion)
    sampler = make_sampler(sched, settings.sample)
    eps, cpu = eps_fn(model, torch.device("cpu"), prediction="eps", sched=sched), torch.device("cpu")
    draw = lambda seed: torch.cat(list(generate(eps, sampler, 6, (3, 16, 16), seed=seed, batch_size=4, device=cpu)))  # noqa: E731
    a, b, c = draw(0), draw(0), draw(1)
    assert a.shape == (6, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_weights_from_another_architecture_are_refused(tmp_path):
    _quiet(tiny(tmp_path / "a", train={"max_steps": 1}))
    _quiet(tiny(tmp_path / "b", model={"ch": 24}, train={"max_steps": 1}))
    from ddpmkit.nn import UNet
    from ddpmkit.checkpoint import load_weights

    model_b = UNet.from_config(tiny(tmp_path / "b", model={"ch": 24}).model)
    ckpt_a = latest_checkpoint(tmp_path / "a" / "checkpoints")
    with pytest.raises(DdpmkitError, match="different architecture") as e:
        load_weights(model_b, ckpt_a / "model.safetensors")
    assert str(ckpt_a) in str(e.value) and "\n" not in str(e.value)


def test_state_file_with_pickled_code_is_refused(tmp_path):
    _quiet(tiny(tmp_path / "run", train={"max_steps": 1}))
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"step": Evil()}, ckpt / STATE_FILE)
    from ddpmkit.checkpoint import load_state

    with pytest.raises(DdpmkitError, match="cannot read training state"):
        load_state(ckpt)


@pytest.mark.fid_weights
def test_fid_and_kid_during_training_are_logged_beside_the_loss(tmp_path):
    s = tiny(
        tmp_path / "run",
        train={"max_steps": 2},
        data={"cache_dir": str(tmp_path / "cache")},
        fid={"every": 2, "every_n": 6, "every_steps": 2, "ref_n": 8, "batch_size": 8},
    )
    _quiet(s)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    fids = [r for r in records if "fid" in r]
    assert len(fids) == 1 and fids[0]["step"] == 2 and fids[0]["fid_n"] == 6
    assert fids[0]["fid"] > 0
    # KID x10³ beside it, on subsets of min(1000, 6 samples, 8 references) = 6
    kid = fids[0]["kid"]
    assert set(kid) == {"mean_x1e3", "std_x1e3", "subsets", "subset_size"} and kid["subset_size"] == 6
    assert kid["mean_x1e3"] > 0 and kid["subsets"] == 100
    # the reference statistics of the generated faces, and their features, are cached for the next evaluation
    assert len(list((tmp_path / "cache" / "fid").glob("synthetic*.npz"))) == 1
    assert len(list((tmp_path / "cache" / "fid").glob("features-synthetic*.npy"))) == 1


def test_learning_rate_warms_up_then_stays_or_decays():
    from ddpmkit.train.optim import lr_at

    assert lr_at(0, 1.0, 10) == pytest.approx(0.1) and lr_at(9, 1.0, 10) == 1.0
    assert lr_at(500, 1.0, 10, 110) == 1.0  # constant: DDPM's schedule
    assert lr_at(10, 1.0, 10, 110, "cosine") == 1.0
    assert lr_at(60, 1.0, 10, 110, "cosine") == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, 110, "cosine") == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "sections, needle",
    [
        ({"model": {"in_channels": 1}}, "model.in_channels"),
        ({"train": {"batch_size": 80}}, "fewer than one batch of 80"),
        ({"model": {"attn_resolutions": [4]}}, "model.attn_resolutions"),
    ],
)
def test_a_failed_start_writes_nothing(tmp_path, sections, needle):
    s = tiny(tmp_path / "run", **sections)
    with pytest.raises(DdpmkitError, match=needle) as e:
        _quiet(s)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_without_a_checkpoint(tmp_path):
    good = tiny(tmp_path / "run", train={"max_steps": 2})
    _quiet(good)
    # an infinite learning rate wrecks the weights in step 3; step 4's loss is NaN
    bad = tiny(tmp_path / "run", train={"max_steps": 8, "lr": float("inf"), "ckpt_every": 4})
    with pytest.raises(DdpmkitError, match="loss is nan at step 4") as e:
        _quiet(bad, resume=True)
    assert "step_00000002" in str(e.value) and "\n" not in str(e.value)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_00000002"
    assert not (tmp_path / "run" / "checkpoints" / "step_00000004").exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    # the loss of step 1 is still finite; the weights after it are not, and step 1 is a checkpoint step
    s = tiny(tmp_path / "run", train={"max_steps": 4, "lr": float("inf"), "ckpt_every": 1, "log_every": 10})
    with pytest.raises(DdpmkitError, match="weights are not finite after step 1"):
        _quiet(s)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


def test_every_trainer_attribute_exists_before_the_run(tmp_path):
    from ddpmkit.train import build_trainer

    t = build_trainer(tiny(tmp_path / "run"), log=lambda m: None, progress=False)
    before = set(vars(t))
    t.open(resume=False)
    t.run()
    assert set(vars(t)) == before


def test_the_plan_line_and_run_json_hold_the_planned_length(tmp_path):
    messages: list[str] = []
    train(tiny(tmp_path / "run", train={"max_steps": 2}), log=messages.append, progress=False)
    plan = next(m for m in messages if m.startswith("training "))
    assert plan == ("training 0.18M parameters, preset demo · data: generated faces, 16x16 px, 64 images · "
                    "batch 16 · 2 steps (0.5 epochs) · device cpu · precision fp32 (auto: cpu) · "
                    "compile off (auto: does not repay on a cpu)")
    info = tmp_path / "run" / "run.json"
    assert json.loads(info.read_text())["total_steps"] == 2
    messages.clear()
    train(tiny(tmp_path / "run", train={"max_steps": 4}), resume=True, log=messages.append, progress=False)
    assert json.loads(info.read_text())["total_steps"] == 4  # a resume that changes the length says so
    assert any("steps 2 → 4" in m for m in messages)
