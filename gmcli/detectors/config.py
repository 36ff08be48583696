"""The ``detect:`` section of a recipe, and the options of ``gmcli detect``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gmcli.errors import GmcliError

# Kept here (not imported from scores.py) so that the recipe schema stays light.
SCORE_NAMES: tuple[str, ...] = ("gm", "gm-mixture", "msp", "energy", "mahalanobis", "kd")

# Figures of metrics.json that --fail-under may name.
METRIC_NAMES: tuple[str, ...] = (
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr_at_95_tpr_clean_accepted",
    "fpr_at_95_detection",
    "detection_rate",
    "clean_tpr",
    "flagged_fraction",
    "robust_error",
    "accuracy",
)


class DetectConfig(BaseModel):
    """Options of the detection stage.

    Attributes:
        scores: the scores to compute, the first one being the detector whose
            flags count (``--fail-under`` and the summary refer to it). None:
            every score the checkpoint supports, ``gm`` first on a GM head,
            ``mahalanobis`` first on a softmax head.
        tpr: the fraction of clean, correctly classified validation inputs an
            ``auto`` threshold accepts, in (0, 1).
        threshold: ``"auto"`` (reuse the stored threshold of this checkpoint, or
            calibrate one on the validation split and store it), ``"stored"``
            (require a stored one) or a number (the first score's threshold,
            stored for later calls).
        recalibrate: with ``"auto"``, calibrate anew even when a threshold is stored.
        batch_size: inputs per forward pass.
        kd_bandwidth: the Gaussian kernel's bandwidth h for ``kd``, or ``"auto"``
            (Scott's rule on the within-class spread of the training features).
        mahalanobis_ridge: added to the tied covariance's diagonal, relative to
            its mean variance, before it is inverted.
        fit_limit: the most training images used to fit the baselines' statistics
            when the checkpoint lacks them (None: all of the train split).
        inputs: what to judge (see ``gmcli detect --help``); empty: every
            adversarial set of the run.
        on_error: unreadable files of an image folder: ``"skip"`` (warn) or
            ``"fail"``.
        fail_under: ``{metric: bar}``; the command fails when the first score's
            figure falls under the bar for any source (``score.metric`` names
            another score's figure).
    """

    model_config = ConfigDict(extra="forbid")

    scores: list[str] | None = Field(default=None, min_length=1)
    tpr: float = Field(default=0.95, gt=0.0, lt=1.0)
    threshold: Literal["auto", "stored"] | float = "auto"
    recalibrate: bool = False
    batch_size: int = Field(default=256, ge=1, le=65536)
    kd_bandwidth: Literal["auto"] | float = "auto"
    mahalanobis_ridge: float = Field(default=1e-6, ge=0.0, le=1.0)
    fit_limit: int | None = Field(default=10000, ge=1)
    inputs: list[str] = Field(default_factory=list)
    on_error: Literal["skip", "fail"] = "skip"
    fail_under: dict[str, float] = Field(default_factory=dict)

    @field_validator("scores")
    @classmethod
    def _known_scores(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        for name in value:
            if name not in SCORE_NAMES:
                raise ValueError(f"unknown score {name!r}; known: {', '.join(SCORE_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError(f"scores {value} repeat a name")
        return value

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, value: str | float) -> str | float:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"threshold must be 'auto', 'stored' or a finite number, got {value}")
        return value

    @field_validator("kd_bandwidth")
    @classmethod
    def _positive_bandwidth(cls, value: str | float) -> str | float:
        if isinstance(value, float) and not (math.isfinite(value) and value > 0):
            raise ValueError(f"kd_bandwidth must be 'auto' or a positive number, got {value}")
        return value

    @field_validator("fail_under")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            score, _, metric = key.rpartition(".")
            if metric not in METRIC_NAMES or (score and score not in SCORE_NAMES):
                raise ValueError(
                    f"unknown figure {key!r}; accepted: [<score>.]<metric> with metric one of "
                    f"{', '.join(METRIC_NAMES)} and score one of {', '.join(SCORE_NAMES)}"
                )
        return value


# The command-line flag behind each field, to name it in error messages.
FLAGS: dict[str, str] = {
    "scores": "--score",
    "tpr": "--tpr",
    "threshold": "--threshold",
    "recalibrate": "--recalibrate",
    "batch_size": "--batch-size",
    "kd_bandwidth": "--kd-bandwidth",
    "mahalanobis_ridge": "--mahalanobis-ridge",
    "fit_limit": "--fit-limit",
    "inputs": "--input",
    "on_error": "--on-error",
    "fail_under": "--fail-under",
}


def _one_line(exc: ValidationError, values: Mapping[str, Any], flags: set[str]) -> str:
    """The first validation error as ``<flag or recipe key>: <message>, got <value>``."""
    err = exc.errors()[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    where = FLAGS.get(key, key) if key in flags else f"recipe key detect.{key}"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key; accepted keys: {', '.join(DetectConfig.model_fields)}"
    message = err["msg"].removeprefix("Value error, ")
    if key == "threshold":
        message = "expected 'auto', 'stored' or a number"
    elif key == "kd_bandwidth":
        message = "expected 'auto' or a positive number"
    elif key == "tpr" and err["type"] in ("greater_than", "less_than"):
        message = "expected a number strictly between 0 and 1"
    if key in values and key not in ("scores", "fail_under") and "got" not in message:
        message += f", got {values[key]!r}"
    return f"{where}: {message}"


def resolve_config(
    recipe: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> DetectConfig:
    """The options of one call: the recipe's ``detect:`` section, then the flags.

    Args:
        recipe: the ``detect`` mapping of a recipe (or None).
        overrides: field values given on the command line; ``None`` values mean
            "not given" and are dropped.

    Raises:
        GmcliError: one line naming the recipe key or the flag that is wrong.
    """
    base: dict[str, Any] = dict(recipe or {})
    try:
        DetectConfig.model_validate(base)
    except ValidationError as exc:
        raise GmcliError(_one_line(exc, base, set())) from None

    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return DetectConfig.model_validate({**base, **given})
    except ValidationError as exc:
        raise GmcliError(_one_line(exc, {**base, **given}, set(given))) from None
