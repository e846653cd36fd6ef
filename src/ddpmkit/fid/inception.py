"""The FID Inception-v3 network (pool3, 2048 features), built offline from a local weights file.

It is the network pytorch-fid builds (the TF inception-2015-12-05 graph that every published FID
uses): torchvision's Inception-v3 with 1008 classes, its mixed blocks swapped for pytorch-fid's
FIDInceptionA/C/E_1/E_2 (TF's average pooling that ignores padding, and the max pool in the last
block), the state dict read from our file with `weights_only=True`. The forward pass is
pytorch-fid InceptionV3's for its last block: bilinear resize to 299x299, [0, 1] -> [-1, 1], the
blocks up to the global average pool. tests/test_fid.py checks features and FID against pytorch-fid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
from torch import Tensor, nn
from torchvision.models import inception_v3

from ddpmkit.errors import DdpmkitError

DIMS = 2048  # pool3 features
INPUT_SIZE = 299
# what the features are: part of every stats cache key (unchanged since the features are the same)
FEATURE_SPEC = "pytorch-fid InceptionV3 pool3 2048; uint8/255 -> bilinear 299 -> [-1,1]"


class FidInception(nn.Module):
    """Pool3 features of images x: (B, 3, H, W) in [0, 1] -> (B, 2048)."""

    def __init__(self) -> None:
        super().__init__()
        net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE_1(1280)
        net.Mixed_7c = FIDInceptionE_2(2048)
        self.net = net  # holds the parameters under the names of the weights file (plus "net.")

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """The file's state dict (torchvision Inception-v3 names, fc included), strictly."""
        self.net.load_state_dict(state)

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = n.maxpool1(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))))
        x = n.maxpool2(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)))
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d,
                      n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_inception(weights: Path, device: torch.device | str = "cpu") -> FidInception:
    """The FID network with the weights from `weights`, in eval mode, without gradients."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = FidInception()
        model.load_weights(state)
    except Exception as e:  # a truncated or foreign file: say which
        raise DdpmkitError(f"cannot read FID Inception weights {weights}: {e}".splitlines()[0]) from e
    return model.requires_grad_(False).to(device).eval()


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float32 in [0, 1], exactly torchvision's ToTensor on a PIL image."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images.float().div(255)


@torch.no_grad()
def inception_features(
    model: nn.Module,
    batches: Iterable[Tensor],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Pool3 features of uint8 image batches (B, 3, H, W): (N, 2048) float64."""
    feats = [model(to_unit_float(b).to(device)).cpu().numpy() for b in batches]
    if not feats:
        return np.empty((0, DIMS))
    return np.concatenate(feats).astype(np.float64)


def rebatch(batches: Iterable[Tensor], batch_size: int, limit: Optional[int] = None) -> Iterator[Tensor]:
    """Regroup image batches into `batch_size` chunks, stopping after `limit` images."""
    buf: list[Tensor] = []
    have, seen = 0, 0
    for b in batches:
        if limit is not None:
            b = b[: max(0, limit - seen)]
        seen += len(b)
        if len(b):
            buf.append(b)
            have += len(b)
        while have >= batch_size:
            cat = torch.cat(buf)
            yield cat[:batch_size]
            rest = cat[batch_size:]
            buf, have = ([rest] if len(rest) else []), len(rest)
        if limit is not None and seen >= limit:
            break
    if have:
        yield torch.cat(buf)
