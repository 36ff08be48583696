"""Detection metrics: how well a score separates clean from abnormal inputs.

Conventions (used by every function here, gm-method.md section 4):

- A score s is higher for more abnormal inputs.
- The *positive* class is the abnormal one: successful adversarial examples,
  or out-of-distribution (OOD) inputs. The *clean* inputs are the negatives.
- A threshold t *accepts* an input when s <= t and *flags* it when s > t.

Figures (names as they appear in ``metrics.json``):

- ``auroc``: area under the ROC curve, abnormal positive. 0.5 is chance, 1 a
  perfect detector.
- ``aupr_out``: average precision with the abnormal inputs positive, ranked by s.
- ``aupr_in``: average precision with the clean inputs positive, ranked by -s.
- ``fpr_at_95_tpr_clean_accepted`` (the OOD convention of gm-method.md): t is
  the smallest threshold that accepts at least 95 % of the clean inputs; the
  figure is the fraction of abnormal inputs it accepts (s <= t). Lower is
  better.
- ``fpr_at_95_detection``: t is the largest threshold that still flags at
  least 95 % of the abnormal inputs, ties at t counted as flagged (s >= t);
  the figure is the fraction of clean inputs flagged (s >= t). Lower is better.

Both FPR figures equal the lowest false-positive rate among the points of
scikit-learn's ROC curve whose true-positive rate is at least 0.95, for the
first with clean positive on -s, for the second with abnormal positive on s.

Degenerate input (no clean or no abnormal inputs) gives NaN, with a warning,
never an exception.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

log = logging.getLogger(__name__)

TARGET_TPR = 0.95


def _arrays(clean: np.ndarray, abnormal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clean = np.asarray(clean, dtype=np.float64).reshape(-1)
    abnormal = np.asarray(abnormal, dtype=np.float64).reshape(-1)
    if not (np.isfinite(clean).all() and np.isfinite(abnormal).all()):
        raise ValueError("detection scores must be finite (got NaN or infinity)")
    return clean, abnormal


def _defined(clean: np.ndarray, abnormal: np.ndarray, what: str) -> bool:
    if len(clean) == 0 or len(abnormal) == 0:
        log.warning(
            "%s undefined: %d clean and %d abnormal inputs (both sets must be non-empty); NaN",
            what, len(clean), len(abnormal),
        )
        return False
    return True


def _labels_and_scores(clean: np.ndarray, abnormal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, s): abnormal = 1, clean = 0, scores in the same order."""
    y = np.concatenate([np.zeros(len(clean)), np.ones(len(abnormal))])
    return y, np.concatenate([clean, abnormal])


def auroc(clean: np.ndarray, abnormal: np.ndarray) -> float:
    """Area under the ROC curve, abnormal positive.

    Args:
        clean: scores of the clean inputs (Nc,).
        abnormal: scores of the abnormal inputs (Na,).
    """
    clean, abnormal = _arrays(clean, abnormal)
    if not _defined(clean, abnormal, "AUROC"):
        return math.nan
    y, s = _labels_and_scores(clean, abnormal)
    return float(roc_auc_score(y, s))


def aupr_out(clean: np.ndarray, abnormal: np.ndarray) -> float:
    """Average precision with the abnormal inputs positive (ranked by s)."""
    clean, abnormal = _arrays(clean, abnormal)
    if not _defined(clean, abnormal, "AUPR-out"):
        return math.nan
    y, s = _labels_and_scores(clean, abnormal)
    return float(average_precision_score(y, s))


def aupr_in(clean: np.ndarray, abnormal: np.ndarray) -> float:
    """Average precision with the clean inputs positive (ranked by -s)."""
    clean, abnormal = _arrays(clean, abnormal)
    if not _defined(clean, abnormal, "AUPR-in"):
        return math.nan
    y, s = _labels_and_scores(clean, abnormal)
    return float(average_precision_score(1 - y, -s))


def accept_threshold(scores: np.ndarray, tpr: float) -> float:
    """The smallest t with fraction(scores <= t) >= tpr: the k-th smallest score,
    k = ceil(tpr * N).

    Args:
        scores: (N,), N >= 1.
        tpr: the fraction to accept, in (0, 1).
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if len(s) == 0:
        raise ValueError("accept_threshold needs at least one score")
    # The small tolerance keeps tpr * N = 95.0000001 from asking for one input more.
    k = max(1, math.ceil(tpr * len(s) - 1e-9))
    return float(s[k - 1])


def fpr_at_tpr_clean_accepted(
    clean: np.ndarray, abnormal: np.ndarray, tpr: float = TARGET_TPR
) -> float:
    """Fraction of abnormal inputs accepted at the threshold accepting ``tpr`` of clean."""
    clean, abnormal = _arrays(clean, abnormal)
    if not _defined(clean, abnormal, "FPR at TPR (clean accepted)"):
        return math.nan
    t = accept_threshold(clean, tpr)
    return float(np.mean(abnormal <= t))


def fpr_at_tpr_detection(clean: np.ndarray, abnormal: np.ndarray, tpr: float = TARGET_TPR) -> float:
    """Fraction of clean inputs flagged (s >= t) at the threshold detecting ``tpr`` of abnormal."""
    clean, abnormal = _arrays(clean, abnormal)
    if not _defined(clean, abnormal, "FPR at TPR (detection)"):
        return math.nan
    # The largest t with fraction(abnormal >= t) >= tpr: the k-th largest abnormal score.
    desc = np.sort(abnormal)[::-1]
    k = max(1, math.ceil(tpr * len(desc) - 1e-9))
    t = desc[k - 1]
    return float(np.mean(clean >= t))


def rate(flags: np.ndarray) -> float:
    """Mean of boolean flags; NaN for none."""
    flags = np.asarray(flags, dtype=bool).reshape(-1)
    return float(flags.mean()) if len(flags) else math.nan


def separation(clean: np.ndarray, abnormal: np.ndarray) -> dict[str, float]:
    """The threshold-free figures: auroc, aupr_in, aupr_out and both FPRs at 95 % TPR."""
    return {
        "auroc": auroc(clean, abnormal),
        "aupr_in": aupr_in(clean, abnormal),
        "aupr_out": aupr_out(clean, abnormal),
        "fpr_at_95_tpr_clean_accepted": fpr_at_tpr_clean_accepted(clean, abnormal),
        "fpr_at_95_detection": fpr_at_tpr_detection(clean, abnormal),
    }


def at_threshold(clean: np.ndarray, abnormal: np.ndarray, threshold: float) -> dict[str, float]:
    """Figures at one threshold t: ``clean_tpr`` = fraction of clean accepted (s <= t),
    ``detection_rate`` = fraction of abnormal flagged (s > t)."""
    clean, abnormal = _arrays(clean, abnormal)
    return {
        "clean_tpr": rate(clean <= threshold),
        "detection_rate": rate(abnormal > threshold),
    }
