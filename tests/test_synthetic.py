"""The generated demo faces: shape, determinism, independence from n, variety, face structure."""

from __future__ import annotations

import torch

from ddpmkit.data.synthetic import make_faces


def test_shape_dtype_and_range():
    x = make_faces(5, 32)
    assert x.shape == (5, 3, 32, 32)
    assert x.dtype == torch.uint8
    assert make_faces(3, 16, seed=1).shape == (3, 3, 16, 16)
    assert make_faces(0, 32).shape == (0, 3, 32, 32)


def test_deterministic_and_seed_dependent():
    a = make_faces(6, 32, seed=3)
    assert torch.equal(a, make_faces(6, 32, seed=3))
    b = make_faces(6, 32, seed=4)
    # a different seed gives different faces, index by index
    assert all(not torch.equal(a[i], b[i]) for i in range(6))


def test_face_i_does_not_depend_on_n():
    many = make_faces(20, 32, seed=7)
    assert torch.equal(many[:7], make_faces(7, 32, seed=7))
    assert torch.equal(many[:1], make_faces(1, 32, seed=7))


def test_variety():
    x = make_faces(50, 32).float()
    # per-pixel spread across faces: backgrounds, skin and hair all vary
    assert x.std(dim=0).mean() > 25
    flat = x.reshape(50, -1)
    dist = torch.cdist(flat, flat)
    dist.fill_diagonal_(float("inf"))
    assert dist.min() > 0, "two of the first 50 faces are identical"


def test_face_structure():
    x = make_faces(50, 32).float()
    lum = x.mean(dim=1)  # (N, H, W)
    centre = x[:, :, 12:20, 12:20].mean(dim=(2, 3))  # the face
    corners = torch.cat([x[:, :, :4, :4], x[:, :, :4, -4:]], dim=3).mean(dim=(2, 3))  # background
    # the centre is a different colour from the background on average (a face is there)
    assert (centre - corners).abs().sum(dim=1).mean() > 60
    # the eye band holds dark pupils; the top corners are pale pastel background
    eye_band_min = lum[:, 11:18, 6:26].amin(dim=(1, 2))
    corner_min = lum[:, :6, :6].amin(dim=(1, 2))
    assert eye_band_min.mean() < corner_min.mean() - 80
    # faces are roughly left-right symmetric: closer to their own mirror image than to another face
    mirror = (x - x.flip(-1)).abs().mean()
    other = (x - x.roll(1, dims=0)).abs().mean()
    assert mirror < 0.7 * other
