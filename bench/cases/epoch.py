"""Area 2: a ``gmcli train`` epoch against a plain PyTorch loop on the same work.

The toolkit runs ``Trainer.run`` with the CLI's progress bar (``ProgressObserver``
drawing to a terminal console that writes to /dev/null). The plain loop has the
same model, loss, optimiser and learning-rate schedule (built by
``gmcli.training.build``), the same images already in memory as float32, the same
batch size; it shuffles with ``randperm`` and does nothing else. Its validation
pass (``no_grad``, accuracy and summed cross-entropy of the same split) is timed
on its own, so that the toolkit epoch (steps, metrics, validation, checkpoints,
state, progress bar) can be compared with both.

Interleaving: the plain epochs run inside the observer's hooks, between toolkit
epochs (after epoch 0, before epoch 1, after epoch 2 ...), with the toolkit's
clock paused; epoch 0 of each is the warm-up.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import Context, Row, Samples, Section, Stat, fmt_stat
from bench.fixtures import RUN_NAME, recipe_dict, runs_dir

KEY = "train"
TITLE = "2. `gmcli train` epoch vs a plain PyTorch loop"
TARGET = 1.10


class PlainLoop:
    """The baseline training loop, on its own copy of the model."""

    def __init__(self, recipe: Any, data: Any) -> None:
        from gmcli.training.build import (
            build_classifier,
            build_loss,
            build_lr_scheduler,
            build_optimizer,
        )

        self.model = build_classifier(recipe, data)
        self.loss = build_loss(recipe, self.model)
        self.optimizer = build_optimizer(recipe, self.model)
        self.scheduler = build_lr_scheduler(recipe, self.optimizer)
        self.x, self.y = data.train.float_x(), data.train.y
        self.val_x, self.val_y = data.val.float_x(), data.val.y
        self.batch = recipe.train.batch_size
        self.eval_batch = recipe.train.eval_batch_size
        self.gen = torch.Generator().manual_seed(recipe.seed + 1)

    def train_epoch(self) -> None:
        self.model.train()
        perm = torch.randperm(len(self.y), generator=self.gen)
        for start in range(0, len(perm), self.batch):
            index = perm[start : start + self.batch]
            if len(index) < 2:
                continue
            loss = self.loss(self.model.features(self.x[index]), self.y[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        correct, loss_sum = 0, 0.0
        for start in range(0, len(self.val_y), self.eval_batch):
            x = self.val_x[start : start + self.eval_batch]
            y = self.val_y[start : start + self.eval_batch]
            logits = self.model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
        return correct / max(len(self.val_y), 1)


class Clock:
    """Wall and CPU seconds of one side, which can be paused while the other runs."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._since: tuple[float, float] | None = None

    def start(self) -> None:
        self._since = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        wall, cpu = self._since
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    def take(self, into: Samples) -> None:
        """Append the time so far to ``into`` and start again from zero."""
        into.wall.append(self.wall)
        into.cpu.append(self.cpu)
        self.wall = self.cpu = 0.0


def _observer_class() -> type:
    from gmcli.cli.train import ProgressObserver

    class TimedObserver(ProgressObserver):
        """The CLI's observer, plus the toolkit's clock and the plain epochs."""

        def __init__(self, progress: Any, plain: PlainLoop) -> None:
            super().__init__(progress)
            self.plain = plain
            self.clock = Clock()
            self.toolkit = Samples()
            self.plain_train = Samples()
            self.plain_val = Samples()
            self.plain_in_start: list[float] = []  # plain seconds inside a toolkit record
            self.records: list[dict[str, Any]] = []
            self.started = False

        def _run_plain(self) -> float:
            train, val = Clock(), Clock()
            train.start()
            self.plain.train_epoch()
            train.stop()
            val.start()
            self.plain.validate()
            val.stop()
            train.take(self.plain_train)
            val.take(self.plain_val)
            return self.plain_train.wall[-1] + self.plain_val.wall[-1]

        def epoch_start(self, epoch: int, epochs: int, steps: int, first_step: int) -> None:
            if not self.started:
                self.clock.start()
                self.started = True
            inside = 0.0
            if epoch % 2 == 1:
                self.clock.stop()
                inside = self._run_plain()
                self.clock.start()
            self.plain_in_start.append(inside)
            super().epoch_start(epoch, epochs, steps, first_step)

        def epoch_end(self, record: dict[str, Any]) -> None:
            super().epoch_end(record)
            self.clock.stop()
            self.clock.take(self.toolkit)
            self.records.append(record)
            if (record["epoch"] - 1) % 2 == 0:
                self._run_plain()
            self.clock.start()

    return TimedObserver


def run(ctx: Context) -> Section:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from gmcli.data import load_dataset
    from gmcli.recipe import parse_recipe
    from gmcli.training.trainer import Trainer, dataset_kwargs

    tic = time.perf_counter()
    # Epoch pairs are noisy on a shared machine (+-15 %): more of them than elsewhere.
    reps = ctx.reps if ctx.quick else max(ctx.reps, 7)
    epochs = ctx.warmup + reps
    recipe = parse_recipe(recipe_dict(ctx, epochs=epochs))
    data = load_dataset(**dataset_kwargs(recipe))
    torch.manual_seed(1)
    plain = PlainLoop(recipe, data)

    # The CLI's progress bar, drawn to a terminal that discards it.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    console = Console(file=devnull, force_terminal=True, width=120)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console, transient=True,
    )
    observer = _observer_class()(progress, plain)
    run_dir = runs_dir(ctx) / RUN_NAME
    ctx.say(f"train: {epochs} epochs of {len(data.train)} images, plain epochs interleaved")
    try:
        with progress:
            Trainer(recipe, run_dir=run_dir, overwrite=True, device="cpu", observer=observer).run()
    finally:
        devnull.close()
    ctx.shared["run"] = run_dir

    skip = ctx.warmup

    def tail(samples: Samples) -> Samples:
        return Samples(samples.wall[skip:], samples.cpu[skip:])

    toolkit = tail(observer.toolkit)
    p_train, p_val = tail(observer.plain_train), tail(observer.plain_val)
    p_both = Samples([a + b for a, b in zip(p_train.wall, p_val.wall)],
                     [a + b for a, b in zip(p_train.cpu, p_val.cpu)])
    # metrics.jsonl's seconds: the steps and validation (minus a plain epoch run inside).
    inner = [r["seconds"] - p for r, p in zip(observer.records, observer.plain_in_start)][skip:]
    outside = Stat.of([t - i for t, i in zip(toolkit.wall, inner)])
    steps = -(-len(data.train) // recipe.train.batch_size)

    section = Section(
        key=KEY, title=TITLE,
        method=[
            f"{data.name}, {len(data.train)} training images ({steps} steps of",
            f"{recipe.train.batch_size}), {len(data.val)} validation images,",
            f"{recipe.model.backbone} with the GM head, SGD; {reps} epochs after",
            f"{ctx.warmup} warm-up. The toolkit epoch is `Trainer.run` as `gmcli train` runs",
            "it (progress bar, metrics, validation, `last.safetensors`, `state.pt`,",
            "`checkpoint.safetensors` when validation improves, `metrics.jsonl`).",
        ],
        columns=["comparison", "toolkit epoch", "plain epoch"],
    )
    section.rows.append(Row.timed(
        ["toolkit epoch vs plain training + validation", fmt_stat(Stat.of(toolkit.wall), "s"),
         fmt_stat(Stat.of(p_both.wall), "s")],
        toolkit, p_both, TARGET,
    ))
    section.rows.append(Row.timed(
        ["toolkit epoch vs plain training pass alone", fmt_stat(Stat.of(toolkit.wall), "s"),
         fmt_stat(Stat.of(p_train.wall), "s")],
        toolkit, p_train, None,
    ))
    section.notes.append(
        f"Plain validation pass alone: {fmt_stat(Stat.of(p_val.wall), 's')}. Toolkit time "
        "outside the steps and validation that `metrics.jsonl` records (the checkpoint "
        "files, `state.pt`, the metrics line, the progress bar's last update, the epoch's "
        f"copy of the split): {fmt_stat(outside, 'ms')} per epoch."
    )
    section.seconds = time.perf_counter() - tic
    return section
