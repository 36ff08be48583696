"""``gmcli report``: one HTML page, a Markdown summary and report.json for one or more runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gmcli.cli.common import console, handle_errors, print_json


def show_result(result: Any) -> None:
    """What is missing (with the commands that make it), warnings, and the files written."""
    for m in result.missing:
        command = f"; make it with [bold]{m['command']}[/]" if m.get("command") else ""
        console.print(f"[yellow]missing:[/] {m['message']}{command}", highlight=False, soft_wrap=True)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    runs = ", ".join(r["label"] for r in result.runs)
    console.print(f"report of {runs}: {len(result.figures)} figures", highlight=False)
    for kind, path in result.files.items():
        console.print(f"  {kind:<5} {path}", highlight=False, soft_wrap=True)


@handle_errors
def report(
    runs: list[Path] = typer.Argument(
        None, metavar="[RUN]...",
        help="Run directories or checkpoints, shown side by side (default: the latest run).",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default <first run>/report)."),
    formats: str | None = typer.Option(
        None, "--format", help="Files to write: html,md,json (default all three)."),
    scores: list[str] = typer.Option([], "--score", "-s", help="A score to draw (repeatable; default all)."),
    projection: str | None = typer.Option(
        None, "--projection", help="Feature space: auto (2-D features as they are, else pca), pca or tsne."
    ),
    split: str | None = typer.Option(None, "--split", help="Data split of the feature space (default test)."),
    max_points: int | None = typer.Option(
        None, "--max-points", help="Most inputs in the feature space (default 2000)."),
    title: str | None = typer.Option(None, "--title", help="Page title."),
    device: str = typer.Option(
        "auto", "--device", help="Where the model runs for the feature space: auto, cpu, cuda."),
    json_out: bool = typer.Option(
        False, "--json", help="Print the files, missing parts and warnings as JSON."),
) -> None:
    """Report what train, attack and detect wrote: ROC curves, robustness, histograms, features.

    Several runs of one data set (a GM run and its softmax twin) share one
    report: tables get one column per run and curves are overlaid. Missing
    attack or detection results are listed with the command that makes them;
    the rest is still reported. The HTML page embeds its images and opens
    offline; report.md has its PNG files beside it.
    """
    from gmcli.reports import make_report
    from gmcli.training.build import resolve_device

    overrides = {
        "out": str(out) if out is not None else None,
        "formats": formats,
        "scores": scores or None,
        "projection": projection,
        "split": split,
        "max_points": max_points,
        "title": title,
    }
    result = make_report(list(runs or []), overrides=overrides, device=str(resolve_device(device)))
    show_result(result)
    if json_out:
        print_json(result.to_json())
