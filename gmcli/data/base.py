"""In-memory data containers: a ``Split`` of images and labels, and a ``DataBundle``.

Images stay compact in memory (uint8 0..255, or float32 in [0, 1] for sets
that are not 8-bit) and are turned into float32 batches in [0, 1] only when
they are served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gmcli.data.augment import apply_augment, check_augment
from gmcli.errors import GmcliError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")


def to_float(x: Tensor) -> Tensor:
    """Images as a new float32 tensor in [0, 1]: uint8 is divided by 255, float copied.

    Always a copy, so that a caller who changes a batch in place cannot alter the
    data set held in memory.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32, copy=True)


@dataclass(eq=False)
class Split:
    """Images and labels of one split, held in memory.

    Attributes:
        x: images (N, C, H, W), uint8 in 0..255 or float32 in [0, 1].
        y: labels (N,) int64; -1 where unknown (unlabelled image folders).
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise GmcliError(
                f"Split.x: expected images of shape (N, C, H, W), got {tuple(self.x.shape)}"
            )
        if self.x.dtype not in (torch.uint8, torch.float32):
            raise GmcliError(f"Split.x: expected dtype uint8 or float32, got {self.x.dtype}")
        if self.y.shape != (self.x.shape[0],):
            raise GmcliError(
                f"Split.y: expected labels of shape ({self.x.shape[0]},), "
                f"got {tuple(self.y.shape)}"
            )
        self.y = self.y.to(torch.int64)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, shape={tuple(self.x.shape[1:])}, dtype={self.x.dtype})"

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: Sequence[str] = (),
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Serve the split once in batches.

        Args:
            batch_size: B, the number of samples per batch (the last may be smaller).
            shuffle: visit the samples in a random order drawn from ``generator``.
            generator: source of the order and of the augmentations; repeatable when
                seeded.
            augment: names from ``AUGMENTATIONS`` ("hflip", "crop"), applied in order.

        Yields:
            ``(x, y)``: x float32 in [0, 1] of shape (B, C, H, W), y int64 (B,).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GmcliError(f"batch_size: expected a positive integer, got {batch_size!r}")
        augment = check_augment(augment)

        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                xb, yb = self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                index = order[start : start + batch_size]
                xb, yb = self.x[index], self.y[index]
            xb = to_float(xb)
            if augment:
                xb = apply_augment(xb, augment, generator)
            yield xb, yb

    def subset(self, n: int) -> Split:
        """The first ``n`` samples (all of them when ``n`` >= len)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise GmcliError(f"subset: expected a non-negative sample count, got {n!r}")
        return Split(self.x[:n], self.y[:n])

    def float_x(self) -> Tensor:
        """All images as float32 in [0, 1], (N, C, H, W)."""
        return to_float(self.x)


def channel_stats(x: Tensor, *, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of images in [0, 1].

    Accumulates in float64 chunk by chunk, so a uint8 set is never expanded whole.

    Args:
        x: images (N, C, H, W), uint8 or float.

    Returns:
        ``(mean, std)``, each a list of C floats. A channel with zero spread gets
        std 1.0 (and a warning) so that normalising by it stays finite.
    """
    n, c, h, w = x.shape
    if n == 0:
        raise GmcliError("train split: cannot compute normalisation statistics of 0 images")
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, chunk):
        part = x[start : start + chunk].to(torch.float64)
        if x.dtype == torch.uint8:
            part /= 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))

    count = n * h * w
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    flat = [i for i in range(c) if std[i] < 1e-8]
    if flat:
        logger.warning("image channel(s) %s constant over the train split: std set to 1.0", flat)
        std[flat] = 1.0
    return mean.tolist(), std.tolist()


@dataclass(eq=False)
class DataBundle:
    """A data set ready for training: three splits and what a checkpoint records.

    Attributes:
        name: the data set name (one of ``DATASETS``).
        train, val, test: the splits.
        classes: class names, index = label.
        input_shape: (C, H, W) of every image.
        mean, std: per-channel normalisation, computed on the train split.
    """

    name: str
    train: Split
    val: Split
    test: Split
    classes: list[str]
    input_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]

    def split(self, name: str) -> Split:
        """The split called ``name``: "train", "val" or "test"."""
        if name not in SPLITS:
            raise GmcliError(f"split: unknown split {name!r}; accepted: {', '.join(SPLITS)}")
        return getattr(self, name)

    def __repr__(self) -> str:
        return (
            f"DataBundle(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, classes={len(self.classes)}, "
            f"input_shape={self.input_shape})"
        )
