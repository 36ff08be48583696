"""The classifier: normalisation, backbone and head in one module."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gmcli.losses.gm import GMHead
from gmcli.losses.softmax import SoftmaxHead


class Classifier(nn.Module):
    """Inputs in [0, 1] (N, C, H, W) -> normalise -> backbone -> features (N, D) -> logits (N, K).

    The normalisation lives inside the model, so attacks work in pixel space
    [0, 1] and a checkpoint carries everything needed to classify.

    Args:
        backbone: maps normalised inputs to features (N, D).
        head: a :class:`~gmcli.GMHead` or :class:`~gmcli.SoftmaxHead`.
        mean: per-channel mean of the training inputs, length C.
        std: per-channel standard deviation, length C.
        input_shape: (C, H, W) the model was trained on.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: GMHead | SoftmaxHead,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        input_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.input_shape = tuple(int(v) for v in input_shape)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def head_kind(self) -> str:
        """``"gm"`` or ``"softmax"``."""
        return "gm" if isinstance(self.head, GMHead) else "softmax"

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (N, D) of inputs x in [0, 1], (N, C, H, W)."""
        return self.backbone((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluation logits (N, K) and features (N, D) in one pass."""
        feats = self.features(x)
        return self.head(feats), feats

    def forward(self, x: Tensor) -> Tensor:
        """Evaluation logits (N, K); the GM margin is never applied here."""
        return self.head(self.features(x))
