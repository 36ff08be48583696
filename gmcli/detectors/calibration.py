"""Detection thresholds: calibrated on clean validation inputs, or set, and stored.

A threshold t accepts an input when its score s <= t and flags it when s > t.
The ``auto`` rule (gm-method.md section 4) takes the smallest t that accepts at
least a fraction ``tpr`` of the calibration scores: the k-th smallest, with
k = ceil(tpr * N). The calibration inputs are clean, correctly classified
inputs of the run's validation split, never the inputs being judged.

``<run>/detect/threshold.json`` holds one entry per score::

    {"format": "gmcli-thresholds", "format_version": 1,
     "thresholds": {"gm": {"score": "gm", "value": 4.13, "rule": "auto",
                           "tpr": 0.95, "achieved_tpr": 0.9512,
                           "calibration": {"source": "split:val", "split": "val",
                                           "n": 1620, "n_split": 1650,
                                           "selection": "correctly classified"},
                           "fingerprint": "<checkpoint sha256>",
                           "created": "2025-01-01T12:00:00+0000"}, ...}}

``rule`` is ``"auto"`` (calibrated as above) or ``"manual"`` (a value the user
set; ``tpr`` and ``calibration`` are then null).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gmcli.checkpoint import atomic_write
from gmcli.detectors.metrics import accept_threshold
from gmcli.errors import GmcliError

log = logging.getLogger(__name__)

THRESHOLD_FILE = "threshold.json"
FORMAT = "gmcli-thresholds"
FORMAT_VERSION = 1


@dataclass
class Threshold:
    """One score's threshold and where it came from.

    Attributes:
        score: the score's name.
        value: t; inputs with s <= t are accepted, s > t flagged.
        rule: ``"auto"`` (calibrated at ``tpr``) or ``"manual"`` (set by the user).
        fingerprint: the checkpoint it belongs to.
        tpr: the target fraction of calibration inputs accepted (auto only).
        achieved_tpr: the fraction actually accepted, >= tpr (auto only).
        calibration: source, split, n (inputs used), n_split, selection (auto only).
        created: when it was made.
    """

    score: str
    value: float
    rule: str
    fingerprint: str
    tpr: float | None = None
    achieved_tpr: float | None = None
    calibration: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def split(self) -> str | None:
        """The data split the threshold was calibrated on (None for manual ones)."""
        return (self.calibration or {}).get("split")


def calibrate(
    scores: np.ndarray,
    *,
    score: str,
    tpr: float,
    fingerprint: str,
    split: str = "val",
    n_split: int | None = None,
) -> Threshold:
    """The ``auto`` threshold of ``scores`` (N,), the calibration inputs' scores.

    Args:
        scores: scores of clean, correctly classified calibration inputs (N,).
        score: the score's name.
        tpr: the fraction to accept, in (0, 1).
        fingerprint: the checkpoint's fingerprint.
        split: the split the inputs come from (recorded).
        n_split: the split's size before selecting correct inputs (recorded).
    """
    if not 0.0 < tpr < 1.0:
        raise GmcliError(f"--tpr: expected a value in (0, 1), got {tpr}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) == 0:
        raise GmcliError(
            f"threshold calibration: the {split} split has no correctly classified inputs; "
            "pass --threshold VALUE instead"
        )
    value = accept_threshold(scores, tpr)
    achieved = float(np.mean(scores <= value))
    log.info("%s threshold %.6g accepts %.4f of %d %s inputs (target %.4f)",
             score, value, achieved, len(scores), split, tpr)
    return Threshold(
        score=score,
        value=value,
        rule="auto",
        fingerprint=fingerprint,
        tpr=float(tpr),
        achieved_tpr=achieved,
        calibration={
            "source": f"split:{split}",
            "split": split,
            "n": int(len(scores)),
            "n_split": int(n_split if n_split is not None else len(scores)),
            "selection": "correctly classified",
        },
    )


def manual(value: float, *, score: str, fingerprint: str) -> Threshold:
    """A threshold the user set."""
    if not math.isfinite(value):
        raise GmcliError(f"--threshold: expected 'auto', 'stored' or a finite number, got {value}")
    return Threshold(score=score, value=float(value), rule="manual", fingerprint=fingerprint)


class ThresholdStore:
    """The thresholds stored in ``<run>/detect/threshold.json``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: dict[str, Threshold] = {}
        if self.path.is_file():
            self.entries = self._read()

    def _read(self) -> dict[str, Threshold]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            return {name: Threshold(**entry) for name, entry in data["thresholds"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise GmcliError(
                f"threshold file {str(self.path)!r} is unreadable ({exc}); "
                "delete it or pass --recalibrate"
            ) from None

    def get(self, score: str) -> Threshold | None:
        return self.entries.get(score)

    def put(self, threshold: Threshold) -> None:
        self.entries[threshold.score] = threshold

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "thresholds": {name: asdict(t) for name, t in sorted(self.entries.items())},
        }
        text = json.dumps(data, indent=2) + "\n"
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        log.info("wrote %s", self.path)


def resolve_threshold(
    store: ThresholdStore,
    score: str,
    *,
    mode: str | float,
    fingerprint: str,
    tpr: float,
    recalibrate: bool,
    calibration: Callable[[str], tuple[np.ndarray, int]],
    required: bool = True,
) -> Threshold | None:
    """The threshold of one score under the rule of ``gmcli detect --threshold``.

    - a number: that value (rule ``manual``), stored;
    - ``"stored"``: the stored threshold of this checkpoint, applied unchanged;
    - ``"auto"``: the stored threshold of this checkpoint, applied unchanged,
      unless ``recalibrate`` or none is stored (or it belongs to another
      checkpoint): then calibrated on the validation split and stored.

    Args:
        store: the thresholds on disk (updated here; the caller saves it).
        score: the score's name.
        mode: ``"auto"``, ``"stored"`` or a number.
        fingerprint: the checkpoint's fingerprint.
        tpr: the target for a new calibration.
        recalibrate: with ``"auto"``, calibrate even when one is stored.
        calibration: ``calibration(score)`` -> (scores of the correctly
            classified validation inputs, size of the split); raises GmcliError
            when there is no validation data.
        required: when False (a score beside the first), a threshold that
            cannot be had is a warning and None instead of an error.
    """
    if not isinstance(mode, str):
        threshold = manual(float(mode), score=score, fingerprint=fingerprint)
        store.put(threshold)
        return threshold

    entry = store.get(score)
    if entry is not None and entry.fingerprint != fingerprint:
        message = (
            f"the stored {score} threshold in {str(store.path)!r} belongs to checkpoint "
            f"{entry.fingerprint[:12]}, not to this run's checkpoint {fingerprint[:12]}"
        )
        if mode == "stored":
            return _missing(f"--threshold stored: {message}; use --threshold auto", required)
        log.warning("%s: calibrating anew", message)
        entry = None

    if mode == "stored":
        if entry is None:
            return _missing(
                f"--threshold stored: no stored threshold for score {score!r} in "
                f"{str(store.path)!r}; run with --threshold auto or --threshold VALUE first",
                required,
            )
        return entry

    if entry is not None and not recalibrate:
        if entry.rule == "auto" and entry.tpr is not None and abs(entry.tpr - tpr) > 1e-12:
            log.warning(
                "applying the stored %s threshold, calibrated at TPR %g, not %g; "
                "pass --recalibrate to calibrate at %g", score, entry.tpr, tpr, tpr,
            )
        log.info("applying the stored %s threshold %.6g (%s)", score, entry.value, entry.rule)
        return entry

    try:
        scores, n_split = calibration(score)
    except GmcliError as exc:
        return _missing(str(exc), required)
    threshold = calibrate(scores, score=score, tpr=tpr, fingerprint=fingerprint, n_split=n_split)
    store.put(threshold)
    return threshold


def _missing(message: str, required: bool) -> None:
    if required:
        raise GmcliError(message)
    log.warning("%s; figures at the threshold are left out for this score", message)
    return None
