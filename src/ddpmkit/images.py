"""Image helpers shared by sample, train and noise-demo: grids, PNGs, GIFs, loading one image.

Model-space images are float tensors (B, 3, H, W) in [-1, 1]; files hold 8-bit RGB. Every file
is written through `io_utils.atomic_path`, so a reader never sees half of one. Whether an
existing file may be overwritten is the caller's decision: these helpers just write.

Grids are enlarged (nearest, by a whole factor) to a readable size by default: 16 faces of
32 px tile to 138 px, a thumbnail on any screen. A GIF's frames share one palette (up to 255
colours, no dithering), so unchanged pixels keep their index and Pillow stores them as
transparent: only what changes costs bytes. GIFs are written by imageio's v3 API (its pillow
plugin): frames of palette indices with the palette as Pillow's GIF `palette` option.
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

from ddpmkit.data.crops import crop_box, load_square, to_rgb
from ddpmkit.errors import DdpmkitError
from ddpmkit.io_utils import atomic_path

Frame = Union[Image.Image, Tensor]

READABLE_SIDE = 512  # default grids are enlarged until their longer side is at least this
GIF_COLORS = 255  # one palette index stays free for Pillow's "unchanged pixel" transparency


def to_uint8(x: Tensor) -> Tensor:
    """(B, 3, H, W) float in [-1, 1] -> (B, 3, H, W) uint8, via round((x + 1) * 127.5), clamped."""
    return ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(x: Tensor) -> Tensor:
    """uint8 (any shape) in [0, 255] -> float32 in [-1, 1], on x's device: to_uint8's inverse."""
    return x.float() / 127.5 - 1.0


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


def readable_scale(width: int, height: int, min_side: int = READABLE_SIDE) -> int:
    """The smallest whole factor that makes the longer of width, height at least min_side (>= 1)."""
    return max(1, math.ceil(min_side / max(1, width, height)))


def scale_nearest(img: Image.Image, factor: int) -> Image.Image:
    """img enlarged factor times in each direction, nearest neighbour: pixels stay sharp squares."""
    if factor < 1:
        raise ValueError(f"scale factor must be a whole number >= 1, got {factor}")
    if factor == 1:
        return img
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


def save_grid(
    x: Tensor, path: Path | str, nrow: int | None = None, padding: int = 2, scale: int | None = None
) -> Path:
    """Write x: (B, 3, H, W) in [-1, 1] as one PNG grid at `path`. Returns the path.

    scale: None enlarges the grid (nearest) by the whole factor that makes its longer side
    >= READABLE_SIDE (512) px, 1 keeps the native size, any other int is that factor.
    """
    grid = make_grid_image(x, nrow=nrow, padding=padding)
    factor = readable_scale(*grid.size) if scale is None else int(scale)
    return save_png(scale_nearest(grid, factor), path)


def preview_grid(images: np.ndarray, out_png: Path | str, n: int = 64) -> Path:
    """The first `n` of `images` ((N, 3, S, S) uint8, e.g. a prepared cache's) as one PNG grid,
    8 per row. Returns `out_png`."""
    n = max(1, min(n, len(images)))
    x = torch.from_numpy(np.array(images[:n])).float().div_(127.5).sub_(1.0)  # (n, 3, S, S) in [-1, 1]
    return save_grid(x, out_png, nrow=8, padding=2)


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
        frame = from_uint8(frame) if frame.dtype == torch.uint8 else frame
        return np.asarray(make_grid_image(frame))
    if frame.ndim == 3:
        img = frame if frame.dtype == torch.uint8 else to_uint8(frame.unsqueeze(0))[0]
        return img.permute(1, 2, 0).contiguous().cpu().numpy()
    raise ValueError(f"a GIF frame must be a PIL image or a (3, H, W) or (B, 3, H, W) tensor, "
                     f"not {tuple(frame.shape)}")


def shared_palette(arrays: Sequence[np.ndarray], colors: int = GIF_COLORS) -> np.ndarray:
    """One palette for all GIF frames, (colors, 3) uint8: black and white (grid padding, label
    backgrounds: exact, not a median-cut average) and colors - 2 by median cut over a sample.

    The last frame is counted twice: a GIF holds it longest. Pixels are subsampled 2x2 so a
    long GIF of big grids stays quick to quantise.
    """
    step = max(1, len(arrays) // 8)
    picks = [a[::2, ::2] for a in (*arrays[::step], arrays[-1], arrays[-1])]
    mosaic = Image.fromarray(np.concatenate(picks, axis=0))
    cut = mosaic.quantize(colors=colors - 2, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    entries = np.asarray(cut.getpalette() or [], dtype=np.uint8).reshape(-1, 3)[: colors - 2]
    return np.concatenate([entries, np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)])


def _nearest(points: np.ndarray, palette: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """(N, 3) colours -> (N,) uint8 index of the nearest palette colour (squared RGB distance)."""
    pal = palette.astype(np.float32)
    c2 = (pal**2).sum(1)
    index = np.empty(len(points), dtype=np.uint8)
    for s in range(0, len(points), chunk):  # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for all c
        block = points[s : s + chunk].astype(np.float32)
        index[s : s + chunk] = np.argmin(c2[None, :] - 2.0 * block @ pal.T, axis=1)
    return index


def palette_lookup(palette: np.ndarray) -> np.ndarray:
    """(64, 64, 64) uint8: for each 4x4x4 cell of RGB space, the palette colour nearest its centre.

    Mapping a frame is then one table lookup a pixel, whatever the frame's size; a colour is
    judged by its cell's centre, at most 1.5 levels a channel from itself. Pillow's own mapping
    judges by the cell's corner, which turns white into the palette's nearest grey.
    """
    centres = np.arange(64, dtype=np.float32) * 4 + 1.5
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
    return _nearest(grid, palette).reshape(64, 64, 64)


def palette_indices(arr: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 palette indices, via `palette_lookup`'s table."""
    cell = arr >> 2
    return lookup[cell[..., 0], cell[..., 1], cell[..., 2]]


def save_gif(
    frames: Sequence[Frame],
    path: Path | str,
    duration_ms: int = 80,
    hold_last_ms: int = 1000,
    loop: int = 0,
    colors: int = GIF_COLORS,
) -> Path:
    """Write an animated GIF: each frame shown duration_ms, the last one hold_last_ms.

    frames: PIL images or tensors (see `_frame_array`), all the same size. loop=0 loops forever.
    Frames share one palette of `colors` (4..255; see `shared_palette`), without dithering, which
    would add noise that does not compress, and Pillow's optimiser stores only what changed from
    the frame before. Pillow merges consecutive identical frames (adding their durations), so a
    GIF read back can hold fewer frames than were given.
    """
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    arrays = [_frame_array(f) for f in frames]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"GIF frames differ in size: {sorted(shapes)}")
    if not 4 <= colors <= GIF_COLORS:
        raise ValueError(f"colors must be 4..{GIF_COLORS}, got {colors}")
    palette = shared_palette(arrays, colors)
    lookup = palette_lookup(palette)
    indices = np.stack([palette_indices(a, lookup) for a in arrays])  # (N, H, W)
    # a per-frame duration list holds the last frame without writing it twice
    durations = [int(duration_ms)] * (len(arrays) - 1) + [int(hold_last_ms)]
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name has no .gif suffix: name the format
        # index frames are "L" images to Pillow; `palette` makes them one global palette of our colours
        iio.imwrite(tmp, indices, plugin="pillow", extension=".gif", is_batch=True, palette=palette.tobytes(),
                    duration=durations, loop=loop, optimize=True, disposal=1)
    return path


def require_file(path: Path) -> None:
    """Raise DdpmkitError unless `path` is an existing file (not found / a directory), one line."""
    if not path.exists():
        raise DdpmkitError(f"image not found: {path}")
    if path.is_dir():
        raise DdpmkitError(f"expected an image file, got a directory: {path}")


def _unreadable(path: Path, e: Exception) -> DdpmkitError:
    """The one-line error for an image file that does not decode."""
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, UnidentifiedImageError):
        reason = "not a readable image file"
    return DdpmkitError(f"cannot read image {path}: {reason}")


DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def load_image(path: Path | str, size: int | None = None) -> Tensor:
    """Read an image file as (1, 3, S, S) float32 in [-1, 1].

    Decoded like `prepare` (`data.crops.to_rgb`): EXIF orientation applied, 16-bit grayscale
    scaled to 8 bits, transparency composited on white. The largest centred square is cropped,
    then resized to size x size with Lanczos (antialiased); size=None keeps the crop's own side.
    Raises DdpmkitError naming the path if it is missing or not a readable image.
    """
    path = Path(path)
    require_file(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not later
            img = center_square(to_rgb(im))  # inside `with`: to_rgb may return `im` itself
    except DECODE_ERRORS as e:
        raise _unreadable(path, e) from None
    if size is not None and img.width != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return from_uint8(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)).unsqueeze(0)


def load_face(path: Path | str, crop: str, size: int) -> tuple[Tensor, tuple[int, int]]:
    """An image file as a run's data was prepared: (3, S, S) uint8, cut with the run's `crop`
    (`data.crops`: CelebA's boxes; another aspect ratio: the centre square) and resized to S =
    `size`; and the file's (width, height). One-line errors naming the path."""
    path = Path(path)
    require_file(path)
    try:
        with Image.open(path) as im:
            image_size = im.size
        pixels = load_square(str(path), crop, size)
    except DECODE_ERRORS as e:
        raise _unreadable(path, e) from None
    return torch.from_numpy(pixels.copy()), image_size


def check_image(path: Path | str) -> None:
    """Decode an image file once, so a missing or truncated file fails before slow work starts."""
    path = Path(path)
    require_file(path)
    try:
        with Image.open(path) as im:
            im.load()
    except DECODE_ERRORS as e:
        raise _unreadable(path, e) from None


def center_square(img: Image.Image) -> Image.Image:
    """The largest square centred in img (the extra pixel of an odd excess goes right/bottom):
    the `full` crop of `data.crops`, the one definition of it."""
    return img.crop(crop_box("full", *img.size))


def upscale_nearest(img: Image.Image, min_side: int = 256) -> Image.Image:
    """Enlarge img by a whole factor so its shorter side is >= min_side; pixels stay sharp."""
    return scale_nearest(img, max(1, math.ceil(min_side / max(1, min(img.size)))))
