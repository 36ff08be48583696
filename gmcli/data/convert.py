"""Conversion of images to the input shape (C, H, W) a model was trained on."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from gmcli.data.base import to_float
from gmcli.errors import GmcliError

logger = logging.getLogger(__name__)


def convert_to_shape(x: Tensor, input_shape: tuple[int, int, int]) -> Tensor:
    """Convert images to ``input_shape``: channel count first, then size.

    Channels: C -> 1 takes the mean over channels, 1 -> C repeats the one channel;
    other changes (for instance 4 -> 3) are refused. Size: bilinear interpolation
    with antialiasing. A warning names both shapes whenever something changes.

    Args:
        x: images (N, C, H, W), float in [0, 1] (uint8 is accepted and scaled).
        input_shape: the target (C', H', W').

    Returns:
        float32 images (N, C', H', W') in [0, 1]; ``x`` itself when nothing changes.
    """
    if x.dim() != 4:
        raise GmcliError(f"images: expected shape (N, C, H, W), got {tuple(x.shape)}")
    target = tuple(int(v) for v in input_shape)
    if len(target) != 3 or min(target) < 1:
        raise GmcliError(f"input_shape: expected (C, H, W) of positive sizes, got {input_shape}")
    source = tuple(x.shape[1:])
    if source == target:
        return x if x.dtype == torch.float32 else to_float(x)
    x = to_float(x)

    c, h, w = target
    if x.shape[1] != c:
        if c == 1:
            x = x.mean(dim=1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        else:
            raise GmcliError(
                f"images: cannot convert {x.shape[1]} channels to {c}; accepted: "
                "the same count, any count to 1, or 1 to any count"
            )
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)

    logger.warning("converted images of shape %s to the input shape %s", source, target)
    return x.contiguous()
