"""Reports: what train, attack and detect wrote, as one HTML page, Markdown and JSON.

:func:`make_report` is the library entry point behind ``gmcli report``: it
collects the runs (:mod:`~gmcli.reports.collect`), draws the figures
(:mod:`~gmcli.reports.plots`) and writes the files (:mod:`~gmcli.reports.render`)
into ``<first run>/report/`` or the folder asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmcli.errors import GmcliError
from gmcli.reports.config import ReportConfig, resolve_config

log = logging.getLogger(__name__)

__all__ = ["ReportConfig", "ReportResult", "make_report", "resolve_config"]


@dataclass
class ReportResult:
    """What one report call wrote.

    Attributes:
        out_dir: the output folder.
        files: format (``html``, ``md``, ``json``) -> path.
        figures: the figures' names (``<name>.png`` beside report.md).
        runs: the runs shown, as labelled in the report.
        missing: per missing part: run, stage, message, command.
        warnings: stale or inconsistent results, figures not drawn.
    """

    out_dir: Path
    files: dict[str, str]
    figures: list[str]
    runs: list[dict[str, Any]]
    missing: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "files": self.files,
            "figures": self.figures,
            "runs": self.runs,
            "missing": self.missing,
            "warnings": self.warnings,
        }


def make_report(
    sources: Sequence[str | os.PathLike | None] = (),
    config: ReportConfig | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> ReportResult:
    """Collect runs, draw the figures and write the report.

    Args:
        sources: run directories or checkpoints; empty: the latest run. All
            must share a data set.
        config: the options; None: the first run recipe's ``report:`` section
            with ``overrides`` on top (``None`` values ignored).
        overrides: options given by the caller (the CLI's flags).
        device: where the model runs to draw the feature space.

    Raises:
        GmcliError: a run that does not exist, runs of different data sets, an
            output folder that cannot be written. Missing attack or detection
            results are not errors: the report lists them.
    """
    from gmcli.reports.collect import (
        collect_runs,
        feature_sample,
        load_scores,
        recipe_section,
        resolve_run,
    )
    from gmcli.reports.plots import make_plots
    from gmcli.reports.render import check_writable, write_report

    items = list(sources) or [None]
    if config is None:
        first, _ = resolve_run(items[0])
        config = resolve_config(recipe_section(first, "report"), overrides)
    if config.out:
        check_writable(Path(config.out))
    skipped: list[str] = []
    for other in config.compare:
        try:
            resolve_run(other)
        except GmcliError as exc:
            skipped.append(f"report.compare: {exc}; the report is made without it")
            continue
        items.append(other)
    runs = collect_runs(items)
    out_dir = Path(config.out) if config.out else Path(runs[0]["run_dir"]) / "report"
    check_writable(out_dir)

    tables = {}
    for r in runs:
        det = r.get("detection")
        if det and det.get("scores_file"):
            tables[r["run_dir"]] = load_scores(det["scores_file"])
    samples = {}
    for r in runs:
        try:
            samples[r["run_dir"]] = feature_sample(r, split=config.split, max_points=config.max_points,
                                                   device=device)
        except GmcliError as exc:
            r["warnings"].append(f"feature space not drawn: {exc}")
            log.info("%s: feature space not drawn: %s", r["label"], exc)

    plots = make_plots(runs, tables, samples, scores=config.scores, projection=config.projection,
                       bins=config.hist_bins)
    notes = [n for p in plots for n in p.notes]
    names = [p.name for p in plots]
    files = write_report(runs, plots, out_dir, formats=config.formats, title=config.title,
                         config=config.model_dump(mode="json"), dpi=config.dpi)
    return ReportResult(
        out_dir=out_dir,
        files=files,
        figures=names,
        runs=[{"label": r["label"], "run_dir": r["run_dir"], "head": r["head"]} for r in runs],
        missing=[{"run": r["label"], **m} for r in runs for m in r["missing"]],
        warnings=skipped + [f"{r['label']}: {w}" for r in runs for w in r["warnings"]] + notes,
    )
