"""Adaptive attacks that know the Gaussian mixture (gm-method.md sections 4 and 5).

A detector that thresholds the GM score s(x) = nll_yhat(x) is only tested
honestly by an attacker who also sees the score. Both attacks here are
foolbox's L-inf PGD with another objective: they override ``get_loss_fn`` and
keep foolbox's steps, projection, clipping and random start.

With features f = f(x) (N, D), per-class scores nll_k = d_k(f) + 1/2 log|Sigma_k|
(:meth:`gmcli.GMHead.nll`, = d_k for identity covariance), labels y, targets t:

- :class:`GMPenaltyPGD` (``pgd-adaptive``): cross-entropy plus a weighted
  penalty on the detection score, so the adversarial feature stays likely:
  untargeted, PGD ascends  CE(l(x), y) - w * nll_yhat(x)  (yhat = the current
  prediction); targeted, it descends  CE(l(x), t) + w * nll_t(x).
- :class:`GMLikelihoodPGD` (``pgd-likelihood``), the TPAMI code's likelihood
  objective: untargeted, it minimises  min_{k != y} nll_k(x), pulling the
  feature onto the nearest wrong class's mean, where the detector sees a
  perfectly likely input; targeted, it minimises  nll_t(x).

References:
    W. Wan et al., "Shaping Deep Feature Space towards Gaussian Mixture for
    Visual Classification", IEEE TPAMI 45(2), 2023 (arXiv 2011.09066);
    authors' code https://github.com/jschenthu/GM-Loss.
    A. Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018 (PGD).

Note:
    The likelihood objective uses nll_k rather than d_k so that classes with
    learned variances are compared on the detector's own scale; with identity
    covariance (the default) the two are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gmcli.attacks.methods import import_foolbox
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMHead
from gmcli.models.classifier import Classifier

fb = import_foolbox()
import eagerpy as ep  # noqa: E402  (foolbox's tensor layer, imported with it)


class _GMObjectivePGD(fb.attacks.LinfProjectedGradientDescentAttack):
    """Foolbox's L-inf PGD whose loss is computed from the GM head of ``model``.

    Foolbox ascends the loss for an untargeted criterion and descends it for a
    targeted one; :meth:`run` records which, and :meth:`objective` returns the
    quantity to move along that direction.
    """

    method_name = ""

    def __init__(
        self,
        model: Classifier,
        *,
        rel_stepsize: float = 2.5 / 40,
        abs_stepsize: float | None = None,
        steps: int = 40,
        random_start: bool = True,
    ) -> None:
        if not isinstance(getattr(model, "head", None), GMHead):
            kind = getattr(model, "head_kind", type(model).__name__)
            raise GmcliError(
                f"--method {self.method_name}: needs a GM checkpoint (its objective reads the "
                f"Gaussian-mixture head), got a {kind} checkpoint; use pgd, bim, fgsm, "
                "pgd-l2, deepfool, deepfool-l2 or cw"
            )
        super().__init__(
            rel_stepsize=rel_stepsize,
            abs_stepsize=abs_stepsize,
            steps=steps,
            random_start=random_start,
        )
        self.classifier = model
        self._targeted = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rel_stepsize={self.rel_stepsize}, "
            f"abs_stepsize={self.abs_stepsize}, steps={self.steps}, "
            f"random_start={self.random_start})"
        )

    def run(self, model: Any, inputs: Any, criterion: Any, *, epsilon: float, **kwargs: Any) -> Any:
        self._targeted = hasattr(criterion, "target_classes")
        return super().run(model, inputs, criterion, epsilon=epsilon, **kwargs)

    def objective(self, logits: Tensor, nll: Tensor, classes: Tensor) -> Tensor:
        """Per-sample loss (N,) from logits (N, K), nll (N, K) and labels or targets (N,)."""
        raise NotImplementedError

    def get_loss_fn(self, model: Any, labels: Any) -> Callable[[Any], Any]:
        classes = labels.raw
        head = self.classifier.head

        def loss_fn(inputs: Any) -> Any:
            # foolbox hands over inputs that require grad; compute in torch, with
            # grad on even if the caller sits in a no_grad block.
            with torch.enable_grad():
                logits, feats = self.classifier.logits_and_features(inputs.raw)
                loss = self.objective(logits, head.nll(feats), classes).sum()
            return ep.astensor(loss)

        return loss_fn


class GMPenaltyPGD(_GMObjectivePGD):
    """PGD on cross-entropy with a penalty ``weight`` on the GM detection score.

    Untargeted: ascend CE(l, y) - w * nll_yhat; targeted: descend
    CE(l, t) + w * nll_t. ``weight`` = 0 is plain PGD.
    """

    method_name = "pgd-adaptive"

    def __init__(self, model: Classifier, *, weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if weight < 0:
            raise GmcliError(f"--adaptive-weight: expected a number >= 0, got {weight!r}")
        self.weight = float(weight)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", weight={self.weight})"

    def objective(self, logits: Tensor, nll: Tensor, classes: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, classes, reduction="none")
        if self._targeted:
            score = nll.gather(1, classes[:, None]).squeeze(1)
            return ce + self.weight * score
        # The class the adversarial input aims at: the best wrong one, which is
        # the prediction (and so the detector's class) once the attack succeeds.
        own = F.one_hot(classes, logits.shape[1]).bool()
        aim = logits.detach().masked_fill(own, float("-inf")).argmax(dim=1, keepdim=True)
        score = nll.gather(1, aim).squeeze(1)
        return ce - self.weight * score


class GMLikelihoodPGD(_GMObjectivePGD):
    """PGD on the likelihood objective: the nearest wrong class's nll.

    Untargeted: minimise min_{k != y} nll_k (foolbox ascends its negative);
    targeted: minimise nll_t.
    """

    method_name = "pgd-likelihood"

    def objective(self, logits: Tensor, nll: Tensor, classes: Tensor) -> Tensor:
        if self._targeted:
            return nll.gather(1, classes[:, None]).squeeze(1)
        own = F.one_hot(classes, nll.shape[1]).bool()
        nearest_wrong = nll.masked_fill(own, float("inf")).min(dim=1).values
        return -nearest_wrong
