"""Images that used to decode silently wrong (issue 12 §4): one decode for prepare and noise-demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpmkit.data.crops import BACKGROUND, load_square, to_rgb
from ddpmkit.errors import DdpmkitError
from ddpmkit.images import load_image


def _both(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) uint8 from prepare's decode and from noise-demo's (mapped back to 0..255)."""
    square = load_square(str(path), "full", size).astype(np.int64)
    demo = np.rint((load_image(path, size)[0].numpy() + 1.0) * 127.5).astype(np.int64)
    return square, demo


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, fmt):
    v = np.random.default_rng(0).integers(0, 65536, (24, 24)).astype(np.uint16)
    v[0, 0], v[0, 1] = 0, 65535
    path = tmp_path / f"g16.{fmt}"
    Image.fromarray(v).save(path)
    assert Image.open(path).mode == "I;16"
    want = np.rint(v / 257.0)
    square, demo = _both(path, 24)
    for got in (square, demo):
        assert np.array_equal(got[0], want) and np.array_equal(got[1], got[2]) and np.array_equal(got[0], got[2])
        assert abs(got.mean() - v.mean() / 257.0) < 0.5  # before: ~254 (PIL clips to 255)
    assert np.asarray(to_rgb(Image.fromarray(v.astype(np.int32))))[0, 1].tolist() == [255, 255, 255]  # mode I


def _rgba(tmp_path: Path) -> Path:
    a = np.zeros((16, 16, 4), np.uint8)
    a[:, :8] = (200, 10, 10, 255)  # opaque red on the left
    a[:, 8:] = (0, 255, 0, 0)  # green hidden under alpha 0 on the right
    a[:, 12:] = (0, 0, 255, 128)  # half-transparent blue on the far right
    path = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(path)
    return path


def test_rgba_is_composited_on_white(tmp_path):
    square, demo = _both(_rgba(tmp_path), 16)
    for got in (square, demo):
        assert got[:, 5, 2].tolist() == [200, 10, 10]
        assert got[:, 5, 9].tolist() == list(BACKGROUND)  # before: (0, 255, 0), the hidden colour
        blend = np.array([0, 0, 255]) * 128 / 255 + np.array(BACKGROUND) * 127 / 255
        assert np.abs(got[:, 5, 14] - blend).max() <= 1


def test_la_and_palette_transparency_are_composited_on_white(tmp_path):
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0], la[:4, :, 1], la[4:, :, 1] = 40, 255, 0  # gray 40, bottom half fully transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    p = Image.new("P", (8, 8), 1)
    p.putpalette([10, 20, 30, 0, 255, 0] + [0, 0, 0] * 254)  # index 1: green, declared transparent
    p.paste(0, (0, 0, 8, 4))
    p.save(tmp_path / "p.png", transparency=1)
    p.save(tmp_path / "p.gif", transparency=1)
    top_la, top_p = [40, 40, 40], [10, 20, 30]
    for name, top in (("la.png", top_la), ("p.png", top_p), ("p.gif", top_p)):
        for got in _both(tmp_path / name, 8):
            assert got[:, 1, 3].tolist() == top and got[:, 6, 3].tolist() == list(BACKGROUND), name


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied(tmp_path, orientation):
    # stored 320 wide x 192 tall: the left half dark, the right half bright
    stored = np.full((192, 320, 3), 230, np.uint8)
    stored[:, :160] = 20
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    square, demo = _both(path, 24)  # "full" at 24 would take the 1/8 draft path if it were upright
    for got in (square, demo):
        top, bottom = got[:, :8].mean(), got[:, -8:].mean()
        left, right = got[:, :, :8].mean(), got[:, :, -8:].mean()
        if orientation == 6:  # rotate 90° clockwise to display: the stored left becomes the top
            assert top < 40 and bottom > 210, (top, bottom)
        elif orientation == 8:  # counter-clockwise: the stored left becomes the bottom
            assert top > 210 and bottom < 40, (top, bottom)
        else:  # 180°: left and right swap
            assert left > 210 and right < 40, (left, right)


def test_upright_jpeg_keeps_the_draft_path(tmp_path, monkeypatch):
    stored = np.full((192, 320, 3), 128, np.uint8)
    path = tmp_path / "upright.jpg"
    Image.fromarray(stored).save(path, "JPEG", quality=95)
    from PIL.JpegImagePlugin import JpegImageFile

    calls = []
    real = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, *a: calls.append(a) or real(self, *a))
    out = load_square(str(path), "full", 24)
    assert calls and out.shape == (3, 24, 24) and abs(out.mean() - 128) < 2


def test_float_images_are_refused_not_guessed(tmp_path):
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DdpmkitError, match=r"cannot read image .*f\.tif: image mode F has no 8-bit RGB meaning"):
        load_image(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="mode F"):
        load_square(str(tmp_path / "f.tif"), "full", 8)
