"""The GM head and loss against the worked example of gm-method.md and plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmcli import GMHead, GMLoss, SoftmaxHead, SoftmaxLoss
from gmcli.errors import GmcliError
from gmcli.losses.schedules import CoefficientSchedule


def worked_example(lkd: str = "paper", alpha: float = 0.5, lam: float = 0.1) -> tuple[GMLoss, torch.Tensor, torch.Tensor]:
    """gm-method.md: D = 2, K = 3, x = (1, 0), mu = (0,0), (2,0), (0,3), y = 0."""
    head = GMHead(2, 3).double()
    with torch.no_grad():
        head.mu.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    return GMLoss(head, alpha=alpha, lam=lam, lkd=lkd), x, y


def test_worked_example_distances_and_logits() -> None:
    loss, x, _ = worked_example()
    np.testing.assert_allclose(loss.head.distances(x).detach().numpy(), [[0.5, 0.5, 5.0]], atol=1e-12)
    # uniform priors add the same log(1/3) to every logit; differences are what matter
    logits = loss.head(x).detach().numpy()[0]
    np.testing.assert_allclose(logits - logits[0], [0.0, 0.0, -4.5], atol=1e-12)
    np.testing.assert_allclose(logits + math.log(3), [-0.5, -0.5, -5.0], atol=1e-12)


@pytest.mark.parametrize(
    ("lkd", "expected"),
    [("paper", 0.882165), ("euclidean-half", 0.882165), ("no-half", 0.932165), ("all-classes", 1.232165)],
)
def test_worked_example_with_margin(lkd: str, expected: float) -> None:
    loss, x, y = worked_example(lkd)
    parts = loss.components(x, y)
    assert parts.cls.item() == pytest.approx(0.832165, abs=1e-6)
    assert parts.loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("lkd", "lkd_value"), [("paper", 0.5), ("euclidean-half", 0.5), ("no-half", 1.0), ("all-classes", 4.0)]
)
def test_worked_example_without_margin(lkd: str, lkd_value: float) -> None:
    loss, x, y = worked_example(lkd, alpha=0.0)
    parts = loss.components(x, y)
    assert parts.cls.item() == pytest.approx(0.698686, abs=1e-6)
    assert parts.lkd.item() == pytest.approx(lkd_value, abs=1e-12)
    assert parts.loss.item() == pytest.approx(0.698686 + 0.1 * lkd_value, abs=1e-6)


def test_margin_only_in_training_loss() -> None:
    """The evaluation logits never carry the margin, whatever alpha is."""
    loss, x, y = worked_example(alpha=0.5)
    parts = loss.components(x, y)
    np.testing.assert_allclose(parts.logits.numpy(), loss.head(x).detach().numpy(), atol=0)
    np.testing.assert_allclose(parts.logits.numpy()[0] + math.log(3), [-0.5, -0.5, -5.0], atol=1e-12)
    # the training logits of the example with margin: (-0.75, -0.5, -5.0)
    train_logits = torch.tensor([[-0.75, -0.5, -5.0]], dtype=torch.float64)
    assert parts.cls.item() == pytest.approx(F.cross_entropy(train_logits, y).item(), abs=1e-12)


def test_margin_changes_the_loss() -> None:
    """A port that silently drops the margin would give the same loss for both alphas."""
    with_margin, x, y = worked_example(alpha=0.5)
    without, _, _ = worked_example(alpha=0.0)
    assert with_margin(x, y).item() > without(x, y).item() + 0.1


def plain_loop_logits(x: np.ndarray, mu: np.ndarray, log_var: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """l_k = -1/2 sum_j (x_j - mu_kj)^2 / var_kj - 1/2 sum_j log var_kj + log p(k), by loops."""
    n, k = x.shape[0], mu.shape[0]
    out = np.zeros((n, k))
    for i in range(n):
        for c in range(k):
            d = 0.0
            logdet = 0.0
            for j in range(x.shape[1]):
                var = math.exp(log_var[c, j])
                d += 0.5 * (x[i, j] - mu[c, j]) ** 2 / var
                logdet += log_var[c, j]
            out[i, c] = -d - 0.5 * logdet + log_prior[c]
    return out


@pytest.mark.parametrize("covariance", ["identity", "isotropic", "diagonal"])
def test_logits_match_a_plain_loop(covariance: str) -> None:
    torch.manual_seed(0)
    head = GMHead(4, 3, covariance=covariance, learn_priors=True).double()
    with torch.no_grad():
        if head.log_var is not None:
            head.log_var.uniform_(-1.0, 1.0)
        head.prior_logits.normal_()
    x = torch.randn(5, 4, dtype=torch.float64)
    d = head.feat_dim
    lv = np.zeros((3, d)) if head.log_var is None else np.broadcast_to(head.log_var.detach().numpy(), (3, d))
    log_prior = torch.log_softmax(head.prior_logits, 0).detach().numpy()
    expected = plain_loop_logits(x.numpy(), head.mu.detach().numpy(), lv, log_prior)
    np.testing.assert_allclose(head(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    # the detection score: d_k + 1/2 log|Sigma_k| = -(l_k - log p(k))
    np.testing.assert_allclose(head.nll(x).detach().numpy(), -(expected - log_prior), rtol=1e-10, atol=1e-10)


def test_paper_likelihood_with_learned_variances() -> None:
    """L_lkd = mean_i [d_y + 1/2 log|Sigma_y|] and the margin multiplies d only."""
    torch.manual_seed(1)
    head = GMHead(3, 4, covariance="diagonal").double()
    with torch.no_grad():
        head.log_var.uniform_(-1, 1)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = GMLoss(head, alpha=0.3, lam=0.2)
    parts = loss.components(x, y)
    d = head.distances(x).detach().numpy()
    logdet = head.log_var.sum(1).detach().numpy()
    lkd = np.mean([d[i, y[i]] + 0.5 * logdet[y[i]] for i in range(6)])
    logits = -d - 0.5 * logdet - math.log(4)
    for i in range(6):
        logits[i, y[i]] = -d[i, y[i]] * 1.3 - 0.5 * logdet[y[i]] - math.log(4)
    shifted = logits - logits.max(1, keepdims=True)
    ce = np.mean([-(shifted[i, y[i]] - np.log(np.exp(shifted[i]).sum())) for i in range(6)])
    assert parts.lkd.item() == pytest.approx(lkd, abs=1e-10)
    assert parts.cls.item() == pytest.approx(ce, abs=1e-10)


def test_float32_far_features_stay_finite() -> None:
    """Distances in the thousands would overflow exp(-d); log-sum-exp keeps the loss finite."""
    head = GMHead(8, 3)
    x = torch.full((4, 8), 300.0, requires_grad=True)
    loss = GMLoss(head, alpha=1.0, lam=0.1)(x, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()


def test_dtype_and_device_follow_the_input() -> None:
    head = GMHead(3, 2, covariance="diagonal")
    x64 = torch.randn(2, 3, dtype=torch.float64)
    assert head(x64).dtype == torch.float64
    assert head.nll(x64).dtype == torch.float64
    meta = torch.randn(2, 3, device="meta")
    assert head.to("meta")(meta).device.type == "meta"


def _fit_tight_clusters(log_var_range: tuple[float, float], steps: int = 400) -> tuple[GMHead, list[float]]:
    """Learn diagonal variances while the features themselves are free to move,
    as a backbone's are: features fall onto their means and, unless clamped,
    the variances follow them to zero (the collapse of public ports)."""
    torch.manual_seed(0)
    k, d = 4, 2
    centres = torch.randn(k, d) * 3
    y = torch.arange(k).repeat_interleave(16)
    x = torch.nn.Parameter(centres[y] + 0.3 * torch.randn(len(y), d))
    head = GMHead(d, k, covariance="diagonal", log_var_range=log_var_range)
    with torch.no_grad():
        head.mu.copy_(centres)
    loss = GMLoss(head, alpha=0.1, lam=1.0)
    groups = head.param_groups(0.05, var_lr_mult=4.0) + [{"params": [x], "lr": 0.05}]
    opt = torch.optim.SGD(groups, lr=0.05)
    values = []
    for _ in range(steps):
        value = loss(x, y)
        opt.zero_grad()
        value.backward()
        opt.step()
        values.append(value.item())
    return head, values


def test_learned_variances_do_not_collapse_over_a_long_run() -> None:
    """Public ports that leave log-variances free drive the loss towards -inf, then NaN."""
    head, values = _fit_tight_clusters((-4.0, 4.0))
    lo, _ = head.log_var_range
    # d >= 0 and 1/2 log|Sigma_y| >= D lo / 2, so L_GM >= lam * D * lo / 2 = -4
    floor = 1.0 * 0.5 * head.feat_dim * lo
    assert all(math.isfinite(v) for v in values)
    assert min(values) >= floor - 1e-6
    assert head.clamped_log_var().min().item() >= lo
    assert values[-1] == pytest.approx(floor, abs=0.5)  # it did press against the clamp


def test_without_a_tight_clamp_the_loss_runs_away() -> None:
    """The oracle of the test above can fail: with a loose clamp the same run goes far lower."""
    _, values = _fit_tight_clusters((-30.0, 30.0))
    assert min(values) < -4.5  # below the floor that the default clamp guarantees


def test_param_groups_give_variances_their_own_rate() -> None:
    head = GMHead(3, 2, covariance="isotropic", learn_priors=True)
    groups = head.param_groups(0.1, var_lr_mult=0.01)
    assert groups[0]["lr"] == 0.1 and len(groups[0]["params"]) == 2
    assert groups[1]["lr"] == pytest.approx(0.001) and groups[1]["params"][0] is head.log_var
    names = {n for n, _ in head.named_parameters()}
    assert names == {"mu", "log_var", "prior_logits"}
    assert set(head.state_dict()) == names


def test_identity_head_registers_only_the_means() -> None:
    assert [n for n, _ in GMHead(5, 3).named_parameters()] == ["mu"]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(GmcliError, match="covariance 'full'"):
        GMHead(2, 3, covariance="full")
    with pytest.raises(GmcliError, match="lkd 'l2'"):
        GMLoss(GMHead(2, 3), lkd="l2")
    with pytest.raises(GmcliError, match="alpha"):
        GMLoss(GMHead(2, 3), alpha=-1)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        GMHead(2, 3).distances(torch.zeros(4, 3))


def test_softmax_twin_has_the_same_interface() -> None:
    torch.manual_seed(0)
    head = SoftmaxHead(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    parts = SoftmaxLoss(head).components(x, y)
    assert parts.loss.item() == pytest.approx(F.cross_entropy(head(x), y).item(), abs=1e-7)
    assert parts.lkd.item() == 0.0


def test_warmup_schedule() -> None:
    s = CoefficientSchedule(1.0, 0.1, kind="warmup", warmup_epochs=5)
    assert s.at(0) == pytest.approx((0.1, 0.001))
    alpha, lam = s.at(2)
    assert alpha == pytest.approx(1.0 * (0.1 + 0.9 * 2 / 5))
    assert lam == pytest.approx(0.1 * (0.01 + 0.99 * 2 / 5))
    assert s.at(5) == pytest.approx((1.0, 0.1))
    assert s.at(50) == pytest.approx((1.0, 0.1))


def test_stepup_schedule() -> None:
    s = CoefficientSchedule(0.3, 0.1, kind="stepup", every=100)
    seen = [s.at(0, it)[0] for it in (0, 99, 100, 199, 200, 300, 10_000)]
    assert seen == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.3])
    assert s.at(3, 5000)[1] == 0.1


def test_constant_schedule_and_errors() -> None:
    assert CoefficientSchedule(0.5, 0.2).at(7, 7000) == (0.5, 0.2)
    with pytest.raises(GmcliError, match="schedule 'linear'"):
        CoefficientSchedule(0.5, 0.2, kind="linear")


@pytest.mark.parametrize("covariance", ["identity", "diagonal"])
def test_chunked_distances_equal_one_block(covariance: str) -> None:
    """Without autograd, distances are taken in chunks of rows; the values must not change."""
    from gmcli.losses import gm

    torch.manual_seed(0)
    head = GMHead(64, 10, covariance=covariance)
    rows = gm.CHUNK_ELEMENTS // (10 * 64)
    x = torch.randn(3 * rows + 7, 64)
    with torch.no_grad():
        chunked = head.distances(x)
    block = head._distances(x).detach()
    assert torch.equal(chunked, block)
    diff = (x.double().unsqueeze(1) - head.mu.detach().double().unsqueeze(0)).pow(2)
    if head.log_var is not None:
        diff = diff / head.clamped_log_var().detach().double().exp().unsqueeze(0)
    np.testing.assert_allclose(chunked.numpy(), 0.5 * diff.sum(-1).numpy(), rtol=1e-5, atol=1e-3)
