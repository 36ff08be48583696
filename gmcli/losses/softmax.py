"""The softmax (linear) head: the GM head's twin behind the same interface."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from gmcli.errors import GmcliError
from gmcli.losses.gm import LossParts


class SoftmaxHead(nn.Module):
    """A linear classification head, logits = x W^T + b, (N, D) -> (N, K).

    Every GM recipe has a softmax twin that swaps :class:`~gmcli.GMHead` for
    this head and keeps the backbone, so the two can be compared directly.
    """

    def __init__(self, feat_dim: int, num_classes: int) -> None:
        super().__init__()
        if feat_dim < 1 or num_classes < 2:
            raise GmcliError(
                "SoftmaxHead needs feat_dim >= 1 and num_classes >= 2, "
                f"got feat_dim={feat_dim}, num_classes={num_classes}"
            )
        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.linear = nn.Linear(feat_dim, num_classes)

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, num_classes={self.num_classes}"

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, K) from features x (N, D)."""
        return self.linear(x)

    def param_groups(self, lr: float, *, var_lr_mult: float = 0.1) -> list[dict]:
        """One parameter group at ``lr`` (``var_lr_mult`` has nothing to act on)."""
        return [{"params": list(self.parameters()), "lr": lr}]


class SoftmaxLoss(nn.Module):
    """Softmax cross-entropy on a :class:`SoftmaxHead`, with the GM loss's interface.

    ``alpha`` and ``lam`` exist so that schedules can set them, and are ignored.
    """

    def __init__(self, head: SoftmaxHead) -> None:
        super().__init__()
        self.head = head
        self.alpha = 0.0
        self.lam = 0.0

    def components(self, x: Tensor, y: Tensor) -> LossParts:
        """The loss and its parts for features x (N, D) and labels y (N,)."""
        logits = self.head(x)
        cls = F.cross_entropy(logits, y)
        return LossParts(cls, cls, cls.new_zeros(()), logits.detach())

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.components(x, y).loss
