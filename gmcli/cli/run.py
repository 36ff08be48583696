"""``gmcli run``: train, attack, detect and report from one recipe, skipping what is current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import Progress
from rich.table import Table

from gmcli.cli.common import console, fail, handle_errors, print_json
from gmcli.cli.train import ProgressObserver, step_progress
from gmcli.pipeline import PipelineObserver, StageResult


class RichPipelineObserver(PipelineObserver):
    """One line per stage, the training's progress bar, and the attack's."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def stage_start(self, name: str, reason: str) -> None:
        self.progress.console.print(f"[bold]{name}[/] ({reason})", highlight=False)

    def stage_end(self, result: StageResult) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if result.status == "skipped":
            self.progress.console.print(f"[bold]{result.name}[/] skipped: {result.reason}", highlight=False)
        else:
            self.progress.console.print(
                f"[bold]{result.name}[/] done in {result.seconds:.1f} s", highlight=False)

    def train_observer(self) -> Any:
        return ProgressObserver(self.progress)

    def attack_progress(self) -> Any:
        self.task = self.progress.add_task("attack", total=None, stats="")

        def advance(done: int, total: int) -> None:
            self.progress.update(self.task, completed=done, total=total)

        return advance


def _summary(result: Any) -> Table:
    table = Table(title=f"{result.name}{' (smoke)' if result.smoke else ''}: {result.run_dir}",
                  title_justify="left")
    for column in ("stage", "status", "time", "result"):
        table.add_column(column)
    for s in result.stages:
        f = s.figures
        if s.name == "train":
            what = f"test accuracy {f['test_acc']:.2%}" if "test_acc" in f else ""
        elif s.name == "attack":
            per = f.get("per_eps") or []
            what = ", ".join(f"eps {p['eps']:g}: robust {p['robust_accuracy']:.1%}" for p in per)
        elif s.name == "detect":
            primary = f.get("primary_score")
            worst = ((f.get("summary") or {}).get(primary) or {}).get("worst_robust_error")
            what = f"{primary}: worst robust error {worst:.1%}" if worst is not None else str(primary or "")
        else:
            what = (f.get("files") or {}).get("html") or f.get("out_dir") or ""
        table.add_row(s.name, s.status, f"{s.seconds:.1f} s", what)
    return table


@handle_errors
def run(
    recipe: Path = typer.Argument(..., help="Recipe YAML file."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Override a recipe key: --set train.epochs=3, "
                                   "--set attack.eps=[0.1]."),
    smoke: bool = typer.Option(
        False, "--smoke", help="All stages on a tiny budget, into <run dir>-smoke (CI)."),
    force: bool = typer.Option(
        False, "--force", help="Run every stage, even those whose outputs are current."),
    stages: str | None = typer.Option(None, "--stages", help="Only these stages, comma-separated: "
                                      "train,attack,detect,report (default: the recipe's sections)."),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run directory (default runs/<name>)."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (default: the recipe's)."),
    json_out: bool = typer.Option(False, "--json", help="Print what each stage did as one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run a recipe's pipeline: train, then attack, detect and report as its sections ask.

    Train always runs; attack when the recipe has an attack: section, detect
    when it has detect:, and the report by default. A stage is skipped while its
    outputs are current: pipeline.json in the run directory records the hash of
    each stage's inputs (settings, checkpoint fingerprint, upstream files) and of
    its outputs. Exit codes: 0 done, 1 a detect.fail_under bar not reached, 2 bad input.
    """
    from gmcli.pipeline import load_plan, run_pipeline

    chosen = [s.strip() for s in stages.split(",") if s.strip()] if stages is not None else None
    plan = load_plan(recipe, set_, smoke=smoke, run_dir=run_dir, stages=chosen)
    progress = step_progress(quiet)
    observer = RichPipelineObserver(progress)
    with progress:
        result = run_pipeline(plan, force=force, device=device, observer=observer)
    console.print(_summary(result))
    if json_out:
        print_json(result.to_json())
    if result.failures:
        more = f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else ""
        fail(f"detect.fail_under: {result.failures[0]}{more}", code=1)
