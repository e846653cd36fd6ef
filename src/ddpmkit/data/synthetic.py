"""Procedurally drawn cartoon faces: the built-in dataset, so the demo trains with no download.

Each face is drawn with PIL.ImageDraw at 4x the target resolution and box-downsampled, so
edges are antialiased. Faces vary in background, skin tone, head position and shape, eyes and
gaze, eyebrows, nose, mouth, hair style and colour, and sometimes glasses, a moustache or
blush: enough structure for a diffusion model to learn, little enough for a tiny one.

Face i is drawn from its own random stream seeded by (seed, i), so it does not depend on n:
`make_faces(100, s)[:k]` equals `make_faces(k, s)`.

Each face also records what was drawn as binary attributes named like CelebA's
(`FACE_ATTRIBUTES`: +1 present, -1 absent), read off the same random draws: recording them
draws nothing more, so the pixels are those of a face drawn without recording.
"""

from __future__ import annotations

import colorsys
import functools
import random

import numpy as np
import torch
from PIL import Image, ImageDraw

SUPERSAMPLE = 4  # draw at 4x, then box-downsample: cheap antialiasing

Color = tuple[int, int, int]

# Skin tones from light to dark (each face jitters its pick a little).
_SKIN: tuple[Color, ...] = (
    (255, 224, 196), (246, 207, 175), (234, 192, 155), (224, 172, 125),
    (198, 144, 100), (165, 114, 78), (128, 84, 56), (95, 62, 42),
)
# Natural hair colours, plus a few bright ones drawn rarely.
_HAIR: tuple[Color, ...] = (
    (28, 22, 20), (58, 38, 26), (96, 62, 36), (140, 88, 48), (168, 72, 38),
    (214, 178, 110), (236, 212, 150), (170, 170, 170), (235, 235, 230),
)
_HAIR_FUN: tuple[Color, ...] = ((70, 110, 220), (220, 90, 160), (120, 60, 170), (60, 160, 110))
_IRIS: tuple[Color, ...] = ((70, 45, 25), (40, 30, 25), (60, 110, 170), (70, 120, 70), (110, 90, 50))
_HAIR_STYLES = ("bald", "cap", "fringe", "side", "long", "spiky", "bun")
_HAIR_WEIGHTS = (0.06, 0.2, 0.18, 0.16, 0.22, 0.08, 0.1)

# The recorded attributes, CelebA's names where they mean the same (Bangs: the fringe style;
# Rosy_Cheeks: blush; Smiling: a smiling or open, grinning mouth; Eyeglasses: any glasses,
# sunglasses too, as in CelebA). Hair colours name the natural _HAIR entries; a bald face has
# no hair colour; red and the bright colours have no CelebA name.
FACE_ATTRIBUTES: tuple[str, ...] = (
    "Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Gray_Hair",
    "Mouth_Slightly_Open", "Mustache", "Rosy_Cheeks", "Smiling",
)
_HAIR_NAME = {0: "Black_Hair", 1: "Black_Hair", 2: "Brown_Hair", 3: "Brown_Hair", 5: "Blond_Hair",
              6: "Blond_Hair", 7: "Gray_Hair", 8: "Gray_Hair"}  # index in _HAIR -> attribute
ATTRIBUTE_SIZE = 16  # a cheap side to draw at (every random draw is independent of the size; 4 px breaks PIL)


def make_faces(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Draw n cartoon faces. Returns (n, 3, size, size) uint8 in [0, 255].

    Deterministic in (size, seed) for each face index; face i never depends on n.
    """
    return make_faces_with_attributes(n, size, seed)[0]


def make_faces_with_attributes(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """`make_faces(n, size, seed)` and the faces' attributes: (n, len(FACE_ATTRIBUTES)) int8,
    +1 present / -1 absent, columns in FACE_ATTRIBUTES order (independent of size)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    attrs = np.empty((n, len(FACE_ATTRIBUTES)), dtype=np.int8)
    for i in range(n):
        out[i], attrs[i] = draw_face_with_attributes(size, seed, i)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), attrs


def face_attributes(n: int, seed: int = 0) -> np.ndarray:
    """The attributes of faces 0..n-1 of stream `seed`, (n, len(FACE_ATTRIBUTES)) int8 in {-1, +1};
    drawn at the smallest size (the attributes do not depend on it)."""
    return make_faces_with_attributes(n, ATTRIBUTE_SIZE, seed)[1]


def draw_face(size: int, seed: int, index: int) -> np.ndarray:
    """Face `index` of the stream `seed` as a (size, size, 3) uint8 array."""
    return draw_face_with_attributes(size, seed, index)[0]


def draw_face_with_attributes(size: int, seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Face `index` of the stream `seed`: (size, size, 3) uint8 and its (len(FACE_ATTRIBUTES),) int8."""
    # String seeding hashes with SHA-512: stable across runs and platforms, and no two
    # (seed, index) pairs share a stream.
    rng = random.Random(f"ddpmkit-faces:{seed}:{index}")
    S = size * SUPERSAMPLE
    img = _background(rng, S)
    face = _Face(rng, ImageDraw.Draw(img), S)
    face.draw()
    attrs = np.array([1 if name in face.present else -1 for name in FACE_ATTRIBUTES], dtype=np.int8)
    return np.asarray(img.reduce(SUPERSAMPLE)), attrs


# ---------------------------------------------------------------- colours


def _jitter(rng: random.Random, c: Color, amount: int) -> Color:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


def _scale(c: Color, f: float) -> Color:
    return tuple(max(0, min(255, int(v * f))) for v in c)  # type: ignore[return-value]


def _mix(a: Color, b: Color, w: float) -> Color:
    return tuple(int(x * (1 - w) + y * w) for x, y in zip(a, b))  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255), int(g * 255), int(b * 255))


def _pastel(rng: random.Random) -> Color:
    return _hsv(rng.random(), rng.uniform(0.12, 0.45), rng.uniform(0.8, 1.0))


# ---------------------------------------------------------------- background


@functools.lru_cache(maxsize=16)
def _gradient_mask(S: int, direction: int) -> Image.Image:
    """An 'L' ramp 0..255 across an S x S image: 0 top->bottom, 1 left->right, 2 diagonal."""
    ramp = Image.linear_gradient("L").resize((S, S), Image.Resampling.BILINEAR)
    if direction == 1:
        return ramp.transpose(Image.Transpose.ROTATE_90)
    if direction == 2:
        diag = (np.arange(S)[:, None] + np.arange(S)[None, :]) * (255.0 / max(1, 2 * S - 2))
        return Image.fromarray(diag.astype(np.uint8))
    return ramp


def _background(rng: random.Random, S: int) -> Image.Image:
    c1 = _pastel(rng)
    if rng.random() < 0.45:
        return Image.new("RGB", (S, S), c1)
    c2 = _pastel(rng)
    mask = _gradient_mask(S, rng.randrange(3))
    return Image.composite(Image.new("RGB", (S, S), c2), Image.new("RGB", (S, S), c1), mask)


# ---------------------------------------------------------------- the face


class _Face:
    """One face's random attributes and the drawing calls, in unit coordinates scaled by S."""

    def __init__(self, rng: random.Random, draw: ImageDraw.ImageDraw, S: int) -> None:
        self.rng, self.d, self.S = rng, draw, S
        r = rng
        # head: centre and half-axes, as fractions of the image side
        self.cx = 0.5 + r.uniform(-0.06, 0.06)
        self.cy = 0.52 + r.uniform(-0.04, 0.05)
        self.rx = r.uniform(0.23, 0.3)
        self.ry = self.rx * r.uniform(1.12, 1.35)
        self.skin = _jitter(r, r.choice(_SKIN), 10)
        self.shade = _scale(self.skin, 0.78)  # outlines, nose, ears' inside
        base = r.choice(_HAIR_FUN) if r.random() < 0.06 else r.choice(_HAIR)
        self.hair = _jitter(r, base, 12)
        self.style = r.choices(_HAIR_STYLES, _HAIR_WEIGHTS)[0]
        # FACE_ATTRIBUTES names of what is drawn (read off the draws, drawing nothing more)
        self.present: set[str] = {"Bald"} if self.style == "bald" else {"Bangs"} if self.style == "fringe" else set()
        if self.style != "bald" and base in _HAIR and _HAIR.index(base) in _HAIR_NAME:
            self.present.add(_HAIR_NAME[_HAIR.index(base)])

    # unit -> pixel helpers
    def p(self, v: float) -> float:
        return v * self.S

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [self.p(x0), self.p(y0), self.p(x1), self.p(y1)]

    def ell(self, cx: float, cy: float, ax: float, ay: float) -> list[float]:
        return self.box(cx - ax, cy - ay, cx + ax, cy + ay)

    def w(self, v: float) -> int:
        """A stroke width: v of the image side, at least one pixel."""
        return max(1, round(v * self.S))

    def draw(self) -> None:
        if self.style == "long":
            self._hair_back()
        self._body()
        self._ears()
        self.d.ellipse(self.ell(self.cx, self.cy, self.rx, self.ry), fill=self.skin,
                       outline=self.shade, width=self.w(0.008))
        self._hair_top()
        eye_y, eye_dx, eye_w = self._eyes()
        self._brows(eye_y, eye_dx, eye_w)
        self._nose()
        self._mouth()
        if self.rng.random() < 0.18:
            self.present.add("Eyeglasses")
            self._glasses(eye_y, eye_dx, eye_w)

    def _hair_back(self) -> None:
        cx, cy, rx, ry = self.cx, self.cy, self.rx, self.ry
        drop = self.rng.uniform(0.6, 1.2)  # how far below the chin the hair reaches
        self.d.rounded_rectangle(
            self.box(cx - rx * 1.18, cy - ry * 0.6, cx + rx * 1.18, cy + ry * drop),
            radius=self.p(rx * 0.5), fill=self.hair,
        )
        self.d.ellipse(self.ell(cx, cy - ry * 0.15, rx * 1.18, ry * 0.95), fill=self.hair)

    def _body(self) -> None:
        cx, cy, rx, ry = self.cx, self.cy, self.rx, self.ry
        shirt = _hsv(self.rng.random(), self.rng.uniform(0.3, 0.8), self.rng.uniform(0.35, 0.9))
        top = cy + ry * self.rng.uniform(0.95, 1.1)
        self.d.ellipse(self.box(cx - rx * 2.0, top, cx + rx * 2.0, top + ry * 2.2), fill=shirt)
        self.d.rectangle(self.box(cx - rx * 0.38, cy + ry * 0.5, cx + rx * 0.38, top + ry * 0.12),
                         fill=self.shade)

    def _ears(self) -> None:
        ey = self.cy + self.rng.uniform(-0.05, 0.05) * self.ry
        for side in (-1, 1):
            self.d.ellipse(self.ell(self.cx + side * self.rx * 0.97, ey, self.rx * 0.17, self.ry * 0.2),
                           fill=self.skin, outline=self.shade, width=self.w(0.006))

    def _hair_top(self) -> None:
        r, d = self.rng, self.d
        cx, cy, rx, ry = self.cx, self.cy, self.rx, self.ry
        if self.style == "bald":
            if r.random() < 0.6:  # tufts above the ears
                for side in (-1, 1):
                    d.ellipse(self.ell(cx + side * rx * 0.92, cy - ry * 0.25, rx * 0.14, ry * 0.22),
                              fill=self.hair)
            return
        # a dome over the top of the head; its flat lower edge is the hairline
        top = cy - ry * r.uniform(1.05, 1.2)
        hairline = cy - ry * (r.uniform(0.3, 0.42) if self.style == "fringe" else r.uniform(0.45, 0.62))
        half_w = rx * r.uniform(1.04, 1.12)
        d.chord(self.box(cx - half_w, top, cx + half_w, 2 * hairline - top), 180, 360, fill=self.hair)
        # sides come down a little past the hairline, over the temples
        for side in (-1, 1):
            d.ellipse(self.ell(cx + side * rx * 0.86, hairline, rx * 0.18, ry * 0.18), fill=self.hair)
        if self.style == "side":
            part = cx + rx * r.choice((-1, 1)) * r.uniform(0.1, 0.4)
            sweep = rx * 0.9 if part < cx else -rx * 0.9
            d.polygon([(self.p(part), self.p(hairline - ry * 0.1)),
                       (self.p(part + sweep), self.p(hairline - ry * 0.05)),
                       (self.p(part + sweep), self.p(hairline + ry * 0.22))], fill=self.hair)
        elif self.style == "spiky":
            n = r.randint(4, 7)
            for k in range(n):
                x = cx - rx * 0.9 + 1.8 * rx * (k + 0.5) / n
                y = top + (hairline - top) * 0.3
                tip = top - ry * r.uniform(0.1, 0.25)
                d.polygon([(self.p(x - rx * 0.22), self.p(y)), (self.p(x + rx * 0.22), self.p(y)),
                           (self.p(x + r.uniform(-0.05, 0.05)), self.p(tip))], fill=self.hair)
        elif self.style == "bun":
            d.ellipse(self.ell(cx + r.uniform(-0.3, 0.3) * rx, top - ry * 0.05, rx * 0.32, ry * 0.22),
                      fill=self.hair)

    def _eyes(self) -> tuple[float, float, float]:
        r, d = self.rng, self.d
        eye_y = self.cy - self.ry * r.uniform(0.02, 0.16)
        eye_dx = self.rx * r.uniform(0.36, 0.46)
        eye_w = self.rx * r.uniform(0.17, 0.25)
        eye_h = eye_w * r.uniform(0.6, 0.85)
        iris = _jitter(r, r.choice(_IRIS), 10)
        iris_r = eye_h * r.uniform(0.6, 0.8)
        # one gaze for both eyes, kept inside the white
        gx = r.uniform(-1, 1) * (eye_w - iris_r) * 0.8
        gy = r.uniform(-1, 1) * (eye_h - iris_r) * 0.6
        closed = r.random() < 0.07
        for side in (-1, 1):
            ex = self.cx + side * eye_dx
            if closed:  # happy closed eyes: an upward arc
                d.arc(self.ell(ex, eye_y + eye_h * 0.4, eye_w, eye_h), 200, 340,
                      fill=(40, 30, 30), width=self.w(0.014))
                continue
            d.ellipse(self.ell(ex, eye_y, eye_w, eye_h), fill=(250, 250, 248),
                      outline=(60, 45, 40), width=self.w(0.006))
            d.ellipse(self.ell(ex + gx, eye_y + gy, iris_r, iris_r), fill=iris)
            d.ellipse(self.ell(ex + gx, eye_y + gy, iris_r * 0.5, iris_r * 0.5), fill=(15, 12, 12))
        return eye_y, eye_dx, eye_w

    def _brows(self, eye_y: float, eye_dx: float, eye_w: float) -> None:
        r = self.rng
        by = eye_y - self.ry * r.uniform(0.16, 0.26)
        tilt = self.ry * r.uniform(-0.05, 0.06)  # > 0: inner end lower (stern); < 0: raised
        colour = _scale(self.hair, 0.8) if self.style != "bald" else _scale(self.shade, 0.6)
        width = self.w(r.uniform(0.012, 0.026))
        for side in (-1, 1):
            ex = self.cx + side * eye_dx
            inner, outer = ex - side * eye_w * 0.9, ex + side * eye_w * 1.0
            self.d.line([(self.p(inner), self.p(by + tilt)), (self.p(outer), self.p(by - tilt))],
                        fill=colour, width=width)

    def _nose(self) -> None:
        r, d = self.rng, self.d
        nx = self.cx + r.uniform(-0.02, 0.02)
        ny = self.cy + self.ry * r.uniform(0.12, 0.25)
        nw = self.rx * r.uniform(0.1, 0.18)
        kind = r.randrange(3)
        if kind == 0:  # a smile-shaped hint
            d.arc(self.ell(nx, ny - nw * 0.5, nw, nw), 20, 160, fill=self.shade, width=self.w(0.01))
        elif kind == 1:  # nostrils
            for side in (-1, 1):
                d.ellipse(self.ell(nx + side * nw * 0.55, ny, nw * 0.28, nw * 0.22), fill=self.shade)
        else:  # a bridge line ending in a hook
            d.line([(self.p(nx), self.p(ny - self.ry * 0.18)), (self.p(nx - nw * 0.4), self.p(ny)),
                    (self.p(nx + nw * 0.4), self.p(ny))], fill=self.shade, width=self.w(0.01), joint="curve")

    def _mouth(self) -> None:
        r, d = self.rng, self.d
        mx = self.cx + r.uniform(-0.02, 0.02)
        my = self.cy + self.ry * r.uniform(0.42, 0.55)
        mw = self.rx * r.uniform(0.28, 0.55)
        mh = mw * r.uniform(0.3, 0.6)
        lip = _jitter(r, (170, 60, 70), 25)
        if r.random() < 0.12:  # moustache above the mouth
            self.present.add("Mustache")
            d.chord(self.ell(mx, my - mh * 0.2, mw * 0.9, mh * 0.8), 180, 360, fill=self.hair)
        kind = r.choices(("smile", "open", "neutral", "frown"), (0.45, 0.25, 0.22, 0.08))[0]
        self.present.update({"smile": ["Smiling"], "open": ["Smiling", "Mouth_Slightly_Open"]}.get(kind, []))
        width = self.w(r.uniform(0.012, 0.02))
        if kind == "smile":
            d.arc(self.ell(mx, my - mh, mw, mh * 1.2), 20, 160, fill=lip, width=width)
        elif kind == "open":
            d.chord(self.ell(mx, my - mh * 0.5, mw, mh * 1.3), 0, 180, fill=(90, 25, 35))
            d.chord(self.ell(mx, my - mh * 0.5, mw * 0.8, mh * 0.5), 0, 180, fill=(245, 245, 240))
        elif kind == "neutral":
            d.line([(self.p(mx - mw * 0.8), self.p(my)), (self.p(mx + mw * 0.8), self.p(my))],
                   fill=lip, width=width)
        else:
            d.arc(self.ell(mx, my + mh * 0.9, mw * 0.8, mh), 200, 340, fill=lip, width=width)
        if r.random() < 0.25:  # blush: a pinker patch of skin on each cheek
            self.present.add("Rosy_Cheeks")
            blush = _mix(self.skin, (240, 120, 130), 0.35)
            for side in (-1, 1):
                d.ellipse(self.ell(self.cx + side * self.rx * 0.55, my - self.ry * 0.22,
                                   self.rx * 0.16, self.ry * 0.08), fill=blush)

    def _glasses(self, eye_y: float, eye_dx: float, eye_w: float) -> None:
        r, d = self.rng, self.d
        frame = r.choice(((20, 20, 20), (90, 60, 40), (150, 30, 40), (40, 60, 140)))
        sun = r.random() < 0.3
        rad = eye_w * r.uniform(1.25, 1.5)
        width = self.w(r.uniform(0.01, 0.016))
        aspect = r.uniform(0.75, 1.0)
        round_lens = r.random() < 0.5
        for side in (-1, 1):
            box = self.ell(self.cx + side * eye_dx, eye_y, rad, rad * aspect)
            if round_lens:
                d.ellipse(box, fill=(25, 25, 30) if sun else None, outline=frame, width=width)
            else:
                d.rounded_rectangle(box, radius=self.p(rad * 0.35), fill=(25, 25, 30) if sun else None,
                                    outline=frame, width=width)
        bridge_l = self.cx - eye_dx + rad
        bridge_r = self.cx + eye_dx - rad
        d.line([(self.p(bridge_l), self.p(eye_y)), (self.p(bridge_r), self.p(eye_y))],
               fill=frame, width=width)
