"""Labelled pictures of diffusion: the forward process q(x_t | x_0) (noise-demo's strip and GIF
frames) and the reverse process (the denoising GIF of `sample --gif`).

Forward: one fixed noise tensor ε is used throughout, x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (DDPM eq. 4),
so the frames show the same noise growing over the image. The strip and the GIF label every
picture alike: "t=…", then "signal √ᾱ_t" (blue bar) and "noise √(1-ᾱ_t)" (red bar), the two
coefficients of that sum. Images are (B, 3, S, S) in [-1, 1]; small ones are enlarged (nearest)
by a whole factor so their pixels stay sharp. Labels are ASCII: Pillow's built-in font has no
Greek letters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ddpmkit.diffusion import q_sample
from ddpmkit.images import make_grid_image, save_gif, scale_nearest, to_uint8
from ddpmkit.schedule import NoiseSchedule

PAD = 4  # pixels between and around the columns of the strip
MIN_CELL = 64  # strip images are enlarged to at least this side
GIF_MIN_SIDE = 128  # GIF pictures (noise-demo frames, denoising grids) are enlarged to at least this
SIGNAL_RGB = (50, 100, 200)
NOISE_RGB = (200, 60, 50)
INK = (0, 0, 0)
# the GIFs space their frames evenly in log-SNR λ between these: outside them the signal's or
# the noise's amplitude is under 5% of the other's (e^-3), and a frame looks like its neighbour
LAM_MIN, LAM_MAX = -6.0, 6.0
# colours of the denoising GIF: its noisy x_t frames cost ~log2(colours) bits a pixel, and 128
# still shows faces without visible banding (64 does not)
DENOISE_COLORS = 128

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def cell_side(size: int, min_side: int = MIN_CELL) -> int:
    """The displayed side of a size x size image: enlarged by a whole factor to >= min_side."""
    return size * max(1, math.ceil(min_side / size))


def _font(px: int) -> Font:
    try:
        return ImageFont.load_default(size=px)  # scalable font: Pillow >= 10.1 with FreeType
    except TypeError:
        return ImageFont.load_default()


def _font_px(side: int) -> int:
    return max(10, side // 9)


def _text_centred(draw: ImageDraw.ImageDraw, cx: float, y: float, text: str, font: Font, fill: tuple[int, ...]) -> None:
    """Draw text horizontally centred on cx with its top at y (any font, bitmap included)."""
    left, top, right, _ = draw.textbbox((0, 0), text, font=font)
    draw.text((cx - (right - left) / 2 - left, y - top), text, fill=fill, font=font)


def _tile(img: Tensor, side: int) -> Image.Image:
    """(3, S, S) uint8 -> an RGB image side x side (nearest)."""
    tile = Image.fromarray(img.permute(1, 2, 0).contiguous().numpy())
    return tile.resize((side, side), Image.Resampling.NEAREST)


# ------------------------------------------------------------------ forward process (noise-demo)


def forward_samples(sched: NoiseSchedule, x0: Tensor, noise: Tensor, ts: Sequence[int]) -> Tensor:
    """x_t for each t in ts from one image and one noise tensor. x0, noise: (1, 3, S, S);
    returns (len(ts), 3, S, S)."""
    t = torch.tensor(list(ts), dtype=torch.long)
    n = len(t)
    return q_sample(sched, x0.expand(n, -1, -1, -1), t, noise.expand(n, -1, -1, -1))


def _label_height(side: int) -> int:
    """Height of a column's labels: "t=…", then a bar and a value each for signal and noise."""
    fpx = _font_px(side)
    return (fpx + 6) + 2 * (8 + fpx + 6)


def _draw_labels(draw: ImageDraw.ImageDraw, x0: int, y: int, side: int, t: int, sqrt_ab: float) -> None:
    """Under an image at (x0, ·) of width side: `t=…`, then the signal √ᾱ_t and the noise √(1-ᾱ_t),
    each a bar (full width = 1) above its value, in the colour of its bar."""
    fpx = _font_px(side)
    font = _font(fpx)
    _text_centred(draw, x0 + side / 2, y + 3, f"t={t}", font, INK)
    y += fpx + 6
    signal = float(min(max(sqrt_ab, 0.0), 1.0))
    for name, level, rgb in (("signal", signal, SIGNAL_RGB), ("noise", math.sqrt(1.0 - signal**2), NOISE_RGB)):
        draw.rectangle([x0, y, x0 + side - 1, y + 5], outline=(150, 150, 150), fill=(235, 235, 235))
        if level > 0:
            draw.rectangle([x0, y, x0 + round((side - 1) * level), y + 5], fill=rgb)
        _text_centred(draw, x0 + side / 2, y + 8 + 1, f"{name} {level:.2f}", font, rgb)
        y += 8 + fpx + 6


def strip_size(n: int, size: int) -> tuple[int, int]:
    """(width, height) of the strip for n timesteps of size x size images."""
    side = cell_side(size)
    return PAD + n * (side + PAD), PAD + side + _label_height(side) + PAD


def noise_strip(xt: Tensor, ts: Sequence[int], signal_levels: Sequence[float]) -> Image.Image:
    """The labelled strip: column k shows xt[k], labelled `t=ts[k]`, signal √ᾱ_t = signal_levels[k]
    and noise √(1-ᾱ_t) (see `_draw_labels`). xt: (N, 3, S, S) in [-1, 1]."""
    n, size = xt.shape[0], xt.shape[-1]
    side = cell_side(size)
    canvas = Image.new("RGB", strip_size(n, size), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    imgs = to_uint8(xt)
    for k in range(n):
        x0 = PAD + k * (side + PAD)
        canvas.paste(_tile(imgs[k], side), (x0, PAD))
        _draw_labels(draw, x0, PAD + side, side, ts[k], signal_levels[k])
    return canvas


def forward_frame(xt: Tensor, t: int, sqrt_ab: float) -> Image.Image:
    """One GIF frame: xt (3, S, S) in [-1, 1] enlarged to >= 128 px, labelled as a strip column."""
    side = cell_side(xt.shape[-1], GIF_MIN_SIDE)
    frame = Image.new("RGB", (side, side + _label_height(side)), (255, 255, 255))
    frame.paste(_tile(to_uint8(xt.unsqueeze(0))[0], side), (0, 0))
    _draw_labels(ImageDraw.Draw(frame), 0, side, side, t, sqrt_ab)
    return frame


def forward_frames(sched: NoiseSchedule, x0: Tensor, noise: Tensor, ts: Sequence[int]) -> list[Image.Image]:
    """The GIF frames of x_t at each t in ts (see `forward_frame`)."""
    xs = forward_samples(sched, x0, noise, ts)
    return [forward_frame(x, t, float(sched.sqrt_alphas_cumprod[t])) for x, t in zip(xs, ts)]


def forward_strip(sched: NoiseSchedule, x0: Tensor, noise: Tensor, ts: Sequence[int]) -> Image.Image:
    """The labelled strip of x_t at each t in ts, with its signal √ᾱ_t and noise √(1-ᾱ_t)."""
    levels = [float(sched.sqrt_alphas_cumprod[t]) for t in ts]
    return noise_strip(forward_samples(sched, x0, noise, ts), ts, levels)


# ------------------------------------------------------------------ reverse process (sample --gif)


def log_snr(alphas_cumprod: Tensor) -> Tensor:
    """λ = log(ᾱ / (1 - ᾱ)), float64; ᾱ is clamped away from 0 and 1 so λ stays finite."""
    ab = alphas_cumprod.detach().double().cpu().clamp(1e-12, 1.0 - 1e-12)
    return ab.log() - (-ab).log1p()


def frame_states(lam: Sequence[float], count: int, lam_min: float = LAM_MIN, lam_max: float = LAM_MAX) -> list[int]:
    """Which of the states 0..n-1 with log-SNR lam (increasing) to show: `count` of them (all if
    there are no more), increasing, the first and the last always among them.

    The others are the states nearest to targets spaced uniformly in λ over lam's range clipped
    to [lam_min, lam_max], made distinct (a pick moves past the one before it, and leaves room for
    those after it).
    """
    n = len(lam)
    if count >= n:
        return list(range(n))
    if count < 2:
        raise ValueError(f"need at least 2 frames, got {count}")
    lam_t = torch.as_tensor(list(lam), dtype=torch.float64)
    hi = min(float(lam_t[-1]), lam_max)
    lo = min(max(float(lam_t[0]), lam_min), hi)
    inner = count - 2
    picks = [0]
    for j, target in enumerate(torch.linspace(lo, hi, inner, dtype=torch.float64).tolist()):
        k = int((lam_t - target).abs().argmin())
        picks.append(min(max(k, picks[-1] + 1), n - 1 - (inner - j)))
    return picks + [n - 1]


def snr_timesteps(alphas_cumprod: Tensor, frames: int) -> list[int]:
    """`frames` timesteps from 0 to T-1, increasing, spaced evenly in log-SNR between the clip
    limits (see `frame_states`): the forward GIF's frames. alphas_cumprod: (T,)."""
    T = len(alphas_cumprod)
    states = frame_states(log_snr(alphas_cumprod).flip(0).tolist(), frames)  # state k is t = T-1-k
    return sorted(T - 1 - k for k in states)


class DenoiseRecorder:
    """A sampling callback that records the denoising GIF: x_t beside the predicted x̂_0.

    Each frame shows two grids of the first `max_images` images, "x_t" on the left and, on the
    right, "predicted x_0", the network's estimate x̂_0 made from that very x_t; above them the
    step and t. The finished sample ends the GIF and is held.

    Frame times are uniform in log-SNR λ_t = log(ᾱ_t / (1 - ᾱ_t)), not in steps. Each unit of λ
    multiplies the signal-to-noise ratio by e, and the picture changes about evenly per unit:
    first x̂_0 settles from the mean image into faces, then x_t emerges and loses its grain.
    Outside |λ| <= 6 one of signal and noise is under 5% of the other and frames look alike, so
    the spacing covers that range, with x_T first and the sample last. Uniform in steps, the
    linear schedule spends three frames in four at SNR < 1 and half at SNR < 0.1, where x_t is
    plain noise, and shows the last fine detail in one or two frames; uniform over the whole λ
    range, the cosine schedule (λ_T ≈ -20) would spend half its frames before λ = -6. λ spacing
    suits every schedule and every sampler's choice of steps.

    timesteps: the sampler's visited training indices, decreasing (N,); alphas_cumprod: (T,) ᾱ.
    """

    def __init__(self, timesteps: Sequence[int], alphas_cumprod: Tensor, frames: int = 40, max_images: int = 16) -> None:
        self.timesteps = [int(t) for t in timesteps]
        if not self.timesteps:
            raise ValueError("DenoiseRecorder needs the sampler's timesteps (set_timesteps first)")
        if frames < 2 or max_images < 1:
            raise ValueError(f"need frames >= 2 and max_images >= 1, got {frames} and {max_images}")
        ab = alphas_cumprod.detach().double().cpu()
        self.alphas_cumprod = ab
        # the finished sample is the last state, noiseless: λ = +inf
        self.keep = set(frame_states([*log_snr(ab[self.timesteps]).tolist(), math.inf], frames))
        self.max_images = max_images
        self.frames: list[Image.Image] = []
        self._pending: Optional[Tensor] = None  # a kept x_t, waiting for the x̂_0 predicted from it

    def __call__(self, i: int, t: int, x: Tensor, x0: Optional[Tensor]) -> None:
        """(-1, t_first, x_T, None) first, then (i, t, x after step i, x̂_0 of step i); x: (B, C, H, W)."""
        n = len(self.timesteps)
        if i >= 0 and self._pending is not None:
            pred = self._batch(x0) if x0 is not None else None
            self.frames.append(self._frame(self._pending, pred, i))
            self._pending = None
        state = i + 1  # the state x now holds: 0 = x_T, k = x at timesteps[k], n = the sample
        if state in self.keep:
            if state < n:
                self._pending = self._batch(x)
            else:
                pred = self._batch(x0) if x0 is not None else None
                self.frames.append(self._frame(self._batch(x), pred, n))

    def _batch(self, x: Tensor) -> Tensor:
        return x[: self.max_images].detach().float().cpu().clamp(-1, 1)

    def _frame(self, xt: Tensor, pred: Optional[Tensor], k: int) -> Image.Image:
        n = len(self.timesteps)
        if k < n:
            t = self.timesteps[k]
            sqrt_ab = math.sqrt(float(self.alphas_cumprod[t]))
            title = f"step {k}/{n}   t={t}   signal {sqrt_ab:.2f}  noise {math.sqrt(1 - sqrt_ab**2):.2f}"
        else:
            title = f"step {n}/{n}   the sample"
        return denoise_frame(xt, pred, title)

    def save(self, path: Path) -> Path:
        """Write the GIF (atomically): 100 ms a frame, the sample held 2.5 s. Returns path."""
        if not self.frames:
            raise ValueError("no frames recorded: pass the recorder as the sampling callback first")
        return save_gif(self.frames, Path(path), duration_ms=100, hold_last_ms=2500, colors=DENOISE_COLORS)


def denoise_frame(xt: Tensor, pred: Optional[Tensor], title: str) -> Image.Image:
    """Grids of xt and pred ((B, 3, H, W) in [-1, 1]; pred None = not predicted yet: grey), side
    by side under `title`, labelled "x_t" and "predicted x_0"; enlarged to >= 128 px a grid."""
    left = make_grid_image(xt)
    right = make_grid_image(pred) if pred is not None else Image.new("RGB", left.size, (128, 128, 128))
    factor = max(1, math.ceil(GIF_MIN_SIDE / max(left.size)))
    left, right = scale_nearest(left, factor), scale_nearest(right, factor)
    w, h = left.size
    fpx = max(10, min(w, h) // 14)
    font = _font(fpx)
    gap, row = 2 * PAD, fpx + 6
    canvas = Image.new("RGB", (2 * w + gap + 2 * PAD, PAD + row + h + row + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    _text_centred(draw, canvas.width / 2, PAD + 1, title, font, INK)
    for k, (img, label) in enumerate(((left, "x_t"), (right, "predicted x_0"))):
        x = PAD + k * (w + gap)
        canvas.paste(img, (x, PAD + row))
        _text_centred(draw, x + w / 2, PAD + row + h + 3, label, font, INK)
    return canvas
