"""Faces and masks as a run sees them, for the page to show and paint on and for the jobs to use.

A face is a file (an upload, or a picture an earlier job made) or `demo:K`, the generated demo
face K that no run trains on; it is read as the run's data was made (`ddpmkit.faces`), the same reading
`ddpmkit inpaint` and `interpolate --images` make, so what the page shows is what a job fills or inverts.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import Tensor

from ddpmkit.faces import data_crop, read_face
from ddpmkit.masks import builtin_mask
from ddpmkit.settings import Settings


def png_bytes(img: Image.Image, compress_level: int = 6) -> bytes:
    """A picture as PNG bytes, for answers that are pictures rather than files."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def face_png(source: str, settings: Settings) -> bytes:
    """The face as the run's data, S x S, as PNG bytes (what the page paints a mask over)."""
    return png_bytes(Image.fromarray(read_face(source, settings)[0].permute(1, 2, 0).contiguous().numpy()))


def mask_png(name: str, seed: int, settings: Settings) -> bytes:
    """A built-in mask for the run's faces as a PNG, white = fill: (S, S)."""
    layout = data_crop(settings)[1]
    fill: Tensor = builtin_mask(name, settings.data.size, layout, seed)
    return png_bytes(Image.fromarray(fill.to(torch.uint8).mul(255).numpy(), "L"))
