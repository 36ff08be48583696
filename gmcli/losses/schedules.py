"""Schedules for the margin alpha and the likelihood weight lambda.

- ``constant``: alpha and lambda from the first step.
- ``warmup`` (TPAMI code): over E_w epochs, alpha_e = alpha (0.1 + 0.9 e / E_w)
  and lambda_e = lambda (0.01 + 0.99 e / E_w); constant after E_w.
- ``stepup`` (CVPR Caffe code): alpha starts at ``start`` (0.1) and doubles
  every S iterations, capped at alpha (0.1, 0.2, 0.3, 0.3, ... for alpha 0.3);
  lambda is constant.
"""

from __future__ import annotations

from dataclasses import dataclass

from gmcli.errors import GmcliError

SCHEDULES = ("constant", "warmup", "stepup")


@dataclass(frozen=True)
class CoefficientSchedule:
    """alpha and lambda as a function of the epoch (from 0) and global iteration.

    Args:
        alpha: the target margin.
        lam: the target likelihood weight.
        kind: one of ``SCHEDULES``.
        warmup_epochs: E_w for ``warmup``.
        every: S, iterations between doublings, for ``stepup``.
        start: the first alpha of ``stepup``.
    """

    alpha: float
    lam: float
    kind: str = "constant"
    warmup_epochs: int = 5
    every: int = 1000
    start: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise GmcliError(f"schedule {self.kind!r} is not known; use one of {', '.join(SCHEDULES)}")
        if self.kind == "warmup" and self.warmup_epochs < 1:
            raise GmcliError(f"warmup_epochs must be >= 1, got {self.warmup_epochs}")
        if self.kind == "stepup" and (self.every < 1 or self.start <= 0):
            raise GmcliError(f"stepup needs every >= 1 and start > 0, got every={self.every}, start={self.start}")

    def at(self, epoch: int, iteration: int = 0) -> tuple[float, float]:
        """(alpha, lambda) for the given epoch (from 0) and global iteration (from 0)."""
        if self.kind == "warmup":
            frac = min(epoch / self.warmup_epochs, 1.0)
            return self.alpha * (0.1 + 0.9 * frac), self.lam * (0.01 + 0.99 * frac)
        if self.kind == "stepup":
            alpha = min(self.start * 2 ** (iteration // self.every), self.alpha)
            return alpha, self.lam
        return self.alpha, self.lam
