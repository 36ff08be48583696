"""Progress events of a training run; the CLI turns them into a progress bar."""

from __future__ import annotations

from typing import Any


class TrainObserver:
    """Receives training progress; every hook does nothing by default."""

    def epoch_start(self, epoch: int, epochs: int, steps: int, first_step: int) -> None:
        """Epoch ``epoch`` (from 0) of ``epochs`` begins, ``steps`` batches, at ``first_step``."""

    def step(self, step: int, loss: float, acc: float) -> None:
        """Batch ``step`` (from 1) is done; ``loss`` of this batch, running accuracy."""

    def epoch_end(self, record: dict[str, Any]) -> None:
        """An epoch is done; ``record`` is its line in metrics.jsonl."""
