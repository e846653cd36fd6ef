"""Crop conventions for CelebA and the decode-crop-resize of one image.

Crops, in pixels of the 178x218 aligned CelebA image (x = column, y = row):

- ``ddim``: the 128x128 box at top 57, left 25 (rows 57:185, columns 25:153), as in DDIM,
  Analytic-DPM and DPM-Solver (the box centred on (x, y) = (89, 121)).
- ``center140``: the central 140x140 box (top 39, left 19), as in NCSN/NCSNv2 and score-SDE.
- ``full``: the whole image centre-cropped to a square (178x178 at top 20); never squashed.

Other image sizes (plain folders): when the aspect ratio is CelebA's (178:218 within 1 %, e.g.
a 356x436 copy) the ddim/center140 boxes are scaled proportionally; otherwise those crops are
face-alignment specific and meaningless, so they fall back to the centre square (``full``).

Resampling (antialiased): at an integer ratio (128 -> 64, the main case) the exact k x k mean
(`Image.reduce`, i.e. area averaging: no aliasing, no ringing, fastest). At other ratios
(140 -> 64, 178 -> 64) PIL's LANCZOS, whose kernel PIL widens by the ratio when shrinking, so it
is antialiased; PIL's BOX is not used there because it samples the box at whole pixels and gives
uneven weights at fractional ratios. Enlarging (small images in a plain folder) uses BICUBIC.

Fast JPEG decode: `Image.draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale straight from the
DCT coefficients (reduced pixel i covers full-resolution pixels [k*i, k*(i+1))). It is used only
when the crop box lies on that k-grid (offsets and side divisible by k) and the reduced box still
has at least `size` pixels; the DCT-domain reduction is close to a k x k mean (under 1 level of
255 apart), so the result stays within ~2 levels (mean) of the full-resolution path. The ddim and
center140 boxes start on odd pixels, so 178x218 images decode at full resolution for them
(a half-pixel-shifted draft would blur); ``full`` and large images (1024 px folders) use it.
JPEGs with an EXIF rotation decode at full resolution (their box is known only after rotating).

Pixels: `to_rgb` is the one decode of every command (prepare here, noise-demo through
`images.load_image`): EXIF orientation applied, 16-bit grayscale scaled to 8 bits (not
clipped), transparent pixels composited on white.
"""

from __future__ import annotations

from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps

from ddpmkit.errors import DdpmkitError

CROPS = ("ddim", "center140", "full")
CELEBA_W, CELEBA_H = 178, 218
# (left, top, side) on the 178x218 image
_BOXES = {"ddim": (25, 57, 128), "center140": (19, 39, 140)}

Box = tuple[int, int, int, int]
ORIENTATION = 0x0112  # the EXIF tag
BACKGROUND = (255, 255, 255)  # what transparent pixels become
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _center_square(width: int, height: int) -> Box:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def is_celeba_aspect(width: int, height: int) -> bool:
    return abs(width / height - CELEBA_W / CELEBA_H) <= 0.01 * CELEBA_W / CELEBA_H


def crop_box(crop: str, width: int, height: int) -> Box:
    """The square (left, top, right, bottom) to take from a width x height image."""
    if crop not in CROPS:
        raise DdpmkitError(f"unknown crop '{crop}'; choose one of: {', '.join(CROPS)}")
    if crop == "full" or not is_celeba_aspect(width, height):
        return _center_square(width, height)
    left, top, side = _BOXES[crop]
    if (width, height) != (CELEBA_W, CELEBA_H):
        s = width / CELEBA_W
        left, top, side = round(left * s), round(top * s), max(1, round(side * s))
        left, top = min(left, width - side), min(top, height - side)
    return left, top, left + side, top + side


def draft_scale(box: Box, size: int) -> int:
    """Largest JPEG draft factor k in (8, 4, 2) that keeps the box on the k-grid and >= size px."""
    left, top, right, _ = box
    side = right - left
    for k in (8, 4, 2):
        if left % k == 0 and top % k == 0 and side % k == 0 and side // k >= size:
            return k
    return 1


def load_square(source: Union[str, IO[bytes]], crop: str, size: int) -> np.ndarray:
    """Decode (`to_rgb`), crop and resize one image. Returns (3, size, size) uint8 in [0, 255].

    Raises whatever PIL raises for corrupt, truncated or non-image files (the caller counts them).
    """
    with Image.open(source) as im:
        width, height = im.size
        box = crop_box(crop, width, height)
        scale = 1.0
        # a rotated JPEG's box is only known after the rotation: decode those at full size
        if im.format == "JPEG" and im.getexif().get(ORIENTATION, 1) == 1:
            k = draft_scale(box, size)
            if k > 1:
                got = im.draft("RGB", (width // k, height // k))
                if got is not None:
                    scale = width / got[1][2]  # the factor libjpeg actually used
        im.load()  # decodes; raises for truncated or corrupt data
        rgb = to_rgb(im)
        if rgb.size != (width, height) and scale == 1.0:  # EXIF rotated it
            box = crop_box(crop, *rgb.size)
        fbox = tuple(c / scale for c in box)
        side = fbox[2] - fbox[0]
        if all(float(c).is_integer() for c in fbox) and side >= size and side % size == 0:
            ibox = tuple(int(c) for c in fbox)
            # the raw pixels, or an exact k x k mean (= BOX at an integer ratio, but faster)
            out = rgb.crop(ibox) if side == size else rgb.crop(ibox).reduce(int(side) // size)
        else:
            resample = Image.Resampling.LANCZOS if side >= size else Image.Resampling.BICUBIC
            out = rgb.resize((size, size), resample=resample, box=fbox)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def to_rgb(im: Image.Image) -> Image.Image:
    """A decoded PIL image as 8-bit RGB: the one way `prepare` and `noise-demo` read pixels.

    - EXIF orientation is applied (a photo stored sideways comes out upright);
    - 16-bit grayscale (modes I;16*, and I taken as 16-bit) is scaled, v -> round(v / 257),
      so 65535 -> 255 and the mean is kept (PIL's own conversion clips it to almost white);
    - transparency (RGBA, LA, PA, or P/L/RGB with a transparent colour) is composited on
      white, `BACKGROUND`, so colour hidden under transparent pixels never shows;
    - other modes (L, 1, P, CMYK, YCbCr) are converted by PIL.
    Raises ValueError for modes with no fixed 8-bit meaning (F, 32-bit float; LAB; HSV).
    """
    if im.getexif().get(ORIENTATION, 1) != 1:
        ImageOps.exif_transpose(im, in_place=True)
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in _SIXTEEN_BIT:
        v = np.asarray(im).astype(np.float32)
        return Image.fromarray(np.clip(np.rint(v / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("F", "LAB", "HSV"):
        raise ValueError(f"image mode {im.mode} has no 8-bit RGB meaning; save it as 8- or 16-bit RGB or grayscale")
    if im.mode in _ALPHA or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))  # straight alpha: a*fg + (1 - a)*bg
        return out
    return im.convert("RGB")
