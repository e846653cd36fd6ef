"""The offline GPU kit (gpukit/, run by scripts/gpu_bundle.sh, gpu_stash.sh and gpu_check.sh) as a dry
run at tiny sizes on the CPU, so the one prepared command for a GPU machine without internet cannot
rot while no GPU is there; and the GPU path of a training step, marked `cuda` (on a GPU machine,
`pytest -m cuda` runs it on the device).

The dry run makes a bundle under a size budget (the weights in pieces, one copied in alone and
stashed), then runs every stage but bench_compiled (torch.compile takes minutes on a CPU); the
report lists what each stage leaves out. Data: CelebA and the FID weights from ../shared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FID_WEIGHTS, REPO, SHARED

sys.path.insert(0, str(REPO / "gpukit"))
import bundle as gpu_bundle  # noqa: E402  (gpukit/ is no package)
import kit  # noqa: E402

WEIGHTS = FID_WEIGHTS
DRY_RUN_STAGES = ["bundle", "wheels", "device", "weights", "profile", "bench_eager", "pack", "train", "sample", "fid", "pytest"]
BUDGET = 64 * 2**20


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DDPMKIT_GPU_CHECK_STAGES", "DDPMKIT_GPU_CHECK_TESTS")}
    env.update(
        PYTHON=sys.executable, DDPMKIT_GPU_CHECK_TINY="1", DDPMKIT_DATA_ROOT=str(SHARED / "celeba"),
        DDPMKIT_FID_WEIGHTS=str(FID_WEIGHTS), DDPMKIT_GPU_BUNDLE=str(root / "bundle"),
        DDPMKIT_FID_STAGING=str(root / "staging"), DDPMKIT_GPU_CHECK_WORK=str(root / "work"), OUT=str(root / "out"),
    )
    env.update(extra)
    return env


def _script(name: str, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _stages(out: Path) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads((out / "gpu_check.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """Bundle under a 64 MiB budget, copy 1 (a weights piece, stashed), copy 2 (kit/ and the last piece: the check)."""
    root = tmp_path_factory.mktemp("gpu_check")
    env = _env(root)
    made = _script("gpu_bundle.sh", env, "--tiny", "--max-bytes", "64MiB")
    assert made.returncode == 0, made.stdout + made.stderr
    stash = _script("gpu_stash.sh", {**env, "DDPMKIT_GPU_BUNDLE": str(root / "bundle")})
    assert stash.returncode == 0, stash.stdout + stash.stderr
    check = _script("gpu_check.sh", env)
    yield root, made, check
    for big in ("bundle/piece1", "bundle/piece2", "staging", "work/fid"):  # ~300 MB of weight copies
        shutil.rmtree(root / big, ignore_errors=True)


@pytest.mark.shared_celeba
@pytest.mark.fid_weights
def test_the_dry_run_passes_every_stage_and_reports_it(dry_run):
    root, made, check = dry_run
    out = root / "out"
    assert check.returncode == 0, check.stdout[-4000:] + check.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    stages = _stages(out)
    assert list(stages) == DRY_RUN_STAGES and report["passed"]
    assert all(s["status"] == "PASS" for s in stages.values()), {k: s["summary"] for k, s in stages.items()}
    assert "bench_compiled" in report["omitted"] and "wheels" in report["reduced"]
    for name in DRY_RUN_STAGES:
        assert f"[gpu_check] {name}: PASS" in check.stdout
    md = (out / "gpu_check.md").read_text()
    assert "| train | PASS |" in md and "all stages passed" in md and "Dry run" in md and "## fid: PASS" in md
    # the copies the bundle plans fit the budget, and copy 1's piece came through the staging folder
    manifest = json.loads((root / "bundle" / "kit" / "manifest.json").read_text())
    assert len(manifest["copies"]) == 2 and all(c["bytes"] <= BUDGET for c in manifest["copies"])
    assert "copy 2: the repository + .gpu_bundle/{kit,piece2}" in made.stdout and "of 64.0 MiB (ok)" in made.stdout
    assert stages["weights"]["details"]["sources"][0].startswith(str(root / "staging"))
    # training was stopped by SIGINT at its time budget and ddpmkit saved a checkpoint
    train = stages["train"]["details"]
    assert train["stopped_by_sigint"] and train["exit"] == 130 and len(train["curve"]) >= 3
    assert stages["pack"]["details"]["pixels_sha256"] == manifest["pack"]["pixels_sha256"]
    fids = [r["fid"] for r in stages["fid"]["details"]["runs"]]
    assert len(fids) == 1 and np.isfinite(fids[0])
    rows = {r["what"]: r for r in stages["bench_eager"]["details"]["rows"]}
    assert rows["training MFU (eager)"]["ddpmkit"] > 0 and rows["parameters"]["ddpmkit"] == rows["parameters"]["diffusers"]
    profile = stages["profile"]["details"]["profile"]
    assert profile["train"]["conv_floor_ms"] > 0 and profile["sample"]["groups"]["convolution"] > 0
    assert "## profile: PASS" in md and "convolution floor" in md
    assert (out / "samples_dpmsolverpp4.png").is_file() and (out / "gpu_check.log").is_file()
    # the stages print what they measure as it comes, not only at their end
    assert check.stdout.index("convolution floor") < check.stdout.index("[gpu_check] profile: PASS")


@pytest.mark.shared_celeba
@pytest.mark.fid_weights
def test_a_missing_reference_file_fails_loudly(dry_run):
    root, _, _ = dry_run
    broken = root / "broken"
    shutil.copytree(root / "bundle" / "kit", broken / "kit")
    (broken / "kit" / kit.REF_STATS).unlink()
    r = _script("gpu_check.sh", _env(root, DDPMKIT_GPU_BUNDLE=str(broken), OUT=str(root / "out_broken")), "--stages", "bundle,fid")
    assert r.returncode != 0
    stages = _stages(root / "out_broken")
    assert stages["bundle"]["status"] == "FAIL" and "reference statistics" in stages["bundle"]["summary"]
    assert stages["fid"]["status"] == "FAIL" and "reference statistics missing" in stages["fid"]["summary"]
    assert "[gpu_check] fid: FAIL" in r.stdout and "FAIL: bundle, fid" in r.stdout


@pytest.mark.shared_celeba
@pytest.mark.fid_weights
def test_no_tests_marked_cuda_is_a_failure_not_a_pass(dry_run, tmp_path):
    root, _, _ = dry_run
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert True\n")
    env = _env(root, DDPMKIT_GPU_CHECK_TESTS=str(tmp_path), OUT=str(tmp_path / "out"))
    r = _script("gpu_check.sh", env, "--stages", "pytest")
    assert r.returncode != 0
    pytest_stage = _stages(tmp_path / "out")["pytest"]
    assert pytest_stage["status"] == "FAIL" and "no tests marked cuda" in pytest_stage["summary"]


def test_the_kit_speaks_of_no_particular_transfer_tool():
    words = re.compile(r"device call|\blent\b|4 KiB|charged|device tool", re.IGNORECASE)
    for path in [*sorted((REPO / "gpukit").glob("*.py")), *sorted((REPO / "scripts").glob("gpu_*.sh")),
                 REPO / "docs" / "offline-gpu-kit.md"]:
        assert not words.search(path.read_text()), f"{path}: {words.search(path.read_text())}"


def test_reference_statistics_travel_exactly_in_half_the_bytes(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 16))
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    np.savez(tmp_path / "full.npz", mu=mu, sigma=sigma, count=np.int64(40))
    kit.pack_stats(tmp_path / "full.npz", tmp_path / "packed.npz", {"images": 40})
    assert kit.unpack_stats(tmp_path / "packed.npz", tmp_path / "back.npz") == 40
    with np.load(tmp_path / "back.npz") as f:
        assert np.array_equal(f["mu"], mu) and np.array_equal(f["sigma"], sigma)
    with np.load(tmp_path / "packed.npz") as f:
        assert f["sigma_triu"].size == 16 * 17 // 2


def test_under_a_budget_the_weights_fill_copies_of_their_own_and_leave_room_in_the_last():
    mib = 2**20
    room = BUDGET - kit.MARGIN_BYTES - 1 * mib
    sizes = gpu_bundle.plan_parts(92 * mib, BUDGET, 1 * mib, 20 * mib, 4 * mib)
    assert sizes == [room, 92 * mib - room] and sum(sizes) == 92 * mib
    assert gpu_bundle.plan_parts(10 * mib, BUDGET, 1 * mib, 25 * mib, 4 * mib) == [10 * mib]  # one copy is enough
    assert len(gpu_bundle.plan_parts(200 * mib, BUDGET, 1 * mib, 25 * mib, 4 * mib)) == 4
    # the second piece does not fit beside kit/ and the pack: a third copy is planned
    sizes = gpu_bundle.plan_parts(95_743_191, BUDGET, int(3.5 * mib), 25 * mib, 5 * mib)
    room = BUDGET - kit.MARGIN_BYTES - int(3.5 * mib)
    assert len(sizes) == 3 and sum(sizes) == 95_743_191 and max(sizes) <= room
    assert sizes[-1] <= room - 25 * mib - 5 * mib


def test_without_a_budget_the_weights_travel_whole_in_the_kit(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(os.urandom(4096))
    (tmp_path / "b" / kit.KIT).mkdir(parents=True)
    parts, room = gpu_bundle.place_weights(weights, tmp_path / "b", None, 10**6, 10**6, kit.TINY)
    assert parts == [] and room is None
    assert (tmp_path / "b" / kit.KIT / kit.WEIGHTS_NAME).read_bytes() == weights.read_bytes()
    assert kit.parse_bytes("64MiB") == 64 * 2**20 and kit.parse_bytes("1.5GB") == 1_500_000_000 and kit.parse_bytes("10") == 10


@pytest.mark.cuda
def test_a_training_step_on_the_gpu_path_keeps_weights_finite():
    """bf16 autocast, channels_last and fused AdamW as ddpmkit trains on CUDA; on the CPU in CI."""
    from ddpmkit.nn import UNet
    from ddpmkit.settings import build_settings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    sets = ["data.size=16", "model.ch=16", "model.ch_mult=[1,2]", "model.attn_resolutions=[8]", "model.num_groups=8"]
    torch.manual_seed(0)
    model = UNet.from_config(build_settings(preset="demo", sets=sets).model).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cuda)
    x = (torch.rand(4, 3, 16, 16, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last)
    t, noise = torch.randint(0, 1000, (4,), device=device), torch.randn(4, 3, 16, 16, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        eps = model(x, t)
    loss = torch.nn.functional.mse_loss(eps.float(), noise)
    loss.backward()
    opt.step()
    assert eps.shape == x.shape and eps.device.type == device.type and torch.isfinite(eps).all()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())
    # zero-initialised output layers stop the first step's gradient short of the early layers:
    # every parameter that got a gradient must have moved
    moved = [not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())]
    got_grad = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters()]
    assert any(got_grad) and all(m for m, g in zip(moved, got_grad) if g)
