"""Detection scores on a model's outputs: higher means more abnormal.

One class per score; ``SCORES`` maps each name to its class and ``build_score``
builds one for a checkpoint. Every score maps :class:`~gmcli.detectors.features.Outputs`
(logits (N, K), features x (N, D)) to scores (N,) in float64.

References:
    [1] W. Wan et al. "Shaping Deep Feature Space towards Gaussian Mixture for
        Visual Classification". IEEE TPAMI 45(2), 2023 (gm-method.md section 4).
    [2] D. Hendrycks, K. Gimpel. "A Baseline for Detecting Misclassified and
        Out-of-Distribution Examples in Neural Networks". ICLR 2017.
    [3] W. Liu, X. Wang, J. Owens, Y. Li. "Energy-based Out-of-distribution
        Detection". NeurIPS 2020.
    [4] K. Lee, K. Lee, H. Lee, J. Shin. "A Simple Unified Framework for Detecting
        Out-of-Distribution Samples and Adversarial Attacks". NeurIPS 2018.
    [5] R. Feinman, R. Curtin, S. Shintre, A. Gardner. "Detecting Adversarial
        Samples from Artifacts". arXiv:1703.00410, 2017.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

import torch
from torch import Tensor

from gmcli.detectors.config import DetectConfig
from gmcli.detectors.features import Outputs, TrainingStats
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMHead
from gmcli.losses.softmax import SoftmaxHead

log = logging.getLogger(__name__)

# Rows of the (N, K, D) difference tensors computed at once.
CHUNK = 1024


class Score:
    """A detection score: ``score(outputs) -> (N,)``, higher = more abnormal."""

    name: ClassVar[str]
    needs_gm: ClassVar[bool] = False
    needs_stats: ClassVar[bool] = False

    def __call__(self, out: Outputs) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """The score's settings, for metrics.json."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class GMScore(Score):
    r"""Negative log-likelihood under the predicted class's Gaussian [1]:

        s(x) = d_yhat(x) + 1/2 log|Sigma_yhat|,   yhat = argmax_k l_k(x),

    with d_k the GM head's half squared Mahalanobis distance (``head.nll``,
    constants shared by all classes dropped). With identity covariance and
    uniform priors this is min_k d_k(x) = min_k 1/2 ||x - mu_k||^2.
    """

    name = "gm"
    needs_gm = True

    def __init__(self, head: GMHead) -> None:
        self.head = head

    @torch.no_grad()
    def __call__(self, out: Outputs) -> Tensor:
        nll = self.head.nll(out.features.double())  # (N, K)
        return nll.gather(1, out.pred.unsqueeze(1)).squeeze(1)


class GMMixtureScore(Score):
    r"""Negative log-likelihood of the whole mixture [1]:

        s(x) = -log sum_k p(k) exp(-d_k(x) - 1/2 log|Sigma_k|),

    computed with log-sum-exp. The constant D/2 log(2 pi), shared by all inputs,
    is dropped, so s is the true -log p(x) minus D/2 log(2 pi).

    Note:
        On a GM head the logits are l_k = -d_k - 1/2 log|Sigma_k| + log p(k),
        so this equals the ``energy`` score of the same head.
    """

    name = "gm-mixture"
    needs_gm = True

    def __init__(self, head: GMHead) -> None:
        self.head = head

    @torch.no_grad()
    def __call__(self, out: Outputs) -> Tensor:
        nll = self.head.nll(out.features.double())  # (N, K)
        log_prior = self.head.log_prior().double().unsqueeze(0)
        return -torch.logsumexp(log_prior - nll, dim=1)


class MSPScore(Score):
    """Negative maximum softmax probability of the logits [2]: s = -max_k softmax(l)_k."""

    name = "msp"

    @torch.no_grad()
    def __call__(self, out: Outputs) -> Tensor:
        return -torch.softmax(out.logits.double(), dim=1).max(dim=1).values


class EnergyScore(Score):
    """Free energy of the logits at temperature T = 1 [3]: s = -logsumexp_k l_k."""

    name = "energy"

    @torch.no_grad()
    def __call__(self, out: Outputs) -> Tensor:
        return -torch.logsumexp(out.logits.double(), dim=1)


class MahalanobisScore(Score):
    r"""Smallest squared Mahalanobis distance to a class mean, one tied covariance [4]:

        s(x) = min_k (x - mu_k)^T Sigma^{-1} (x - mu_k),

    with mu_k the class means and Sigma the within-class covariance of the
    training features (``TrainingStats``). Sigma + ridge * mean(diag Sigma) * I
    is inverted through its Cholesky factor (pseudo-inverse when singular).

    Note:
        Lee et al.'s full method also perturbs the input and combines layers
        with a logistic regression fitted on abnormal data; this is the
        single-layer score on the penultimate features, without either.
    """

    name = "mahalanobis"
    needs_stats = True

    def __init__(self, stats: TrainingStats, *, ridge: float = 1e-6) -> None:
        self.ridge = float(ridge)
        self.mu = stats.class_means.double()  # (K, D)
        cov = stats.tied_cov.double()
        d = cov.shape[0]
        scale = float(cov.diagonal().mean()) if d else 0.0
        cov = cov + self.ridge * (scale if scale > 0 else 1.0) * torch.eye(d, dtype=cov.dtype)
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info) == 0:
            # Sigma^{-1} = L^{-T} L^{-1}: whiten with W = L^{-1}.
            self.whiten = torch.linalg.solve_triangular(chol, torch.eye(d, dtype=cov.dtype), upper=False)
        else:
            log.warning("tied covariance is singular; Mahalanobis uses its pseudo-inverse")
            evals, evecs = torch.linalg.eigh(cov)
            inv_sqrt = torch.where(evals > 1e-12 * evals.abs().max(), evals.clamp_min(1e-300).rsqrt(), 0)
            self.whiten = (evecs * inv_sqrt).T
        self.mu_w = self.mu @ self.whiten.T  # (K, D)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "ridge": self.ridge}

    @torch.no_grad()
    def __call__(self, out: Outputs) -> Tensor:
        xw = out.features.double() @ self.whiten.T  # (N, D)
        parts = []
        for start in range(0, len(xw), CHUNK):
            diff = xw[start : start + CHUNK].unsqueeze(1) - self.mu_w.unsqueeze(0)  # (n, K, D)
            parts.append(diff.pow(2).sum(dim=2).min(dim=1).values)
        return torch.cat(parts) if parts else xw.new_zeros(0)


def scott_bandwidth(stats: TrainingStats) -> float:
    """Scott's rule on the within-class spread: h = sigma * (M / K)^(-1 / (D + 4)),
    sigma the root mean diagonal of the tied covariance."""
    m, d = stats.features.shape
    k = max(1, len(stats.class_means))
    sigma = math.sqrt(max(float(stats.tied_cov.double().diagonal().mean()), 1e-12))
    return sigma * max(m / k, 1.0) ** (-1.0 / (d + 4))


class KDScore(Score):
    r"""Negative log kernel density of the features among the training features of
    the predicted class [5]:

        s(x) = -log( 1/M_t sum_{i: y_i = t} N(x; x_i, h^2 I) ),   t = yhat(x),

    a Gaussian kernel of bandwidth h (``kd_bandwidth``), with log-sum-exp. The
    kernel's normalisation is kept, so -s equals scikit-learn's
    ``KernelDensity(bandwidth=h).score_samples`` fitted on class t.

    Note:
        Feinman et al. combine the density with Bayesian (dropout) uncertainty
        in a logistic regression; this is the density alone. A predicted class
        without training features falls back to all training features.
    """

    name = "kd"
    needs_stats = True

    def __init__(self, stats: TrainingStats, *, bandwidth: float | str = "auto") -> None:
        if bandwidth == "auto":
            bandwidth = scott_bandwidth(stats)
            log.info("kd bandwidth %.4g (Scott's rule on the training features)", bandwidth)
        self.bandwidth = float(bandwidth)
        self.feats = stats.features.double()
        self.labels = stats.labels.to(torch.int64)
        self.num_classes = len(stats.class_means)

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "bandwidth": self.bandwidth, "train_features": len(self.feats)}

    def _neg_log_density(self, x: Tensor, ref: Tensor) -> Tensor:
        """-log mean_i N(x; ref_i, h^2 I) for x (n, D), ref (M, D): (n,)."""
        h2 = self.bandwidth**2
        d = x.shape[1]
        out = []
        for start in range(0, len(x), CHUNK):
            sq = torch.cdist(x[start : start + CHUNK], ref, compute_mode="donot_use_mm_for_euclid_dist")
            log_k = torch.logsumexp(-sq.pow(2) / (2 * h2), dim=1)
            out.append(-(log_k - math.log(len(ref)) - 0.5 * d * math.log(2 * math.pi * h2)))
        return torch.cat(out) if out else x.new_zeros(0)

    @torch.no_grad()
    def __call__(self, out: Outputs) -> Tensor:
        x = out.features.double()
        pred = out.pred
        s = x.new_zeros(len(x))
        for t in pred.unique().tolist():
            rows = pred == t
            ref = self.feats[self.labels == t]
            if len(ref) == 0:
                log.warning("no training features of class %d for kd; using all classes", t)
                ref = self.feats
            s[rows] = self._neg_log_density(x[rows], ref)
        return s


SCORES: dict[str, type[Score]] = {
    cls.name: cls for cls in (GMScore, GMMixtureScore, MSPScore, EnergyScore, MahalanobisScore, KDScore)
}


def check_scores(names: list[str], head_kind: str) -> None:
    """Raise GmcliError for an unknown score or a GM score on a softmax head."""
    for name in names:
        if name not in SCORES:
            raise GmcliError(f"--score: unknown score {name!r}; known: {', '.join(SCORES)}")
        if SCORES[name].needs_gm and head_kind != "gm":
            baselines = ", ".join(n for n, c in SCORES.items() if not c.needs_gm)
            raise GmcliError(
                f"--score: {name!r} needs a GM checkpoint, but this one has a {head_kind} head; "
                f"use one of {baselines}"
            )


def default_scores(head_kind: str) -> list[str]:
    """Every score the head supports: GM first on a GM head, Mahalanobis first otherwise."""
    if head_kind == "gm":
        return list(SCORES)
    return ["mahalanobis"] + [n for n, c in SCORES.items() if not c.needs_gm and n != "mahalanobis"]


def build_score(
    name: str, head: GMHead | SoftmaxHead, stats: TrainingStats | None, config: DetectConfig
) -> Score:
    """The score ``name`` for a head, the training statistics and the options."""
    check_scores([name], "gm" if isinstance(head, GMHead) else "softmax")
    cls = SCORES[name]
    if cls.needs_gm:
        return cls(head)
    if cls.needs_stats:
        if stats is None:
            raise GmcliError(f"score {name!r} needs training-feature statistics, none available")
        if cls is MahalanobisScore:
            return MahalanobisScore(stats, ridge=config.mahalanobis_ridge)
        return KDScore(stats, bandwidth=config.kd_bandwidth)
    return cls()
