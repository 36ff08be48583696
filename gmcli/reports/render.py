"""Write a report: one HTML page, a Markdown summary with PNG files, and report.json.

The three share one model of the page: :func:`build_tables` turns the runs of
:func:`gmcli.reports.collect.collect_runs` into tables with one column per
run, and :func:`write_report` lays tables and figures out in each format.

- ``report.html``: self-contained; every image is a base64 PNG data URI, no
  script, font or style sheet is fetched, so it opens offline.
- ``report.md`` and ``<figure>.png`` beside it.
- ``report.json`` (``format: gmcli-report``): the collected runs (every
  figure as read from the run's files), the figures' files and captions, what
  is missing and the warnings.

Files are written atomically; figures of an earlier report in the same folder
that this one no longer draws are removed.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmcli import __version__
from gmcli.errors import GmcliError
from gmcli.reports.plots import Plot

log = logging.getLogger(__name__)

FORMAT = "gmcli-report"
FORMAT_VERSION = 1
HTML_FILE, MD_FILE, JSON_FILE = "report.html", "report.md", "report.json"
DASH = "–"


@dataclass
class Table:
    """A table of the page: ``columns`` (the first names the row), rows of formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Section:
    """A heading with its text, tables and figures, in page order."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    level: int = 2


# --------------------------------------------------------------------------- formatting


def pct(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{100 * value:.{digits}f} %"


def num(value: float | None, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return format(value, spec)


def _eps(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------- tables


def summary_table(runs: list[dict[str, Any]]) -> Table:
    """One column per run: model, training figures, detector and its threshold."""
    rows: list[list[str]] = []

    def row(name: str, values: list[str]) -> None:
        rows.append([name, *values])

    results = [r["train"]["result"] or {} for r in runs]
    det = [r.get("detection") or {} for r in runs]
    row("head", [str(r["head"]) + (f" ({r['covariance']} covariance)" if r.get("covariance") else "")
                 for r in runs])
    row("backbone, feature dim D", [f"{r['backbone']}, {r['feat_dim']}" for r in runs])
    row("data set", [str(r["dataset"]) for r in runs])
    row("epochs (best)", [f"{t['epochs']} ({t['best_epoch']})" if "epochs" in t else DASH for t in results])
    row("validation accuracy", [pct(t.get("val_acc"), 2) for t in results])
    row("test accuracy", [pct(t.get("test_acc"), 2) for t in results])
    row("training time", [f"{t['seconds']:.1f} s on {t.get('device', '?')}" if "seconds" in t else DASH
                          for t in results])
    row("adversarial sets", [str(len(r["attacks"])) for r in runs])
    row("detector (flags)", [str(d.get("primary_score") or DASH) for d in det])
    thresholds = []
    for d in det:
        t = (d.get("thresholds") or {}).get(d.get("primary_score")) or {}
        if t.get("value") is None:
            thresholds.append(DASH)
        elif t.get("rule") == "auto":
            thresholds.append(f"{t['value']:.4g} (TPR {pct(t.get('tpr'), 0)} of clean validation inputs)")
        else:
            thresholds.append(f"{t['value']:.4g} ({t.get('rule')})")
    row("threshold", thresholds)
    worst = []
    for d in det:
        s = (d.get("summary") or {}).get(d.get("primary_score")) or {}
        if s.get("worst_robust_error") is None:
            worst.append(DASH)
        else:
            where = f"{s.get('worst_source')}, eps {num(s.get('worst_epsilon'), 'g')}"
            worst.append(f"{pct(s['worst_robust_error'])} ({where})")
    row("worst robust error at threshold", worst)
    row("checkpoint fingerprint", [r["fingerprint"][:12] for r in runs])
    return Table("Models and training", ["", *[r["label"] for r in runs]], rows)


def _attack_keys(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(attack id, label) over all runs, in first-seen order."""
    keys: dict[str, str] = {}
    for r in runs:
        for a in r["attacks"]:
            keys.setdefault(a["attack_id"], a["label"])
    return list(keys.items())


def attack_tables(runs: list[dict[str, Any]]) -> list[Table]:
    """Robust accuracy and success rate, rows (attack, eps), one column per run."""
    tables = []
    for attack_id, label in _attack_keys(runs):
        sets = [next((a for a in r["attacks"] if a["attack_id"] == attack_id), None) for r in runs]
        eps_all = sorted({p["eps"] for a in sets if a for p in a["per_eps"]})
        rows = [["clean (eps 0)", *[pct(a["clean_accuracy"]) if a else DASH for a in sets]]]
        for eps in eps_all:
            cells = []
            for a in sets:
                p = next((p for p in a["per_eps"] if math.isclose(p["eps"], eps)), None) if a else None
                if p is None:
                    cells.append(DASH)
                    continue
                success = f"success {pct(p['success_rate'])}, {p['n_success']}/{a['n_eligible']}"
                cells.append(f"{pct(p['robust_accuracy'])} ({success})")
            rows.append([f"eps {_eps(eps)}", *cells])
        tables.append(Table(
            f"Robust accuracy: {label} [{attack_id}]", ["budget", *[r["label"] for r in runs]], rows,
            "Robust accuracy over all attacked inputs; in brackets the success rate among the "
            "inputs classified correctly when clean.",
        ))
    return tables


def threshold_table(runs: list[dict[str, Any]]) -> Table | None:
    scores = _score_order(runs)
    if not scores:
        return None
    rows = []
    for s in scores:
        cells = []
        for r in runs:
            t = ((r.get("detection") or {}).get("thresholds") or {}).get(s)
            if not t or t.get("value") is None:
                cells.append(DASH)
            elif t.get("rule") == "auto":
                calib = t.get("calibration") or {}
                cells.append(f"{t['value']:.4g} (accepts {pct(t.get('achieved_tpr'))} of "
                             f"{calib.get('n', '?')} clean {calib.get('split', '')} inputs)")
            else:
                cells.append(f"{t['value']:.4g} ({t.get('rule')})")
        rows.append([s, *cells])
    return Table("Thresholds", ["score", *[r["label"] for r in runs]], rows,
                 "An input is flagged when its score exceeds the threshold.")


def _score_order(runs: list[dict[str, Any]]) -> list[str]:
    """Every score of the runs: the known ones in their usual order (gm first), then others."""
    from gmcli.detectors.config import SCORE_NAMES

    found = {s for r in runs for s in (r.get("detection") or {}).get("scores", [])}
    known = [s for s in SCORE_NAMES if s in found]
    return known + sorted(found - set(known))


DETECTION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("auroc", "AUROC", "num"),
    ("fpr_at_95_tpr_clean_accepted", "FPR at 95 % TPR", "num"),
    ("detection_rate", "detection rate at threshold", "pct"),
    ("robust_error", "robust error at threshold", "pct"),
)


def detection_tables(runs: list[dict[str, Any]], source: str, label: str, kind: str) -> list[Table]:
    """For one source: per figure a table, rows (eps, score), one column per run."""
    scores = _score_order(runs)
    keys: dict[float | None, None] = {}
    for r in runs:
        for x in (r.get("detection") or {}).get("results", []):
            if x.get("source") == source:
                keys.setdefault(x.get("epsilon"))
    if not keys:
        return []
    eps_list = sorted(keys, key=lambda e: -1.0 if e is None else e)
    tables = []
    for key, title, how in DETECTION_COLUMNS:
        if kind == "ood" and key == "robust_error":
            continue
        rows = []
        for eps in eps_list:
            for s in scores:
                cells, any_value = [], False
                for r in runs:
                    x = next((x for x in (r.get("detection") or {}).get("results", [])
                              if x.get("source") == source and x.get("score") == s
                              and _same(x.get("epsilon"), eps)), None)
                    if x is None:
                        cells.append(DASH)
                        continue
                    any_value = True
                    v = x.get(key)
                    cells.append(pct(v) if how == "pct" else num(v))
                if any_value:
                    rows.append([s if eps is None else f"eps {_eps(eps)}, {s}", *cells])
        tables.append(Table(f"{title}: {label}", ["budget, score" if kind == "adversarial" else "score",
                                                   *[r["label"] for r in runs]], rows))
    return tables


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def provenance_items(runs: list[dict[str, Any]]) -> list[str]:
    items = []
    for r in runs:
        items.append(f"{r['label']}: run {r['run_dir']}, checkpoint {r['fingerprint'][:16]}")
        for a in r["attacks"]:
            params = ", ".join(f"{k}={v}" for k, v in sorted((a.get("params") or {}).items()))
            state = "complete" if a["complete"] else f"partial ({a['n']} of {a['n_planned']})"
            items.append(f"{r['label']}: attack set {a['attack_id']}: {a['method']} ({a['norm']}), eps "
                         f"{', '.join(_eps(e) for e in a['epsilons'])}, {params}, seed {a.get('seed')}, "
                         f"{a['split']} split, n={a['n']}, {state}, made {a.get('created')}")
        det = r.get("detection")
        if det:
            items.append(f"{r['label']}: detection results {det['path']}, made {det.get('created')}")
    return items


# --------------------------------------------------------------------------- the page


def build_sections(runs: list[dict[str, Any]], plots: list[Plot]) -> list[Section]:
    """The page, in order; every figure of ``plots`` is placed once."""
    by_name = {p.name: p for p in plots}
    placed: set[str] = set()

    def take(name: str) -> list[Plot]:
        p = by_name.get(name)
        if p is None or name in placed:
            return []
        placed.add(name)
        return [p]

    sections: list[Section] = []
    missing = [f"{r['label']}: {m['message']}"
               + (f" — make it with `{m['command']}`" if m["command"] else "")
               for r in runs for m in r["missing"]]
    if missing:
        sections.append(Section("What is missing", "The report shows what exists; these parts are "
                                "missing and can be made with the commands given.", items=missing))
    warnings = [f"{r['label']}: {w}" for r in runs for w in r["warnings"]]
    warnings += [n for p in plots for n in p.notes]
    if warnings:
        sections.append(Section("Warnings", items=warnings))

    sections.append(Section("Runs", tables=[summary_table(runs)]))
    sections.append(Section("Training", plots=take("training")))

    robustness = Section("Robustness", tables=attack_tables(runs), plots=take("robust-accuracy"))
    if robustness.tables or robustness.plots:
        sections.append(robustness)

    t = threshold_table(runs)
    if t is not None:
        sections.append(Section("Detection", "Scores are higher for more abnormal inputs. Only "
                                "successful adversarial examples of correctly classified inputs count "
                                "as adversarial; the clean side is the correctly classified clean inputs.",
                                tables=[t]))
        for attack_id, label in _attack_keys(runs):
            sections.append(Section(
                f"Detection: {label} [{attack_id}]",
                tables=detection_tables(runs, f"adv:{attack_id}", label, "adversarial"),
                plots=take(f"detection-{attack_id}") + take(f"roc-{attack_id}") + take(f"hist-{attack_id}"),
                level=3,
            ))
        ood = list(dict.fromkeys(s["name"] for r in runs
                                 for s in (r.get("detection") or {}).get("sources", [])
                                 if s.get("kind") == "ood"))
        if ood:
            tables = [tb for name in ood for tb in detection_tables(runs, name, name, "ood")]
            sections.append(Section("Detection: out-of-distribution inputs", tables=tables,
                                    plots=take("roc-ood") + take("hist-ood"), level=3))

    features = [p for p in plots if p.name.startswith("features-")]
    if features:
        sections.append(Section("Feature space", plots=[q for p in features for q in take(p.name)]))
    rest = [p for p in plots if p.name not in placed]
    if rest:
        sections.append(Section("More figures", plots=rest))
    sections.append(Section("Provenance", items=provenance_items(runs)))
    return sections


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       max-width: 1280px; margin: 1.5rem auto; padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2rem; }
h3 { font-size: 1.1rem; margin-top: 1.5rem; }
.meta { color: #555; font-size: 0.9rem; }
.tables { display: flex; flex-wrap: wrap; gap: 0 2rem; align-items: flex-start; }
.tables .note { max-width: 36rem; }
table { border-collapse: collapse; margin: 0.6rem 0 0.3rem; font-size: 0.88rem; }
caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
th, td { border: 1px solid #c8c8c8; padding: 0.25rem 0.55rem; vertical-align: top; }
th { background: #eef2f7; }
td { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { text-align: left; font-weight: 500; }
.note { color: #555; font-size: 0.85rem; margin: 0 0 0.8rem; }
figure { margin: 1rem 0 1.5rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e3e3; }
figcaption { color: #333; font-size: 0.88rem; max-width: 70rem; }
section.missing, section.warnings { background: #fff8e6; border-left: 4px solid #E69F00;
       padding: 0.2rem 1rem 0.6rem; }
code { background: #f2f2f2; padding: 0 0.25rem; border-radius: 3px; }
"""


def _html_text(text: str) -> str:
    """Escape, and turn `code` spans into <code>."""
    parts = html.escape(text, quote=False).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(title: str, meta: str, sections: list[Section], images: dict[str, bytes]) -> str:
    """The self-contained page; ``images`` maps a plot name to its PNG bytes."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(meta)}</p>',
    ]
    for s in sections:
        css = {"What is missing": "missing", "Warnings": "warnings"}.get(s.title, "")
        out.append(f'<section class="{css}">' if css else "<section>")
        out.append(f"<h{s.level}>{html.escape(s.title)}</h{s.level}>")
        if s.text:
            out.append(f"<p>{_html_text(s.text)}</p>")
        if s.items:
            out.append("<ul>" + "".join(f"<li>{_html_text(i)}</li>" for i in s.items) + "</ul>")
        if s.tables:
            out.append('<div class="tables">')
        for t in s.tables:
            out.append("<div><table>")
            out.append(f"<caption>{html.escape(t.title)}</caption>")
            out.append("<thead><tr>" + "".join(f'<th scope="col">{html.escape(c)}</th>' for c in t.columns)
                       + "</tr></thead><tbody>")
            for row in t.rows:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
            if t.note:
                out.append(f'<p class="note">{html.escape(t.note)}</p>')
            out.append("</div>")
        if s.tables:
            out.append("</div>")
        for p in s.plots:
            data = base64.b64encode(images[p.name]).decode("ascii")
            out.append(
                f'<figure id="{html.escape(p.name)}"><img src="data:image/png;base64,{data}" '
                f'alt="{html.escape(p.title)}"><figcaption><strong>{html.escape(p.title)}.</strong> '
                f"{html.escape(p.caption)}</figcaption></figure>"
            )
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, meta: str, sections: list[Section]) -> str:
    """The Markdown summary; figures are referenced as ``<name>.png`` beside it."""
    out = [f"# {title}", "", meta, ""]
    for s in sections:
        out += [f"{'#' * s.level} {s.title}", ""]
        if s.text:
            out += [s.text, ""]
        if s.items:
            out += [f"- {i}" for i in s.items] + [""]
        for t in s.tables:
            out += [f"**{t.title}**", ""]
            out.append("| " + " | ".join(_md_cell(c) or " " for c in t.columns) + " |")
            out.append("|" + "|".join(["---"] + ["--:"] * (len(t.columns) - 1)) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
            if t.note:
                out += [f"*{t.note}*", ""]
        for p in s.plots:
            out += [f"![{p.title}]({p.name}.png)", "", f"*{p.caption}*", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- files


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and check that files can be written in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GmcliError(
            f"--out: output folder {str(out_dir)!r} cannot be created ({exc.strerror})"
        ) from None
    if not out_dir.is_dir():
        raise GmcliError(f"--out: {str(out_dir)!r} is a file, not a folder")
    probe = out_dir / f".gmcli-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise GmcliError(f"--out: output folder {str(out_dir)!r} is not writable ({exc.strerror})") from None


def _write(path: Path, data: bytes) -> None:
    from gmcli.checkpoint import atomic_write

    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as exc:
        raise GmcliError(f"--out: cannot write {str(path)!r} ({exc.strerror})") from None


def _old_figures(out_dir: Path) -> set[str]:
    """PNG files listed by an earlier report.json in ``out_dir``."""
    try:
        old = json.loads((out_dir / JSON_FILE).read_text())
        return {f["file"] for f in old.get("figures", []) if isinstance(f, dict) and f.get("file")}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()


def write_report(
    runs: list[dict[str, Any]],
    plots: list[Plot],
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = ("html", "md", "json"),
    title: str | None = None,
    config: dict[str, Any] | None = None,
    dpi: int = 110,
) -> dict[str, str]:
    """Write the report files into ``out_dir``; returns format -> path.

    Args:
        runs: dicts of :func:`~gmcli.reports.collect.collect_runs`.
        plots: the figures (closed here once written).
        out_dir: the output folder (created).
        formats: any of ``html``, ``md`` (with the PNG files), ``json``.
        title: the page title (default from the run names).
        config: the report options, recorded in report.json.
        dpi: the PNG resolution.

    Raises:
        GmcliError: the folder cannot be created or written.
    """
    out = Path(out_dir)
    check_writable(out)
    title = title or "gmcli report: " + " vs ".join(r["label"] for r in runs)
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta = (f"{runs[0]['dataset']} data set; made {created} by gmcli {__version__} from "
            + ", ".join(r["run_dir"] for r in runs))
    sections = build_sections(runs, plots)
    try:
        drawn = "html" in formats or "md" in formats
        images = {p.name: p.png(dpi) for p in plots} if drawn else {}
    finally:
        for p in plots:
            p.close()

    old = _old_figures(out)
    files: dict[str, str] = {}
    if "html" in formats:
        _write(out / HTML_FILE, render_html(title, meta, sections, images).encode())
        files["html"] = str(out / HTML_FILE)
    if "md" in formats:
        for name, data in images.items():
            _write(out / f"{name}.png", data)
        _write(out / MD_FILE, render_markdown(title, meta, sections).encode())
        files["md"] = str(out / MD_FILE)
    written = {f"{name}.png" for name in images} if "md" in formats else set()
    for name in old - written:
        if "/" not in name and name.endswith(".png"):
            (out / name).unlink(missing_ok=True)
    if "json" in formats:
        files["json"] = str(out / JSON_FILE)
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": created,
            "gmcli_version": __version__,
            "title": title,
            "dataset": runs[0]["dataset"],
            "config": config or {},
            "files": files,
            "figures": [
                {"name": p.name, "file": f"{p.name}.png" if "md" in formats else None, "title": p.title,
                 "caption": p.caption}
                for p in plots
            ],
            "missing": [{"run": r["label"], **m} for r in runs for m in r["missing"]],
            "warnings": [f"{r['label']}: {w}" for r in runs for w in r["warnings"]]
            + [n for p in plots for n in p.notes],
            "runs": runs,
        }
        _write(out / JSON_FILE, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
    log.info("wrote the report into %s", out)
    return files
