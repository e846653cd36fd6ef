"""FID and KID: finding the Inception weights, agreement with pytorch-fid, sanity on real CelebA, the
stats cache, the CLI.

The Inception forward pass costs ~0.1 s per image on 2 CPU cores, so the image sets are small
(≤ 80 each) and every set's features are computed once per module. The network's weights come
through $DDPMKIT_FID_WEIGHTS (conftest; tests marked fid_weights); real images from ../shared/celeba
(marked shared_celeba), cropped into a temporary folder, never into the repository. Where any
face will do, the generated faces stand in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid.inception import FID_WEIGHTS_URL
from typer.testing import CliRunner

from celeba_files import make_official
from conftest import CELEBA, FID_WEIGHTS
from ddpmkit.data.synthetic import make_faces
from ddpmkit.errors import DdpmkitError
from ddpmkit.fid import (
    FidExtractor,
    FidMonitor,
    FidStats,
    cached_stats,
    folder_source,
    frechet_distance,
    kernel_inception_distance,
    resolve_weights,
)
from ddpmkit.fid import weights as W
from ddpmkit.fid.kid import SCALE
from ddpmkit.settings import FID_WEIGHTS_ENV

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Matrix is singular")

N_REAL = 80  # per split
N_CMP = 40  # images per folder in the pytorch-fid comparison
N_NOISE = 40
N_FACES = 16


def _celeba_names(split_code: int, n: int) -> list[str]:
    present = {p.name for p in (CELEBA / "img_align_celeba").iterdir()}
    names = []
    with open(CELEBA / "list_eval_partition.txt") as f:
        for line in f:
            name, code = line.split()
            if int(code) == split_code and name in present:
                names.append(name)
                if len(names) == n:
                    break
    return names


def _write_crops(names: list[str], folder: Path) -> Path:
    """Center 140x140 face crop of the 178x218 aligned image, resized to 64x64, as PNG."""
    folder.mkdir(parents=True)
    for name in names:
        with Image.open(CELEBA / "img_align_celeba" / name) as im:
            w, h = im.size
            box = ((w - 140) // 2, (h - 140) // 2, (w + 140) // 2, (h + 140) // 2)
            im.convert("RGB").crop(box).resize((64, 64), Image.BICUBIC).save(folder / f"{Path(name).stem}.png")
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Uniform noise and generated faces, 64 px PNGs."""
    root = tmp_path_factory.mktemp("fid_images")
    rng = np.random.default_rng(0)
    noise, faces = root / "noise", root / "faces"
    noise.mkdir()
    faces.mkdir()
    for i in range(N_NOISE):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / f"{i:03d}.png")
    for i, face in enumerate(make_faces(N_FACES, 64, seed=1)):
        Image.fromarray(face.permute(1, 2, 0).numpy()).save(faces / f"{i:03d}.png")
    return {"noise": noise, "faces": faces}


@pytest.fixture(scope="module")
def celeba_folders(tmp_path_factory) -> dict[str, Path]:
    """Real CelebA crops: train and val, and their first N_CMP."""
    root = tmp_path_factory.mktemp("fid_celeba")
    train, val = _celeba_names(0, N_REAL), _celeba_names(1, N_REAL)
    return {
        "train": _write_crops(train, root / "train"),
        "val": _write_crops(val, root / "val"),
        "train_cmp": _write_crops(train[:N_CMP], root / "train_cmp"),
        "val_cmp": _write_crops(val[:N_CMP], root / "val_cmp"),
    }


@pytest.fixture(scope="module")
def extractor() -> FidExtractor:
    return FidExtractor(FID_WEIGHTS, "cpu", batch_size=40)


@pytest.fixture(scope="module")
def feats(folders, extractor) -> dict[str, np.ndarray]:
    """Pool3 features of the noise and the faces, through our folder reader: computed once."""
    return {k: extractor.features(folder_source(folders[k]).read(40)) for k in ("noise", "faces")}


@pytest.fixture(scope="module")
def celeba_feats(celeba_folders, extractor) -> dict[str, np.ndarray]:
    return {k: extractor.features(folder_source(celeba_folders[k]).read(40)) for k in ("train", "val")}


def _offline_pytorch_fid(monkeypatch) -> None:
    """Let pytorch-fid build its own network, with the weights from our file instead of a download."""
    import pytorch_fid.inception as pfi

    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: torch.load(FID_WEIGHTS, weights_only=True))


# ----------------------------------------------------------------------------- weights


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    """Nothing set, an empty torch hub folder: returns where pytorch-fid's file would be."""
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    assert W.hub_weights_path() == hub
    return hub


def test_missing_weights_file_names_the_setting(tmp_path, no_weights, monkeypatch):
    with pytest.raises(DdpmkitError) as e:
        resolve_weights(tmp_path / "nope.pth")  # set but wrong: reported, not replaced by another file
    msg = str(e.value)
    assert "fid.weights" in msg and FID_WEIGHTS_ENV in msg and "nope.pth" in msg and "\n" not in msg
    assert str(no_weights) in msg and FID_WEIGHTS_URL in msg  # the three ways
    # the environment variable decides before the hub cache, even when a file is there
    no_weights.parent.mkdir(parents=True)
    no_weights.write_bytes(b"weights")
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(DdpmkitError, match="env.pth"):
        FidExtractor(None)


@pytest.mark.fid_weights
def test_default_weights_found_through_environment():
    """conftest points $DDPMKIT_FID_WEIGHTS at the tests' file; product code knows no ../shared."""
    assert os.environ[FID_WEIGHTS_ENV] == str(FID_WEIGHTS)
    assert resolve_weights(None) == FID_WEIGHTS


def test_weights_found_in_torch_hub_cache(no_weights, monkeypatch):
    """pytorch-fid's own file where pytorch-fid keeps it: taken, nothing downloaded."""
    no_weights.parent.mkdir(parents=True)
    no_weights.write_bytes(b"weights")
    monkeypatch.setattr(W, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded although present"))
    assert resolve_weights(None) == no_weights


def test_weights_downloaded_into_torch_hub_cache_when_online(no_weights, monkeypatch):
    calls, said = [], []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix, progress))
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(W, "download_url_to_file", download)
    assert resolve_weights(None, log=said.append) == no_weights
    assert calls == [(FID_WEIGHTS_URL, str(no_weights), "6726825d", True)]  # pytorch-fid's file, checked, a bar
    assert len(said) == 1 and FID_WEIGHTS_URL in said[0] and str(no_weights) in said[0]
    assert resolve_weights(None, log=said.append) == no_weights and len(calls) == 1  # found the next time


def test_offline_with_no_weights_is_one_line_naming_the_three_ways(no_weights, monkeypatch):
    for failure in (URLError("[Errno -3] Temporary failure in name resolution"),
                    RuntimeError("invalid hash value (expected \"6726825d\", got \"0000\")")):
        def download(*args, failure=failure, **kwargs):
            raise failure

        monkeypatch.setattr(W, "download_url_to_file", download)
        with pytest.raises(DdpmkitError) as e:
            resolve_weights(None, log=lambda line: None)
        msg = str(e.value)
        assert "\n" not in msg and ("name resolution" in msg or "invalid hash" in msg)
        assert FID_WEIGHTS_ENV in msg and str(no_weights) in msg and FID_WEIGHTS_URL in msg
        assert not no_weights.exists()


def test_wrong_weights_file_is_rejected(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(DdpmkitError, match="fid.verify_weights"):
        FidExtractor(bad)


# ----------------------------------------------------------------------------- values


@pytest.mark.slow
@pytest.mark.fid_weights
@pytest.mark.shared_celeba
def test_matches_pytorch_fid_on_the_same_png_files(celeba_folders, celeba_feats, monkeypatch):
    """Our uint8 pipeline vs pytorch-fid's own (PIL -> ToTensor -> its InceptionV3), same files.

    With 40 < 2048 images Σ is singular; both use pytorch-fid's formula with its ε fallback.
    """
    from pytorch_fid.fid_score import calculate_fid_given_paths

    _offline_pytorch_fid(monkeypatch)
    theirs = calculate_fid_given_paths(
        [str(celeba_folders["train_cmp"]), str(celeba_folders["val_cmp"])], batch_size=20, device="cpu", dims=2048,
        num_workers=0,
    )
    ours = frechet_distance(
        FidStats.from_features(celeba_feats["train"][:N_CMP]), FidStats.from_features(celeba_feats["val"][:N_CMP])
    )
    assert theirs > 1.0  # a real distance, not a degenerate zero
    assert abs(ours - theirs) / theirs < 1e-3, (ours, theirs)


@pytest.mark.slow
@pytest.mark.fid_weights
@pytest.mark.shared_celeba
def test_real_celeba_train_vs_val_is_small_noise_is_large(celeba_feats, feats):
    train, val = celeba_feats["train"], celeba_feats["val"]
    noise = feats["noise"]
    self_fid = frechet_distance(FidStats.from_features(val), FidStats.from_features(val))
    real = frechet_distance(FidStats.from_features(train), FidStats.from_features(val))
    fake = frechet_distance(FidStats.from_features(noise), FidStats.from_features(val))
    assert abs(self_fid) < 1e-3
    assert 0 < real < 0.4 * fake, (real, fake)
    assert fake > 200  # noise is nothing like a face
    # KID: two halves of one real split are near 0 (unbiased, even at 40 images), noise is far
    halves = kernel_inception_distance(train[:40], train[40:])
    real_kid = kernel_inception_distance(train, val)
    fake_kid = kernel_inception_distance(noise, val)
    assert abs(halves.mean) < 0.05 * fake_kid.mean and real_kid.mean < 0.2 * fake_kid.mean, (halves, real_kid, fake_kid)


@pytest.mark.fid_weights
def test_network_is_pytorch_fids_inception_v3(monkeypatch):
    """Our module, built without patching anything, gives pytorch-fid InceptionV3's pool3 features."""
    import pytorch_fid.inception as pfi

    from ddpmkit.fid.inception import load_inception

    _offline_pytorch_fid(monkeypatch)  # test code may patch pytorch-fid to build its network offline
    theirs_net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(0))  # not 299, not square: resized
    with torch.no_grad():
        theirs = theirs_net(x)[0].flatten(1)
        ours = load_inception(FID_WEIGHTS)(x)
    assert ours.shape == (2, 2048) and theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.fid_weights
def test_features_do_not_depend_on_batching(folders, extractor, feats):
    """Same images, other batch size: same features (eval-mode network, per-image resize)."""
    again = extractor.features(folder_source(folders["noise"], n=6).read(4))
    np.testing.assert_allclose(again, feats["noise"][:6], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- stats and cache


def test_stats_roundtrip_and_pytorch_fid_npz(tmp_path):
    rng = np.random.default_rng(0)
    s = FidStats.from_features(rng.normal(size=(50, 8)), meta={"split": "val"})
    s.save(tmp_path / "s.npz")
    back = FidStats.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.mu, s.mu)
    np.testing.assert_array_equal(back.sigma, s.sigma)
    assert back.count == 50 and back.meta["split"] == "val"
    np.savez(tmp_path / "theirs.npz", mu=s.mu, sigma=s.sigma)  # pytorch-fid's --save-stats format
    assert frechet_distance(FidStats.load(tmp_path / "theirs.npz"), s) == pytest.approx(0, abs=1e-6)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DdpmkitError, match="junk.npz"):
        FidStats.load(tmp_path / "junk.npz")


def test_stats_cache_is_reused_and_invalidated(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")
    calls = []

    def compute():
        calls.append(1)
        return FidStats.from_features(np.random.default_rng(len(calls)).normal(size=(5, 3)))

    cache = tmp_path / "cache"
    ident = lambda n=None: {"source": folder_source(folder, n).identity, "weights_sha256": "abc"}  # noqa: E731
    a, path, reused = cached_stats(cache, "imgs", ident(), compute)
    assert not reused and path.is_file() and len(calls) == 1
    b, path2, reused = cached_stats(cache, "imgs", ident(), compute)
    assert reused and path2 == path and len(calls) == 1
    np.testing.assert_array_equal(a.sigma, b.sigma)
    # each of these changes what the statistics would be: a new key, a recompute
    cached_stats(cache, "imgs", ident(n=3), compute)  # fewer images
    assert len(calls) == 2
    cached_stats(cache, "imgs", {**ident(), "weights_sha256": "other"}, compute)  # other network
    assert len(calls) == 3
    Image.new("RGB", (8, 8), (0, 255, 0)).save(folder / "1.png")  # an image changed on disk
    os.utime(folder / "1.png", ns=(1, 1))
    _, path3, reused = cached_stats(cache, "imgs", ident(), compute)
    assert not reused and path3 != path and len(calls) == 4
    # a cache file whose content does not carry its key is not trusted
    np.savez(path3, mu=np.zeros(3), sigma=np.eye(3))
    _, _, reused = cached_stats(cache, "imgs", ident(), compute)
    assert not reused and len(calls) == 5
    # asked for under another label (a cache prepared again: a new name, the same pixels): found by key
    _, path4, reused = cached_stats(cache, "imgs-prepared-again", ident(), compute)
    assert reused and path4 == path3 and len(calls) == 5


# ----------------------------------------------------------------------------- monitor and CLI


@pytest.mark.fid_weights
def test_fid_monitor_against_stats(folders, extractor, feats, tmp_path):
    ref = FidStats.from_features(feats["noise"])
    monitor = FidMonitor(ref, extractor, n=N_NOISE)
    fid = monitor(folder_source(folders["noise"]).read(16))
    assert abs(fid) < 1e-3
    same_kid = monitor.last_kid  # the reference's own images: the unbiased estimate is at most ~0
    assert same_kid is not None and same_kid.subset_size == N_NOISE and same_kid.mean < 1e-3
    # built from a source: its statistics are computed once and stored under stats_dir
    source = folder_source(folders["noise"], n=8)
    built = FidMonitor.for_reference(source, extractor, n=8, stats_dir=tmp_path / "stats")
    assert built.reference.count == 8 and len(list((tmp_path / "stats").glob("*.npz"))) == 1
    np.testing.assert_allclose(built.reference.mu, feats["noise"][:8].mean(axis=0), rtol=1e-6, atol=1e-6)
    assert built(folder_source(folders["noise"], n=8).read(8)) == pytest.approx(0, abs=1e-3)
    assert built(folder_source(folders["faces"], n=8).read(8)) > 50
    assert built.last_kid.mean > 100 * max(same_kid.mean, 1e-4)  # faces against noise


def _cli():
    import typer

    from ddpmkit.cli.fid_cmd import fid

    app = typer.Typer()
    app.command()(fid)
    return app


@pytest.mark.slow
@pytest.mark.fid_weights
def test_cli_folder_against_cached_reference(folders, feats, tmp_path):
    runner = CliRunner()
    cache_dir = tmp_path / "cache"
    out = tmp_path / "fid.json"
    args = [
        str(folders["noise"]), str(folders["faces"]), "--n", "20", "--device", "cpu", "--batch-size", "40",
        "--set", f"fid.weights={FID_WEIGHTS}", "--set", f"data.cache_dir={cache_dir}", "--out-json", str(out),
    ]
    r = runner.invoke(_cli(), args)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["n"] == 20 and result["reference_n"] == N_FACES and result["fid"] > 200
    assert result["reference"]["kind"] == "folder" and result["reference"]["reused"] is False
    assert "FID" in r.output and "time_s" in result
    # the stats of the folder against the same folder's statistics, straight from our features
    expected = frechet_distance(FidStats.from_features(feats["noise"][:20]), FidStats.from_features(feats["faces"]))
    assert result["fid"] == pytest.approx(expected, rel=1e-4)
    # KID x10³ beside it, as printed, from the same (float16) features: subsets of min(1000, 20, 16)
    kid = kernel_inception_distance(feats["noise"][:20].astype(np.float16), feats["faces"].astype(np.float16))
    assert result["kid"]["subset_size"] == N_FACES and result["kid"]["subsets"] == 100
    assert result["kid"]["mean_x1e3"] == pytest.approx(SCALE * kid.mean, abs=1e-3) and kid.mean > 0
    assert result["kid"]["std_x1e3"] == pytest.approx(SCALE * kid.std, abs=1e-3)
    assert f"{SCALE * kid.mean:.2f} ± {SCALE * kid.std:.2f}" in r.output

    # an existing --out-json is kept unless --force; the reference statistics come from the cache
    r = runner.invoke(_cli(), args)
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(_cli(), args + ["--force"])
    assert r.exit_code == 0, r.output
    again = json.loads(out.read_text())
    assert again["reference"]["reused"] is True
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-9) and again["kid"] == result["kid"]

    # a .npz reference works as well: FID only, KID needs the images' features
    stats = Path(again["reference"]["stats_cache"])
    r = runner.invoke(_cli(), [str(stats), str(stats), "--set", f"fid.weights={FID_WEIGHTS}", "--device", "cpu",
                               "--out-json", str(tmp_path / "npz.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "npz.json").read_text())["kid"] is None and "n/a" in r.output


@pytest.mark.fid_weights
def test_cli_checkpoint_of_the_demo_data_against_generated_faces(tmp_path):
    """`ddpmkit fid RUN` after the demo: with no REFERENCE, the generated faces it learned."""
    from conftest import tiny
    from ddpmkit.train import train

    train(tiny(tmp_path / "run", train={"max_steps": 1}), log=lambda m: None, progress=False)
    out = tmp_path / "fid.json"
    args = [
        str(tmp_path / "run"), "--n", "6", "--steps", "2", "--sampler", "ddim", "--device", "cpu",
        "--set", f"fid.weights={FID_WEIGHTS}", "--set", "fid.ref_n=8", "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--out-json", str(out),
    ]
    r = CliRunner().invoke(_cli(), args)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["reference"]["kind"] == "synthetic" and result["reference_n"] == 8
    assert result["n"] == 6 and result["sampler"] == "ddim" and result["steps"] == 2 and result["checkpoint_step"] == 1
    assert result["fid"] > 0 and result["kid"]["mean_x1e3"] > 0  # one step of training: far from the faces
    assert result["kid"]["subset_size"] == 6
    r = CliRunner().invoke(_cli(), args + ["--force"])
    assert r.exit_code == 0 and json.loads(out.read_text())["reference"]["reused"] is True


def test_cli_missing_weights_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(_cli(), [str(tmp_path), "--set", f"fid.weights={tmp_path / 'w.pth'}", "--device", "cpu"])
    assert r.exit_code == 2
    assert "fid.weights" in r.output and "w.pth" in r.output


def test_cli_bad_source_names_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(
        _cli(), [str(tmp_path / "x.npz"), str(empty), "--set", f"fid.weights={FID_WEIGHTS}", "--device", "cpu"]
    )
    assert r.exit_code == 2 and "x.npz" in r.output


def test_prepared_cache_source_filters_the_split(tmp_path):
    """A cache as `ddpmkit prepare` writes it (data/cache.py): images.npy, index.json, COMPLETE."""
    from ddpmkit.fid import cache_source, is_prepared_cache

    path = tmp_path / "celeba-official-8-ddim-all-abc"
    path.mkdir()
    images = np.arange(5 * 3 * 8 * 8, dtype=np.int64).reshape(5, 3, 8, 8).astype(np.uint8)
    np.save(path / "images.npy", images)
    (path / "index.json").write_text(json.dumps({"split": [0, 1, 0, 2, 1], "settings": {"crop": "ddim", "size": 8}}))
    (path / "COMPLETE").write_text("key1")
    assert is_prepared_cache(path)
    val = cache_source(path, "val")
    got = torch.cat(list(val.read(1)))
    assert val.count == 2 and torch.equal(got, torch.from_numpy(images[[1, 4]]))
    assert cache_source(path, "all").count == 5 and cache_source(path, "train", n=1).count == 1
    assert val.identity != cache_source(path, "test").identity
    # prepared again from the same files (touched: new file times, a new cache key): the same pixels,
    # so the same statistics; a changed pixel in the rows read makes new ones
    (path / "COMPLETE").write_text("key2")
    assert cache_source(path, "val").identity == val.identity
    train = cache_source(path, "train").identity
    images[4, 0, 0, 0] ^= 1  # row 4 is a val image
    np.save(path / "images.npy", images)
    assert cache_source(path, "val").identity != val.identity
    assert cache_source(path, "train").identity == train  # rows 0 and 2: unchanged
    with pytest.raises(DdpmkitError, match="only 2"):
        cache_source(path, "val", n=3)


def _png_folder(folder: Path, seed: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_reference_is_the_cache_of_the_training_data_not_another_of_equal_pixels(tmp_path, generated_celeba):
    """Three caches of equal size, crop and split (two PNG folders, a few CelebA JPEGs): the FID
    reference of each dataset is its own cache, never another dataset's (a model trained on a
    folder used to be compared with a CelebA cache of the same size and crop)."""
    from ddpmkit.data.prepare import prepare_dataset
    from ddpmkit.fid import default_reference, find_prepared_cache
    from ddpmkit.settings import DataConfig

    celeba = make_official(tmp_path / "celeba", generated_celeba, generated_celeba.names[:8])
    common = {"cache_dir": tmp_path / "cache", "size": 16, "crop": "ddim", "split": "all", "workers": 1}
    cfgs = {
        "celeba": DataConfig(dataset="celeba", root=celeba, **common),
        "folder": DataConfig(dataset="folder", root=_png_folder(tmp_path / "pngs", 1), **common),
        "other": DataConfig(dataset="folder", root=_png_folder(tmp_path / "more_pngs", 2), **common),
    }
    made = {k: prepare_dataset(cfg, show_progress=False).path for k, cfg in cfgs.items()}
    assert len(set(made.values())) == 3
    for kind, cfg in cfgs.items():
        assert find_prepared_cache(cfg, "all") == made[kind], kind
        ref = default_reference(cfg, "train")  # a folder has no split: all of it, as in training
        assert ref.origin == str(made[kind]) and ref.count == 8, kind
    # a cache that does not say which data it holds (made before prepare recorded it) could be any
    index = json.loads((made["folder"] / "index.json").read_text())
    del index["data"]
    (made["folder"] / "index.json").write_text(json.dumps(index))
    with pytest.raises(DdpmkitError, match="ddpmkit prepare") as e:
        find_prepared_cache(cfgs["folder"], "all")
    assert str(Path(cfgs["folder"].root).resolve()) in str(e.value) and "\n" not in str(e.value)
    assert find_prepared_cache(cfgs["celeba"], "train") == made["celeba"]
