"""Attribute conditioning and classifier-free guidance: the demo faces' attributes, the training
draws (dropout, hiding, rows missing), guidance at w = 0 / 1 exactly, --attr parsing, and the
whole path through the real Typer app (train --condition attributes, sample --attr --guidance)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ddpmkit.checkpoint import load_model
from ddpmkit.cli.app import app
from ddpmkit.conditioning import attribute_label, attribute_vector, draw_condition, rows_missing
from ddpmkit.data.loader import ImageBatches
from ddpmkit.data.synthetic import FACE_ATTRIBUTES, face_attributes, make_faces, make_faces_with_attributes
from ddpmkit.errors import DdpmkitError
from ddpmkit.generate import eps_fn
from ddpmkit.nn import UNet
from ddpmkit.samplers import PerImageNoise, make_sampler, sample
from ddpmkit.samplers.guidance import guided_eps
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.settings import SampleConfig
from ddpmkit.train import train
from ddpmkit.train.launch import conditioning

from conftest import TINY, tiny

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(r, *needles: str) -> str:
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    assert text.startswith("error:") and "Traceback" not in r.output, r.output
    for n in needles:
        assert n in text, (n, r.output)
    return text


# ---------------------------------------------------------------- demo faces


def test_recording_attributes_leaves_the_pixels_unchanged():
    # sha256 of make_faces(300, 16, seed=0) computed before the attributes were recorded (same
    # Pillow): recording reads the random draws and must draw nothing more
    digest = hashlib.sha256(make_faces(300, 16, seed=0).numpy().tobytes()).hexdigest()
    assert digest == "4abdc4c0954aba067c9f6e51859751912e747bdcfa7725e4cb094c633f2a591f"
    images, attrs = make_faces_with_attributes(40, 24, seed=2)
    assert torch.equal(images, make_faces(40, 24, seed=2))
    assert attrs.shape == (40, len(FACE_ATTRIBUTES)) and attrs.dtype == np.int8


def test_face_attributes_follow_the_drawing_rules():
    a = face_attributes(1500, seed=0) > 0
    col = {n: a[:, i] for i, n in enumerate(FACE_ATTRIBUTES)}
    # the drawing probabilities in synthetic.py: glasses 0.18, moustache 0.12, blush 0.25,
    # smiling or open mouth 0.45 + 0.25, open 0.25, fringe 0.18, bald 0.06
    for name, p in {"Eyeglasses": 0.18, "Mustache": 0.12, "Rosy_Cheeks": 0.25, "Smiling": 0.70,
                    "Mouth_Slightly_Open": 0.25, "Bangs": 0.18, "Bald": 0.06}.items():
        assert abs(col[name].mean() - p) < 0.04, (name, col[name].mean())
    assert not (col["Bald"] & col["Bangs"]).any() and not (col["Bald"] & col["Black_Hair"]).any()
    assert (col["Smiling"] | ~col["Mouth_Slightly_Open"]).all()  # open mouths are grins
    hair = np.stack([col[n] for n in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")])
    assert hair.sum(0).max() == 1  # one colour at most
    assert np.array_equal(face_attributes(30, seed=0), make_faces_with_attributes(30, 32, seed=0)[1])


# ---------------------------------------------------------------- training draws


def test_draw_condition_drops_rows_missing_and_hides():
    g = torch.Generator().manual_seed(0)
    attrs = torch.tensor([[1, -1, 1], [0, 0, 0], [-1, -1, 1], [1, 0, -1]], dtype=torch.int8)
    assert rows_missing(attrs).tolist() == [False, True, False, False]
    cond, drop = draw_condition(attrs, 0.0, False, g)
    assert torch.equal(cond, attrs.float()) and drop.tolist() == [False, True, False, False]
    _, drop = draw_condition(attrs, 1.0, False, g)
    assert drop.all()

    many = torch.from_numpy(np.where(np.random.default_rng(0).random((4000, 8)) < 0.5, 1, -1).astype(np.int8))
    cond, drop = draw_condition(many, 0.1, True, g)
    hidden = (cond == 0).float()
    assert abs(drop.float().mean().item() - 0.1) < 0.02
    assert abs(hidden.mean().item() - 0.5) < 0.03  # q ~ U(0, 1): half on average
    per_row = hidden.mean(1)
    assert (per_row == 0).float().mean() > 0.05 and (per_row == 1).float().mean() > 0.05  # all sparsities
    assert torch.equal(cond[cond != 0], many.float()[cond != 0])  # shown entries are the truth


def test_draw_condition_slices_agree_with_one_process():
    attrs = torch.from_numpy(np.random.default_rng(1).choice([-1, 0, 1], (8, 5)).astype(np.int8))
    one = draw_condition(attrs, 0.3, True, torch.Generator().manual_seed(5))
    halves = [draw_condition(attrs[lo : lo + 4], 0.3, True, torch.Generator().manual_seed(5), global_batch=8,
                             offset=lo) for lo in (0, 4)]
    assert torch.equal(one[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(one[1], torch.cat([h[1] for h in halves]))


@pytest.mark.parametrize("world_size", [1, 2])
def test_loader_labels_follow_their_images(world_size):
    n = 40
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    labels = torch.stack([torch.arange(n), -torch.arange(n)], 1).to(torch.int16)
    for rank in range(world_size):
        batches = ImageBatches(images, 8 // world_size, device=torch.device("cpu"), seed=3, rank=rank,
                               world_size=world_size, labels=labels)
        seen = 0
        for x, y in batches.epoch(1):
            index = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()  # back from [-1, 1] to the image number
            assert torch.equal(y[:, 0].long(), index) and torch.equal(y[:, 1].long(), -index)
            seen += len(x)
        assert seen == n // world_size


def test_images_without_rows_are_counted(tmp_path):
    names = ["Smiling", "Male", "Eyeglasses"]
    attrs = np.ones((10, 3), dtype=np.int8)
    attrs[[2, 5, 7]] = 0
    np.save(tmp_path / "attributes.npy", attrs)
    info = {"dataset": "celeba", "cache": str(tmp_path), "count": 10, "attribute_names": names}
    lines: list[str] = []
    settings = tiny(tmp_path / "run", train={"condition": "attributes"})
    out, got = conditioning(settings, info, lines.append)
    assert np.array_equal(got, attrs)
    assert out.model.cond_dim == 3 and out.model.cond_names == tuple(names)
    assert settings.model.cond_dim == 0  # the caller's settings are left alone
    assert len(lines) == 1 and "3 of 10 images have no attribute row" in lines[0]
    with pytest.raises(DdpmkitError, match="no attributes"):
        conditioning(settings, {**info, "attribute_names": []}, lines.append)


# ---------------------------------------------------------------- guidance


def _noisy_net(cond_dim: int = 3) -> UNet:
    net = UNet(image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=4,
               dropout=0.0, cond_dim=cond_dim)
    torch.manual_seed(0)
    with torch.no_grad():  # DDPM's zero inits make a fresh net predict 0: give every weight a value
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


def test_guidance_zero_and_one_are_the_models_exactly():
    net = _noisy_net()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([5, 50, 90])
    c = torch.tensor([1.0, 0.0, -1.0])
    cb = c.expand(3, -1)
    cond_eps = eps_fn(net, torch.device("cpu"), **EPS)
    with torch.no_grad():
        e_c, e_u = net(x, t, cb), net(x, t)
        assert torch.equal(guided_eps(cond_eps, c, 1.0)(x, t), e_c)
        assert torch.equal(guided_eps(cond_eps, c, 0.0)(x, t), e_u)
        assert not torch.allclose(e_c, e_u)
        e3 = eps_fn(net, torch.device("cpu"), **EPS, cond=c, guidance=3.0)(x, t)  # one batch of 2B
        torch.testing.assert_close(e3, e_u + 3.0 * (e_c - e_u), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmsolver++"])
def test_guidance_zero_samples_as_the_unconditional_model(name):
    net = _noisy_net()
    sched = NoiseSchedule.from_config(TINY_DIFFUSION)
    smp = make_sampler(sched, SampleConfig(sampler=name, steps=4))
    dev = torch.device("cpu")
    runs = [sample(eps, smp, (2, 3, 8, 8), generator=PerImageNoise(1, 0, 2, dev), device=dev)
            for eps in (eps_fn(net, dev, **EPS), eps_fn(net, dev, **EPS, cond=torch.tensor([1.0, 1.0, 0.0]), guidance=0.0))]
    assert torch.equal(runs[0], runs[1])
    guided = sample(eps_fn(net, dev, **EPS, cond=torch.tensor([1.0, 1.0, 0.0]), guidance=3.0), smp, (2, 3, 8, 8),
                    generator=PerImageNoise(1, 0, 2, dev), device=dev)
    assert torch.isfinite(guided).all() and not torch.equal(guided, runs[0])


def test_attribute_parsing():
    names = ["Smiling", "Male", "Eyeglasses", "Wearing_Hat"]
    assert attribute_vector(names, ["smiling", "-MALE", "wearing_hat"]).tolist() == [1.0, -1.0, 0.0, 1.0]
    with pytest.raises(DdpmkitError, match="did you mean Smiling"):
        attribute_vector(names, ["Smilng"])
    with pytest.raises(DdpmkitError, match="known: Smiling, Male"):
        attribute_vector(names, ["Zzz"])
    with pytest.raises(DdpmkitError, match="twice"):
        attribute_vector(names, ["Male", "-male"])
    assert attribute_label(names, torch.tensor([1.0, -1.0, 1.0, 0.0])) == "attr_Smiling+Eyeglasses-Male"


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory) -> Path:
    """`ddpmkit train --condition attributes` on the demo faces, 4 steps (then resumed to 5)."""
    root = tmp_path_factory.mktemp("cond")
    cfg = root / "tiny.yaml"
    data = {**TINY, "train": {**TINY["train"], "run_dir": str(root / "run"), "max_steps": 4}}
    cfg.write_text(yaml.safe_dump(data))
    r = invoke("train", "--config", cfg, "--condition", "attributes", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "conditioning on 11 attributes" in r.output and "0 of 64 images have no attribute row" in r.output
    r = invoke("train", "--run-dir", root / "run", "--resume", "--max-steps", "5", "--no-progress")
    assert r.exit_code == 0 and "resuming" in r.output, r.output
    return root / "run"


def test_checkpoint_carries_the_attribute_names(cond_run):
    model, settings, step = load_model(cond_run, torch.device("cpu"))
    assert step == 5 and settings.train.condition == "attributes"
    assert settings.model.cond_names == FACE_ATTRIBUTES and model.cond_dim == len(FACE_ATTRIBUTES)
    saved = yaml.safe_load((cond_run / "config.yaml").read_text())
    assert tuple(saved["model"]["cond_names"]) == FACE_ATTRIBUTES
    assert json.loads((cond_run / "run.json").read_text())["count"] == 64


def test_sample_with_attributes(cond_run, tmp_path):
    out = tmp_path / "samples"
    r = invoke("sample", cond_run, "--n", "2", "--steps", "3", "--sampler", "ddim", "--no-progress",
               "--attr", "smiling", "--attr", "-Eyeglasses", "--guidance", "2", "--set", f"sample.out_dir={out}")
    assert r.exit_code == 0, r.output
    (folder,) = out.iterdir()
    assert folder.name.endswith("-attr_Smiling-Eyeglasses-w2"), folder.name
    assert len(list((folder / "images").glob("*.png"))) == 2 and (folder / "grid.png").is_file()


def test_sample_attribute_errors(cond_run, tmp_path):
    base = ["sample", cond_run, "--n", "1", "--steps", "2", "--out", tmp_path / "o"]
    one_line_error(invoke(*base, "--attr", "Eyeglass"), "did you mean Eyeglasses")
    one_line_error(invoke(*base, "--guidance", "3"), "--guidance needs --attr")
    one_line_error(invoke(*base, "--attr", "Bangs", "--guidance", "-1"), "--guidance -1")
    assert not (tmp_path / "o").exists()


def test_attr_on_an_unconditional_run_is_an_error(tmp_path):
    run = tmp_path / "run"
    train(tiny(run, train={"max_steps": 1}), log=lambda m: None, progress=False)
    r = invoke("sample", run, "--n", "1", "--steps", "2", "--out", tmp_path / "o", "--attr", "Smiling")
    one_line_error(r, "unconditional", "--attr")
    assert not (tmp_path / "o").exists()


def test_cond_dim_without_condition_is_refused(tmp_path):
    with pytest.raises(DdpmkitError, match="--condition attributes"):
        train(tiny(tmp_path / "run", model={"cond_dim": 4}), log=lambda m: None, progress=False)
    assert not (tmp_path / "run").exists()


TINY_DIFFUSION = tiny(Path("unused")).diffusion
EPS = {"prediction": "eps", "sched": NoiseSchedule.from_config(TINY_DIFFUSION)}  # eps_fn's network reading


def test_attr_hit_benchmark_runs(cond_run, tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from attr_hit import main

    out = tmp_path / "hit"
    assert main([str(cond_run), "--n", "2", "--steps", "2", "--attrs", "smiling", "Eyeglasses", "--checker-steps", "2",
                 "--checker-train", "64", "--checker-test", "32", "--show", "2", "--out", str(out)]) == 0
    md = (out / "attr_hit.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| Smiling") or line.startswith("| Eyeglasses")]
    assert len(rows) == 2 and md.count("hit rate, guidance") == 3
    from PIL import Image

    w, h = Image.open(out / "attr_hit_grid.png").size
    assert w > h  # 2 rows of 3 blocks of 2 faces (+ gaps): wider than tall


def test_celeba_attributes_end_to_end(tmp_path, celeba):
    """CelebA files (generated, and the real ones of ../shared): images with and without attribute
    rows, `prepare`d on first use, trained conditionally (rows missing counted), sampled with CelebA's names."""
    from celeba_files import make_official

    names = [n for n in celeba.names if n < "020000"][:12]  # have rows
    names += [n for n in celeba.names if n.startswith("19")][:4]  # no rows
    root = make_official(tmp_path / "celeba", celeba, names)
    data = {"dataset": "celeba", "root": str(root), "cache_dir": str(tmp_path / "cache"), "size": 16,
            "split": "all", "workers": 1}
    lines: list[str] = []
    train(tiny(tmp_path / "run", data=data, train={"max_steps": 2, "batch_size": 8, "condition": "attributes"}), log=lines.append,
          progress=False)
    said = [line for line in lines if line.startswith("conditioning on")]
    assert said == ["conditioning on 40 attributes (p_uncond 0.1); 4 of 16 images have no attribute row and train "
                    "unconditionally (null embedding)"], lines
    r = invoke("sample", tmp_path / "run", "--n", "1", "--steps", "2", "--sampler", "ddim", "--attr", "smiling",
               "--attr", "-male", "--attr", "Eyeglasses", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "Eyeglasses+Smiling-Male" in r.output.replace("\n", "")
    one_line_error(invoke("sample", tmp_path / "run", "--n", "1", "--attr", "Mal", "--out", tmp_path / "p"),
                   "did you mean Male")
    # the attribute-hit benchmark on a CelebA run: its checker learns from the cache's rows
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from attr_hit import main

    assert main([str(tmp_path / "run"), "--n", "2", "--steps", "2", "--attrs", "smiling", "Male", "--checker-steps", "2",
                 "--checker-test", "8", "--show", "1", "--out", str(tmp_path / "hit")]) == 0
    md = (tmp_path / "hit" / "attr_hit.md").read_text()
    assert [r.split(" |")[0] for r in md.splitlines() if r.startswith("| S") or r.startswith("| M")] == ["| Smiling", "| Male"]
    assert "the 10 faces of the run's cache with an attribute row, accuracy on 2 held out" in md
