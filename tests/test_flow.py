"""The user's flow: prepare, train, sample, noise-demo as one story on CelebA images (the generated
release, and the real images of ../shared, at 16 px), and the pieces that make it one: the preset rule, the plan line and ETA,
progress when piped, validated and streaming sampling, the report at every checkpoint,
TensorBoard as an extra, and checkpoints trimmed to their EMA."""

from __future__ import annotations

import io
import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from ddpmkit.cli.app import app
from ddpmkit.settings import PRESET_MACHINE, DataConfig, available_presets, build_settings
from ddpmkit.train import train
from ddpmkit.train.plan import choose_preset, fit_to_size, preset_for
from ddpmkit.train.progress import Plan, StepClock, TrainProgress
from ddpmkit.train.rundir import TENSORBOARD_MISSING

from celeba_files import CelebaFiles
from conftest import tiny

runner = CliRunner()
N_FACES = 48
# a model small enough for seconds on a CPU, given with --set on top of whatever preset train picks
TINY_SETS = ["model.ch=16", "model.ch_mult=[1,2]", "model.num_res_blocks=1", "model.num_groups=8",
             "model.attn_resolutions=[8]", "diffusion.timesteps=100", "train.batch_size=16", "train.log_every=2",
             "train.num_samples=4", "train.sample_every=3", "sample.steps=10", "sample.batch_size=4"]


def invoke(*args: object, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, env=env)


def sets(*assignments: str) -> list[str]:
    return [x for a in assignments for x in ("--set", a)]


def celeba_sample(src: CelebaFiles, root: Path, n: int = N_FACES) -> Path:
    """data/celeba in the official layout: symlinks to the first n images of src, all in the train split."""
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    names = src.names[:n]
    for name in names:
        (images / name).symlink_to(src.images / name)
    (root / "list_eval_partition.txt").write_text("".join(f"{name} 0\n" for name in names))
    return root


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A 2-step run of the tiny settings (its planned length: 2 steps)."""
    train(tiny(tmp_path / "runs" / "tiny", train={"max_steps": 2}), log=lambda m: None, progress=False)
    return tmp_path / "runs" / "tiny"


# ------------------------------------------------------------------ the story


def test_prepare_train_sample_noise_demo_as_one_story(tmp_path, monkeypatch, celeba):
    celeba_sample(celeba, tmp_path / "data" / "celeba")
    image = tmp_path / "image.jpg"
    image.write_bytes(next((tmp_path / "data" / "celeba" / "img_align_celeba").iterdir()).read_bytes())
    monkeypatch.chdir(tmp_path)

    r = invoke("prepare", "--size", "16", "--workers", "1")
    assert r.exit_code == 0, r.output

    r = invoke("train", "--max-steps", "4", *sets(*TINY_SETS))  # no --preset, no --config
    assert r.exit_code == 0, r.output
    plan = next(line for line in r.output.splitlines() if line.startswith("training "))
    for needle in ("preset celeba32", "CelebA prepared at 16 px", "data: celeba", "split train", "16x16 px",
                   f"{N_FACES} images", "batch 16", "4 steps", "device cpu"):
        assert needle in plan, (needle, plan)
    # piped (not a terminal): a plain line per log, with step/total, loss, lr, img/s and the ETA
    lines = [line for line in r.output.splitlines() if line.startswith("train ")]
    assert [line.split(" · ")[0] for line in lines] == ["train 2/4 steps (50%)", "train 4/4 steps (100%)"]
    assert all(" · loss " in line and " · lr " in line and "img/s" in line and "ETA" in line for line in lines)
    assert "final preview grid: sampling" in r.output  # says what it does after the bar ends
    run = tmp_path / "runs" / "celeba16"
    assert json.loads((run / "run.json").read_text())["total_steps"] == 4
    assert (run / "report.html").is_file()  # written at the checkpoint, on by default

    r = invoke("sample", "--n", "4", "--gif")  # no RUN: the newest run
    assert r.exit_code == 0, r.output
    assert "sampling from the newest run: runs/celeba16 (step 4)" in r.output
    assert "warning" not in r.output  # the run reached its planned steps
    (out,) = (tmp_path / "outputs" / "samples").iterdir()
    assert out.name.startswith("celeba16-step4-")
    assert len(list((out / "images").iterdir())) == 4
    assert Image.open(out / "grid.png").size[0] >= 2 * 16 and Image.open(out / "denoise.gif").n_frames > 2
    assert "sample 10/10 steps (100%) · images 4/4" in r.output  # plain progress: one batch of 10 steps

    before = set((tmp_path / "outputs").rglob("*"))
    r = invoke("noise-demo", image)
    assert r.exit_code == 0, r.output
    made = set((tmp_path / "outputs").rglob("*")) - before
    assert {p.suffix for p in made} >= {".png", ".gif"}


# ------------------------------------------------------------------ the preset rule


def test_every_preset_names_its_machine_and_the_rule_picks_by_size_and_machine():
    assert set(available_presets()) == set(PRESET_MACHINE)
    assert preset_for(32, "cpu")[0] == "celeba32"
    assert preset_for(64, "gpu")[0] == "celeba64" and preset_for(128, "gpu")[0] == "celeba128"
    name, why = preset_for(64, "cpu")  # no CPU model for 64 px: the paper's, and it says so
    assert name == "celeba64" and "no CPU model for 64 px" in why
    name, why = preset_for(16, "cpu")
    assert name == "celeba32" and "resized" in why
    assert preset_for(32, "cpu", "synthetic")[0] == "demo"


def test_a_preset_at_another_size_keeps_its_attention():
    patch, note = fit_to_size("celeba64", 32)
    assert patch == {"data": {"size": 32}, "model": {"attn_resolutions": [8]}} and "16 px moves to 8 px" in note
    s = build_settings("celeba64", preset_patch=patch)
    s.check_model()  # attention still matches a level
    assert fit_to_size("celeba32", 32) == ({"data": {"size": 32}}, None)


def test_without_celeba_the_demo_and_with_unprepared_celeba_the_size_for_the_machine(tmp_path, generated_celeba):
    nothing = DataConfig(root=tmp_path / "absent", cache_dir=tmp_path / "cache")
    choice = choose_preset(nothing, "cpu")
    assert choice.preset == "demo" and "no CelebA" in choice.why
    raw = DataConfig(root=celeba_sample(generated_celeba, tmp_path / "celeba", 4), cache_dir=tmp_path / "cache")
    cpu, gpu = choose_preset(raw, "cpu"), choose_preset(raw, "gpu")
    assert (cpu.preset, cpu.patch["data"]["size"]) == ("celeba32", 32) and "not prepared yet" in cpu.why
    assert (gpu.preset, gpu.patch["data"]["size"]) == ("celeba64", 64)
    assert choose_preset(raw, "cpu", dataset="synthetic").preset == "demo"


# ------------------------------------------------------------------ plan, ETA and progress


def _plan(**kw) -> Plan:
    base = dict(preset="celeba64", why="", parameters=78_700_803, data="celeba", batch_size=128, start=0,
                total=500_000, epochs=393.0, device="cpu", cpu_alternative="celeba32")
    return Plan(**{**base, **kw})


def test_a_model_too_slow_for_a_cpu_gets_a_warning_with_the_smaller_preset():
    eta, warning = _plan().eta_lines(20.0, 10, (1, 10))
    assert eta.startswith("ETA 115d") and "remaining 499,990 steps" in eta
    assert warning.startswith("warning: celeba64 (78.7M parameters) needs about 115d") and "--preset celeba32" in warning
    # a CPU preset that is still too long: fewer steps; on a GPU, no warning
    assert "--max-steps 2,160" in _plan(preset="celeba32", cpu_alternative=None).eta_lines(20.0, 0, (1, 10))[1]
    assert len(_plan(device="cuda:0").eta_lines(20.0, 0, (1, 10))) == 1


def test_the_eta_is_measured_after_the_first_step_without_previews(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("ddpmkit.train.progress.time.perf_counter", lambda: now[0])
    clock = StepClock()
    assert clock.tick(1) is None  # step 1 (warm-up) only starts the clock
    for step in (2, 3, 4):
        now[0] += 1.0
        if step == 3:
            now[0] += 100.0  # a preview grid at step 3, left out
            clock.exclude(100.0)
        result = clock.tick(step)
    assert result == (pytest.approx(1.0), 1, 4)
    assert clock.tick(5) is None  # measured once


def test_the_bar_shows_a_dash_before_the_first_loss():
    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=120)
    progress = TrainProgress(_plan(total=10, device="cuda:0"), "auto", log=lambda m: None, console=term)
    progress.stepped(1)
    progress.close()
    text = buf.getvalue()
    assert "loss —" in text and "nan" not in text


def test_piped_output_is_not_wrapped():
    from ddpmkit.progress import LogConsole

    buf = io.StringIO()
    long_path = "runs/" + "x" * 300 + "/checkpoints/step_00000004"
    LogConsole(file=buf, highlight=False).print(f"done: checkpoint {long_path}")
    assert buf.getvalue() == f"done: checkpoint {long_path}\n"


# ------------------------------------------------------------------ sample


@pytest.mark.parametrize("options, needle", [
    (["--steps", "2000"], "--steps 2000"),
    (["--n", "0"], "--n 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--seed", "-1"], "--seed -1"),
    (["--scale", "0"], "--scale 0"),
    (["--sampler", "nope"], "--sampler nope"),
    (["--out", "a_file.txt"], "a_file.txt is a file"),
    (["--out", "a_file.txt/inside"], "a_file.txt (on the way to"),
])
def test_bad_sample_options_write_nothing(tiny_run, tmp_path, monkeypatch, options, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file.txt").write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    r = invoke("sample", tiny_run, *options)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and needle in r.output, r.output
    assert "sampling" not in r.output
    assert sorted(tmp_path.rglob("*")) == before


def test_sample_writes_each_batch_as_it_is_made(tiny_run, tmp_path, monkeypatch):
    """Stopped (Ctrl-C) after the first of three batches: its images, the grid and the GIF are there."""
    import ddpmkit.generate

    real = ddpmkit.generate.generate

    def first_batch_then_ctrl_c(*args, **kwargs):
        yield next(real(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(ddpmkit.generate, "generate", first_batch_then_ctrl_c)
    out = tmp_path / "out"
    r = invoke("sample", tiny_run, "--n", "12", "--batch-size", "4", "--steps", "5", "--gif", "--out", out)
    assert r.exit_code == 130, r.output
    assert "interrupted: 4 images written" in r.output
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"sample_{i:05d}.png" for i in range(4)]
    assert (out / "grid.png").is_file() and (out / "denoise.gif").is_file()


def test_a_checkpoint_far_short_of_its_plan_warns(tmp_path):
    s = tiny(tmp_path / "run", train={"max_steps": 40})
    result = train(s, log=lambda m: None, progress=False,
                   on_step=[lambda tr: tr.request_stop() if tr.step == 2 else None])
    assert result.interrupted and result.step == 2
    r = invoke("sample", tmp_path / "run", "--n", "1", "--steps", "2", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert "warning: step 2 of 40: samples will be noise" in r.output


# ------------------------------------------------------------------ report, TensorBoard, checkpoints


def test_the_report_is_written_at_checkpoints_and_never_stops_training(tmp_path, monkeypatch):
    s = tiny(tmp_path / "run", train={"max_steps": 2, "ckpt_every": 1, "report": True})
    calls, messages = [], []

    def broken(run_dir):
        calls.append(run_dir)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("ddpmkit.train.trainer.write_report", broken)
    result = train(s, log=messages.append, progress=False)
    assert result.step == 2 and not result.interrupted
    assert len(calls) == 2  # at step 1 (a checkpoint) and at the end
    assert sum("report.html not written" in m for m in messages) == 1


def test_tensorboard_without_the_package_says_so_once(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    messages: list[str] = []
    s = tiny(tmp_path / "run", train={"max_steps": 2, "tensorboard": True, "sample_every": 1, "num_samples": 2})
    train(s, log=messages.append, progress=False)
    assert messages.count(TENSORBOARD_MISSING) == 1 and "pip install -e '.[tensorboard]'" in TENSORBOARD_MISSING
    assert not (tmp_path / "run" / "tb").exists()


def test_tensorboard_gets_the_scalars_and_the_sample_grids(tmp_path, monkeypatch):
    """The wiring, against a recording stand-in for tensorboard's SummaryWriter."""
    events: list[tuple] = []

    class Writer:
        def __init__(self, logdir):
            events.append(("open", logdir))

        def add_scalar(self, tag, value, step):
            events.append(("scalar", tag, step))

        def add_image(self, tag, img, step, dataformats):
            events.append(("image", tag, step, img.shape, dataformats))

        def close(self):
            events.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    s = tiny(tmp_path / "run", train={"max_steps": 2, "tensorboard": True, "sample_every": 1, "num_samples": 4})
    train(s, log=lambda m: None, progress=False)
    assert events[0] == ("open", str(tmp_path / "run" / "tb")) and events[-1] == ("close",)
    assert [e[2] for e in events if e[:2] == ("scalar", "loss")] == [1, 2]
    grids = [e for e in events if e[0] == "image"]
    assert [g[2] for g in grids] == [1, 2] and grids[0][3][2] == 3 and grids[0][4] == "HWC"


def test_old_checkpoints_keep_only_their_ema(tmp_path):
    s = tiny(tmp_path / "run", train={"max_steps": 6, "ckpt_every": 2, "keep_checkpoints": 3, "keep_full": 1})
    train(s, log=lambda m: None, progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    files = {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(ckpts.glob("step_*"))}
    assert files == {"step_00000002": ["ema.safetensors"], "step_00000004": ["ema.safetensors"],
                     "step_00000006": ["ema.safetensors", "model.safetensors", "state.pt"]}
    r = invoke("sample", ckpts / "step_00000002", "--n", "1", "--steps", "2", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output  # an EMA-only checkpoint still samples
    more = tiny(tmp_path / "run", train={"max_steps": 8, "ckpt_every": 2, "keep_checkpoints": 3, "keep_full": 2})
    assert train(more, resume=True, log=lambda m: None, progress=False).step == 8
    full = sorted(d.name for d in ckpts.glob("step_*") if (d / "state.pt").exists())
    assert full == ["step_00000006", "step_00000008"]
    assert not (ckpts / "step_00000002").exists()


# ------------------------------------------------------------------ --help


def test_help_shows_the_defaults_the_preset_gives_and_flags_without_a_type():
    wide = {"COLUMNS": "250", "TERM": "dumb"}
    text = invoke("train", "--help", env=wide).output
    flat = " ".join(text.replace("│", " ").split())  # a help line may wrap inside its box
    assert "[default: from preset; demo: 5m]" in flat and "[default: from preset; demo: 32]" in flat
    flags = ("--compile", "--resume", "--replan", "--progress")
    flag_rows = [line for line in text.splitlines() if line.lstrip("│ ").startswith(flags)]
    assert len(flag_rows) == 4 and not any("<bool>" in row for row in flag_rows)
    text = invoke("sample", "--help", env=wide).output
    assert "[default: from the run's settings; demo: 16]" in text and "[default: the newest run under runs/]" in text
    assert not any("<bool>" in line for line in text.splitlines() if "--gif" in line or "--force" in line)

