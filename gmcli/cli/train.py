"""``gmcli train``: train a recipe into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gmcli.cli.common import console, handle_errors, print_json
from gmcli.training.observer import TrainObserver


class ProgressObserver(TrainObserver):
    """A rich progress bar per epoch, and one summary line when an epoch ends."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None
        self.epochs = 0

    def epoch_start(self, epoch: int, epochs: int, steps: int, first_step: int) -> None:
        self.epochs = epochs
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            f"epoch {epoch + 1}/{epochs}", total=steps, completed=first_step, stats=""
        )

    def step(self, step: int, loss: float, acc: float) -> None:
        self.progress.update(self.task, completed=step, stats=f"loss {loss:.3f}  acc {acc:.1%}")

    def epoch_end(self, record: dict[str, Any]) -> None:
        self.progress.console.print(
            f"epoch {record['epoch']:>3}/{self.epochs}  loss {record['train_loss']:.4f}  "
            f"train {record['train_acc']:.2%}  val {record['val_acc']:.2%}  "
            f"lr {record['lr']:.3g}  {record['seconds']:.1f}s",
            highlight=False,
        )


def step_progress(quiet: bool) -> Progress:
    """The progress bar of training steps (train and run share it), on stderr."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet,
    )


@handle_errors
def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML file (or, with --resume, a run directory)."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a recipe key: --set train.epochs=3."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in the run directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in the run directory."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (default: the recipe's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final figures as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a classifier with the GM loss (or its softmax twin) from a recipe."""
    from gmcli.recipe import load_recipe
    from gmcli.runs import RECIPE
    from gmcli.training.trainer import Trainer

    if resume and recipe.is_dir():
        run_dir = run_dir or recipe
        recipe = recipe / RECIPE
    spec = load_recipe(recipe, set_)
    progress = step_progress(quiet)
    observer = ProgressObserver(progress)
    with progress:
        result = Trainer(
            spec, run_dir=run_dir, resume=resume, overwrite=overwrite, device=device, observer=observer
        ).run()

    table = Table(title=f"{result['name']} ({result['head']} head, {result['dataset']})", show_header=False)
    table.add_row("validation accuracy", f"{result['val_acc']:.2%}")
    table.add_row("test accuracy", f"{result['test_acc']:.2%}")
    table.add_row("epochs (best)", f"{result['epochs']} ({result['best_epoch']})")
    table.add_row("time", f"{result['seconds']:.1f} s on {result['device']}")
    table.add_row("run directory", result["run_dir"])
    console.print(table)
    if json_out:
        print_json(result)
