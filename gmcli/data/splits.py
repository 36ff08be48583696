"""Deterministic, stratified hold-out of a fraction of a split."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.model_selection import train_test_split

from gmcli.errors import GmcliError

logger = logging.getLogger(__name__)


def holdout(
    y: np.ndarray, fraction: float, *, seed: int, what: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into kept and held-out parts, stratified by label.

    Uses scikit-learn's ``train_test_split(stratify=y, random_state=seed)``, so
    the same labels and seed always give the same parts. When a class is too
    small to stratify, falls back to a plain random split with a warning.

    Args:
        y: labels (N,).
        fraction: share of the N samples to hold out, in [0, 1).
        seed: the random state.
        what: what the held-out part is for, in messages.

    Returns:
        ``(kept, held)``: index arrays (int64) into y, in the split's shuffled order.
    """
    if not 0.0 <= fraction < 1.0:
        raise GmcliError(f"{what} fraction: expected a value in [0, 1), got {fraction!r}")
    index = np.arange(len(y), dtype=np.int64)
    if fraction == 0.0 or len(y) == 0:
        return index, index[:0]

    try:
        kept, held = train_test_split(index, test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        logger.warning("%s split not stratified (%s)", what, exc)
        try:
            kept, held = train_test_split(index, test_size=fraction, random_state=seed)
        except ValueError as exc2:
            raise GmcliError(
                f"{what} fraction: {fraction} of {len(y)} samples leaves an empty part ({exc2})"
            ) from exc2
    return kept, held
