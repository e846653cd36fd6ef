"""A face as a run's data was made: an image file cut with the run's crop and resized to its
size, or `demo:K`, generated demo face K from a stream no run trains on. What `inpaint`,
`interpolate --images` and the served page read, so all three see a face the same way.

The demo faces are drawn square, so they take the centre square (and the demo face layout for
masks); CelebA and image folders take the run's crop (a folder of another aspect ratio falls back
to the centre square inside `data.crops.crop_box`, as `prepare` did).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ddpmkit.data.synthetic import draw_face
from ddpmkit.images import from_uint8, load_face
from ddpmkit.settings import Settings

DEMO = re.compile(r"demo:(\d+)$")  # demo:K: demo face K
DEMO_STREAM = 1  # added to the run's data.synthetic_seed: another stream shares no face with it


def demo_index(source: str | Path) -> Optional[int]:
    """K of `demo:K` (when no file of that name exists), else None."""
    m = DEMO.match(str(source))
    return int(m.group(1)) if m and not Path(source).exists() else None


def data_crop(settings: Settings) -> tuple[str, str]:
    """(crop, face layout) of the run's data (see the module docstring)."""
    if settings.data.dataset == "synthetic":
        return "full", "demo"
    return settings.data.crop, settings.data.crop


def demo_face(index: int, size: int, synthetic_seed: int) -> Tensor:
    """Demo face `index` at `size` px, (3, S, S) uint8, drawn from the stream after the run's own
    (data.synthetic_seed + 1): a face like the training data that the run never saw."""
    return torch.from_numpy(draw_face(size, synthetic_seed + DEMO_STREAM, index).copy()).permute(2, 0, 1)


def read_face(source: str | Path, settings: Settings) -> tuple[Tensor, tuple[int, int]]:
    """The face `source` (a file or demo:K) as the run's data: (3, S, S) uint8, and the source's
    (width, height). One-line errors for a missing or unreadable file."""
    size = settings.data.size
    k = demo_index(source)
    if k is not None:
        return demo_face(k, size, settings.data.synthetic_seed), (size, size)
    return load_face(Path(source), data_crop(settings)[0], size)


def face_x0(source: str | Path, settings: Settings) -> Tensor:
    """The face as a model input: (1, 3, S, S) float32 in [-1, 1], on the CPU."""
    return from_uint8(read_face(source, settings)[0]).unsqueeze(0)
