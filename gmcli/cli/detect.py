"""``gmcli detect``: flag abnormal inputs from the feature likelihood, and measure how well."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from gmcli.cli.common import console, fail, handle_errors, print_json
from gmcli.errors import GmcliError

# Figures in the tables, per source kind: (key in metrics.json, column heading).
COLUMNS = {
    "adversarial": [
        ("auroc", "AUROC"), ("fpr_at_95_tpr_clean_accepted", "FPR95"),
        ("detection_rate", "detect"), ("clean_tpr", "TPR"), ("robust_error", "rob.err"),
        ("n_abnormal", "n adv"), ("n_failed", "failed"),
    ],
    "ood": [
        ("auroc", "AUROC"), ("fpr_at_95_tpr_clean_accepted", "FPR95"),
        ("flagged_fraction", "flagged"), ("clean_tpr", "TPR"), ("n_abnormal", "n"),
    ],
    "in-distribution": [
        ("flagged_fraction", "flagged"), ("clean_tpr", "TPR"), ("accuracy", "accuracy"),
        ("n_inputs", "n"),
    ],
}


def _fail_under(items: list[str]) -> dict[str, float] | None:
    """``["auroc=0.9", ...]`` -> ``{"auroc": 0.9}``."""
    if not items:
        return None
    bars: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            bar = float(value)
        except ValueError:
            bar = math.nan
        if not sep or not key.strip() or not math.isfinite(bar):
            raise GmcliError(
                "--fail-under: expected METRIC=VALUE such as auroc=0.9 (or kd.auroc=0.9), "
                f"got {item!r}"
            )
        bars[key.strip()] = bar
    return bars


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)



def _show(result: Any) -> None:
    """The thresholds, one table per source, and the worst robust errors."""
    primary = result.primary
    for name, t in result.thresholds.items():
        mark = " (flags)" if name == primary else ""
        if t is None:
            console.print(f"threshold {name}{mark}: none", highlight=False)
            continue
        how = (f"auto, TPR {t.tpr:g} on {t.calibration['n']} {t.split} inputs"
               if t.rule == "auto" else "manual")
        console.print(f"threshold {name}{mark}: {t.value:.6g} ({how})", highlight=False)

    for source in result.sources:
        rows = [r for r in result.results if r["source"] == source["name"]]
        cols = COLUMNS[source["kind"]]
        skipped = f", {len(source['skipped'])} skipped" if source["skipped"] else ""
        title = f"{source['name']} ({source['kind']}, {source['n']} inputs{skipped})"
        table = Table(title=Text(title))  # paths may hold brackets: no markup
        if source["kind"] == "adversarial":
            table.add_column("eps", justify="right")
        table.add_column("score")
        for _, head in cols:
            table.add_column(head, justify="right")
        for r in rows:
            cells = [f"[bold]{r['score']}[/]" if r["score"] == primary else r["score"]]
            cells += [_fmt(r.get(key)) for key, _ in cols]
            if source["kind"] == "adversarial":
                cells.insert(0, _fmt(r["epsilon"]))
            table.add_row(*cells)
        console.print(table)

    if result.summary:
        table = Table(title="robust error at the threshold, worst over the adversarial sets")
        for head in ("score", "worst", "source", "eps", "any attack"):
            table.add_column(head, justify="left" if head in ("score", "source") else "right")
        for name, s in result.summary.items():
            table.add_row(name, _fmt(s["worst_robust_error"]), s["worst_source"],
                          _fmt(s["worst_epsilon"]), _fmt(s["robust_error_any_attack"]))
        console.print(table)
    if not result.sources:
        console.print("[yellow]nothing was judged[/]")
    console.print(f"wrote {Path(result.files['metrics']).parent}", highlight=False)


@handle_errors
def detect(
    run: Path | None = typer.Argument(
        None, help="Run directory or checkpoint (default: the latest run)."),
    inputs: list[str] = typer.Option(
        [], "--input", "-i", help="What to judge (repeatable; default: adv)."),
    scores: list[str] = typer.Option(
        [], "--score", "-s", help="A score to compute (repeatable); the first one flags."),
    threshold: str | None = typer.Option(
        None, "--threshold", "-t", help="auto (default), stored, or a number."),
    tpr: float | None = typer.Option(
        None, "--tpr", help="Fraction of clean validation inputs accepted (default 0.95)."),
    recalibrate: bool = typer.Option(
        False, "--recalibrate", help="With auto: calibrate anew even when one is stored."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Inputs per forward pass (default 256)."),
    kd_bandwidth: str | None = typer.Option(
        None, "--kd-bandwidth", help="Bandwidth of the kd kernel, or auto (default)."),
    on_error: str | None = typer.Option(
        None, "--on-error", help="Unreadable image files: skip (default) or fail."),
    fail_under: list[str] = typer.Option(
        [], "--fail-under", help="METRIC=VALUE (repeatable): exit 1 when a figure is lower."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """Score inputs with a run's checkpoint, flag the abnormal ones, and measure.

    Scores (higher = more abnormal): gm (GM negative log-likelihood under the
    predicted class), gm-mixture, msp, energy, mahalanobis, kd. By default every
    score the checkpoint supports; the first --score is the detector whose flags
    count (default gm on a GM head, mahalanobis on a softmax head).

    Threshold rule: --threshold auto (default) applies the threshold stored in
    <run>/detect/threshold.json for this checkpoint unchanged; when none is stored,
    or with --recalibrate, it calibrates one on the correctly classified inputs of
    the run's validation split, accepting at least --tpr of them, and stores it.
    --threshold stored requires a stored one. --threshold VALUE sets the first
    score's threshold and stores it. Thresholds are never calibrated on the inputs
    being judged.

    Inputs (--input, repeatable): adv (every adversarial set of the run, the
    default), adv:<id|folder>, split:<train|val|test>, dataset:<name>[:<split>]
    (e.g. dataset:digits), idx:<folder>, folder:<folder>, or a path. Other shapes
    are converted to the checkpoint's input shape, with a warning.

    --fail-under METRIC=VALUE (repeatable): METRIC is auroc, aupr_in, aupr_out,
    fpr_at_95_tpr_clean_accepted, fpr_at_95_detection, detection_rate, clean_tpr,
    flagged_fraction, robust_error or accuracy, of the first score (or
    <score>.<metric>); every source and budget reporting it must reach VALUE,
    and an undefined figure (n = 0) fails.

    Writes <run>/detect/threshold.json, scores.csv and metrics.json. Exit codes:
    0 done, 1 a --fail-under bar not reached, 2 bad input.
    """
    from gmcli.detectors.runner import run_detection
    from gmcli.training.build import resolve_device

    overrides = {
        "inputs": inputs or None,
        "scores": scores or None,
        "threshold": threshold,
        "tpr": tpr,
        "recalibrate": recalibrate or None,
        "batch_size": batch_size,
        "kd_bandwidth": kd_bandwidth,
        "on_error": on_error,
        "fail_under": _fail_under(fail_under),
    }
    result = run_detection(run, overrides=overrides, device=str(resolve_device(device)))
    failures = result.failures
    if json_out:
        print_json(result.to_json())
    else:
        _show(result)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        fail(f"--fail-under: {failures[0]}{more}", code=1)

