"""Detection scores against numpy oracles and plain loops (gm-method.md section 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KernelDensity

from gmcli.detectors.config import SCORE_NAMES, DetectConfig
from gmcli.detectors.features import Outputs, TrainingStats
from gmcli.detectors.scores import (
    SCORES,
    EnergyScore,
    GMMixtureScore,
    GMScore,
    KDScore,
    MahalanobisScore,
    MSPScore,
    build_score,
    check_scores,
    default_scores,
    scott_bandwidth,
)
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMHead
from gmcli.losses.softmax import SoftmaxHead

N, K, D = 40, 4, 3


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _gm_head(covariance: str = "identity", priors: bool = False) -> GMHead:
    torch.manual_seed(1)
    head = GMHead(D, K, covariance=covariance, learn_priors=priors)
    with torch.no_grad():
        head.mu.mul_(3)
        if head.log_var is not None:
            head.log_var.uniform_(-1, 1)
        if head.prior_logits is not None:
            head.prior_logits.normal_()
    return head


def _outputs(head: torch.nn.Module, seed: int = 2, n: int = N) -> Outputs:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g) * 3
    with torch.no_grad():
        return Outputs(head(x), x)


def test_score_names_match_the_registry() -> None:
    assert tuple(SCORES) == SCORE_NAMES


def test_gm_score_is_min_half_squared_distance_for_identity_covariance() -> None:
    head = _gm_head()
    out = _outputs(head)
    x, mu = out.features.double().numpy(), head.mu.detach().double().numpy()
    d = 0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(-1)  # (N, K)
    np.testing.assert_allclose(GMScore(head)(out).numpy(), d.min(1), rtol=1e-6)


def test_gm_scores_on_the_worked_example() -> None:
    # gm-method.md: x = (1, 0), mu = (0, 0), (2, 0), (0, 3) -> d = (0.5, 0.5, 5.0).
    head = GMHead(2, 3)
    with torch.no_grad():
        head.mu.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    x = torch.tensor([[1.0, 0.0]])
    out = Outputs(head(x), x)
    assert GMScore(head)(out).item() == pytest.approx(0.5)
    mixture = -math.log((math.exp(-0.5) * 2 + math.exp(-5.0)) / 3)
    assert GMMixtureScore(head)(out).item() == pytest.approx(mixture)


@pytest.mark.parametrize("covariance", ["isotropic", "diagonal"])
def test_gm_scores_with_learned_variances_and_priors(covariance: str) -> None:
    head = _gm_head(covariance, priors=True)
    out = _outputs(head)
    x, mu = out.features.double().numpy(), head.mu.detach().double().numpy()
    var = np.exp(head.clamped_log_var().detach().double().numpy())
    var = np.broadcast_to(var, (K, D))
    d = 0.5 * ((x[:, None, :] - mu[None]) ** 2 / var[None]).sum(-1)
    half_log_det = 0.5 * np.log(var).sum(1)
    log_prior = torch.log_softmax(head.prior_logits.detach().double(), 0).numpy()
    nll = d + half_log_det
    pred = np.argmax(-nll + log_prior, axis=1)  # the GM prediction
    np.testing.assert_allclose(GMScore(head)(out).numpy(), nll[np.arange(N), pred], rtol=1e-5)
    np.testing.assert_allclose(
        GMMixtureScore(head)(out).numpy(), -_logsumexp(log_prior - nll, 1), rtol=1e-5
    )


def test_gm_mixture_equals_energy_on_a_gm_head() -> None:
    head = _gm_head("diagonal", priors=True)
    out = _outputs(head)
    np.testing.assert_allclose(GMMixtureScore(head)(out).numpy(), EnergyScore()(out).numpy(),
                               rtol=1e-5)


def test_msp_and_energy_equal_numpy() -> None:
    torch.manual_seed(3)
    head = SoftmaxHead(D, K)
    out = _outputs(head)
    logits = out.logits.double().numpy()
    p = np.exp(logits - _logsumexp(logits, 1)[:, None])
    np.testing.assert_allclose(MSPScore()(out).numpy(), -p.max(1), rtol=1e-10)
    np.testing.assert_allclose(EnergyScore()(out).numpy(), -_logsumexp(logits, 1), rtol=1e-10)


def _train_features(seed: int = 4, m: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(m) % K
    centres = torch.randn(K, D, generator=g) * 4
    cov_root = torch.randn(D, D, generator=g)
    feats = centres[labels] + torch.randn(m, D, generator=g) @ cov_root
    return feats, labels


def test_training_stats_fit_equals_numpy() -> None:
    feats, labels = _train_features()
    stats = TrainingStats.fit(feats, labels, K)
    f, y = feats.double().numpy(), labels.numpy()
    means = np.stack([f[y == k].mean(0) for k in range(K)])
    centred = f - means[y]
    np.testing.assert_allclose(stats.class_means.numpy(), means, rtol=1e-5)
    np.testing.assert_allclose(stats.tied_cov.numpy(), centred.T @ centred / len(f), rtol=1e-5)


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_mahalanobis_equals_numpy(ridge: float) -> None:
    feats, labels = _train_features()
    stats = TrainingStats.fit(feats, labels, K)
    out = _outputs(SoftmaxHead(D, K))
    x = out.features.double().numpy()
    mu = stats.class_means.double().numpy()
    cov = stats.tied_cov.double().numpy()
    cov = cov + ridge * np.trace(cov) / D * np.eye(D)
    prec = np.linalg.inv(cov)
    m = np.array([[(xi - mk) @ prec @ (xi - mk) for mk in mu] for xi in x])
    got = MahalanobisScore(stats, ridge=ridge)(out).numpy()
    np.testing.assert_allclose(got, m.min(1), rtol=1e-5)


def test_mahalanobis_survives_a_singular_covariance() -> None:
    feats, labels = _train_features()
    feats[:, 2] = feats[:, 0]  # rank-deficient features
    stats = TrainingStats.fit(feats, labels, K)
    out = _outputs(SoftmaxHead(D, K))
    got = MahalanobisScore(stats, ridge=0.0)(out).numpy()
    assert np.isfinite(got).all() and (got >= 0).all()


@pytest.mark.parametrize("bandwidth", [0.7, 2.0])
def test_kd_equals_a_plain_loop_and_scikit_learn(bandwidth: float) -> None:
    feats, labels = _train_features(m=60)
    stats = TrainingStats.fit(feats, labels, K)
    out = _outputs(SoftmaxHead(D, K), n=15)
    got = KDScore(stats, bandwidth=bandwidth)(out).numpy()

    x, f, y = out.features.double().numpy(), feats.double().numpy(), labels.numpy()
    pred = out.pred.numpy()
    h = bandwidth
    for i in range(len(x)):
        members = f[y == pred[i]]
        density = 0.0
        for xj in members:
            sq = float(((x[i] - xj) ** 2).sum())
            density += math.exp(-sq / (2 * h * h)) / (2 * math.pi * h * h) ** (D / 2)
        assert got[i] == pytest.approx(-math.log(density / len(members)), rel=1e-8)
        kde = KernelDensity(kernel="gaussian", bandwidth=h).fit(members)
        assert got[i] == pytest.approx(-kde.score_samples(x[i : i + 1])[0], rel=1e-8)


def test_kd_far_inputs_stay_finite() -> None:
    feats, labels = _train_features(m=60)
    stats = TrainingStats.fit(feats, labels, K)
    x = torch.full((2, D), 1e4)
    out = Outputs(torch.randn(2, K), x)
    got = KDScore(stats, bandwidth=0.1)(out).numpy()
    assert np.isfinite(got).all() and (got > 1e6).all()


def test_scott_bandwidth() -> None:
    feats, labels = _train_features(m=120)
    stats = TrainingStats.fit(feats, labels, K)
    sigma = math.sqrt(float(stats.tied_cov.diagonal().double().mean()))
    assert scott_bandwidth(stats) == pytest.approx(sigma * (120 / K) ** (-1 / (D + 4)))
    assert KDScore(stats).bandwidth == pytest.approx(scott_bandwidth(stats))


def test_score_checks() -> None:
    with pytest.raises(GmcliError, match="unknown score 'foo'; known: gm, gm-mixture, msp"):
        check_scores(["foo"], "gm")
    with pytest.raises(GmcliError, match="'gm' needs a GM checkpoint.*softmax head"):
        check_scores(["msp", "gm"], "softmax")
    check_scores(list(SCORES), "gm")
    assert default_scores("gm")[0] == "gm"
    assert default_scores("softmax") == ["mahalanobis", "msp", "energy", "kd"]


def test_build_score_passes_the_options() -> None:
    feats, labels = _train_features()
    stats = TrainingStats.fit(feats, labels, K)
    cfg = DetectConfig(kd_bandwidth=0.3, mahalanobis_ridge=0.01)
    head = SoftmaxHead(D, K)
    assert build_score("kd", head, stats, cfg).bandwidth == 0.3
    assert build_score("mahalanobis", head, stats, cfg).ridge == 0.01
    assert isinstance(build_score("gm", _gm_head(), None, cfg), GMScore)
    with pytest.raises(GmcliError, match="needs a GM checkpoint"):
        build_score("gm-mixture", head, None, cfg)
