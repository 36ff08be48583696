"""Detection results: the result object, the files of ``<run>/detect/``, and CI bars.

``scores.csv``: one row per sample and score, columns ``CSV_COLUMNS``:

- ``source``: ``adv:<id>``, ``split:<name>``, ``dataset:<name>:<split>``,
  ``idx:<folder>``, ``folder:<folder>``, or ``reference:split:test`` (the clean
  test inputs that out-of-distribution sources are measured against);
- ``kind``: ``adversarial``, ``ood`` or ``in-distribution``;
- ``epsilon``, ``eps_index``: the budget of an adversarial row (empty otherwise);
- ``index``: the sample's position in its source;
- ``role``: ``clean``, ``adversarial`` or ``abnormal`` (an OOD input);
- ``label``, ``pred``: the label (-1 unknown) and the model's prediction;
- ``counted``: 1 when the row enters the figures (clean: correctly classified;
  adversarial: the attack succeeded on a correctly classified input);
- ``score``, ``value``: the score's name and value (higher = more abnormal);
- ``threshold``, ``flagged``: the threshold t and whether value > t (empty
  when the score has no threshold).

``metrics.json``: ``{"format": "gmcli-detect-metrics", "format_version": 1,
"fingerprint", "scores", "primary_score", "thresholds", "results", "summary",
"sources", "conventions", ...}`` where ``results`` holds one object per source,
epsilon and score (figure names in ``CONVENTIONS``; null where undefined).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gmcli.checkpoint import atomic_write
from gmcli.detectors import metrics
from gmcli.detectors.calibration import Threshold

log = logging.getLogger(__name__)

DETECT_DIR = "detect"
SCORES_FILE = "scores.csv"
METRICS_FILE = "metrics.json"
METRICS_FORMAT = "gmcli-detect-metrics"
CSV_COLUMNS = (
    "source", "kind", "epsilon", "eps_index", "index", "role", "label", "pred",
    "counted", "score", "value", "threshold", "flagged",
)
REFERENCE = "reference:split:test"

CONVENTIONS = {
    "score": "higher = more abnormal; a threshold t accepts s <= t and flags s > t",
    "positive_class": "abnormal: successful adversarial examples of correctly classified "
                      "clean inputs (failed ones are not counted: n_failed), or "
                      "out-of-distribution inputs",
    "clean": "adversarial sets: the set's correctly classified clean inputs; OOD: the "
             "correctly classified inputs of the run's test split",
    "auroc": "ROC AUC, abnormal positive",
    "aupr_in": "average precision, clean positive, ranked by -s",
    "aupr_out": "average precision, abnormal positive, ranked by s",
    "fpr_at_95_tpr_clean_accepted": "fraction of abnormal accepted at the smallest t "
                                    "accepting >= 95% of clean (the OOD convention)",
    "fpr_at_95_detection": "fraction of clean with s >= t at the largest t such that >= 95% "
                           "of abnormal have s >= t",
    "clean_tpr": "fraction of clean accepted at the threshold",
    "detection_rate": "fraction of abnormal flagged at the threshold",
    "flagged_fraction": "fraction of all inputs of the source flagged at the threshold",
    "robust_error": "fraction of all N test points of the set whose adversarial example is "
                    "misclassified and accepted at the threshold",
    "summary": "per score, over the adversarial sets of the call that wrote the file: the "
               "worst robust error, and the fraction of test points broken by at least one "
               "set and budget (when all sets hold the same test points)",
    "undefined": "null where a side is empty (n = 0)",
}


@dataclass
class DetectResult:
    """What one detection call found and wrote.

    Attributes:
        run_dir, checkpoint, fingerprint, head: the run and its checkpoint.
        scores: the scores computed; ``scores[0]`` is the detector whose flags count.
        thresholds: per score, the threshold applied (None when none could be had).
        results: one dict per source, epsilon and score (as in ``metrics.json``).
        summary: per score, the worst robust error over the adversarial sets.
        sources: per source: name, kind, n, split, skipped files.
        files: the files written.
        failures: one message per ``fail_under`` bar not reached.
    """

    run_dir: Path
    checkpoint: Path
    fingerprint: str
    head: str
    scores: list[str]
    thresholds: dict[str, Threshold | None]
    results: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    sources: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def primary(self) -> str:
        """The score whose flags count."""
        return self.scores[0]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN becomes null)."""
        return jsonable({
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint),
            "fingerprint": self.fingerprint,
            "head": self.head,
            "scores": self.scores,
            "primary_score": self.primary,
            "thresholds": {k: (asdict(t) if t else None) for k, t in self.thresholds.items()},
            "results": self.results,
            "summary": self.summary,
            "sources": self.sources,
            "files": self.files,
            "failures": self.failures,
        })


def jsonable(obj: Any) -> Any:
    """NaN and infinities -> None, numpy scalars -> Python, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


class ScoreRows:
    """Rows of ``scores.csv``, gathered during a call."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.sources: set[str] = set()

    def add(
        self,
        source: str,
        kind: str,
        *,
        role: str,
        score: str,
        values: np.ndarray,
        threshold: Threshold | None,
        label: np.ndarray,
        pred: np.ndarray,
        counted: np.ndarray,
        epsilon: float | None = None,
        eps_index: int | None = None,
    ) -> None:
        """One row per sample: ``values``, ``label``, ``pred``, ``counted`` all (N,)."""
        self.sources.add(source)
        t = "" if threshold is None else f"{threshold.value:.9g}"
        eps = "" if epsilon is None else f"{epsilon:g}"
        idx = "" if eps_index is None else str(eps_index)
        for i, v in enumerate(np.asarray(values, dtype=np.float64).tolist()):
            flagged = "" if threshold is None else int(v > threshold.value)
            self.rows.append((
                source, kind, eps, idx, i, role, int(label[i]), int(pred[i]),
                int(bool(counted[i])), score, f"{v:.9g}", t, flagged,
            ))


def summarise(results: list[dict[str, Any]], broken: dict[str, list[np.ndarray]],
              aligned: bool) -> dict[str, dict[str, Any]]:
    """Per score: the worst robust error over the adversarial results, and the fraction
    of test points broken by at least one set and budget.

    Args:
        results: the call's result rows.
        broken: per score, one (N,) bool array per set and budget: misclassified
            and accepted.
        aligned: whether every set holds the same test points (else no union).
    """
    summary: dict[str, dict[str, Any]] = {}
    for name, arrays in broken.items():
        rows = [r for r in results if r["score"] == name and r["kind"] == "adversarial"
                and not math.isnan(r.get("robust_error", math.nan))]
        if not rows:
            continue
        worst = max(rows, key=lambda r: r["robust_error"])
        union = metrics.rate(np.logical_or.reduce(arrays)) if aligned and arrays else None
        summary[name] = {
            "worst_robust_error": worst["robust_error"],
            "worst_source": worst["source"],
            "worst_epsilon": worst["epsilon"],
            "robust_error_any_attack": union,
        }
    return summary


def write_results(detect_dir: Path, result: DetectResult, rows: ScoreRows) -> None:
    """Write ``metrics.json`` and ``scores.csv``; fill ``result.files``.

    Results and rows of an earlier call for other sources are kept when that call
    used the same checkpoint and the same thresholds; otherwise they are dropped.
    """
    metrics_path = detect_dir / METRICS_FILE
    scores_path = detect_dir / SCORES_FILE
    values = {n: (t.value if t else None) for n, t in result.thresholds.items()}
    compatible, kept = _earlier_results(metrics_path, result.fingerprint, values, rows.sources)

    doc = result.to_json()
    for key in ("files", "failures"):
        doc.pop(key)
    doc.update(
        format=METRICS_FORMAT,
        format_version=1,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        results=[r for r in kept if r.get("score") in values] + doc["results"],
        conventions=CONVENTIONS,
    )
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    detect_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(metrics_path, lambda tmp: Path(tmp).write_text(text))

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    if compatible:
        writer.writerows(_earlier_rows(scores_path, rows.sources))
    writer.writerows(rows.rows)
    data = buf.getvalue()
    atomic_write(scores_path, lambda tmp: Path(tmp).write_text(data))
    result.files.update(scores=str(scores_path), metrics=str(metrics_path))
    log.info("wrote %s and %s", scores_path, metrics_path)


def _earlier_results(path: Path, fingerprint: str, thresholds: dict[str, float | None],
                     fresh: set[str]) -> tuple[bool, list[dict[str, Any]]]:
    """(compatible, results): whether the earlier call used the same checkpoint and
    thresholds, and then its results for sources other than ``fresh``."""
    if not path.is_file():
        return False, []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("replacing unreadable %s", path)
        return False, []
    old_values = {k: (v.get("value") if isinstance(v, dict) else None)
                  for k, v in (old.get("thresholds") or {}).items()}
    if old.get("fingerprint") != fingerprint or any(
        old_values.get(k, v) != v for k, v in thresholds.items()
    ):
        log.info("earlier results in %s used another checkpoint or threshold: replaced", path)
        return False, []
    return True, [r for r in old.get("results", []) if r.get("source") not in fresh]


def _earlier_rows(path: Path, fresh: set[str]) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        if tuple(next(reader, ())) != CSV_COLUMNS:
            return []
        return [r for r in reader if r and r[0] not in fresh]


def check_fail_under(result: DetectResult, fail_under: dict[str, float]) -> list[str]:
    """One message per figure under its bar (``{"auroc": 0.9, "kd.auroc": 0.8}``).

    A bare metric names the first score's figure. Every source and epsilon that
    reports the metric must reach the bar; an undefined (NaN) figure fails, and
    so does a bar on a metric that no source reports.
    """
    failures: list[str] = []
    for key, bar in fail_under.items():
        score, _, metric = key.rpartition(".")
        score = score or result.primary
        rows = [r for r in result.results if r["score"] == score and metric in r]
        if not rows:
            failures.append(f"no source reports {metric} for score {score} (bar {bar:g})")
            continue
        for r in rows:
            value = r[metric]
            where = r["source"] + ("" if r.get("epsilon") is None else f" eps {r['epsilon']:g}")
            if value is None or (isinstance(value, float) and math.isnan(value)):
                failures.append(f"{metric} of score {score} on {where} is undefined (n = 0), "
                                f"under {bar:g}")
            elif value < bar:
                failures.append(f"{metric} of score {score} on {where} is {value:.4f}, "
                                f"under {bar:g}")
    return failures
