"""gmcli: train, attack, audit and report image classifiers with the GM loss."""

from __future__ import annotations

__version__ = "0.1.0"

from gmcli.errors import GmcliError  # noqa: E402
from gmcli.losses.gm import GMHead, GMLoss, LossParts  # noqa: E402
from gmcli.losses.schedules import CoefficientSchedule  # noqa: E402
from gmcli.losses.softmax import SoftmaxHead, SoftmaxLoss  # noqa: E402
from gmcli.models.classifier import Classifier  # noqa: E402


def load_checkpoint(path, device="cpu"):  # noqa: ANN001, ANN201
    """Rebuild a classifier from a gmcli checkpoint: see :func:`gmcli.checkpoint.load_checkpoint`."""
    from gmcli.checkpoint import load_checkpoint as _load

    return _load(path, device=device)


__all__ = [
    "Classifier",
    "CoefficientSchedule",
    "GMHead",
    "GMLoss",
    "GmcliError",
    "LossParts",
    "SoftmaxHead",
    "SoftmaxLoss",
    "load_checkpoint",
]
