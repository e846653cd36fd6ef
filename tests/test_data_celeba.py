"""CelebA layouts, metadata parsing and crop geometry, on the generated CelebA release and on the
real files of ../shared/celeba (both through the `celeba` fixture; see celeba_files.py)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from PIL import Image

from celeba_files import make_kaggle, make_official
from conftest import CELEBA
from ddpmkit.data.celeba import detect_layout, list_images, read_attributes, read_partition
from ddpmkit.data.crops import crop_box, draft_scale, load_square
from ddpmkit.errors import DdpmkitError


@pytest.fixture(scope="module")
def first(celeba) -> list[str]:
    return celeba.names[:40]


@pytest.mark.shared_celeba
def test_detects_official_layout_of_shared():
    layout = detect_layout(CELEBA)
    assert layout.kind == "official"
    assert layout.images == CELEBA / "img_align_celeba" and layout.partition == CELEBA / "list_eval_partition.txt"
    assert layout.attributes == CELEBA / "list_attr_celeba_000001-020000.txt"
    assert read_attributes(layout.attributes).get("000001.jpg")[2] == 1  # 000001 is Attractive


def test_detects_official_layout(celeba, first, tmp_path):
    root = make_official(tmp_path, celeba, first)
    layout = detect_layout(root)
    assert layout.kind == "official" and list_images(layout) == first and layout.images == root / "img_align_celeba"
    assert layout.partition == root / celeba.partition.name and layout.attributes == root / celeba.attributes.name


def test_detects_kaggle_layout(celeba, first, tmp_path):
    make_kaggle(tmp_path, celeba, first)
    layout = detect_layout(tmp_path)
    assert layout.kind == "kaggle"
    assert list_images(layout) == first
    official = read_partition(celeba.partition)
    assert read_partition(layout.partition) == {n: official[n] for n in first}
    kaggle, official = read_attributes(layout.attributes), read_attributes(celeba.attributes)
    assert kaggle.names == official.names and kaggle.declared is None
    for n in first:
        assert np.array_equal(kaggle.get(n), official.get(n))


def test_detects_zip_and_plain_folder(celeba, first, tmp_path):
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w") as zf:
        for n in first[:5]:
            zf.write(celeba.images / n, f"img_align_celeba/{n}")
        zf.writestr("__MACOSX/img_align_celeba/._000001.jpg", b"junk")
    layout = detect_layout(tmp_path)
    assert layout.kind == "official-zip"
    assert list_images(layout) == [f"img_align_celeba/{n}" for n in first[:5]]

    plain = tmp_path / "faces"
    (plain / "a" / "b").mkdir(parents=True)
    (plain / "a" / "b" / "x.jpg").symlink_to(celeba.images / first[0])
    (plain / "y.png").write_bytes(b"")
    (plain / "notes.txt").write_text("hi")
    layout = detect_layout(plain)
    assert layout.kind == "folder"
    assert list_images(layout) == ["a/b/x.jpg", "y.png"]


def test_missing_root_message_is_one_line_with_both_sources(tmp_path):
    for root in (tmp_path / "nope", tmp_path):  # absent, and present but empty
        with pytest.raises(DdpmkitError) as e:
            detect_layout(root)
        msg = str(e.value)
        assert "\n" not in msg and str(root.resolve()) in msg
        assert "mmlab.ie.cuhk.edu.hk/projects/CelebA.html" in msg and "jessicali9530/celeba-dataset" in msg


def test_truncated_attribute_file(celeba):
    table = read_attributes(celeba.attributes)
    assert table.declared == 202599 and table.rows == 20000 and len(table.names) == 40
    assert table.names[0] == "5_o_Clock_Shadow" and table.names[-1] == "Young"
    v = table.get("000001.jpg")
    assert v.dtype == np.int8 and set(np.unique(v)) <= {-1, 1}
    assert table.get("020001.jpg") is None


def test_crop_boxes():
    assert crop_box("ddim", 178, 218) == (25, 57, 153, 185)
    assert crop_box("center140", 178, 218) == (19, 39, 159, 179)
    assert crop_box("full", 178, 218) == (0, 20, 178, 198)
    assert crop_box("ddim", 356, 436) == (50, 114, 306, 370)  # CelebA aspect: scaled box
    assert crop_box("ddim", 300, 200) == (50, 0, 250, 200)  # other aspect: centre square
    with pytest.raises(DdpmkitError, match="unknown crop 'wide'"):
        crop_box("wide", 178, 218)
    assert draft_scale((25, 57, 153, 185), 64) == 1  # odd offsets: no exact draft
    assert draft_scale((0, 20, 178, 198), 64) == 2
    assert draft_scale((0, 0, 1024, 1024), 64) == 8


def test_ddim_crop_at_128_is_the_raw_box(celeba, first):
    for name in first[:5]:
        raw = np.asarray(Image.open(celeba.images / name).convert("RGB"))
        got = load_square(str(celeba.images / name), "ddim", 128)
        assert got.shape == (3, 128, 128) and got.dtype == np.uint8
        assert np.array_equal(got, raw[57:185, 25:153].transpose(2, 0, 1))


def test_ddim_crop_at_64_is_the_2x2_mean(celeba, first):
    raw = np.asarray(Image.open(celeba.images / first[0]).convert("RGB")).astype(np.float64)
    box = raw[57:185, 25:153]
    want = box.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)
    got = load_square(str(celeba.images / first[0]), "ddim", 64).astype(np.float64)
    assert np.abs(got - want).max() <= 1.0


def test_draft_decode_matches_full_decode(celeba, first):
    # `full` at 64 decodes at half resolution; it must agree with the full-resolution path
    for name in first[:5]:
        raw = Image.open(celeba.images / name).convert("RGB")
        want = np.asarray(raw.resize((64, 64), Image.Resampling.LANCZOS, box=(0, 20, 178, 198))).astype(float).transpose(2, 0, 1)
        got = load_square(str(celeba.images / name), "full", 64).astype(float)
        shifted = np.asarray(raw.resize((64, 64), Image.Resampling.LANCZOS, box=(0, 24, 178, 202))).astype(float).transpose(2, 0, 1)
        err = np.abs(got - want).mean()
        assert err < 2.5 and err < 0.5 * np.abs(shifted - want).mean()


def test_other_sizes_and_modes(celeba, first, tmp_path):
    big = Image.open(celeba.images / first[0]).convert("L").resize((356, 436))
    big.save(tmp_path / "g.png")
    out = load_square(str(tmp_path / "g.png"), "center140", 32)
    assert out.shape == (3, 32, 32) and np.array_equal(out[0], out[1])
    small = Image.new("RGB", (20, 30), (10, 200, 30))
    small.save(tmp_path / "s.png")
    up = load_square(str(tmp_path / "s.png"), "ddim", 64)  # falls back to centre square, enlarged
    assert up.shape == (3, 64, 64) and (np.abs(up[:, 32, 32].astype(int) - [10, 200, 30]) <= 1).all()
