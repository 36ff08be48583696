"""Run directories: where a training writes, and how later commands find it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gmcli.errors import GmcliError

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
LAST = "last.safetensors"
STATE = "state.pt"
RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"
TRAIN_RESULT = "train.json"
LATEST_POINTER = ".latest"


def runs_root() -> Path:
    """The folder that holds runs by default: ``$GMCLI_RUNS`` or ``./runs``."""
    return Path(os.environ.get("GMCLI_RUNS", "runs"))


def mark_latest(run_dir: Path) -> None:
    """Remember ``run_dir`` as the most recent run (``<runs root>/.latest``)."""
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    pointer = root / LATEST_POINTER
    tmp = pointer.with_suffix(".tmp")
    tmp.write_text(str(run_dir.resolve()) + "\n")
    os.replace(tmp, pointer)


def latest_run() -> Path:
    """The most recent run: the one named in ``.latest``, else the newest checkpoint."""
    root = runs_root()
    pointer = root / LATEST_POINTER
    if pointer.is_file():
        path = Path(pointer.read_text().strip())
        if (path / CHECKPOINT).is_file():
            return path
    candidates = sorted(root.glob(f"*/{CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise GmcliError(
            f"no run found under {str(root)!r}: train one first (gmcli train RECIPE) "
            "or pass a run directory or checkpoint path"
        )
    return candidates[-1].parent


def resolve_run(path: str | os.PathLike | None) -> tuple[Path, Path]:
    """(run directory, checkpoint path) for a run directory, a checkpoint, or None (the latest)."""
    if path is None:
        run = latest_run()
        return run, run / CHECKPOINT
    p = Path(path)
    if p.is_dir():
        ckpt = p / CHECKPOINT
        if not ckpt.is_file():
            raise GmcliError(f"run directory {str(p)!r} has no {CHECKPOINT}: it holds no finished training")
        return p, ckpt
    if p.is_file():
        return p.parent, p
    raise GmcliError(f"run or checkpoint {str(p)!r} does not exist (expected a run directory or a .safetensors file)")
