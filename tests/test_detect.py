"""``gmcli detect`` end to end on the trained digits runs: figures against oracles
recomputed from the written files, the threshold rules, and every user error."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from gmcli.attacks.advset import AdvSetWriter, load_advset
from gmcli.checkpoint import load_checkpoint, save_checkpoint
from gmcli.cli.app import app
from gmcli.data import load_dataset
from gmcli.detectors.runner import run_detection
from gmcli.errors import GmcliError

EPS = [0.05, 0.3]
N_ADV = 90


@pytest.fixture(autouse=True)
def _gmcli_logs_reach_caplog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's setup_logging stops propagation at the "gmcli" logger; undo it here."""
    monkeypatch.setattr(logging.getLogger("gmcli"), "propagate", True)


def write_advset(run: Path, name: str, *, n: int = N_ADV, eps: list[float] = EPS,
                 split: str = "test", fingerprint: str | None = None) -> Path:
    """An FGSM set in the layout of gmcli attack, written with its writer."""
    model, meta, _ = load_checkpoint(run / "checkpoint.safetensors")
    part = load_dataset(**meta["dataset"]).split(split).subset(n)
    x, y = part.float_x(), part.y
    x.requires_grad_(True)
    grad = torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]
    x = x.detach()
    with torch.no_grad():
        batch = {"clean": x.numpy(), "labels": y.numpy(),
                 "clean_pred": model(x).argmax(1).numpy()}
        for i, e in enumerate(eps):
            adv = (x + e * grad.sign()).clamp(0, 1)
            pred = model(adv).argmax(1)
            batch.update({f"adv_{i}": adv.numpy(), f"pred_{i}": pred.numpy(),
                          f"success_{i}": (pred != y).numpy(),
                          f"norm_{i}": (adv - x).flatten(1).abs().amax(1).numpy()})
    manifest = {"method": "fgsm", "norm": "linf", "split": split,
                "checkpoint": {"fingerprint": fingerprint or meta["fingerprint"]}}
    writer = AdvSetWriter(run / "attacks" / name, n=len(y), input_shape=x.shape[1:],
                          epsilons=eps, manifest=manifest)
    writer.write(batch)
    return writer.finish()


def _private_copy(src: Path, dst: Path) -> Path:
    """The checkpoint and recipe of a shared run, so that tests never write into it."""
    dst.mkdir(parents=True)
    for name in ("checkpoint.safetensors", "recipe.yaml"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def gm_template(digits_gm_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _private_copy(digits_gm_run, tmp_path_factory.mktemp("detect") / "gm")
    write_advset(run, "fgsm-test")
    return run


@pytest.fixture
def gm_run(gm_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the GM run with one adversarial set, per test."""
    return Path(shutil.copytree(gm_template, tmp_path / "gm"))


@pytest.fixture
def softmax_run(digits_softmax_run: Path, tmp_path: Path) -> Path:
    return _private_copy(digits_softmax_run, tmp_path / "softmax")


def read_csv(run: Path) -> list[dict[str, str]]:
    with open(run / "detect" / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def values(rows: list[dict[str, str]], **match: str) -> np.ndarray:
    return np.array([float(r["value"]) for r in rows
                     if all(r[k] == v for k, v in match.items())])


def gm_scores_numpy(run: Path, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(min_k 1/2 ||f(x) - mu_k||^2, prediction) with numpy, for an identity-covariance run."""
    model, _, _ = load_checkpoint(run / "checkpoint.safetensors")
    assert model.head.covariance == "identity"
    with torch.no_grad():
        f = model.features(x).double().numpy()
    mu = model.head.mu.detach().double().numpy()
    d = 0.5 * ((f[:, None, :] - mu[None]) ** 2).sum(-1)
    return d.min(1), d.argmin(1)


# -- the library call ------------------------------------------------------------------


def test_figures_match_oracles_on_the_written_scores(gm_run: Path) -> None:
    result = run_detection(gm_run, overrides={"inputs": ["adv"]})
    assert result.scores[0] == "gm" and result.head == "gm"
    doc = json.loads((gm_run / "detect" / "metrics.json").read_text())
    rows = read_csv(gm_run)
    advset = load_advset(gm_run / "attacks" / "fgsm-test")
    correct = advset.clean_pred == advset.labels

    # The threshold equals the independent quantile of the validation scores.
    _, meta, _ = load_checkpoint(gm_run / "checkpoint.safetensors")
    val = load_dataset(**meta["dataset"]).split("val")
    val_scores, val_pred = gm_scores_numpy(gm_run, val.float_x())
    kept = np.sort(val_scores[val_pred == val.y.numpy()])
    k = int(np.ceil(0.95 * len(kept)))
    t = json.loads((gm_run / "detect" / "threshold.json").read_text())["thresholds"]["gm"]
    assert t["value"] == pytest.approx(kept[k - 1], rel=1e-5)
    assert np.mean(kept <= t["value"] * (1 + 1e-6)) >= 0.95  # float32 features vs float64
    assert t["calibration"]["split"] == "val" and t["calibration"]["n"] == len(kept)
    assert t["fingerprint"] == meta["fingerprint"] and t["rule"] == "auto"

    # The clean scores in the CSV are the GM score of the clean inputs.
    clean_np, _ = gm_scores_numpy(gm_run, torch.from_numpy(np.array(advset.clean)))
    clean_csv = values(rows, source="adv:fgsm-test", role="clean", score="gm")
    np.testing.assert_allclose(clean_csv, clean_np, rtol=1e-5)

    for i, eps in enumerate(EPS):
        row = next(r for r in doc["results"] if r["score"] == "gm" and r["eps_index"] == i)
        success = advset.success(i)
        counted = correct & success
        assert row["epsilon"] == eps
        assert row["n_abnormal"] == counted.sum() and row["n_failed"] == (correct & ~success).sum()
        assert row["n_clean"] == correct.sum() and row["n_total"] == N_ADV

        adv = values(rows, source="adv:fgsm-test", role="adversarial", score="gm",
                     eps_index=str(i))
        if counted.sum() == 0:
            assert row["auroc"] is None
            continue
        c, a = clean_csv[correct], adv[counted]
        y = np.r_[np.zeros(len(c)), np.ones(len(a))]
        assert row["auroc"] == pytest.approx(roc_auc_score(y, np.r_[c, a]), abs=1e-6)
        tc = np.sort(c)[int(np.ceil(0.95 * len(c))) - 1]
        assert row["fpr_at_95_tpr_clean_accepted"] == pytest.approx(np.mean(a <= tc), abs=1e-9)
        assert row["clean_tpr"] == pytest.approx(np.mean(c <= t["value"]), abs=1e-6)
        assert row["detection_rate"] == pytest.approx(np.mean(a > t["value"]), abs=1e-6)
        broken = (advset.pred(i) != advset.labels) & (adv <= t["value"])
        assert row["robust_error"] == pytest.approx(broken.mean(), abs=1e-9)

    # Broken by at least one budget: the union over the set's budgets.
    adv_all = [values(rows, source="adv:fgsm-test", role="adversarial", score="gm",
                      eps_index=str(i)) for i in range(len(EPS))]
    union = np.logical_or.reduce([(advset.pred(i) != advset.labels) & (adv_all[i] <= t["value"])
                                  for i in range(len(EPS))])
    assert doc["summary"]["gm"]["robust_error_any_attack"] == pytest.approx(union.mean())

    # Flags in the CSV follow s > t; the worst robust error is the largest one.
    for r in rows[:50]:
        assert int(r["flagged"]) == int(float(r["value"]) > float(r["threshold"]))
    worst = max(r["robust_error"] for r in doc["results"] if r["score"] == "gm")
    assert doc["summary"]["gm"]["worst_robust_error"] == pytest.approx(worst)
    assert set(r["score"] for r in doc["results"]) == set(result.scores)


def test_threshold_never_comes_from_the_judged_inputs(gm_run: Path, tmp_path: Path) -> None:
    first = run_detection(gm_run, overrides={"inputs": ["adv"]})
    write_advset(gm_run, "fgsm-other", n=40, eps=[0.2])
    second = run_detection(gm_run, overrides={"inputs": ["adv:fgsm-other", "split:test"],
                                              "recalibrate": True})
    for name in first.scores:
        assert first.thresholds[name].value == second.thresholds[name].value

    # Inputs from the calibration split are refused.
    with pytest.raises(GmcliError, match="split:val.*calibrated"):
        run_detection(gm_run, overrides={"inputs": ["split:val"]})
    write_advset(gm_run, "fgsm-val", n=20, eps=[0.2], split="val")
    with pytest.raises(GmcliError, match="adv:fgsm-val.*val split"):
        run_detection(gm_run, overrides={"inputs": ["adv:fgsm-val"]})


def test_a_stored_threshold_is_applied_unchanged(gm_run: Path) -> None:
    run_detection(gm_run, overrides={"inputs": ["adv"], "threshold": 1.234})
    stored = json.loads((gm_run / "detect" / "threshold.json").read_text())["thresholds"]
    assert stored["gm"]["value"] == 1.234 and stored["gm"]["rule"] == "manual"

    again = run_detection(gm_run, overrides={"inputs": ["split:test"], "tpr": 0.5})
    assert again.thresholds["gm"].value == 1.234
    assert all(float(r["threshold"]) == 1.234 for r in read_csv(gm_run) if r["score"] == "gm")
    kd = again.thresholds["kd"].value
    stored_call = run_detection(gm_run, overrides={"inputs": ["split:test"],
                                                   "threshold": "stored"})
    assert stored_call.thresholds["gm"].value == 1.234 and stored_call.thresholds["kd"].value == kd

    recal = run_detection(gm_run, overrides={"inputs": ["split:test"], "recalibrate": True})
    assert recal.thresholds["gm"].rule == "auto" and recal.thresholds["gm"].value != 1.234


def test_results_of_other_sources_are_kept(gm_run: Path, tmp_path: Path) -> None:
    run_detection(gm_run, overrides={"inputs": ["adv"]})
    run_detection(gm_run, overrides={"inputs": ["split:test"]})
    doc = json.loads((gm_run / "detect" / "metrics.json").read_text())
    assert {r["source"] for r in doc["results"]} == {"adv:fgsm-test", "split:test"}
    assert {r["source"] for r in read_csv(gm_run)} == {"adv:fgsm-test", "split:test"}
    # A new threshold makes earlier results stale: they are dropped.
    run_detection(gm_run, overrides={"inputs": ["split:test"], "threshold": 3.0})
    doc = json.loads((gm_run / "detect" / "metrics.json").read_text())
    assert {r["source"] for r in doc["results"]} == {"split:test"}


def _write_idx(folder: Path, images: np.ndarray) -> None:
    folder.mkdir()
    n, h, w = images.shape
    header = bytes([0, 0, 8, 3]) + np.array([n, h, w], dtype=">u4").tobytes()
    (folder / "t10k-images-idx3-ubyte").write_bytes(header + images.astype(np.uint8).tobytes())
    labels = bytes([0, 0, 8, 1]) + np.array([n], dtype=">u4").tobytes()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels + np.zeros(n, np.uint8).tobytes())


def test_ood_inputs_are_converted_and_measured_against_the_test_split(
    gm_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Noise and solid blocks of 28 x 28: nothing like an 8 x 8 digit.
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.integers(0, 256, (40, 28, 28)),
                             np.full((20, 28, 28), 255)])
    _write_idx(tmp_path / "noise", images)
    result = run_detection(gm_run, overrides={"inputs": [f"idx:{tmp_path / 'noise'}"]})
    assert "converted images of shape (1, 28, 28) to the input shape (1, 8, 8)" in caplog.text

    row = next(r for r in result.results if r["score"] == "gm")
    assert row["kind"] == "ood" and row["n_abnormal"] == 60
    rows = read_csv(gm_run)
    ood = values(rows, source=f"idx:{tmp_path / 'noise'}", score="gm")
    ref = values(rows, source="reference:split:test", score="gm")
    y = np.r_[np.zeros(len(ref)), np.ones(len(ood))]
    assert row["auroc"] == pytest.approx(roc_auc_score(y, np.r_[ref, ood]), abs=1e-6)
    t = result.thresholds["gm"].value
    assert row["flagged_fraction"] == pytest.approx(np.mean(ood > t)) and row["flagged_fraction"] > 0.5


def test_dataset_inputs(gm_run: Path) -> None:
    # The run's own data set is in-distribution.
    result = run_detection(gm_run, overrides={"inputs": ["dataset:digits"], "scores": ["gm"]})
    row = result.results[0]
    assert (row["source"], row["kind"], row["n_inputs"]) == ("dataset:digits:test",
                                                             "in-distribution", 360)
    with pytest.raises(GmcliError, match="unknown data set 'nope'; accepted: digits"):
        run_detection(gm_run, overrides={"inputs": ["dataset:nope"]})
    with pytest.raises(GmcliError, match="sets of this run: fgsm-test"):
        run_detection(gm_run, overrides={"inputs": ["adv:nope"]})


@pytest.mark.slow
def test_another_data_set_is_ood(gm_run: Path, fashion_root: Path) -> None:
    # Fashion-MNIST (28 x 28) judged by the digits model (8 x 8): converted, all abnormal.
    result = run_detection(gm_run, overrides={"inputs": ["dataset:fashion-mnist"],
                                              "scores": ["gm"]})
    row = result.results[0]
    assert (row["source"], row["kind"], row["n_abnormal"]) == ("dataset:fashion-mnist:test",
                                                               "ood", 10000)
    assert row["auroc"] > 0.5 and row["flagged_fraction"] > 0.5


def test_softmax_run_gets_the_baselines(softmax_run: Path) -> None:
    write_advset(softmax_run, "fgsm-test", n=40)
    result = run_detection(softmax_run, overrides={"inputs": ["adv"]})
    assert result.scores == ["mahalanobis", "msp", "energy", "kd"]
    assert {r["score"] for r in result.results} == set(result.scores)
    with pytest.raises(GmcliError, match="'gm' needs a GM checkpoint"):
        run_detection(softmax_run, overrides={"scores": ["mahalanobis", "gm"]})


def test_statistics_are_computed_when_the_checkpoint_lacks_them(
    gm_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, meta, calib = load_checkpoint(gm_run / "checkpoint.safetensors")
    assert {"class_means", "tied_cov", "features", "labels"} <= set(calib)
    bare = tmp_path / "bare"
    bare.mkdir()
    save_checkpoint(bare / "checkpoint.safetensors", model, meta)  # no calib.*
    opts = {"inputs": ["split:test"], "scores": ["mahalanobis"]}
    with caplog.at_level("INFO", logger="gmcli.detectors.runner"):
        computed = run_detection(bare, overrides=opts)
    assert "computing them from" in caplog.text
    stored = run_detection(gm_run, overrides=opts)
    assert computed.thresholds["mahalanobis"].value == pytest.approx(
        stored.thresholds["mahalanobis"].value, rel=1e-3)


# -- the command line ------------------------------------------------------------------

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, ["detect", *args])


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_cli_json_and_fail_under(gm_run: Path) -> None:
    res = cli(str(gm_run), "--json", "--score", "gm", "--score", "msp")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["primary_score"] == "gm" and out["scores"] == ["gm", "msp"]
    assert out["failures"] == [] and len(out["results"]) == 2 * len(EPS)

    res = cli(str(gm_run), "--fail-under", "auroc=1.01", "--fail-under", "msp.clean_tpr=0")
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    assert "auroc of score gm on adv:fgsm-test eps 0.05 is" in lines[0] and "under 1.01" in lines[0]

    assert cli(str(gm_run), "--fail-under", "auroc=0", "--json").exit_code == 0
    res = cli(str(gm_run), "--fail-under", "auroc")
    assert res.exit_code == 2 and "expected METRIC=VALUE" in res.stderr
    res = cli(str(gm_run), "--fail-under", "aurok=0.9")
    assert res.exit_code == 2 and "unknown figure 'aurok'" in res.stderr


def test_cli_refuses_an_adversarial_set_of_another_checkpoint(gm_run: Path) -> None:
    write_advset(gm_run, "foreign", n=10, eps=[0.1], fingerprint="ab" * 32)
    res = cli(str(gm_run), "--input", "adv:foreign")
    assert res.exit_code == 2
    _, meta, _ = load_checkpoint(gm_run / "checkpoint.safetensors")
    message = one_line(res.stderr)
    assert "abababababab" in message and meta["fingerprint"][:12] in message
    assert "Traceback" not in res.output


def _image_folder(folder: Path) -> Path:
    from PIL import Image

    (folder / "shapes").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16), 60 * i, np.uint8)).save(folder / "shapes" / f"ok{i}.png")
    (folder / "shapes" / "broken.png").write_bytes(b"not an image")
    return folder


def test_cli_image_folder_with_an_unreadable_file(gm_run: Path, tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "images")
    res = cli(str(gm_run), "--input", f"folder:{folder}", "--json")
    assert res.exit_code == 0, res.output
    assert "broken.png" in one_line(res.stderr)
    out = json.loads(res.stdout)
    assert out["sources"][0]["n"] == 3 and out["sources"][0]["skipped"] == ["shapes/broken.png"]

    res = cli(str(gm_run), "--input", f"folder:{folder}", "--on-error", "fail")
    assert res.exit_code == 2 and "broken.png" in one_line(res.stderr)
    res = cli(str(gm_run), "--input", f"folder:{folder}", "--on-error", "maybe")
    assert res.exit_code == 2 and "--on-error" in res.stderr


def test_cli_empty_input_set(gm_run: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = cli(str(gm_run), "--input", f"folder:{tmp_path / 'empty'}", "--json",
              "--score", "gm")
    assert res.exit_code == 0, res.output
    assert "holds no image files" in one_line(res.stderr)
    row = json.loads(res.stdout)["results"][0]
    assert row["n_abnormal"] == 0 and row["auroc"] is None and row["flagged_fraction"] is None
    # An undefined figure fails a bar.
    res = cli(str(gm_run), "--input", f"folder:{tmp_path / 'empty'}", "--fail-under", "auroc=0.5")
    assert res.exit_code == 1 and "undefined" in res.stderr


@pytest.mark.parametrize("tpr", ["0", "1", "1.5", "-0.2"])
def test_cli_tpr_outside_0_1(gm_run: Path, tpr: str) -> None:
    res = cli(str(gm_run), "--tpr", tpr)
    assert res.exit_code == 2
    assert "--tpr: expected a number strictly between 0 and 1" in res.stderr


def test_cli_unknown_score_and_gm_on_softmax(gm_run: Path, softmax_run: Path) -> None:
    res = cli(str(gm_run), "--score", "likelihood")
    assert res.exit_code == 2
    assert "unknown score 'likelihood'; known: gm, gm-mixture, msp, energy, mahalanobis, kd" \
        in one_line(res.stderr)
    res = cli(str(softmax_run), "--score", "gm", "--input", "split:test")
    assert res.exit_code == 2 and "needs a GM checkpoint" in res.stderr


def test_cli_bad_threshold_and_input(gm_run: Path) -> None:
    res = cli(str(gm_run), "--threshold", "high")
    assert res.exit_code == 2 and "--threshold: expected 'auto', 'stored' or a number" in res.stderr
    res = cli(str(gm_run), "--threshold", "stored")
    assert res.exit_code == 2 and "no stored threshold for score 'gm'" in one_line(res.stderr)
    res = cli(str(gm_run), "--input", "nowhere:at-all")
    assert res.exit_code == 2 and "accepted: adv, adv:<id|folder>" in one_line(res.stderr)


def test_cli_run_without_validation_data(gm_run: Path, tmp_path: Path) -> None:
    model, meta, calib = load_checkpoint(gm_run / "checkpoint.safetensors")
    meta["dataset"] = {**meta["dataset"], "val_fraction": 0.0}
    run = tmp_path / "noval"
    run.mkdir()
    save_checkpoint(run / "checkpoint.safetensors", model, meta, calib)
    res = cli(str(run), "--input", "split:test")
    assert res.exit_code == 2 and "has no validation data" in one_line(res.stderr)
    # A threshold given by value needs no calibration for the first score.
    res = cli(str(run), "--input", "split:test", "--threshold", "2.5", "--score", "gm")
    assert res.exit_code == 0, res.output
