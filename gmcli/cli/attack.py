"""``gmcli attack``: attack a trained run and write its adversarial set."""

from __future__ import annotations

from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gmcli.attacks.methods import method_names
from gmcli.cli.common import console, handle_errors, print_json


@handle_errors
def attack(
    source: str | None = typer.Argument(
        None, metavar="RUN_OR_CHECKPOINT", help="Run directory or checkpoint (default: the latest run)."
    ),
    method: str | None = typer.Option(
        None, "--method", "-m", help=f"Attack: {', '.join(method_names())} (default pgd)."
    ),
    eps: str | None = typer.Option(
        None, "--eps", help="Budgets of one sweep, comma-separated, in the attack's norm: 0.1,0.3."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Iterations (default: the method's)."),
    step_size: float | None = typer.Option(
        None, "--step-size", help="Step relative to eps (cw: Adam learning rate); default 2.5/steps."
    ),
    random_start: bool | None = typer.Option(
        None, "--random-start/--no-random-start", help="Start at a random point of the eps-ball."
    ),
    restarts: int | None = typer.Option(
        None, "--restarts", help="Random restarts; the first success is kept."
    ),
    targeted: bool | None = typer.Option(
        None,
        "--targeted/--untargeted",
        help="Aim at a target class drawn from the seed (pgd, bim, pgd-l2, cw, adaptive).",
    ),
    target_class: int | None = typer.Option(None, "--target-class", help="One target class for all samples."),
    split: str | None = typer.Option(
        None, "--split", help="Data split to attack: train, val or test (default test)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Attack only the first N samples."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Samples per batch (default 128)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of random starts and targets (default 0)."),
    adaptive_weight: float | None = typer.Option(
        None, "--adaptive-weight", help="pgd-adaptive: weight of the GM detection-score penalty (default 1)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:<index>."),
    out: str | None = typer.Option(None, "--out", help="Attack id (folder name under <run>/attacks/)."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Attack a trained classifier with foolbox and store the adversarial set.

    The run recipe's attack: section gives the defaults; flags override it.
    """
    from gmcli.attacks.runner import run_attack

    overrides: dict[str, Any] = {
        "method": method,
        "eps": eps,
        "steps": steps,
        "step_size": step_size,
        "random_start": random_start,
        "restarts": restarts,
        "targeted": targeted,
        "target_class": target_class,
        "split": split,
        "limit": limit,
        "batch_size": batch_size,
        "seed": seed,
        "adaptive_weight": adaptive_weight,
    }
    # The bar starts with the first batch, so that errors found while
    # preparing print alone on their line.
    progress = Progress(
        TextColumn("attack"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet,
    )
    task = progress.add_task("attack", total=None, start=False)

    def advance(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
            progress.start_task(task)
        progress.update(task, completed=done, total=total)

    try:
        result = run_attack(source, overrides=overrides, device=device, attack_id=out, progress=advance)
    finally:
        if progress.live.is_started:
            progress.stop()

    table = Table(
        title=(
            f"{result.attack_id}: {result.method} ({result.norm}) on {result.split}, n={result.n}, "
            f"clean accuracy {result.clean_accuracy:.1%}, {result.seconds:.1f}s"
        ),
        title_justify="left",
    )
    for column in ("eps", "robust accuracy", "success rate", "successes", "mean norm"):
        table.add_column(column, justify="right")
    for r in result.per_eps:
        table.add_row(
            f"{r.eps:g}",
            f"{r.robust_accuracy:.1%}",
            f"{r.success_rate:.1%}",
            f"{r.n_success}/{result.n_eligible}",
            f"{r.mean_norm:.4f}",
        )
    console.print(table)
    console.print(f"adversarial set: {result.path}", highlight=False, soft_wrap=True)
    if json_out:
        print_json(result.to_json())
