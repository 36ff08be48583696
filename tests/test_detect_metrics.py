"""Detection metrics and threshold calibration against independent oracles:
pairwise counts, plain loops over thresholds, and scikit-learn's curves."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from gmcli.detectors import metrics
from gmcli.detectors.calibration import (
    ThresholdStore,
    calibrate,
    manual,
    resolve_threshold,
)
from gmcli.errors import GmcliError


@pytest.fixture(autouse=True)
def _gmcli_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's setup_logging stops propagation at the "gmcli" logger; undo it here."""
    monkeypatch.setattr(logging.getLogger("gmcli"), "propagate", True)


def _scores(seed: int, n_clean: int, n_abn: int, *, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = rng.normal(0.0, 1.0, n_clean)
    abn = rng.normal(1.2, 1.5, n_abn)
    if ties:  # coarse values: many ties inside and across the two sets
        clean, abn = np.round(clean * 2) / 2, np.round(abn * 2) / 2
    return clean, abn


CASES = [(0, 200, 150, False), (1, 37, 91, True), (2, 20, 20, True), (3, 500, 7, False)]


@pytest.mark.parametrize("seed, n_clean, n_abn, ties", CASES)
def test_auroc_is_the_pairwise_probability(seed: int, n_clean: int, n_abn: int, ties: bool) -> None:
    clean, abn = _scores(seed, n_clean, n_abn, ties=ties)
    # P(s_abn > s_clean) + 1/2 P(tie), counted over every pair.
    wins = (abn[:, None] > clean[None, :]).sum() + 0.5 * (abn[:, None] == clean[None, :]).sum()
    expected = wins / (n_clean * n_abn)
    assert metrics.auroc(clean, abn) == pytest.approx(expected, abs=1e-12)
    y = np.r_[np.zeros(n_clean), np.ones(n_abn)]
    assert metrics.auroc(clean, abn) == pytest.approx(roc_auc_score(y, np.r_[clean, abn]))


def _ap_loop(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision without ties: mean over positives of the precision at their rank."""
    s = np.r_[pos, neg]
    is_pos = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    order = np.argsort(-s, kind="stable")
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if is_pos[i]:
            hits += 1
            total += hits / rank
    return total / len(pos)


@pytest.mark.parametrize("seed, n_clean, n_abn, ties", CASES)
def test_aupr_in_and_out(seed: int, n_clean: int, n_abn: int, ties: bool) -> None:
    clean, abn = _scores(seed, n_clean, n_abn, ties=ties)
    y = np.r_[np.zeros(n_clean), np.ones(n_abn)]
    s = np.r_[clean, abn]
    assert metrics.aupr_out(clean, abn) == pytest.approx(average_precision_score(y, s))
    assert metrics.aupr_in(clean, abn) == pytest.approx(average_precision_score(1 - y, -s))
    if not ties:
        assert metrics.aupr_out(clean, abn) == pytest.approx(_ap_loop(abn, clean))
        assert metrics.aupr_in(clean, abn) == pytest.approx(_ap_loop(-clean, -abn))


def _fpr_loop_clean_accepted(clean: np.ndarray, abn: np.ndarray, tpr: float) -> float:
    """Smallest fraction of abnormal accepted (s <= t) over all t accepting >= tpr of clean."""
    best = math.inf
    for t in np.unique(np.r_[clean, abn]):
        if np.mean(clean <= t) >= tpr:
            best = min(best, np.mean(abn <= t))
    return best


def _fpr_loop_detection(clean: np.ndarray, abn: np.ndarray, tpr: float) -> float:
    """Smallest fraction of clean flagged (s >= t) over all t flagging >= tpr of abnormal."""
    best = math.inf
    for t in np.unique(np.r_[clean, abn]):
        if np.mean(abn >= t) >= tpr:
            best = min(best, np.mean(clean >= t))
    return best


@pytest.mark.parametrize("seed, n_clean, n_abn, ties", CASES)
def test_fpr_at_95_both_conventions(seed: int, n_clean: int, n_abn: int, ties: bool) -> None:
    clean, abn = _scores(seed, n_clean, n_abn, ties=ties)
    got_ood = metrics.fpr_at_tpr_clean_accepted(clean, abn)
    got_det = metrics.fpr_at_tpr_detection(clean, abn)
    assert got_ood == pytest.approx(_fpr_loop_clean_accepted(clean, abn, 0.95), abs=1e-12)
    assert got_det == pytest.approx(_fpr_loop_detection(clean, abn, 0.95), abs=1e-12)

    # scikit-learn: the lowest FPR among ROC points with TPR >= 0.95.
    y = np.r_[np.zeros(n_clean), np.ones(n_abn)]
    s = np.r_[clean, abn]
    fpr, tpr, _ = roc_curve(1 - y, -s, drop_intermediate=False)  # clean positive
    assert got_ood == pytest.approx(fpr[tpr >= 0.95].min(), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # abnormal positive
    assert got_det == pytest.approx(fpr[tpr >= 0.95].min(), abs=1e-12)


def test_separated_scores_give_perfect_figures() -> None:
    clean, abn = np.arange(100.0), np.arange(100.0) + 1000
    fig = metrics.separation(clean, abn)
    assert fig == {
        "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0,
        "fpr_at_95_tpr_clean_accepted": 0.0, "fpr_at_95_detection": 0.0,
    }
    assert metrics.at_threshold(clean, abn, 99.0) == {"clean_tpr": 1.0, "detection_rate": 1.0}
    # At t = 49.5 half of the clean inputs are accepted, every abnormal input flagged.
    assert metrics.at_threshold(clean, abn, 49.5) == {"clean_tpr": 0.5, "detection_rate": 1.0}


def test_empty_side_gives_nan_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gmcli.detectors.metrics"):
        assert math.isnan(metrics.auroc(np.ones(5), np.zeros(0)))
        assert math.isnan(metrics.fpr_at_tpr_detection(np.zeros(0), np.ones(5)))
    assert "undefined" in caplog.text
    assert math.isnan(metrics.rate(np.zeros(0, dtype=bool)))


@pytest.mark.parametrize("n", [1, 2, 19, 20, 21, 100, 143, 1000])
@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 0.99])
def test_auto_threshold_accepts_at_least_tpr_and_is_the_smallest(n: int, tpr: float) -> None:
    rng = np.random.default_rng(n)
    scores = np.round(rng.normal(size=n), 1)  # with ties
    t = calibrate(scores, score="gm", tpr=tpr, fingerprint="f")
    assert np.mean(scores <= t.value) >= tpr
    assert t.achieved_tpr == np.mean(scores <= t.value)
    smaller = scores[scores < t.value]
    if len(smaller):  # any lower candidate accepts too few
        assert np.mean(scores <= smaller.max()) < tpr
    assert t.rule == "auto" and t.tpr == tpr and t.calibration["n"] == n


@pytest.mark.parametrize("tpr", [0.0, 1.0, -0.1, 1.5])
def test_calibrate_refuses_a_tpr_outside_0_1(tpr: float) -> None:
    with pytest.raises(GmcliError, match="--tpr"):
        calibrate(np.arange(10.0), score="gm", tpr=tpr, fingerprint="f")


def test_calibrate_needs_inputs() -> None:
    with pytest.raises(GmcliError, match="no correctly classified"):
        calibrate(np.zeros(0), score="gm", tpr=0.95, fingerprint="f")


class _Calls:
    """A calibration source that counts its calls."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores, self.calls = scores, 0

    def __call__(self, score: str) -> tuple[np.ndarray, int]:
        self.calls += 1
        return self.scores, len(self.scores) + 3


def test_threshold_rules(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "threshold.json"
    source = _Calls(np.arange(100.0))
    kw = dict(fingerprint="fp1", tpr=0.95, calibration=source)

    # auto without a stored one: calibrated and stored.
    store = ThresholdStore(path)
    t = resolve_threshold(store, "gm", mode="auto", recalibrate=False, **kw)
    assert (t.value, t.rule, source.calls, t.calibration["n_split"]) == (94.0, "auto", 1, 103)
    store.save()

    # auto with a stored one: applied unchanged, nothing computed; also at another TPR.
    source.scores = np.arange(100.0) * 10
    store = ThresholdStore(path)
    with caplog.at_level(logging.WARNING):
        t2 = resolve_threshold(store, "gm", mode="auto", recalibrate=False,
                               **{**kw, "tpr": 0.5})
    assert t2.value == 94.0 and source.calls == 1
    assert "--recalibrate" in caplog.text
    assert resolve_threshold(store, "gm", mode="stored", recalibrate=False, **kw).value == 94.0

    # --recalibrate: computed anew.
    t3 = resolve_threshold(store, "gm", mode="auto", recalibrate=True, **kw)
    assert t3.value == 940.0 and source.calls == 2

    # a number: manual, stored, then applied by auto and stored.
    t4 = resolve_threshold(store, "gm", mode=1.5, recalibrate=False, **kw)
    store.save()
    store = ThresholdStore(path)
    assert store.get("gm").rule == "manual" and store.get("gm").value == 1.5
    assert resolve_threshold(store, "gm", mode="auto", recalibrate=False, **kw).value == 1.5
    assert t4.tpr is None and t4.calibration is None

    # another checkpoint's threshold: refused by stored, recalibrated by auto.
    other = {**kw, "fingerprint": "fp2"}
    with pytest.raises(GmcliError, match="belongs to checkpoint fp1"):
        resolve_threshold(store, "gm", mode="stored", recalibrate=False, **other)
    assert resolve_threshold(store, "gm", mode="auto", recalibrate=False, **other).value == 940.0

    # stored but none there: an error for the first score, None for the others.
    with pytest.raises(GmcliError, match="no stored threshold for score 'kd'"):
        resolve_threshold(store, "kd", mode="stored", recalibrate=False, **kw)
    assert resolve_threshold(store, "kd", mode="stored", recalibrate=False, required=False,
                             **kw) is None


def test_store_refuses_a_foreign_file(tmp_path) -> None:
    path = tmp_path / "threshold.json"
    path.write_text('{"format": "something else"}')
    with pytest.raises(GmcliError, match="unreadable"):
        ThresholdStore(path)


def test_manual_threshold_must_be_finite() -> None:
    with pytest.raises(GmcliError, match="finite"):
        manual(math.inf, score="gm", fingerprint="f")
