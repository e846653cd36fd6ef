"""Inpainting masks: built-in regions of an aligned face, or a user's PNG. True = fill.

A mask is a (S, S) bool tensor on the CPU, True where the image is to be filled and False where
it is known (a user's PNG: white = fill, black = keep).

Built-ins, as fractions of the image side:
- ``box``: the centre square, a quarter of the image (sides 0.25..0.75);
- ``left``, ``right``, ``top``, ``bottom``: that half;
- ``eyes``, ``mouth``: boxes around both eyes, or the mouth, where the run's faces have them
  (`FACE_BOXES`): on CelebA through the run's crop, from the mean landmarks of the aligned
  178x218 images (eyes near (69, 111) and (108, 111), mouth corners near (71, 152) and
  (106, 152)); on the demo faces from their drawing rule (`data.synthetic`);
- ``random``: a few boxes and thick strokes from the seed, filling 15-50 % of the image.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch import Tensor

from ddpmkit.data.crops import CELEBA_H, CELEBA_W, crop_box
from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import MASK_NAMES

MASKS = MASK_NAMES
Frac = tuple[float, float, float, float]  # (left, top, right, bottom), fractions of the side

# eye and mouth boxes on the aligned 178x218 CelebA image, pixels (left, top, right, bottom)
_CELEBA_EYES = (45, 95, 133, 127)
_CELEBA_MOUTH = (60, 138, 118, 170)
# the demo faces (data.synthetic): head centre (0.5 ± 0.06, 0.52 + [-0.04, 0.05]), eyes at
# 0.02-0.16 head heights above it and ~0.41 head widths to each side, mouth 0.42-0.55 head
# heights below it; boxes that hold them for most faces
_DEMO_EYES: Frac = (0.25, 0.39, 0.75, 0.60)
_DEMO_MOUTH: Frac = (0.33, 0.60, 0.67, 0.80)
RANDOM_FRACTION = (0.15, 0.5)  # a random mask's share of the image, bounds


def _celeba_frac(box: tuple[int, int, int, int], crop: str) -> Frac:
    left, top, right, _ = crop_box(crop, CELEBA_W, CELEBA_H)
    side = right - left
    return ((box[0] - left) / side, (box[1] - top) / side, (box[2] - left) / side, (box[3] - top) / side)


def face_boxes(layout: str) -> dict[str, Frac]:
    """The eyes and mouth boxes for a layout: "demo" (the generated faces) or a CelebA crop
    (ddim, center140, full)."""
    if layout == "demo":
        return {"eyes": _DEMO_EYES, "mouth": _DEMO_MOUTH}
    return {"eyes": _celeba_frac(_CELEBA_EYES, layout), "mouth": _celeba_frac(_CELEBA_MOUTH, layout)}


def _box_mask(size: int, frac: Frac) -> Tensor:
    """True inside the box of fractions `frac`, pixel edges rounded to the nearest."""
    left, top, right, bottom = (min(max(round(f * size), 0), size) for f in frac)
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top:bottom, left:right] = True
    return m


def random_mask(size: int, seed: int) -> Tensor:
    """1-2 boxes and 2-4 thick strokes drawn from `seed`, redrawn (from the same stream) until
    they fill RANDOM_FRACTION of the image. (size, size) bool."""
    rng = random.Random(f"ddpmkit-mask:{seed}")
    lo, hi = RANDOM_FRACTION
    while True:
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(1, 2)):
            w, h = (rng.uniform(0.15, 0.4) * size for _ in range(2))
            x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
            draw.rectangle([x, y, x + w, y + h], fill=255)
        for _ in range(rng.randint(2, 4)):
            points = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(rng.randint(2, 4))]
            draw.line(points, fill=255, width=max(1, round(rng.uniform(0.06, 0.12) * size)), joint="curve")
        m = torch.from_numpy(np.asarray(img) >= 128)
        if lo <= float(m.float().mean()) <= hi:
            return m


def builtin_mask(name: str, size: int, layout: str = "ddim", seed: int = 0) -> Tensor:
    """The built-in mask `name` (see MASKS) for size x size images. (size, size) bool."""
    halves: dict[str, Frac] = {"box": (0.25, 0.25, 0.75, 0.75), "left": (0, 0, 0.5, 1), "right": (0.5, 0, 1, 1),
                               "top": (0, 0, 1, 0.5), "bottom": (0, 0.5, 1, 1)}
    if name in halves:
        return _box_mask(size, halves[name])
    if name in ("eyes", "mouth"):
        return _box_mask(size, face_boxes(layout)[name])
    if name == "random":
        return random_mask(size, seed)
    raise DdpmkitError(f"unknown mask '{name}'; choose one of: {', '.join(MASKS)}, or a PNG file (white = fill)")


def load_mask(path: Path, size: int, image_size: tuple[int, int], crop: str) -> Tensor:
    """A user's mask file (white = fill, black = keep; transparent = keep), as (size, size) bool.

    A mask the size of the input image (width, height = image_size) is cropped as the image was
    (`crop`), then resized (nearest); a square mask is resized (nearest). Any other shape, an
    unreadable file or a mask with nothing to fill raises DdpmkitError.
    """
    path = Path(path)
    if not path.is_file():
        raise DdpmkitError(f"mask not found: {path} (a mask is a PNG file or one of: {', '.join(MASKS)})")
    try:
        with Image.open(path) as im:
            im.load()
            gray = _gray(im)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = "not a readable image file" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0]
        raise DdpmkitError(f"cannot read mask {path}: {reason}") from None
    w, h = gray.size
    if (w, h) == tuple(image_size):
        gray = gray.crop(crop_box(crop, w, h))
    elif w != h:
        raise DdpmkitError(f"mask {path} is {w}x{h}: make it the image's size ({image_size[0]}x{image_size[1]}) "
                           f"or square")
    m = torch.from_numpy(np.asarray(gray.resize((size, size), Image.Resampling.NEAREST)) >= 128)
    if not m.any():
        raise DdpmkitError(f"mask {path} has no white pixels: nothing to fill (white = fill, black = keep)")
    return m


def _gray(im: Image.Image) -> Image.Image:
    """8-bit grayscale; transparent pixels become black (keep)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("L", im.size, 0)
        out.paste(rgba.convert("L"), mask=rgba.getchannel("A"))
        return out
    if im.mode.startswith("I;16") or im.mode == "I":
        return Image.fromarray((np.asarray(im).astype(np.float32) / 257.0).round().clip(0, 255).astype(np.uint8))
    return im.convert("L")


def resolve_mask(spec: str, size: int, *, layout: str, seed: int, image_size: tuple[int, int], crop: str) -> Tensor:
    """A built-in name (case-insensitive) or a path to a mask file. (size, size) bool, True = fill."""
    if spec.lower() in MASKS:
        return builtin_mask(spec.lower(), size, layout, seed)
    if not Path(spec).exists() and not any(c in spec for c in "/\\."):
        raise DdpmkitError(f"unknown mask '{spec}'; choose one of: {', '.join(MASKS)}, or a PNG file (white = fill)")
    return load_mask(Path(spec), size, image_size, crop)
