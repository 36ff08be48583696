"""Detection of abnormal inputs from the penultimate features (gm-method.md section 4).

``run_detection(run, config)`` is the library form of ``gmcli detect``; the
parts are usable alone: the scores (``SCORES``), threshold calibration
(``calibrate``), and the metrics (``gmcli.detectors.metrics``).

Names are imported on first use, so that ``gmcli.detectors.config`` (read by the
recipe schema) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DetectConfig": "config",
    "resolve_config": "config",
    "Threshold": "calibration",
    "ThresholdStore": "calibration",
    "calibrate": "calibration",
    "Outputs": "features",
    "TrainingStats": "features",
    "DetectResult": "results",
    "check_fail_under": "results",
    "run_detection": "runner",
    "SCORES": "scores",
    "Score": "scores",
    "build_score": "scores",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gmcli.detectors' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gmcli.detectors.{_EXPORTS[name]}"), name)
