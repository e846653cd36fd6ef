"""`prepare` and its cache on a few hundred CelebA images: the generated release and the real files
of ../shared/celeba (both through the `celeba` fixture; see celeba_files.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from celeba_files import CelebaFiles, make_kaggle, make_official
from ddpmkit.cli.prepare_cmd import prepare as prepare_command
from ddpmkit.data import cache as C
from ddpmkit.data import prepare as P
from ddpmkit.data.celeba import read_partition
from ddpmkit.data.crops import load_square
from ddpmkit.train.data import load_training_images
from ddpmkit.errors import DdpmkitError
from ddpmkit.images import preview_grid
from ddpmkit.settings import DataConfig


@pytest.fixture(scope="module")
def pick(celeba: CelebaFiles) -> list[str]:
    """Early images (with attribute rows) and late ones (no rows; val and test splits)."""
    names = celeba.names
    late = [[n for n in names if n > start][:60] for start in ("100000", "170000", "190000")]
    return names[:120] + late[0] + late[1] + late[2]


@pytest.fixture(scope="module")
def part(celeba: CelebaFiles) -> dict[str, int]:
    return read_partition(celeba.partition)


@pytest.fixture(scope="module")
def root(celeba, pick, tmp_path_factory) -> Path:
    return make_official(tmp_path_factory.mktemp("celeba"), celeba, pick)


@pytest.fixture(scope="module")
def built(root, tmp_path_factory):
    cfg = DataConfig(dataset="celeba", root=root, cache_dir=tmp_path_factory.mktemp("cache"), size=64, split="all", workers=2)
    return cfg, P.prepare_dataset(cfg, show_progress=False)


def test_prepare_all_counts_attributes_and_pixels(built, celeba, pick, part):
    cfg, res = built
    assert not res.reused and res.layout.kind == "official" and C.is_complete(res.path)
    idx, c = res.index, res.counts
    assert c["ok"] == len(pick) and c["skipped"] == 0 and idx["files"] == pick
    want = {s: sum(part[n] == code for n in pick) for s, code in (("train", 0), ("val", 1), ("test", 2))}
    assert {k: c["per_split"][k] for k in want} == want and want["val"] > 0 and want["test"] > 0
    assert idx["split"] == [part[n] for n in pick]
    assert c["attributes_missing"] == sum(n > "020000.jpg" for n in pick) == 180
    assert c["attributes_declared"] == 202599 and c["attributes_rows"] == 20000
    images = C.open_images(res.path)
    assert images.shape == (len(pick), 3, 64, 64) and images.dtype == np.uint8
    for i in (0, 150, len(pick) - 1):  # pool order = file order
        assert np.array_equal(images[i], load_square(str(celeba.images / pick[i]), "ddim", 64))
    attrs = np.load(res.path / C.ATTRIBUTES)
    assert attrs.shape == (len(pick), 40) and attrs.dtype == np.int8
    assert set(np.unique(attrs[:120])) == {-1, 1} and not attrs[120:].any()
    assert idx["settings"] == {"size": 64, "crop": "ddim", "split": "all"}


def test_reuse_invalidation_and_force(built):
    cfg, res = built
    mtime = (res.path / C.IMAGES).stat().st_mtime_ns
    again = P.prepare_dataset(cfg, show_progress=False)
    assert again.reused and again.path == res.path and (res.path / C.IMAGES).stat().st_mtime_ns == mtime
    other = P.prepare_dataset(cfg.model_copy(update={"size": 32, "workers": 1}), show_progress=False)
    assert not other.reused and other.path != res.path and C.open_images(other.path).shape[-1] == 32
    crop = P.prepare_dataset(cfg.model_copy(update={"size": 32, "crop": "full", "workers": 1}), show_progress=False)
    assert crop.path not in (res.path, other.path)
    forced = P.prepare_dataset(cfg.model_copy(update={"size": 32, "workers": 1}), force=True, show_progress=False)
    assert not forced.reused and forced.path == other.path


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_splits_follow_the_partition_file(built, split, celeba, pick, part):
    cfg, _ = built
    res = P.prepare_dataset(cfg.model_copy(update={"split": split, "size": 128, "workers": 1}), show_progress=False)
    code = {"train": 0, "val": 1, "test": 2}[split]
    assert res.index["files"] == [n for n in pick if part[n] == code]
    assert C.open_images(res.path).shape[1:] == (3, 128, 128)
    raw = np.asarray(Image.open(celeba.images / res.index["files"][0]).convert("RGB"))
    assert np.array_equal(C.open_images(res.path)[0], raw[57:185, 25:153].transpose(2, 0, 1))


def test_source_change_makes_a_new_cache(tmp_path, celeba, pick):
    root = make_official(tmp_path / "r", celeba, pick[:10])
    cfg = DataConfig(dataset="celeba", root=root, cache_dir=tmp_path / "c", split="all", workers=1)
    first = P.prepare_dataset(cfg, show_progress=False)
    (root / "img_align_celeba" / pick[10]).symlink_to(celeba.images / pick[10])
    second = P.prepare_dataset(cfg, show_progress=False)
    assert not second.reused and second.path != first.path and second.counts["ok"] == 11


def test_corrupt_files_are_skipped_and_reported(tmp_path, celeba, pick):
    root = make_official(tmp_path / "r", celeba, pick[:70])
    img = root / "img_align_celeba"
    (img / "900001.jpg").write_bytes((celeba.images / pick[0]).read_bytes()[:1500])  # truncated JPEG
    (img / "900002.jpg").write_bytes(b"")  # empty
    (img / "900003.jpg").write_text("not an image at all\n")  # text renamed .jpg
    cfg = DataConfig(dataset="celeba", root=root, cache_dir=tmp_path / "c", split="all", workers=2)
    res = P.prepare_dataset(cfg, show_progress=False)
    c = res.counts
    assert c["ok"] == 70 and c["skipped"] == 3 and c["per_split"]["none"] == 0
    images = np.load(res.path / C.IMAGES, mmap_mode="r")  # shrunk in place, still a valid .npy
    assert images.shape == (70, 3, 64, 64) and res.index["files"] == pick[:70]
    assert (res.path / C.IMAGES).stat().st_size == 70 * 3 * 64 * 64 + images.offset
    report = (res.path / C.REPORT).read_text()
    for n in ("900001.jpg", "900002.jpg", "900003.jpg"):
        assert f"\n{n}\t" in report
    assert "skipped 3" in report


def test_interrupted_prepare_leaves_nothing_complete(tmp_path, monkeypatch, celeba, pick):
    root = make_official(tmp_path / "r", celeba, pick[:200])
    cfg = DataConfig(dataset="celeba", root=root, cache_dir=tmp_path / "c", split="all", workers=1)
    real = P._process_chunk
    calls = []

    def dying(task):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(task)

    monkeypatch.setattr(P, "_process_chunk", dying)
    with pytest.raises(RuntimeError, match="simulated crash"):
        P.prepare_dataset(cfg, show_progress=False)
    assert C.find_caches(cfg.cache_dir) == [] and list(cfg.cache_dir.iterdir()) == []
    # a killed process (no cleanup) leaves a dot-named temporary: never taken as complete
    stale = cfg.cache_dir / ".celeba-official-64-ddim-all-x.abc.tmp"
    stale.mkdir()
    (stale / C.IMAGES).write_bytes(b"\x93NUMPY")
    monkeypatch.setattr(P, "_process_chunk", real)
    res = P.prepare_dataset(cfg, show_progress=False)
    assert not res.reused and res.counts["ok"] == 200 and C.find_caches(cfg.cache_dir) == [res.path]
    # a final folder without its marker is rebuilt, not used
    (res.path / C.MARKER).unlink()
    again = P.prepare_dataset(cfg, show_progress=False)
    assert not again.reused and C.is_complete(again.path)


def test_plain_folder_and_missing_partition(tmp_path, celeba, pick):
    plain = tmp_path / "faces" / "x"
    plain.mkdir(parents=True)
    for n in pick[:5]:
        (plain / n).symlink_to(celeba.images / n)
    cfg = DataConfig(dataset="folder", root=tmp_path / "faces", cache_dir=tmp_path / "c", split="train", workers=1)
    res = P.prepare_dataset(cfg, show_progress=False)
    assert res.layout.kind == "folder" and res.counts["ok"] == 5 and res.index["settings"]["split"] == "all"
    assert any("no partition" in n for n in res.notes) and "attributes_missing" not in res.counts
    nopart = tmp_path / "np"
    (nopart / "img_align_celeba").mkdir(parents=True)
    (nopart / "img_align_celeba" / pick[0]).symlink_to(celeba.images / pick[0])
    with pytest.raises(DdpmkitError, match="list_eval_partition.txt"):
        P.prepare_dataset(DataConfig(dataset="celeba", root=nopart, cache_dir=tmp_path / "c"), show_progress=False)


def test_kaggle_layout_prepare(tmp_path, celeba, pick):
    root = make_kaggle(tmp_path / "k", celeba, pick[100:200])
    cfg = DataConfig(dataset="celeba", root=root, cache_dir=tmp_path / "c", split="all", workers=1)
    res = P.prepare_dataset(cfg, show_progress=False)
    assert res.layout.kind == "kaggle" and res.counts["ok"] == 100 and res.index["files"] == pick[100:200]
    assert res.counts["attributes_missing"] == sum(n > "020000.jpg" for n in pick[100:200])
    assert res.counts["attributes_declared"] is None


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(prepare_command)
    app.command("noop")(lambda: None)  # a second command keeps `prepare` a subcommand
    return app


def test_cli_prepare_prints_layout_counts_and_table(root, tmp_path, pick, part):
    args = ["prepare", "--data-root", str(root), "--cache-dir", str(tmp_path), "--size", "32", "--split", "val", "--workers", "1"]
    r = CliRunner().invoke(_app(), args)
    assert r.exit_code == 0, r.output
    n_val = sum(part[n] == 1 for n in pick)
    assert "official" in r.output and f"{n_val} ok, 0 skipped" in r.output and "without attributes" in r.output
    assert "prepared dataset" in r.output and str(tmp_path) in r.output.replace("\n", "")
    r2 = CliRunner().invoke(_app(), args)
    assert r2.exit_code == 0 and "reused" in r2.output


def test_cli_missing_root_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMKIT_DATA_ROOT", str(tmp_path / "nowhere"))
    r = CliRunner().invoke(_app(), ["prepare", "--size", "64", "--cache-dir", str(tmp_path / "c")])
    assert r.exit_code == 2
    assert "nowhere" in r.output and "jessicali9530/celeba-dataset" in r.output and "CelebA.html" in r.output


def test_describe_preview_and_load_training_images(built, tmp_path, pick):
    cfg, res = built
    info = C.describe_cache(res.path)
    assert info["images"] == len(pick) and info["per_split"]["val"] == res.counts["per_split"]["val"]
    assert info["settings"]["crop"] == "ddim" and info["bytes"] > len(pick) * 3 * 64 * 64
    png = preview_grid(C.open_images(res.path), tmp_path / "grid.png", n=16)
    assert Image.open(png).size == (8 * 66 + 2, 2 * 66 + 2)
    images, meta = load_training_images(cfg)
    assert isinstance(images, np.memmap) and images.shape == (len(pick), 3, 64, 64)
    assert meta["cache"] == str(res.path) and meta["counts"]["ok"] == len(pick)
    with pytest.raises(DdpmkitError, match="not a complete"):
        C.describe_cache(tmp_path)
