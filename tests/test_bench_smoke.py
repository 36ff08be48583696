"""Smoke test of the benchmark suite: ``python -m bench.run --quick`` end to end.

The full suite is not part of the test run (minutes); this runs every area once
at tiny sizes and checks the report it writes: every area has its section, and
every ratio in every table is a positive finite number.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ratio_cells(markdown: str) -> list[str]:
    """The cells of every table column whose header starts with "ratio"."""
    cells: list[str] = []
    columns: list[str] | None = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if columns is None:
            columns = parts
        elif not all(set(p) <= set("-:") for p in parts):
            cells += [cell for head, cell in zip(columns, parts) if head.startswith("ratio")]
    return cells


def test_ratio_cells_reads_tables() -> None:
    text = "# t\n\n| case | ratio (range) | target |\n|---|---|---|\n| a | 1.02 (0.9-1.1) | 1 |\n"
    assert ratio_cells(text) == ["1.02 (0.9-1.1)"]


def test_quick_suite_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--threads", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()

    if str(REPO) not in sys.path:  # bench/ is a folder of the checkout, not an installed package
        sys.path.insert(0, str(REPO))
    from bench.run import AREAS, MODULES

    assert "## Summary" in text
    for area in AREAS:
        title = importlib.import_module(MODULES[area]).TITLE
        assert f"## {title}" in text, f"section of area {area!r} missing"

    cells = ratio_cells(text)
    assert len(cells) >= 2 * len(AREAS), f"only {len(cells)} ratios in the report"
    for cell in cells:
        value = float(cell.split()[0])
        assert math.isfinite(value) and value > 0, f"ratio {cell!r} is not a positive number"
