"""Grids, PNGs, GIFs and image loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmkit.errors import DdpmkitError
from ddpmkit.images import (
    center_square,
    load_image,
    make_grid_image,
    save_gif,
    save_grid,
    readable_scale,
    save_images,
    scale_nearest,
    to_uint8,
    upscale_nearest,
)


def _rand(b: int, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


def test_to_uint8_values_and_clamp():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0]).reshape(1, 3, 1, 2)
    u = to_uint8(x)
    assert u.dtype == torch.uint8 and u.shape == (1, 3, 1, 2)
    assert u.flatten().tolist() == [0, 0, 128, 191, 255, 255]  # round((x+1)*127.5), clamped


def test_make_grid_image_layout_and_content():
    x = _rand(6)
    img = make_grid_image(x, padding=2)  # ceil(sqrt(6)) = 3 per row -> 3 x 2 tiles
    assert img.mode == "RGB"
    assert img.size == (3 * (8 + 2) + 2, 2 * (8 + 2) + 2)
    arr = np.asarray(img)
    first = to_uint8(x)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(arr[2:10, 2:10], first)
    fifth = to_uint8(x)[4].permute(1, 2, 0).numpy()  # row 1, column 1
    np.testing.assert_array_equal(arr[12:20, 12:20], fifth)
    assert arr[0].max() == 0  # black padding
    assert make_grid_image(x, nrow=6, padding=0).size == (48, 8)


def test_save_grid_and_images_round_trip(tmp_path: Path):
    x = _rand(3, 8, 8)
    grid = save_grid(x, tmp_path / "sub" / "grid.png", nrow=1, scale=1)
    assert Image.open(grid).size == (8 + 4, 3 * 10 + 2)
    paths = save_images(x, tmp_path / "imgs", prefix="img", start=7)
    assert [p.name for p in paths] == ["img_00007.png", "img_00008.png", "img_00009.png"]
    for p, img in zip(paths, x):
        back = load_image(p)  # lossless PNG: exact after quantisation
        assert back.shape == (1, 3, 8, 8) and back.min() >= -1 and back.max() <= 1
        assert torch.equal(to_uint8(back), to_uint8(img.unsqueeze(0)))
    # atomic writes leave no temporaries behind
    assert sorted(q.name for q in (tmp_path / "imgs").iterdir()) == [p.name for p in paths]


def test_save_grid_is_readable_by_default(tmp_path: Path):
    x = _rand(16, 32, 32)  # 16 faces of 32 px tile to 138 x 138 px
    native = np.asarray(make_grid_image(x))
    assert native.shape[:2] == (138, 138)
    big = np.asarray(Image.open(save_grid(x, tmp_path / "g.png")).convert("RGB"))
    assert big.shape[:2] == (138 * 4, 138 * 4)  # the smallest whole factor reaching 512 px
    np.testing.assert_array_equal(big[::4, ::4], native)  # nearest: every pixel a 4x4 square
    np.testing.assert_array_equal(big[3::4, 3::4], native)
    three = Image.open(save_grid(x, tmp_path / "g3.png", scale=3))
    assert three.size == (138 * 3, 138 * 3)
    assert Image.open(save_grid(x, tmp_path / "g1.png", scale=1)).size == (138, 138)
    wide = Image.open(save_grid(_rand(4, 16, 16), tmp_path / "w.png", nrow=4))  # 74 x 20: the longer side counts
    assert wide.size == (74 * 7, 20 * 7)
    with pytest.raises(ValueError, match="whole number"):
        save_grid(x, tmp_path / "bad.png", scale=0)


def test_readable_scale():
    assert readable_scale(138, 138) == 4
    assert readable_scale(512, 10) == 1 and readable_scale(600, 600) == 1
    assert readable_scale(8, 8) == 64
    img = Image.new("RGB", (3, 2))
    assert scale_nearest(img, 1) is img and scale_nearest(img, 5).size == (15, 10)


def _gif_info(path: Path) -> tuple[int, list[int], int | None]:
    with Image.open(path) as im:
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
        return im.n_frames, durations, im.info.get("loop")


def test_save_gif_frames_durations_loop(tmp_path: Path):
    frames = [make_grid_image(_rand(4, seed=k)) for k in range(5)]
    path = save_gif(frames, tmp_path / "a.gif", duration_ms=60, hold_last_ms=900, loop=0)
    n, durations, loop = _gif_info(path)
    assert n == 5
    assert durations == [60, 60, 60, 60, 900]
    assert loop == 0
    assert [q.name for q in tmp_path.iterdir()] == ["a.gif"]


def _gif_rgb_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        frames = []
        for k in range(im.n_frames):
            im.seek(k)
            frames.append(np.asarray(im.convert("RGB")))
        return frames


def test_save_gif_shares_one_palette_and_keeps_black_and_white_exact(tmp_path: Path):
    rng = np.random.default_rng(0)
    frames = []
    for k in range(4):
        a = np.full((40, 60, 3), 255, dtype=np.uint8)  # a white label band ...
        a[:, :2] = 0  # ... black padding ...
        a[10:30, 10:50] = rng.integers(0, 256, (20, 40, 3))  # ... and noise that changes
        a[5, 30] = (250, 250, 249)  # a near-white that must not pull white off 255
        frames.append(a)
    path = save_gif([Image.fromarray(a) for a in frames], tmp_path / "p.gif", colors=64)
    back = _gif_rgb_frames(path)
    assert len(back) == 4
    for a, b in zip(frames, back):
        assert (b[35:, 5:] == 255).all() and (b[:, :2] == 0).all()
        # no dithering: each pixel becomes one nearby palette colour
        assert np.abs(b[10:30, 10:50].astype(int) - a[10:30, 10:50]).mean() < 25
    with Image.open(path) as im:
        assert len(im.getpalette() or []) // 3 <= 64
    with pytest.raises(ValueError, match="colors"):
        save_gif([Image.fromarray(frames[0])], tmp_path / "q.gif", colors=300)


def test_save_gif_accepts_tensors(tmp_path: Path):
    grids = [_rand(4, seed=k) for k in range(3)]  # (B, 3, H, W) batches are tiled
    singles = [_rand(1, 20, 20, seed=k)[0] for k in range(3)]  # (3, H, W) in [-1, 1]
    assert _gif_info(save_gif(grids, tmp_path / "g.gif", loop=2))[0] == 3
    assert _gif_info(save_gif(grids, tmp_path / "g.gif", loop=2))[2] == 2
    assert _gif_info(save_gif(singles, tmp_path / "s.gif"))[0] == 3
    with pytest.raises(ValueError, match="differ in size"):
        save_gif([grids[0][0], singles[0]], tmp_path / "bad.gif")


def test_save_gif_frames_are_exactly_the_palette_mapping(tmp_path: Path):
    """Read back, every frame is its pixels mapped to the shared palette (nearest colour), and
    frames of a few colours (a palette with repeated entries) keep them exactly."""
    from ddpmkit.images import palette_indices, palette_lookup, shared_palette

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for _ in range(3)]
    palette = shared_palette(frames)
    lookup = palette_lookup(palette)
    back = _gif_rgb_frames(save_gif([Image.fromarray(a) for a in frames], tmp_path / "n.gif"))
    for a, b in zip(frames, back, strict=True):
        assert np.array_equal(b, palette[palette_indices(a, lookup)])
    flat = np.zeros((16, 16, 3), dtype=np.uint8)
    flat[4:8] = (200, 30, 40)
    flat[8:] = 255
    two = flat.copy()
    two[:4] = (10, 120, 250)
    back = _gif_rgb_frames(save_gif([Image.fromarray(flat), Image.fromarray(two)], tmp_path / "f.gif", colors=16))
    assert np.array_equal(back[0], flat) and np.array_equal(back[1], two)


def test_save_gif_stores_only_what_changes(tmp_path: Path):
    """30 frames that differ in one 8x8 patch cost far less than 30 frames of fresh noise."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    frames = []
    for k in range(30):
        a = base.copy()
        a[:8, :8] = rng.integers(0, 256, (8, 8, 3))
        frames.append(Image.fromarray(a))
    still = save_gif(frames, tmp_path / "still.gif").stat().st_size
    moving = save_gif([Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)) for _ in range(30)],
                      tmp_path / "moving.gif").stat().st_size
    assert still < moving / 5, (still, moving)


def test_load_image_missing(tmp_path: Path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(DdpmkitError) as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DdpmkitError, match="directory"):
        load_image(tmp_path)


def test_load_image_corrupt(tmp_path: Path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(DdpmkitError) as e:
        load_image(junk)
    assert str(junk) in str(e.value) and "\n" not in str(e.value)
    # a real JPEG cut short fails at load time, not later
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DdpmkitError) as e:
        load_image(cut)
    assert str(cut) in str(e.value) and "\n" not in str(e.value)


def _bands(w: int, h: int, horizontal: bool) -> Image.Image:
    """Red | green | blue bands along the longer side; only the green middle is square-sized."""
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    long_side, short = (w, h) if horizontal else (h, w)
    edge = (long_side - short) // 2
    for lo, hi, ch in ((0, edge, 0), (edge, edge + short, 1), (edge + short, long_side, 2)):
        if horizontal:
            arr[:, lo:hi, ch] = 255
        else:
            arr[lo:hi, :, ch] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("w,h,horizontal", [(12, 6, True), (4, 10, False)])
def test_load_image_centre_crop(tmp_path: Path, w: int, h: int, horizontal: bool):
    path = tmp_path / "bands.png"
    _bands(w, h, horizontal).save(path)
    side = min(w, h)
    x = load_image(path)
    assert x.shape == (1, 3, side, side)
    green = torch.tensor([-1.0, 1.0, -1.0]).reshape(1, 3, 1, 1).expand_as(x)
    assert torch.equal(x, green)  # the red and blue bands are cropped away exactly
    y = load_image(path, size=3)
    assert y.shape == (1, 3, 3, 3)
    assert torch.allclose(y, green[:, :, :3, :3], atol=1e-6)


def test_load_image_resizes_real_photo_shape(tmp_path: Path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (178, 218), (200, 100, 50)).save(path)
    x = load_image(path, size=64)
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, 32, 32], torch.tensor([200, 100, 50]) / 127.5 - 1, atol=0.03)


def test_center_square_odd_excess():
    img = Image.new("RGB", (7, 4))
    assert center_square(img).size == (4, 4)


def test_upscale_nearest():
    img = make_grid_image(_rand(1, 32, 40))  # one image: no padding, 40 wide x 32 high
    assert img.size == (40, 32)
    big = upscale_nearest(img, min_side=256)
    factor = 8  # the smallest whole factor with 32 * factor >= 256
    assert big.size == (40 * factor, 32 * factor)
    arr, small = np.asarray(big), np.asarray(img)
    np.testing.assert_array_equal(arr[::factor, ::factor], small)
    large = Image.new("RGB", (300, 300))
    assert upscale_nearest(large, 256).size == (300, 300)
