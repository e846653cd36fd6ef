"""Image helpers shared by sample, train and noise-demo: grids, PNGs, GIFs, loading one image.

Model-space images are float tensors (B, 3, H, W) in [-1, 1]; files hold 8-bit RGB. Every file
is written through `io_utils.atomic_path`, so a reader never sees half of one. Whether an
existing file may be overwritten is the caller's decision: these helpers just write.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Union

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.utils import make_grid

from ddpmkit.data.crops import crop_box, to_rgb
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import atomic_path

Frame = Union[Image.Image, Tensor]


def to_uint8(x: Tensor) -> Tensor:
    """(B, 3, H, W) float in [-1, 1] -> (B, 3, H, W) uint8, via round((x + 1) * 127.5), clamped."""
    return ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _to_pil(img: Tensor) -> Image.Image:
    """(3, H, W) uint8 -> an RGB PIL image."""
    return Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())


def make_grid_image(x: Tensor, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """Tile x: (B, 3, H, W) in [-1, 1] into one RGB image, nrow images per row.

    nrow defaults to ceil(sqrt(B)), the most nearly square layout. Padding is black; a
    single image (B = 1) comes back as it is, with no padding (torchvision's behaviour).
    """
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images shaped (B, 3, H, W), got {tuple(x.shape)}")
    if nrow is None:
        nrow = max(1, math.ceil(math.sqrt(x.shape[0])))
    grid = make_grid(to_uint8(x), nrow=nrow, padding=padding, pad_value=0)
    return _to_pil(grid)


def save_png(img: Image.Image, path: Path | str) -> Path:
    """Write a PIL image as a PNG at `path` (atomically). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")  # the temp name has no .png suffix: name the format
    return path


def save_grid(x: Tensor, path: Path | str, nrow: int | None = None, padding: int = 2) -> Path:
    """Write x: (B, 3, H, W) in [-1, 1] as one PNG grid at `path`. Returns the path."""
    path = Path(path)
    save_png(make_grid_image(x, nrow=nrow, padding=padding), path)
    return path


def save_images(x: Tensor, out_dir: Path | str, prefix: str = "sample", start: int = 0) -> list[Path]:
    """Write each image of x: (B, 3, H, W) in [-1, 1] as `<prefix>_<index>.png` in out_dir.

    Indices run from `start` and are zero-padded to at least 5 digits, so names sort in order.
    """
    out_dir = Path(out_dir)
    imgs = to_uint8(x)
    digits = max(5, len(str(start + len(imgs) - 1)))
    paths = []
    for k, img in enumerate(imgs):
        path = out_dir / f"{prefix}_{start + k:0{digits}d}.png"
        save_png(_to_pil(img), path)
        paths.append(path)
    return paths


def _frame_array(frame: Frame) -> np.ndarray:
    """A GIF frame as (H, W, 3) uint8. Tensors: (3, H, W) or (B, 3, H, W) grids, float in
    [-1, 1] or uint8; a batch is tiled with make_grid_image first."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    if frame.ndim == 4:
        frame = frame.float() / 127.5 - 1.0 if frame.dtype == torch.uint8 else frame
        return np.asarray(make_grid_image(frame))
    if frame.ndim == 3:
        img = frame if frame.dtype == torch.uint8 else to_uint8(frame.unsqueeze(0))[0]
        return img.permute(1, 2, 0).contiguous().cpu().numpy()
    raise ValueError(f"a GIF frame must be a PIL image or a (3, H, W) or (B, 3, H, W) tensor, "
                     f"not {tuple(frame.shape)}")


def save_gif(
    frames: Sequence[Frame],
    path: Path | str,
    duration_ms: int = 80,
    hold_last_ms: int = 1000,
    loop: int = 0,
) -> Path:
    """Write an animated GIF: each frame shown duration_ms, the last one hold_last_ms.

    frames: PIL images or tensors (see `_frame_array`), all the same size. loop=0 loops forever.
    Pillow merges consecutive identical frames (adding their durations), so a GIF read back
    can hold fewer frames than were given when some repeat.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    arrays = [_frame_array(f) for f in frames]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"GIF frames differ in size: {sorted(shapes)}")
    # a per-frame duration list holds the last frame without writing it twice
    durations = [int(duration_ms)] * (len(arrays) - 1) + [int(hold_last_ms)]
    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.stack(arrays), extension=".gif", plugin="pillow",
                    duration=durations, loop=loop)
    return path


def load_image(path: Path | str, size: int | None = None) -> Tensor:
    """Read an image file as (1, 3, S, S) float32 in [-1, 1].

    Decoded like `prepare` (`data.crops.to_rgb`): EXIF orientation applied, 16-bit grayscale
    scaled to 8 bits, transparency composited on white. The largest centred square is cropped,
    then resized to size x size with Lanczos (antialiased); size=None keeps the crop's own side.
    Raises DdpmkitError naming the path if it is missing or not a readable image.
    """
    path = Path(path)
    if not path.exists():
        raise DdpmkitError(f"image not found: {path}")
    if path.is_dir():
        raise DdpmkitError(f"expected an image file, got a directory: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            img = center_square(to_rgb(im))  # inside `with`: to_rgb may return `im` itself
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, UnidentifiedImageError):
            reason = "not a readable image file"
        raise DdpmkitError(f"cannot read image {path}: {reason}") from None
    if size is not None and img.width != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()
    return (arr / 127.5 - 1.0).unsqueeze(0)


def center_square(img: Image.Image) -> Image.Image:
    """The largest square centred in img (the extra pixel of an odd excess goes right/bottom):
    the `full` crop of `data.crops`, the one definition of it."""
    return img.crop(crop_box("full", *img.size))


def upscale_nearest(img: Image.Image, min_side: int = 256) -> Image.Image:
    """Enlarge img by a whole factor so its shorter side is >= min_side; pixels stay sharp."""
    factor = math.ceil(min_side / max(1, min(img.size)))
    if factor <= 1:
        return img
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
