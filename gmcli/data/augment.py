"""Random augmentations applied to a whole batch at once with torch ops.

Every random draw goes through the caller's ``torch.Generator``, so that a
training run seeded once gives the same augmented batches every time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gmcli.errors import GmcliError

AUGMENTATIONS: tuple[str, ...] = ("hflip", "crop")


def check_augment(augment: Sequence[str] | None) -> tuple[str, ...]:
    """Validate augmentation names and return them as a tuple (None means none)."""
    if augment is None:
        return ()
    if isinstance(augment, str):
        augment = (augment,)
    unknown = [name for name in augment if name not in AUGMENTATIONS]
    if unknown:
        raise GmcliError(
            f"augment: unknown augmentation {unknown[0]!r} in {list(augment)}; "
            f"accepted: {', '.join(AUGMENTATIONS)}"
        )
    return tuple(augment)


def crop_padding(height: int, width: int) -> int:
    """Zero padding (pixels) for the random crop: 4 from 32 px, 2 from 16 px, else 1."""
    side = min(height, width)
    if side >= 32:
        return 4
    if side >= 16:
        return 2
    return 1


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image left-right with probability 1/2.

    Args:
        x: images (N, C, H, W).
        generator: source of the coin flips.

    Returns:
        (N, C, H, W), a new tensor.
    """
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(
    x: Tensor, generator: torch.Generator | None = None, *, pad: int | None = None
) -> Tensor:
    """Zero-pad each image by ``pad`` pixels and crop back to (H, W) at a random offset.

    Args:
        x: images (N, C, H, W).
        generator: source of the offsets, drawn uniformly in [0, 2 * pad] per image.
        pad: padding in pixels; by default ``crop_padding(H, W)``.

    Returns:
        (N, C, H, W), a new tensor.
    """
    n, _, h, w = x.shape
    if pad is None:
        pad = crop_padding(h, w)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))

    # One (row, column) offset per image, then a gather of the H x W window.
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = top[:, None] + torch.arange(h)  # (N, H)
    cols = left[:, None] + torch.arange(w)  # (N, W)
    batch = torch.arange(n)[:, None, None]
    window = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return window.permute(0, 3, 1, 2).contiguous()


def apply_augment(
    x: Tensor, augment: Sequence[str], generator: torch.Generator | None = None
) -> Tensor:
    """Apply the named augmentations in order to a batch (N, C, H, W)."""
    for name in check_augment(augment):
        if name == "hflip":
            x = random_hflip(x, generator)
        elif name == "crop":
            x = random_crop(x, generator)
    return x
