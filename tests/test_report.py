"""``gmcli report`` on the trained digits runs: every figure of report.json against the
files it came from (read here independently), the pages, the plots' geometry, and
every user error."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from gmcli.cli.app import app
from gmcli.errors import GmcliError
from gmcli.reports import make_report
from gmcli.reports.collect import FeatureSample, ScoreTable, collect_run, load_scores
from gmcli.reports.config import ReportConfig, resolve_config
from gmcli.reports.plots import feature_plot, groups, histogram_plot, project, roc_plot, style

RUN_FILES = ("checkpoint.safetensors", "recipe.yaml", "metrics.jsonl", "train.json")
EPS = [0.05, 0.2]
runner = CliRunner()


def private_copy(src: Path, dst: Path) -> Path:
    """The training files of a shared run, so that tests never write into it."""
    dst.mkdir(parents=True)
    for name in RUN_FILES:
        shutil.copy2(src / name, dst / name)
    return dst


def attack_and_detect(run: Path, *, limit: int = 90, eps: list[float] = EPS) -> None:
    """An FGSM set made by gmcli's attack runner, then gmcli's detection on it."""
    from gmcli.attacks import AttackConfig, run_attack
    from gmcli.detectors import run_detection

    run_attack(run, config=AttackConfig(method="fgsm", eps=eps, limit=limit), device="cpu")
    run_detection(run, device="cpu")


@pytest.fixture(scope="module")
def reported(tmp_path_factory, digits_gm_run: Path, digits_softmax_run: Path) -> dict:
    """The GM run and its softmax twin, attacked and judged, in one report under
    docs/example-report (a nested folder that does not exist yet)."""
    root = tmp_path_factory.mktemp("report")
    gm = private_copy(digits_gm_run, root / "gm")
    sm = private_copy(digits_softmax_run, root / "softmax")
    for run in (gm, sm):
        attack_and_detect(run)
    out = root / "docs" / "example-report"
    result = make_report([gm, sm], overrides={"out": str(out), "max_points": 400})
    return {"gm": gm, "sm": sm, "out": out, "result": result,
            "doc": json.loads((out / "report.json").read_text())}


def md_tables(text: str) -> dict[str, list[list[str]]]:
    """The Markdown tables of report.md: bold title -> rows of cells (header first)."""
    tables: dict[str, list[list[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("**") and line.endswith("**"):
            title = line.strip("*")
            tables[title] = []
        elif title and line.startswith("|") and not line.startswith("|---"):
            tables[title].append([c.strip() for c in line.strip("|").split(" | ")])
        elif not line.strip() and title and tables[title]:
            title = None
    return tables


# --------------------------------------------------------------------------- figures


def test_every_figure_of_report_json_equals_its_source(reported):
    doc = reported["doc"]
    assert doc["format"] == "gmcli-report" and doc["dataset"] == "digits"
    by_dir = {r["run_dir"]: r for r in doc["runs"]}
    for run in (reported["gm"], reported["sm"]):
        r = by_dir[str(run)]

        # Training: train.json and metrics.jsonl.
        assert r["train"]["result"] == json.loads((run / "train.json").read_text())
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert r["train"]["epochs"] == [json.loads(ln) for ln in lines if ln.strip()]

        # Attacks: the arrays of each set, and the runner's own figures in its manifest.
        folders = sorted(p for p in (run / "attacks").iterdir() if (p / "manifest.json").is_file())
        assert [a["attack_id"] for a in r["attacks"]] == [p.name for p in folders]
        for a, folder in zip(r["attacks"], folders):
            manifest = json.loads((folder / "manifest.json").read_text())
            labels = np.load(folder / "labels.npy")
            correct = np.load(folder / "clean_pred.npy") == labels
            assert a["epsilons"] == manifest["epsilons"] == EPS
            assert a["n"] == len(labels) == 90
            assert a["clean_accuracy"] == pytest.approx(np.count_nonzero(correct) / len(labels), abs=1e-12)
            assert a["fingerprint"] == manifest["checkpoint"]["fingerprint"] == r["fingerprint"]
            for i, p in enumerate(a["per_eps"]):
                pred = np.load(folder / f"pred_{i}.npy")
                success = np.load(folder / f"success_{i}.npy")
                robust = np.count_nonzero(correct & (pred == labels)) / len(labels)
                n_success = int(np.count_nonzero(correct & success))
                assert p["eps"] == EPS[i]
                assert p["robust_accuracy"] == pytest.approx(robust, abs=1e-12)
                assert p["n_success"] == n_success
                assert p["success_rate"] == pytest.approx(n_success / np.count_nonzero(correct), abs=1e-12)
                norms = np.load(folder / f"norm_{i}.npy")
                assert p["mean_norm"] == pytest.approx(float(norms.mean()), rel=1e-6)
                if "results" in manifest:  # the attack runner's running figures
                    m = manifest["results"]["per_eps"][i]
                    assert p["robust_accuracy"] == pytest.approx(m["robust_accuracy"], abs=1e-12)
                    assert p["success_rate"] == pytest.approx(m["success_rate"], abs=1e-12)

        # Detection: metrics.json row by row, and the thresholds of threshold.json.
        metrics = json.loads((run / "detect" / "metrics.json").read_text())
        det = r["detection"]
        assert det["results"] == metrics["results"] and len(det["results"]) > 0
        assert det["summary"] == metrics["summary"]
        assert det["thresholds"] == metrics["thresholds"]
        assert det["primary_score"] == metrics["primary_score"]
        stored = json.loads((run / "detect" / "threshold.json").read_text())["thresholds"]
        for name, t in det["thresholds"].items():
            assert t["value"] == stored[name]["value"]
    assert doc["missing"] == []


def test_tables_show_the_source_figures(reported):
    tables = md_tables((reported["out"] / "report.md").read_text())
    runs = [json.loads((reported[k] / "train.json").read_text()) for k in ("gm", "sm")]
    header, *rows = tables["Models and training"]
    assert header[1:] == ["digits-gm", "digits-softmax"]
    test_row = next(r for r in rows if r[0] == "test accuracy")
    assert test_row[1:] == [f"{100 * t['test_acc']:.2f} %" for t in runs]

    # One AUROC cell per run, attack budget and score, as metrics.json has it.
    # Both runs were attacked with the same settings: one set id, one AUROC table.
    titles = [t for t in tables if t.startswith("AUROC: ")]
    assert len(titles) == 1 and titles[0].startswith("AUROC: fgsm (L-inf, test, n=90)")
    checked = 0
    for col, key in enumerate(("gm", "sm"), start=1):
        metrics = json.loads((reported[key] / "detect" / "metrics.json").read_text())
        for row in metrics["results"]:
            cells = next(c for c in tables[titles[0]] if c[0] == f"eps {row['epsilon']:g}, {row['score']}")
            expected = "–" if row["auroc"] is None else f"{row['auroc']:.3f}"
            assert cells[col] == expected
            checked += 1
    assert checked >= 2 * len(EPS) * 4


def test_roc_curves_use_the_counted_scores_of_scores_csv(reported):
    for key in ("gm", "sm"):
        run = reported[key]
        metrics = json.loads((run / "detect" / "metrics.json").read_text())
        table = load_scores(run / "detect" / "scores.csv")
        for row in metrics["results"]:
            clean, abnormal = table.clean_and_abnormal(
                row["source"], row["kind"], row["eps_index"], row["score"])
            assert len(clean) == row["n_clean"] and len(abnormal) == row["n_abnormal"]
            if len(clean) and len(abnormal):
                y = np.r_[np.zeros(len(clean)), np.ones(len(abnormal))]
                # scores.csv keeps 9 significant digits: rounding may tie a few pairs.
                assert roc_auc_score(y, np.r_[clean, abnormal]) == pytest.approx(row["auroc"], abs=1e-3)


def test_report_has_every_figure_and_the_pages_agree(reported):
    doc, out = reported["doc"], reported["out"]
    attack_id = doc["runs"][0]["attacks"][0]["attack_id"]
    names = [f["name"] for f in doc["figures"]]
    for name in ("training", "robust-accuracy", f"detection-{attack_id}", f"roc-{attack_id}",
                 f"hist-{attack_id}", "features-1", "features-2"):
        assert name in names

    # The Markdown page refers to PNG files beside it, by relative names.
    md = (out / "report.md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(refs) == sorted(f"{n}.png" for n in names)
    assert all((out / ref).is_file() for ref in refs)

    # The HTML page embeds the same PNG bytes, and fetches nothing.
    page = (out / "report.html").read_text()
    figures = re.findall(r'<figure id="([^"]+)"><img src="data:image/png;base64,([^"]+)"', page)
    assert [n for n, _ in figures] == names
    for name, data in figures:
        assert base64.b64decode(data) == (out / f"{name}.png").read_bytes()
    assert len(re.findall(r"<img\b", page)) == len(names)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?data:)""", page)
    assert "<script" not in page


# --------------------------------------------------------------------------- plots


def test_roc_and_histogram_panels_draw_exactly_the_stored_scores():
    from sklearn.metrics import roc_curve

    clean = np.array([0.1, 0.4, 0.35, 0.8, 0.2])
    ood = np.array([0.9, 0.5, 1.2])
    table = ScoreTable({("reference:split:test", None, "clean", "gm"): clean,
                        ("folder:x", None, "abnormal", "gm"): ood})
    y = np.r_[np.zeros(5), np.ones(3)]
    row = {"source": "folder:x", "kind": "ood", "epsilon": None, "score": "gm",
           "auroc": roc_auc_score(y, np.r_[clean, ood]), "clean_tpr": 0.8, "detection_rate": 2 / 3}
    run = {"label": "toy", "run_dir": "/toy", "attacks": [],
           "detection": {"scores": ["gm"], "primary_score": "gm", "thresholds": {"gm": {"value": 0.7}},
                         "sources": [{"name": "folder:x", "kind": "ood"}], "results": [row]}}
    [(key, label, columns)] = groups([run])
    assert key == "ood" and [c.source for c in columns] == ["folder:x"]
    with style():
        roc = roc_plot([run], {"/toy": table}, key, label, columns, None)
        hist = histogram_plot([run], {"/toy": table}, key, label, columns, bins=10)

    curve, point = roc.figure.axes[0].lines[:2]
    fpr, tpr, _ = roc_curve(y, np.r_[clean, ood])
    assert np.array_equal(curve.get_xdata(), fpr) and np.array_equal(curve.get_ydata(), tpr)
    assert f"AUROC {row['auroc']:.3f}" in curve.get_label()
    assert (point.get_xdata()[0], point.get_ydata()[0]) == pytest.approx((0.2, 2 / 3))
    assert roc.notes == []

    ax = hist.figure.axes[0]
    assert [ln.get_xdata()[0] for ln in ax.lines] == [0.7]  # the threshold
    bars = [p for p in ax.patches]
    assert len(bars) == 20  # 10 bins, clean and OOD
    for part in (bars[:10], bars[10:]):  # each histogram is a density: area 1
        assert sum(b.get_height() * b.get_width() for b in part) == pytest.approx(1.0)
    roc.close()
    hist.close()


def test_feature_space_draws_each_gaussian_at_one_and_two_sigma():
    rng = np.random.default_rng(0)
    mu = np.array([[0.0, 0.0], [3.0, 1.0]])
    y = np.repeat([0, 1], 20)
    x = mu[y] + rng.normal(size=(40, 2))

    def ellipses(covariance, log_var):
        sample = FeatureSample(x, y, y, mu, log_var, covariance, ["a", "b"], "test")
        with style():
            plot = feature_plot({"label": "toy"}, sample)
        found = sorted((tuple(np.round(p.center, 9)), round(p.width, 9), round(p.height, 9))
                       for p in plot.figure.axes[0].patches)
        plot.close()
        return found

    # Identity covariance: circles of radius 1 and 2 (diameters 2 and 4) around each mean.
    assert ellipses("identity", None) == [
        ((0.0, 0.0), 2.0, 2.0), ((0.0, 0.0), 4.0, 4.0), ((3.0, 1.0), 2.0, 2.0), ((3.0, 1.0), 4.0, 4.0)]
    # Isotropic: sigma = exp(log_var / 2), here 2 and 1.
    iso = ellipses("isotropic", np.log([[4.0], [1.0]]))
    assert iso == [
        ((0.0, 0.0), 4.0, 4.0), ((0.0, 0.0), 8.0, 8.0), ((3.0, 1.0), 2.0, 2.0), ((3.0, 1.0), 4.0, 4.0)]
    # Diagonal: one sigma per axis.
    diag = ellipses("diagonal", np.log([[4.0, 0.25], [1.0, 1.0]]))
    assert diag[:2] == [((0.0, 0.0), 4.0, 1.0), ((0.0, 0.0), 8.0, 2.0)]


def test_projection_maps_means_with_the_features_map():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 6))
    labels = np.zeros(60, int)
    sample = FeatureSample(x, labels, labels, x[:3].copy(), None, "identity", ["a"], "test")
    xy, mu, labels, used = project(sample, "auto")
    assert used == "pca" and "of variance" in labels[0]
    np.testing.assert_allclose(mu, xy[:3], atol=1e-9)
    # 2-D features are drawn as they are.
    flat = FeatureSample(x[:, :2], np.zeros(60, int), np.zeros(60, int), None, None, None, ["a"], "test")
    xy2, _, _, used2 = project(flat, "auto")
    assert used2 == "native" and np.array_equal(xy2, x[:, :2])


# --------------------------------------------------------------------------- missing parts, errors


def test_a_run_without_attack_or_detection_is_reported_with_what_is_missing(tmp_path, digits_gm_run):
    run = private_copy(digits_gm_run, tmp_path / "bare")
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", str(run), "--out", str(out), "--format", "html,json", "--json",
                              "--max-points", "200"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    stages = {m["stage"]: m["command"] for m in shown["missing"]}
    assert stages == {"attack": f"gmcli attack {run}",
                      "detect": f"gmcli detect {run} --threshold auto"}
    assert res.stderr.count("missing:") == 2 and "gmcli attack" in res.stderr
    page = (out / "report.html").read_text()
    assert "What is missing" in page and "gmcli detect" in page
    assert shown["figures"] == ["training", "features-1"]
    assert not (out / "report.md").exists()


def test_stale_detection_results_are_flagged(tmp_path, digits_gm_run):
    run = private_copy(digits_gm_run, tmp_path / "stale")
    (run / "detect").mkdir()
    (run / "detect" / "metrics.json").write_text(json.dumps(
        {"fingerprint": "0" * 64, "scores": ["gm"], "primary_score": "gm", "results": [], "thresholds": {}}))
    r = collect_run(run)
    assert any("not the current" in w and "gmcli detect" in w for w in r["warnings"])
    assert {m["stage"] for m in r["missing"]} == {"attack", "detect"}  # no set, no scores.csv


def test_runs_of_different_data_sets_are_refused(tmp_path, digits_gm_run, digits_softmax_run):
    from gmcli.checkpoint import load_checkpoint, save_checkpoint

    other = private_copy(digits_softmax_run, tmp_path / "other")
    model, meta, calib = load_checkpoint(other / "checkpoint.safetensors")
    kept = {k: meta[k] for k in ("name", "backbone", "class_names", "recipe", "epoch", "metrics")}
    save_checkpoint(other / "checkpoint.safetensors", model,
                    {**kept, "dataset": {**meta["dataset"], "name": "fashion-mnist"}}, calib)
    res = runner.invoke(app, ["report", str(digits_gm_run), str(other), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert f"{digits_gm_run} (digits)" in lines[0] and f"{other} (fashion-mnist)" in lines[0]
    assert not (tmp_path / "out" / "report.html").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/run"], "run or checkpoint '/nonexistent/run' does not exist"),
        (["{run}", "--projection", "umap"], "--projection: expected 'auto', 'pca' or 'tsne', got 'umap'"),
        (["{run}", "--format", "pdf"], "--format:"),
        (["{run}", "--max-points", "3"], "--max-points: Input should be greater than or equal to 50, got 3"),
        (["{run}", "--out", "{file}/sub"], "--out: output folder '{file}/sub' cannot be created"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(tmp_path, digits_gm_run, args, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fill = {"run": str(digits_gm_run), "file": str(blocker)}
    res = runner.invoke(app, ["report", *[a.format(**fill) for a in args]])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message.format(**fill) in lines[0], res.stderr
    assert "Traceback" not in res.output


def test_config_names_the_recipe_key_or_the_flag():
    with pytest.raises(GmcliError, match=r"recipe key report\.colours: unknown key; accepted keys: out, "):
        resolve_config({"colours": "tab10"})
    with pytest.raises(GmcliError, match=r"--score: unknown score 'gmm'"):
        resolve_config({}, {"scores": ["gmm"]})
    assert resolve_config({"max_points": 100}, {"max_points": None}).max_points == 100
    assert ReportConfig(formats="md,html").formats == ["md", "html"]


def test_latest_run_by_default(tmp_path, monkeypatch, digits_gm_run):
    from gmcli.runs import mark_latest

    run = private_copy(digits_gm_run, tmp_path / "latest")
    monkeypatch.setenv("GMCLI_RUNS", str(tmp_path / "runs"))
    mark_latest(run)
    res = runner.invoke(app, ["report", "--format", "json", "--max-points", "100"])
    assert res.exit_code == 0, res.output
    doc = json.loads((run / "report" / "report.json").read_text())
    assert [r["run_dir"] for r in doc["runs"]] == [str(run.resolve())]
