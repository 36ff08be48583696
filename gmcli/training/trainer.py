"""The training loop behind ``gmcli train``.

One epoch: shuffle from the seeded generator, step the optimiser over the
batches (alpha and lambda from their schedule), validate, append a line to
``metrics.jsonl``, write ``last.safetensors`` and the resumable ``state.pt``,
and ``checkpoint.safetensors`` when validation accuracy improves. At the end
the best weights are tested, and the statistics of the training features that
detection needs are stored in the checkpoint.

A run stops cleanly on Ctrl-C (the state of the interrupted step is saved, so
``--resume`` continues exactly where it stopped) and on a non-finite loss (an
error naming the epoch and step; the last good checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from gmcli import runs
from gmcli.checkpoint import atomic_write, save_checkpoint
from gmcli.data import DataBundle, Split, load_dataset
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMLoss
from gmcli.losses.softmax import SoftmaxLoss
from gmcli.models.classifier import Classifier
from gmcli.recipe import Recipe, dump_recipe, parse_recipe
from gmcli.training.build import (
    build_classifier,
    build_loss,
    build_lr_scheduler,
    build_optimizer,
    build_schedule,
    resolve_device,
)
from gmcli.training.observer import TrainObserver

log = logging.getLogger(__name__)

STATE_VERSION = 1
# Files of a run that a new training (with overwrite) removes.
RUN_OUTPUTS = (runs.CHECKPOINT, runs.LAST, runs.STATE, runs.METRICS, runs.TRAIN_RESULT, runs.RECIPE)
RUN_FOLDERS = ("attacks", "detect", "report")
CALIB_FEATURES = 5000
# Recipe keys that do not change a training (a resume may differ in them).
LATER_SECTIONS = ("run_dir", "attack", "detect", "report")


@dataclass
class Position:
    """Where training stands: completed epochs, and the step inside the current one."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    perm: torch.Tensor | None = None
    best_acc: float = -1.0
    best_epoch: int = 0


def dataset_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The keyword arguments of ``load_dataset`` for a recipe (stored in checkpoints)."""
    d = recipe.data
    return {
        "name": d.name,
        "root": d.root,
        "val_fraction": d.val_fraction,
        "seed": recipe.seed,
        "download": d.download,
        "image_size": d.image_size,
        "limit_train": d.limit_train,
    }


def prepare_run_dir(recipe: Recipe, run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run; on overwrite remove its outputs; on resume check the recipe."""
    holds_run = any((run_dir / name).exists() for name in RUN_OUTPUTS)
    if resume:
        if not (run_dir / runs.STATE).is_file():
            raise GmcliError(f"--resume: run directory {str(run_dir)!r} holds no resumable state ({runs.STATE})")
        saved = parse_recipe(yaml.safe_load((run_dir / runs.RECIPE).read_text()), source="saved recipe")
        diff = _recipe_diff(saved.to_dict(), recipe.to_dict())
        if diff:
            raise GmcliError(
                f"--resume: the recipe differs from the one the run was started with at {', '.join(diff)}; "
                "resume with the same recipe (or start a new run)"
            )
        return
    if holds_run and not overwrite:
        raise GmcliError(
            f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or --run-dir for another folder"
        )
    if holds_run:
        log.warning("overwriting the run in %s", run_dir)
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        for name in RUN_FOLDERS:
            shutil.rmtree(run_dir / name, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _recipe_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            if not prefix and k in LATER_SECTIONS:
                continue
            out += _recipe_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


@torch.no_grad()
def evaluate(model: Classifier, split: Split, batch_size: int, device: torch.device) -> dict[str, float]:
    """Accuracy and cross-entropy of the evaluation logits (no margin) on a split."""
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in split.batches(batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    if n == 0:
        return {"acc": float("nan"), "loss": float("nan"), "n": 0}
    return {"acc": correct / n, "loss": loss_sum / n, "n": n}


@torch.no_grad()
def feature_statistics(
    model: Classifier, split: Split, batch_size: int, device: torch.device, seed: int
) -> dict[str, torch.Tensor]:
    """Training-feature statistics for the detectors: class means (K, D), one tied
    covariance (D, D) (Lee et al. 2018), and a class-balanced sample of at most
    ``CALIB_FEATURES`` features (M, D) with labels (M,) for kernel density."""
    model.eval()
    feats, labels = [], []
    for x, y in split.batches(batch_size):
        feats.append(model.features(x.to(device)).float().cpu())
        labels.append(y)
    f = torch.cat(feats).double()
    y = torch.cat(labels)
    k = model.head.num_classes
    means = torch.stack([f[y == c].mean(0) if (y == c).any() else f.new_zeros(f.shape[1]) for c in range(k)])
    centred = f - means[y]
    cov = centred.T @ centred / max(len(f), 1)
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(f), generator=g)[:CALIB_FEATURES]
    return {
        "class_means": means.float(),
        "tied_cov": cov.float(),
        "features": f[keep].float(),
        "labels": y[keep].to(torch.int64),
    }


class Trainer:
    """Trains one recipe into one run directory.

    Args:
        recipe: the validated recipe.
        run_dir: where the run is written (default: the recipe's).
        resume: continue the run in ``run_dir`` from its ``state.pt``.
        overwrite: replace a run already in ``run_dir``.
        device: ``auto``, ``cpu`` or ``cuda`` (default: the recipe's).
        observer: receives progress events (the CLI draws a progress bar).
    """

    def __init__(
        self,
        recipe: Recipe,
        *,
        run_dir: Path | None = None,
        resume: bool = False,
        overwrite: bool = False,
        device: str | None = None,
        observer: TrainObserver | None = None,
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir) if run_dir is not None else recipe.resolved_run_dir()
        self.resume = resume
        self.overwrite = overwrite
        self.device = resolve_device(device or recipe.train.device)
        self.observer = observer or TrainObserver()

    def run(self) -> dict[str, Any]:
        """Train, test and save; return the final figures (also in ``train.json``)."""
        recipe, run_dir = self.recipe, self.run_dir
        prepare_run_dir(recipe, run_dir, resume=self.resume, overwrite=self.overwrite)
        torch.manual_seed(recipe.seed)
        data = load_dataset(**dataset_kwargs(recipe))
        if len(data.val) == 0:
            raise GmcliError(f"data set {data.name!r} gave an empty validation split; raise data.val_fraction")

        model = build_classifier(recipe, data).to(self.device)
        criterion = build_loss(recipe, model)
        optimizer = build_optimizer(recipe, model)
        scheduler = build_lr_scheduler(recipe, optimizer)
        gen = torch.Generator().manual_seed(recipe.seed)
        pos = Position()
        if self.resume:
            pos = self._load_state(model, optimizer, scheduler, gen)
            log.info("resuming %s at epoch %d, step %d", run_dir, pos.epoch + 1, pos.step)
        else:
            atomic_write(run_dir / runs.RECIPE, lambda tmp: Path(tmp).write_text(dump_recipe(recipe)))
            (run_dir / runs.METRICS).write_text("")
        self._truncate_metrics(pos.epoch)

        start = time.perf_counter()
        with self._deferred_interrupt():
            self._loop(model, criterion, optimizer, scheduler, gen, data, pos)
        return self._finish(model, data, pos, time.perf_counter() - start)

    _stop_requested = False

    @contextlib.contextmanager
    def _deferred_interrupt(self) -> Iterator[None]:
        """Within the block, a first Ctrl-C stops after the current step (so the
        saved state is exact); a second one interrupts at once."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # ---- the loop -----------------------------------------------------------------

    def _loop(self, model, criterion, optimizer, scheduler, gen, data: DataBundle, pos: Position) -> None:
        recipe, t = self.recipe, self.recipe.train
        schedule = build_schedule(recipe)
        n = len(data.train)
        steps = (n + t.batch_size - 1) // t.batch_size

        while pos.epoch < t.epochs:
            epoch = pos.epoch
            if pos.perm is None:
                pos.perm = torch.randperm(n, generator=gen)
                pos.step = 0
            order = pos.perm[pos.step * t.batch_size:]
            epoch_split = Split(data.train.x[order], data.train.y[order])
            sums: Counter[str] = Counter()
            tic = time.perf_counter()
            self.observer.epoch_start(epoch, t.epochs, steps, pos.step)
            model.train()
            try:
                for x, y in epoch_split.batches(t.batch_size, generator=gen, augment=recipe.data.augment):
                    if len(y) < 2:  # batch norm cannot train on a single sample
                        pos.step += 1
                        continue
                    alpha, lam = schedule.at(epoch, pos.global_step)
                    criterion.alpha, criterion.lam = alpha, lam
                    parts = self._step(model, criterion, optimizer, x, y, pos)
                    b = len(y)
                    sums["n"] += b
                    sums["loss"] += parts.loss.item() * b
                    sums["cls"] += parts.cls.item() * b
                    sums["lkd"] += parts.lkd.item() * b
                    sums["correct"] += (parts.logits.argmax(1) == y.to(self.device)).sum().item()
                    pos.step += 1
                    pos.global_step += 1
                    self.observer.step(pos.step, parts.loss.item(), sums["correct"] / sums["n"])
                    if self._stop_requested:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                self._save_state(model, optimizer, scheduler, gen, pos)
                log.warning("interrupted at epoch %d, step %d; resume with --resume", epoch + 1, pos.step)
                raise

            scheduler_lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            val = evaluate(model, data.val, t.eval_batch_size, self.device)
            pos.epoch += 1
            pos.step, pos.perm = 0, None
            record = {
                "epoch": pos.epoch,
                "train_loss": sums["loss"] / max(sums["n"], 1),
                "train_cls": sums["cls"] / max(sums["n"], 1),
                "train_lkd": sums["lkd"] / max(sums["n"], 1),
                "train_acc": sums["correct"] / max(sums["n"], 1),
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "lr": scheduler_lr,
                "alpha": criterion.alpha,
                "lam": criterion.lam,
                "seconds": time.perf_counter() - tic,
            }
            improved = val["acc"] > pos.best_acc
            if improved:
                pos.best_acc, pos.best_epoch = val["acc"], pos.epoch
            self._save_epoch(model, data, pos, record, improved)
            self._save_state(model, optimizer, scheduler, gen, pos)
            self.observer.epoch_end(record)

    def _step(self, model, criterion: GMLoss | SoftmaxLoss, optimizer, x, y, pos: Position):
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        feats = model.features(x)
        parts = criterion.components(feats, y)
        if not torch.isfinite(parts.loss):
            raise GmcliError(
                f"the loss became {parts.loss.item()} at epoch {pos.epoch + 1}, step {pos.step + 1}; "
                f"training stopped and the last good checkpoint in {str(self.run_dir)!r} was kept "
                "(lower train.lr, or loss.alpha / loss.lam)"
            )
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        optimizer.step()
        return parts

    # ---- files --------------------------------------------------------------------

    def _meta(self, data: DataBundle, pos: Position, metrics: dict[str, Any]) -> dict[str, Any]:
        recipe = self.recipe
        return {
            "name": recipe.name,
            "backbone": {"name": recipe.model.backbone},
            "class_names": list(data.classes),
            "dataset": dataset_kwargs(recipe),
            "recipe": recipe.to_dict(),
            "epoch": pos.epoch,
            "metrics": metrics,
        }

    def _save_epoch(self, model, data: DataBundle, pos: Position, record: dict, improved: bool) -> None:
        meta = self._meta(data, pos, {"val_acc": record["val_acc"], "val_loss": record["val_loss"]})
        save_checkpoint(self.run_dir / runs.LAST, model, meta)
        if improved:
            save_checkpoint(self.run_dir / runs.CHECKPOINT, model, meta)
        with open(self.run_dir / runs.METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _save_state(self, model, optimizer, scheduler, gen: torch.Generator, pos: Position) -> None:
        state = {
            "version": STATE_VERSION,
            "epoch": pos.epoch,
            "step": pos.step,
            "global_step": pos.global_step,
            "perm": pos.perm,
            "best_acc": pos.best_acc,
            "best_epoch": pos.best_epoch,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "generator": gen.get_state(),
        }
        atomic_write(self.run_dir / runs.STATE, lambda tmp: torch.save(state, tmp))

    def _load_state(self, model, optimizer, scheduler, gen: torch.Generator) -> Position:
        path = self.run_dir / runs.STATE
        try:
            with torch.serialization.safe_globals([Counter]):
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise GmcliError(
                f"resumable state {str(path)!r} cannot be read safely ({str(exc).splitlines()[0][:120]}); "
                "it is corrupt or was not written by gmcli"
            ) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise GmcliError(f"resumable state {str(path)!r} is not a gmcli training state of version {STATE_VERSION}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["generator"])
        return Position(
            epoch=state["epoch"],
            step=state["step"],
            global_step=state["global_step"],
            perm=state["perm"],
            best_acc=state["best_acc"],
            best_epoch=state["best_epoch"],
        )

    def _truncate_metrics(self, epochs_done: int) -> None:
        """Keep the metric lines of the epochs that the resumed state has completed."""
        path = self.run_dir / runs.METRICS
        if not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()][:epochs_done]
        path.write_text("".join(ln + "\n" for ln in lines))

    def _finish(self, model: Classifier, data: DataBundle, pos: Position, seconds: float) -> dict[str, Any]:
        from gmcli.checkpoint import load_checkpoint

        t = self.recipe.train
        best, meta, _ = load_checkpoint(self.run_dir / runs.CHECKPOINT, device=self.device)
        test = evaluate(best, data.test, t.eval_batch_size, self.device)
        val = evaluate(best, data.val, t.eval_batch_size, self.device)
        calib = feature_statistics(best, data.train, t.eval_batch_size, self.device, self.recipe.seed)
        result = {
            "name": self.recipe.name,
            "run_dir": str(self.run_dir),
            "head": best.head_kind,
            "dataset": data.name,
            "epochs": pos.epoch,
            "best_epoch": pos.best_epoch,
            "val_acc": val["acc"],
            "test_acc": test["acc"],
            "test_loss": test["loss"],
            "n_train": len(data.train),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "seconds": seconds,
            "device": str(self.device),
            "fingerprint": meta["fingerprint"],
        }
        meta_out = {k: meta[k] for k in ("name", "backbone", "class_names", "dataset", "recipe", "epoch")}
        meta_out["metrics"] = {k: result[k] for k in ("val_acc", "test_acc", "test_loss", "best_epoch", "epochs")}
        save_checkpoint(self.run_dir / runs.CHECKPOINT, best, meta_out, calib=calib)
        atomic_write(
            self.run_dir / runs.TRAIN_RESULT, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n")
        )
        runs.mark_latest(self.run_dir)
        return result


def train(recipe: Recipe, **kwargs: Any) -> dict[str, Any]:
    """Train ``recipe``; keyword arguments as for :class:`Trainer`."""
    return Trainer(recipe, **kwargs).run()
