"""Faces and masks as a run sees them, for the page to show and paint on and for the jobs to use.

A face is a file (an upload, or a picture an earlier job made) or `demo:K`, the generated demo
face K that no run trains on; it is cut and resized as the run's data was (`inpainting.data_crop`:
the run's crop for CelebA and folders, the centre square for the demo faces), the same reading
`ddpmkit inpaint` makes, so what the page shows is what a job fills or inverts.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import Tensor

from ddpmkit.images import load_face
from ddpmkit.inpainting import data_crop, demo_face, demo_index
from ddpmkit.masks import builtin_mask
from ddpmkit.settings import Settings


def png_bytes(img: Image.Image, compress_level: int = 6) -> bytes:
    """A picture as PNG bytes, for answers that are pictures rather than files."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def face_pixels(source: str, settings: Settings) -> Tensor:
    """The face `source` (a file's path or demo:K) as the run's data: (3, S, S) uint8."""
    size = settings.data.size
    k = demo_index(source)
    if k is not None:
        return demo_face(k, size, settings.data.synthetic_seed)
    return load_face(source, data_crop(settings)[0], size)[0]


def face_x0(source: str, settings: Settings) -> Tensor:
    """The face as a model input: (1, 3, S, S) float32 in [-1, 1]."""
    return (face_pixels(source, settings).float() / 127.5 - 1.0).unsqueeze(0)


def face_png(source: str, settings: Settings) -> bytes:
    """The face as the run's data, S x S, as PNG bytes (what the page paints a mask over)."""
    return png_bytes(Image.fromarray(face_pixels(source, settings).permute(1, 2, 0).contiguous().numpy()))


def mask_png(name: str, seed: int, settings: Settings) -> bytes:
    """A built-in mask for the run's faces as a PNG, white = fill: (S, S)."""
    layout = data_crop(settings)[1]
    fill: Tensor = builtin_mask(name, settings.data.size, layout, seed)
    return png_bytes(Image.fromarray(fill.to(torch.uint8).mul(255).numpy(), "L"))
