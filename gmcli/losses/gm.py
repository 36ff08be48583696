"""The Gaussian-mixture head and loss (gm-method.md, sections 1 and 2).

References:
    [1] W. Wan, J. Chen, C. Yu, T. Wu, Y. Zhong, M.-H. Yang. "Shaping Deep
        Feature Space towards Gaussian Mixture for Visual Classification".
        IEEE TPAMI 45(2), 2023. arXiv:2011.09066. Authors' code:
        https://github.com/jschenthu/GM-Loss
    [2] W. Wan, Y. Zhong, T. Li, J. Chen. "Rethinking Feature Distribution for
        Loss Functions in Image Classification". CVPR 2018 (L-GM loss).
        arXiv:1803.02988. Authors' code: https://github.com/WeitaoVan/L-GM-loss

Sizes: N samples, K classes, D feature dimensions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gmcli.errors import GmcliError

COVARIANCES = ("identity", "isotropic", "diagonal")
LKD_VARIANTS = ("paper", "euclidean-half", "no-half", "all-classes")
# Most (n, K, D) differences held at once when no gradient is recorded (2 MB in float64).
CHUNK_ELEMENTS = 1 << 18


class LossParts(NamedTuple):
    """What a loss computed for one batch.

    ``loss`` is the scalar to minimise, ``cls`` and ``lkd`` its classification
    and likelihood terms (``lkd`` is zero for softmax), ``logits`` the
    evaluation logits (N, K), never with a margin.
    """

    loss: Tensor
    cls: Tensor
    lkd: Tensor
    logits: Tensor


class GMHead(nn.Module):
    r"""Gaussian-mixture classification head [1, 2].

    The features x (N, D) of class k are modelled as N(mu_k, Sigma_k) with
    prior p(k). With d_k(x) = 1/2 (x - mu_k)^T Sigma_k^{-1} (x - mu_k), the
    logits are

        l_k(x) = -d_k(x) - 1/2 log|Sigma_k| + log p(k),

    and the prediction is argmax_k l_k. Symbols and arguments:

    - mu (K, D): ``self.mu``, learned class means;
    - Sigma_k: ``covariance`` = ``"identity"`` (Sigma_k = I, no parameter, the
      TPAMI code's choice and the default), ``"isotropic"`` (s_k I, one
      log-variance per class, ``self.log_var`` (K, 1)) or ``"diagonal"`` (one
      per class and dimension, ``self.log_var`` (K, D), the papers' form);
    - p(k): uniform, or learned from ``self.prior_logits`` (K,) when
      ``learn_priors`` (p = softmax(prior_logits)).

    Note:
        Departure from the paper: learned variances are stored as
        log-variances clamped to ``log_var_range`` (default [-4, 4]). Left
        free, the log-determinant term of the likelihood drives them to zero
        and the loss to minus infinity (seen in public ports). Train them with
        a smaller learning rate (see :meth:`param_groups`).

    Distances are computed from the differences x - mu_k, never from the
    expanded square, and are never exponentiated.
    """

    def __init__(
        self,
        feat_dim: int,
        num_classes: int,
        *,
        covariance: str = "identity",
        learn_priors: bool = False,
        log_var_range: tuple[float, float] = (-4.0, 4.0),
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        if covariance not in COVARIANCES:
            raise GmcliError(
                f"covariance {covariance!r} is not known; use one of {', '.join(COVARIANCES)}"
            )
        if feat_dim < 1 or num_classes < 2:
            raise GmcliError(
                f"GMHead needs feat_dim >= 1 and num_classes >= 2, "
                f"got feat_dim={feat_dim}, num_classes={num_classes}"
            )
        lo, hi = log_var_range
        if not lo < hi:
            raise GmcliError(f"log_var_range must be (low, high) with low < high, got {log_var_range}")

        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.covariance = covariance
        self.learn_priors = learn_priors
        self.log_var_range = (float(lo), float(hi))

        # The TPAMI code initialises the means like a linear layer's weights
        # (Kaiming normal, ReLU gain): std sqrt(2 / D). Larger means make the
        # first distances, and so the first gradients, large.
        std = math.sqrt(2.0 / feat_dim) if init_std is None else init_std
        self.mu = nn.Parameter(torch.randn(num_classes, feat_dim) * std)
        if covariance == "identity":
            self.register_parameter("log_var", None)
        else:
            width = 1 if covariance == "isotropic" else feat_dim
            self.log_var = nn.Parameter(torch.zeros(num_classes, width))
        if learn_priors:
            self.prior_logits = nn.Parameter(torch.zeros(num_classes))
        else:
            self.register_parameter("prior_logits", None)

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, num_classes={self.num_classes}, "
            f"covariance={self.covariance!r}, learn_priors={self.learn_priors}, "
            f"log_var_range={self.log_var_range}"
        )

    def clamped_log_var(self) -> Tensor | None:
        """The log-variances in use, (K, 1) or (K, D); None for identity."""
        if self.log_var is None:
            return None
        return self.log_var.clamp(*self.log_var_range)

    def sq_euclidean(self, x: Tensor) -> Tensor:
        """||x - mu_k||^2 for every sample and class, (N, K)."""
        diff = x.unsqueeze(1) - self.mu.to(x.dtype).unsqueeze(0)
        return diff.pow(2).sum(dim=-1)

    def distances(self, x: Tensor) -> Tensor:
        """d_k(x) = 1/2 (x - mu_k)^T Sigma_k^{-1} (x - mu_k), shape (N, K).

        Without autograd (evaluation, detection scores) the rows are taken in
        chunks of at most ``CHUNK_ELEMENTS`` differences, so that memory stays
        O(N K) instead of O(N K D) and the work stays in cache (about 6 times
        faster at N = 65536, K = 10, D = 64; see docs/benchmarks.md).

        Args:
            x: features (N, D).
        """
        if x.dim() != 2 or x.shape[1] != self.feat_dim:
            raise ValueError(f"expected features of shape (N, {self.feat_dim}), got {tuple(x.shape)}")
        rows = max(1, CHUNK_ELEMENTS // (self.num_classes * self.feat_dim))
        if torch.is_grad_enabled() or len(x) <= rows:
            return self._distances(x)
        return torch.cat([self._distances(x[s : s + rows]) for s in range(0, len(x), rows)])

    def _distances(self, x: Tensor) -> Tensor:
        """:meth:`distances` of features x (n, D) in one block."""
        diff = x.unsqueeze(1) - self.mu.to(x.dtype).unsqueeze(0)  # (n, K, D)
        sq = diff.pow(2)
        log_var = self.clamped_log_var()
        if log_var is not None:
            sq = sq * torch.exp(-log_var.to(x.dtype)).unsqueeze(0)
        return 0.5 * sq.sum(dim=-1)

    def log_det(self) -> Tensor:
        """log|Sigma_k| for each class, shape (K,)."""
        log_var = self.clamped_log_var()
        if log_var is None:
            return self.mu.new_zeros(self.num_classes)
        if self.covariance == "isotropic":
            return log_var[:, 0] * self.feat_dim
        return log_var.sum(dim=1)

    def log_prior(self) -> Tensor:
        """log p(k), shape (K,): uniform unless priors are learned."""
        if self.prior_logits is None:
            return self.mu.new_full((self.num_classes,), -math.log(self.num_classes))
        return torch.log_softmax(self.prior_logits, dim=0)

    def logits_from_distances(self, d: Tensor) -> Tensor:
        """l_k = -d_k - 1/2 log|Sigma_k| + log p(k), (N, K), from d (N, K)."""
        bias = -0.5 * self.log_det() + self.log_prior()
        return -d + bias.to(d.dtype).unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluation logits (N, K) from features x (N, D); never a margin."""
        return self.logits_from_distances(self.distances(x))

    def nll(self, x: Tensor) -> Tensor:
        """Per-class negative log-likelihood d_k + 1/2 log|Sigma_k|, (N, K).

        Constants shared by all classes are dropped. The detection score of
        gm-method.md section 4 is this at the predicted class.
        """
        return self.distances(x) + 0.5 * self.log_det().to(x.dtype).unsqueeze(0)

    def param_groups(self, lr: float, *, var_lr_mult: float = 0.1) -> list[dict]:
        """Optimiser parameter groups: means (and priors) at ``lr``,
        log-variances at ``lr * var_lr_mult``."""
        main = [self.mu] + ([self.prior_logits] if self.prior_logits is not None else [])
        groups: list[dict] = [{"params": main, "lr": lr}]
        if self.log_var is not None:
            groups.append({"params": [self.log_var], "lr": lr * var_lr_mult})
        return groups


class GMLoss(nn.Module):
    r"""The GM loss L_GM = L_cls + lambda * L_lkd [1, 2].

    With the training logits

        l~_k = -d_k (1 + alpha [k = y]) - 1/2 log|Sigma_k| + log p(k),

    L_cls = mean_i CE(l~(x_i), y_i): the margin ``alpha`` multiplies the true
    class's distance only (not the log-determinant nor the prior), and only
    here, never at evaluation. The likelihood term ``lam`` * L_lkd with
    ``lkd`` selecting its form:

    - ``"paper"`` (default): mean_i [d_{y_i}(x_i) + 1/2 log|Sigma_{y_i}|];
    - ``"euclidean-half"`` (CVPR Caffe/TF code): mean_i 1/2 ||x_i - mu_{y_i}||^2;
    - ``"no-half"`` (TPAMI CIFAR script): mean_i ||x_i - mu_{y_i}||^2;
    - ``"all-classes"`` (TPAMI MNIST script): mean_i mean_k ||x_i - mu_k||^2.

    ``alpha`` and ``lam`` are plain float attributes; a schedule sets them
    between steps (see :mod:`gmcli.losses.schedules`).

    Args:
        head: the :class:`GMHead` whose parameters the loss uses.
        alpha: margin alpha >= 0.
        lam: likelihood weight lambda >= 0.
        lkd: the likelihood variant, one of ``LKD_VARIANTS``.
    """

    def __init__(self, head: GMHead, *, alpha: float = 0.0, lam: float = 0.0, lkd: str = "paper") -> None:
        super().__init__()
        if lkd not in LKD_VARIANTS:
            raise GmcliError(f"lkd {lkd!r} is not known; use one of {', '.join(LKD_VARIANTS)}")
        if alpha < 0 or lam < 0:
            raise GmcliError(f"alpha and lam must be >= 0, got alpha={alpha}, lam={lam}")
        self.head = head
        self.alpha = float(alpha)
        self.lam = float(lam)
        self.lkd = lkd

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lam={self.lam}, lkd={self.lkd!r}"

    def components(self, x: Tensor, y: Tensor) -> LossParts:
        """The loss and its parts for features x (N, D) and labels y (N,)."""
        head = self.head
        d = head.distances(x)  # (N, K)
        true = F.one_hot(y, head.num_classes).to(d.dtype)
        logits = head.logits_from_distances(d)
        train_logits = logits - self.alpha * d * true
        cls = F.cross_entropy(train_logits, y)

        if self.lkd == "paper":
            nll = d + 0.5 * head.log_det().to(d.dtype).unsqueeze(0)
            lkd = (nll * true).sum(dim=1).mean()
        else:
            sq = head.sq_euclidean(x)
            if self.lkd == "euclidean-half":
                lkd = 0.5 * (sq * true).sum(dim=1).mean()
            elif self.lkd == "no-half":
                lkd = (sq * true).sum(dim=1).mean()
            else:
                lkd = sq.mean(dim=1).mean()
        return LossParts(cls + self.lam * lkd, cls, lkd, logits.detach())

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """L_GM for features x (N, D) and labels y (N,), a scalar."""
        return self.components(x, y).loss
