"""The report's figures, drawn with matplotlib (Agg, no display needed).

Each ``*_plot`` function takes the dicts of :func:`gmcli.reports.collect.collect_runs`
(and, where needed, per-sample scores or features) and returns a :class:`Plot`,
or None when there is nothing to draw. Nothing is recomputed that detect or
attack measured: ROC curves are drawn with scikit-learn's ``roc_curve`` from
the stored per-sample scores, and every figure quoted in a legend is read from
the detection results.

Colours are colour-blind safe: the Okabe-Ito palette (Okabe and Ito, "Color
Universal Design", 2008) for categories, with a second cue (line style or
marker) wherever two categories meet in one panel.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Ellipse  # noqa: E402

from gmcli.reports.collect import FeatureSample, ScoreTable  # noqa: E402

log = logging.getLogger(__name__)

# Okabe-Ito, ordered for contrast on white (yellow last).
OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)
# One colour and line style per detection score, the same in every figure.
SCORE_STYLE: dict[str, tuple[str, str, str]] = {
    "gm": ("#0072B2", "-", "o"),
    "gm-mixture": ("#56B4E9", (0, (5, 2)), "s"),
    "msp": ("#D55E00", "--", "^"),
    "energy": ("#E69F00", "-.", "v"),
    "mahalanobis": ("#009E73", ":", "D"),
    "kd": ("#CC79A7", (0, (3, 1, 1, 1, 1, 1)), "P"),
}
LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)))
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
CLEAN_COLOUR, ABNORMAL_COLOUR = "#0072B2", "#D55E00"
# scores.csv keeps 9 significant digits: rounding can tie a few pairs of scores and move
# the AUROC of the stored scores by about (tied pairs) / (N clean * N abnormal).
AUC_TOLERANCE = 1e-3
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "grid.color": "#d9d9d9",
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.titlesize": 12,
    "figure.titleweight": "bold",
    "lines.linewidth": 1.6,
}
SCORE_NAMES_LONG = {
    "gm": "GM score (NLL under the predicted class's Gaussian, nats)",
    "gm-mixture": "GM mixture score (mixture NLL, nats)",
    "msp": "MSP score (- max softmax probability)",
    "energy": "energy score (- logsumexp of logits)",
    "mahalanobis": "Mahalanobis score (squared distance, tied covariance)",
    "kd": "KD score (- log kernel density)",
}


@dataclass
class Plot:
    """One figure of the report.

    Attributes:
        name: the PNG file's stem (``roc-<attack id>``).
        title: a heading for the page.
        caption: what the figure shows and how to read it.
        figure: the matplotlib figure (closed after rendering).
        notes: things the reader should know, raised while drawing.
    """

    name: str
    title: str
    caption: str
    figure: Figure
    notes: list[str] = field(default_factory=list)

    def png(self, dpi: int = 110) -> bytes:
        """The figure as PNG bytes (no timestamp in the metadata: same input, same bytes)."""
        buf = io.BytesIO()
        self.figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        return buf.getvalue()

    def close(self) -> None:
        plt.close(self.figure)


@contextmanager
def style() -> Iterator[None]:
    """The report's matplotlib settings, restored afterwards."""
    with plt.rc_context(STYLE):
        yield


def score_style(name: str, index: int = 0) -> tuple[str, Any, str]:
    """(colour, line style, marker) of a score; unknown scores cycle through the palette."""
    if name in SCORE_STYLE:
        return SCORE_STYLE[name]
    i = index
    return OKABE_ITO[i % len(OKABE_ITO)], LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)]


def run_colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def _grid(rows: int, cols: int, *, width: float = 4.0, height: float = 3.2,
          **kw: Any) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kw)
    return fig, axes


def _percent(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import PercentFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(1.0, decimals=0))


def _result(run: dict[str, Any], source: str, eps: float | None, score: str) -> dict[str, Any] | None:
    """The detection result row of one source, epsilon and score, or None."""
    det = run.get("detection") or {}
    for r in det.get("results", []):
        if r.get("source") == source and r.get("score") == score and _same_eps(r.get("epsilon"), eps):
            return r
    return None


def _same_eps(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def plotted_scores(run: dict[str, Any], wanted: Sequence[str] | None) -> list[str]:
    """The scores of a run's detection results to draw, primary first."""
    det = run.get("detection") or {}
    have = list(det.get("scores") or [])
    primary = det.get("primary_score")
    if primary in have:
        have.remove(primary)
        have.insert(0, primary)
    return [s for s in have if wanted is None or s in wanted]


# --------------------------------------------------------------------------- training


def training_plot(runs: list[dict[str, Any]]) -> Plot | None:
    """Loss and accuracy per epoch (metrics.jsonl), one colour per run."""
    if not any(r["train"]["epochs"] for r in runs):
        return None
    fig, axes = _grid(1, 2, width=5.0, height=3.6)
    ax_loss, ax_acc = axes[0]
    for i, run in enumerate(runs):
        epochs = run["train"]["epochs"]
        if not epochs:
            continue
        e = [r["epoch"] for r in epochs]
        colour, label = run_colour(i), run["label"]
        ax_loss.plot(e, [r.get("train_loss") for r in epochs], color=colour, ls="-", marker="o", ms=3,
                     label=f"{label}: train")
        ax_loss.plot(e, [r.get("val_loss") for r in epochs], color=colour, ls="--", marker="s", ms=3,
                     label=f"{label}: validation")
        ax_acc.plot(e, [r.get("train_acc") for r in epochs], color=colour, ls="-", marker="o", ms=3,
                    label=f"{label}: train")
        ax_acc.plot(e, [r.get("val_acc") for r in epochs], color=colour, ls="--", marker="s", ms=3,
                    label=f"{label}: validation")
    ax_loss.set(title="Loss per epoch", xlabel="epoch", ylabel="loss (nats per sample)")
    losses = [r.get(k) for run in runs for r in run["train"]["epochs"] for k in ("train_loss", "val_loss")]
    if all(v is not None and v > 0 for v in losses):
        ax_loss.set_yscale("log")
    ax_acc.set(title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy")
    _percent(ax_acc)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False)
    fig.tight_layout()
    return Plot(
        "training",
        "Training curves",
        "Training loss (the head's full training loss, so GM and softmax values differ by the "
        "likelihood term) and validation loss (cross-entropy of the evaluation logits); "
        "accuracy on the training batches and on the validation split, per epoch.",
        fig,
    )


# --------------------------------------------------------------------------- robustness


def robust_accuracy_plot(runs: list[dict[str, Any]]) -> Plot | None:
    """Robust accuracy against epsilon, one panel per norm, lines per run and attack."""
    norms = sorted({a["norm"] for r in runs for a in r["attacks"]})
    if not norms:
        return None
    fig, axes = _grid(1, len(norms), width=5.0, height=3.6)
    for ax, norm in zip(axes[0], norms):
        for i, run in enumerate(runs):
            attacks = [a for a in run["attacks"] if a["norm"] == norm]
            for j, a in enumerate(attacks):
                eps = [0.0] + [p["eps"] for p in a["per_eps"]]
                acc = [a["clean_accuracy"]] + [p["robust_accuracy"] for p in a["per_eps"]]
                ax.plot(eps, acc, color=run_colour(i), ls=LINESTYLES[j % len(LINESTYLES)],
                        marker=MARKERS[j % len(MARKERS)], ms=4, label=f"{run['label']}: {a['label']}")
        ax.set(title=f"Robust accuracy ({'L-inf' if norm == 'linf' else 'L2'} attacks)",
               xlabel=_eps_label(norm), ylabel="robust accuracy", ylim=(-0.02, 1.02))
        _percent(ax)
        ax.legend(frameon=False)
    fig.tight_layout()
    return Plot(
        "robust-accuracy",
        "Robust accuracy against epsilon",
        "Fraction of the attacked inputs classified correctly both clean and under attack, per "
        "budget (eps = 0 is the clean accuracy of the attacked inputs).",
        fig,
    )


def detection_plot(runs: list[dict[str, Any]], attack_id: str, label: str,
                   wanted: Sequence[str] | None) -> Plot | None:
    """AUROC and robust error at the threshold against epsilon, for one attack."""
    source = f"adv:{attack_id}"
    rows = [r for r in runs
            if any(x.get("source") == source for x in (r.get("detection") or {}).get("results", []))]
    if not rows:
        return None
    fig, axes = _grid(len(rows), 2, width=4.6, height=3.3)
    for (ax_auc, ax_err), run in zip(axes, rows):
        attack = next((a for a in run["attacks"] if a["attack_id"] == attack_id), None)
        for k, score in enumerate(plotted_scores(run, wanted)):
            pts = [x for x in run["detection"]["results"]
                   if x.get("source") == source and x.get("score") == score]
            pts.sort(key=lambda x: x["epsilon"])
            colour, ls, marker = score_style(score, k)
            eps = [x["epsilon"] for x in pts]
            lw = 2.4 if score == "gm" else 1.5
            ax_auc.plot(eps, [_nan(x.get("auroc")) for x in pts], color=colour, ls=ls, marker=marker,
                        ms=4, lw=lw, label=score)
            ax_err.plot(eps, [_nan(x.get("robust_error")) for x in pts], color=colour, ls=ls,
                        marker=marker, ms=4, lw=lw, label=score)
        if attack is not None:
            ax_err.plot([p["eps"] for p in attack["per_eps"]],
                        [1 - p["robust_accuracy"] for p in attack["per_eps"]],
                        color="#000000", ls=":", lw=1.2, marker="x", ms=5, label="no detector")
        ax_auc.axhline(0.5, color="#7f7f7f", lw=0.8, ls=":")
        xlabel = _eps_label(attack["norm"] if attack else None)
        ax_auc.set(title=f"{run['label']}: detection AUROC", xlabel=xlabel, ylabel="AUROC (0.5 = chance)",
                   ylim=(0.0, 1.02))
        ax_err.set(title=f"{run['label']}: robust error at the threshold", xlabel=xlabel,
                   ylabel="robust error", ylim=(-0.02, 1.02))
        _percent(ax_err)
        # One legend per row, beside it: the same scores in both panels.
        ax_err.legend(frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"Detection against eps: {label}")
    fig.tight_layout()
    return Plot(
        f"detection-{attack_id}",
        f"Detection against epsilon: {label}",
        "AUROC of each score (successful adversarial examples of correctly classified inputs "
        "positive, the correctly classified clean inputs negative), and the robust error at each "
        "score's threshold: the fraction of all attacked inputs whose adversarial example is "
        "misclassified and accepted. 'No detector' is the error without rejection "
        "(1 - robust accuracy).",
        fig,
    )


def _eps_label(norm: str | None) -> str:
    name = {"linf": "L-inf", "l2": "L2"}.get(str(norm))
    return f"perturbation budget eps ({name} norm, pixels in [0, 1])" if name else "perturbation budget eps"


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


# --------------------------------------------------------------------------- ROC and histograms


@dataclass
class Column:
    """One panel column of a ROC or histogram figure: a source and (for a set) one eps."""

    source: str
    kind: str
    eps_index: int | None
    eps: float | None
    title: str


def groups(runs: list[dict[str, Any]]) -> list[tuple[str, str, list[Column]]]:
    """(key, label, columns): one group per attack set (columns = its budgets), and one
    for the out-of-distribution sources of all runs."""
    out: dict[str, tuple[str, dict[float, Column]]] = {}
    ood: dict[str, Column] = {}
    for run in runs:
        for a in run["attacks"]:
            label, cols = out.setdefault(a["attack_id"], (a["label"], {}))
            for i, eps in enumerate(a["epsilons"]):
                cols.setdefault(eps, Column(f"adv:{a['attack_id']}", "adversarial", i, eps, f"eps = {eps:g}"))
        for s in (run.get("detection") or {}).get("sources", []):
            if s.get("kind") == "ood":
                ood.setdefault(s["name"], Column(s["name"], "ood", None, None, s["name"]))
    result = [(key, label, [cols[e] for e in sorted(cols)]) for key, (label, cols) in out.items()]
    if ood:
        result.append(("ood", "out-of-distribution inputs", list(ood.values())))
    return result


def _rows_with(runs: list[dict[str, Any]], tables: dict[str, ScoreTable],
               columns: list[Column]) -> list[dict[str, Any]]:
    """The runs with per-sample scores and detection results for any of ``columns``' sources."""
    sources = {c.source for c in columns}
    return [r for r in runs if r["run_dir"] in tables
            and any(x.get("source") in sources for x in (r.get("detection") or {}).get("results", []))]


def roc_plot(runs: list[dict[str, Any]], tables: dict[str, ScoreTable], key: str, label: str,
             columns: list[Column], wanted: Sequence[str] | None) -> Plot | None:
    """ROC curves per run (rows) and budget or source (columns), one line per score."""
    from sklearn.metrics import auc, roc_curve

    rows = _rows_with(runs, tables, columns)
    if not rows:
        return None
    notes: list[str] = []
    fig, axes = _grid(len(rows), len(columns), width=6.4, height=3.7)
    for row_axes, run in zip(axes, rows):
        table = tables[run["run_dir"]]
        det = run["detection"]
        for ax, col in zip(row_axes, columns):
            drawn = 0
            for k, score in enumerate(plotted_scores(run, wanted)):
                pair = table.clean_and_abnormal(col.source, col.kind, col.eps_index, score)
                if pair is None or len(pair[0]) == 0 or len(pair[1]) == 0:
                    continue
                clean, abnormal = pair
                y = np.concatenate([np.zeros(len(clean)), np.ones(len(abnormal))])
                fpr, tpr, _ = roc_curve(y, np.concatenate([clean, abnormal]))
                row = _result(run, col.source, col.eps, score) or {}
                stored = row.get("auroc")
                if stored is not None and abs(auc(fpr, tpr) - stored) > AUC_TOLERANCE:
                    notes.append(
                        f"{run['label']}, {col.source} {col.title}, {score}: the AUROC of the stored "
                        f"scores ({auc(fpr, tpr):.4f}) differs from metrics.json ({stored:.4f}); "
                        "were scores.csv and metrics.json written by different detect calls?"
                    )
                colour, ls, _ = score_style(score, k)
                ax.plot(fpr, tpr, color=colour, ls=ls, lw=2.4 if score == "gm" else 1.5,
                        label=f"{score} (AUROC {_fmt(stored)})")
                drawn += 1
                if score == det.get("primary_score") and row.get("clean_tpr") is not None \
                        and row.get("detection_rate") is not None:
                    ax.plot([1 - row["clean_tpr"]], [row["detection_rate"]], ls="none", marker="X",
                            ms=8, color=colour, markeredgecolor="#000000",
                            label=f"{score} at its threshold")
            ax.plot([0, 1], [0, 1], color="#7f7f7f", lw=0.8, ls=":")
            ax.set(title=f"{run['label']}: {col.title}", xlim=(-0.01, 1.01), ylim=(-0.01, 1.01),
                   xlabel="false positive rate (clean flagged)",
                   ylabel="true positive rate (abnormal flagged)")
            ax.set_aspect("equal")
            if drawn:
                ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, ncol=1)
            else:
                why = ("no successful adversarial example\nof a correctly classified input"
                       if col.kind == "adversarial" else "no scores stored for this source")
                ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#444444")
    fig.suptitle(f"ROC curves: {label}")
    fig.tight_layout()
    return Plot(
        f"roc-{key}",
        f"ROC curves: {label}",
        "Recomputed with scikit-learn's roc_curve from the per-sample scores of detect/scores.csv "
        "(abnormal = positive: successful adversarial examples of correctly classified inputs, or "
        "OOD inputs; negatives: correctly classified clean inputs). The legend's AUROC is the one "
        "stored in detect/metrics.json; the cross marks the detector's operating point at its "
        "threshold.",
        fig,
        notes,
    )


def histogram_plot(runs: list[dict[str, Any]], tables: dict[str, ScoreTable], key: str, label: str,
                   columns: list[Column], bins: int = 40) -> Plot | None:
    """Histograms of the GM score (else the run's primary score), clean against abnormal,
    with the threshold drawn."""
    rows = _rows_with(runs, tables, columns)
    if not rows:
        return None
    fig, axes = _grid(len(rows), len(columns), width=3.8, height=3.0)
    used: list[str] = []
    for row_axes, run in zip(axes, rows):
        table, det = tables[run["run_dir"]], run["detection"]
        score = "gm" if "gm" in det["scores"] else det.get("primary_score")
        used.append(f"{run['label']}: {score}")
        threshold = ((det.get("thresholds") or {}).get(score) or {}).get("value")
        for ax, col in zip(row_axes, columns):
            pair = table.clean_and_abnormal(col.source, col.kind, col.eps_index, score)
            ax.set(title=f"{run['label']}: {col.title}", xlabel=SCORE_NAMES_LONG.get(score, f"{score} score"),
                   ylabel="density (fraction per unit score)")
            ax.xaxis.label.set_size(8.5)
            if pair is None or (len(pair[0]) == 0 and len(pair[1]) == 0):
                ax.text(0.5, 0.5, "no scores stored", ha="center", va="center", transform=ax.transAxes)
                continue
            clean, abnormal = pair
            both = np.concatenate([clean, abnormal])
            lo, hi = float(np.min(both)), float(np.quantile(both, 0.995))
            if threshold is not None:
                lo, hi = min(lo, threshold), max(hi, threshold)
            hi = hi if hi > lo else lo + 1.0
            edges = np.linspace(lo, hi, bins + 1)
            abnormal_name = "adversarial" if col.kind == "adversarial" else "OOD"
            if len(clean):
                ax.hist(np.clip(clean, lo, hi), bins=edges, density=True, color=CLEAN_COLOUR, alpha=0.55,
                        label=f"clean (n={len(clean)})")
            if len(abnormal):
                ax.hist(np.clip(abnormal, lo, hi), bins=edges, density=True, color=ABNORMAL_COLOUR,
                        alpha=0.55, hatch="//", edgecolor=ABNORMAL_COLOUR,
                        label=f"{abnormal_name} (n={len(abnormal)})")
            if threshold is not None:
                ax.axvline(threshold, color="#000000", ls="--", lw=1.4, label=f"threshold {threshold:.3g}")
            ax.legend(frameon=False, fontsize=7.5)
    fig.suptitle(f"Score histograms: {label}")
    fig.tight_layout()
    return Plot(
        f"hist-{key}",
        f"Score histograms: {label}",
        f"Scores ({'; '.join(used)}) of the correctly classified clean inputs and of the successful "
        "adversarial (or OOD) inputs, as densities; inputs above the threshold are flagged. "
        "Values above the 99.5th percentile are drawn in the last bin.",
        fig,
    )


# --------------------------------------------------------------------------- feature space


def _class_style(k: int) -> tuple[str, str]:
    # Yellow is too faint for small points on white: seven colours, and a marker per class.
    colours = OKABE_ITO[:7]
    return colours[k % len(colours)], MARKERS[k % len(MARKERS)]


def project(sample: FeatureSample, method: str) -> tuple[np.ndarray, np.ndarray | None, tuple[str, str], str]:
    """2-D coordinates of the features and of the class means, axis labels, and the method used.

    ``auto`` keeps 2-D features as they are and projects others with PCA.
    """
    x, mu = sample.x, sample.mu
    d = x.shape[1]
    if method == "auto":
        method = "native" if d == 2 else "pca"
    if method == "native" or d == 1:
        if d == 1:
            x = np.column_stack([x[:, 0], np.zeros(len(x))])
            mu = None if mu is None else np.column_stack([mu[:, 0], np.zeros(len(mu))])
        return x, mu, ("feature x1", "feature x2"), "native"
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=0).fit(x)
        ratio = pca.explained_variance_ratio_
        labels = (f"PC 1 ({ratio[0]:.0%} of variance)", f"PC 2 ({ratio[1]:.0%} of variance)")
        return pca.transform(x), None if mu is None else pca.transform(mu), labels, "pca"
    from sklearn.manifold import TSNE

    points = x if mu is None else np.concatenate([x, mu])
    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
    emb = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(points)
    xy, m = (emb, None) if mu is None else (emb[: len(x)], emb[len(x):])
    return xy, m, ("t-SNE 1 (arbitrary units)", "t-SNE 2 (arbitrary units)"), "tsne"


def feature_plot(run: dict[str, Any], sample: FeatureSample, projection: str = "auto",
                 index: int = 0) -> Plot:
    """The feature space: with D = 2 the features and each class's Gaussian at 1 and 2 sigma
    (the papers' picture); otherwise a 2-D projection with the class means projected."""
    xy, mu, (xlabel, ylabel), used = project(sample, projection)
    k = len(sample.class_names)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    for c in range(k):
        colour, marker = _class_style(c)
        sel = sample.y == c
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=16, alpha=0.65, color=colour, marker=marker, linewidths=0,
                       label=sample.class_names[c] if k <= 12 else None, rasterized=True)
    gm = sample.covariance is not None
    if mu is not None:
        if gm and used == "native" and sample.x.shape[1] == 2:
            for c in range(k):
                sigma = _sigmas(sample, c)
                for n_sigma, ls in ((1, "-"), (2, "--")):
                    ax.add_patch(Ellipse(mu[c], 2 * n_sigma * sigma[0], 2 * n_sigma * sigma[1], fill=False,
                                         color=_class_style(c)[0], ls=ls, lw=1.4))
        ax.scatter(mu[:, 0], mu[:, 1], s=70, marker="X", color="#ffffff", edgecolors="#000000",
                   linewidths=1.2, zorder=5, label="GM means" if gm else "class means (training features)")
        for c in range(k):
            ax.annotate(sample.class_names[c], mu[c], xytext=(5, 5), textcoords="offset points", fontsize=9,
                        fontweight="bold", zorder=6,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "#ffffff", "ec": "none", "alpha": 0.8})
    if used in ("native", "pca"):
        ax.set_aspect("equal", adjustable="datalim")
    how = {"native": "the features themselves", "pca": "PCA projection", "tsne": "t-SNE embedding"}[used]
    ax.set(title=f"{run['label']}: feature space ({how}, {sample.split} split, {len(xy)} inputs)",
           xlabel=xlabel, ylabel=ylabel)
    ax.title.set_size(10)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=1.5)
    fig.tight_layout()
    if used == "native" and gm:
        caption = ("Penultimate features of the inputs, coloured by their label, and each class's "
                   "Gaussian N(mu_k, Sigma_k) of the GM head: solid at 1 sigma, dashed at 2 sigma "
                   f"({sample.covariance} covariance"
                   + (": circles of radius 1 and 2" if sample.covariance == "identity" else "") + ").")
    elif used == "native":
        caption = "Penultimate features of the inputs, coloured by their label, with the class means."
    else:
        caption = (f"A 2-D {how} of the D = {sample.x.shape[1]} penultimate features, coloured by label; "
                   + ("the GM means are projected with the same map." if gm else
                      "crosses mark the class means of the training features.")
                   + (" t-SNE distances are not metric: read clusters, not distances."
                      if used == "tsne" else ""))
    return Plot(f"features-{index + 1}", f"Feature space: {run['label']}", caption, fig)


def _sigmas(sample: FeatureSample, c: int) -> tuple[float, float]:
    """Standard deviations along the two feature axes of class c's Gaussian."""
    if sample.log_var is None:
        return 1.0, 1.0
    lv = sample.log_var[c]
    s = np.exp(0.5 * lv)
    return (float(s[0]), float(s[0])) if len(s) == 1 else (float(s[0]), float(s[1]))


# --------------------------------------------------------------------------- all of them


def make_plots(
    runs: list[dict[str, Any]],
    tables: dict[str, ScoreTable],
    samples: dict[str, FeatureSample],
    *,
    scores: Sequence[str] | None = None,
    projection: str = "auto",
    bins: int = 40,
) -> list[Plot]:
    """Every figure of a report, in page order.

    Args:
        runs: dicts of :func:`~gmcli.reports.collect.collect_runs`.
        tables: per-sample scores by run directory (runs without them get no ROC).
        samples: features by run directory (runs without them get no feature plot).
        scores: the scores to draw (None: all).
        projection: ``auto``, ``pca`` or ``tsne``.
        bins: histogram bins.
    """
    plots: list[Plot] = []
    with style():
        for make in (lambda: training_plot(runs), lambda: robust_accuracy_plot(runs)):
            p = make()
            if p is not None:
                plots.append(p)
        for key, label, columns in groups(runs):
            if key != "ood":
                p = detection_plot(runs, key, label, scores)
                if p is not None:
                    plots.append(p)
            for p in (roc_plot(runs, tables, key, label, columns, scores),
                      histogram_plot(runs, tables, key, label, columns, bins)):
                if p is not None:
                    plots.append(p)
        for i, run in enumerate(runs):
            if run["run_dir"] in samples:
                plots.append(feature_plot(run, samples[run["run_dir"]], projection, i))
    return plots
