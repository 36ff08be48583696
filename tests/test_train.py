"""Training: accuracy on digits, resume, Ctrl-C, NaN, run directories, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from gmcli.checkpoint import load_checkpoint, read_checkpoint
from gmcli.cli.app import app
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMLoss, LossParts
from gmcli.recipe import load_recipe
from gmcli.training.observer import TrainObserver
from gmcli.training.trainer import Trainer, evaluate

from conftest import RECIPES

runner = CliRunner()


def small_recipe(*overrides: str, name: str = "digits-gm"):  # noqa: ANN201
    return load_recipe(RECIPES / f"{name}.yaml", ["train.epochs=3", "loss.warmup_epochs=2", *overrides])


def test_digits_gm_and_softmax_twin_accuracy(digits_gm_run: Path, digits_softmax_run: Path) -> None:
    gm = json.loads((digits_gm_run / "train.json").read_text())
    sm = json.loads((digits_softmax_run / "train.json").read_text())
    assert gm["test_acc"] >= 0.97, gm
    assert abs(gm["test_acc"] - sm["test_acc"]) <= 0.02, (gm["test_acc"], sm["test_acc"])
    lines = (digits_gm_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == list(range(1, gm["epochs"] + 1))


def test_reported_accuracy_matches_a_recount(digits_gm_run: Path) -> None:
    from gmcli.data import load_dataset

    model, meta, calib = load_checkpoint(digits_gm_run / "checkpoint.safetensors")
    data = load_dataset(**meta["dataset"])
    x, y = data.test.float_x(), data.test.y
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx(meta["metrics"]["test_acc"], abs=1e-9)
    assert evaluate(model, data.test, 100, torch.device("cpu"))["acc"] == pytest.approx(acc)
    # the calibration statistics are those of the training features
    with torch.no_grad():
        feats = model.features(data.train.float_x()).double()
    means = torch.stack([feats[data.train.y == k].mean(0) for k in range(10)]).float()
    torch.testing.assert_close(calib["class_means"], means, atol=1e-4, rtol=1e-4)
    assert calib["tied_cov"].shape == (model.head.feat_dim,) * 2


class StopAt(TrainObserver):
    """Raises KeyboardInterrupt after a given step of a given epoch, as Ctrl-C would."""

    def __init__(self, epoch: int, step: int) -> None:
        self.target, self.epoch = (epoch, step), -1

    def epoch_start(self, epoch: int, epochs: int, steps: int, first_step: int) -> None:
        self.epoch = epoch

    def step(self, step: int, loss: float, acc: float) -> None:
        if (self.epoch, step) == self.target:
            raise KeyboardInterrupt


@pytest.mark.parametrize("augment", ["[]", "[crop]"])
def test_resume_ends_where_an_uninterrupted_run_would(tmp_path: Path, augment: str) -> None:
    recipe = small_recipe(f"data.augment={augment}")
    Trainer(recipe, run_dir=tmp_path / "full", device="cpu").run()
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe, run_dir=tmp_path / "cut", device="cpu", observer=StopAt(1, 5)).run()
    assert json.loads((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
    Trainer(recipe, run_dir=tmp_path / "cut", device="cpu", resume=True).run()
    for name in ("last.safetensors", "checkpoint.safetensors"):
        full, cut = load_file(tmp_path / "full" / name), load_file(tmp_path / "cut" / name)
        assert full.keys() == cut.keys()
        for k in full:
            assert torch.equal(full[k], cut[k]), (name, k)
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]


def test_same_seed_same_weights(tmp_path: Path) -> None:
    recipe = small_recipe("train.epochs=1")
    a = Trainer(recipe, run_dir=tmp_path / "a", device="cpu").run()
    b = Trainer(recipe, run_dir=tmp_path / "b", device="cpu").run()
    assert a["fingerprint"] == b["fingerprint"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = small_recipe()
    calls = {"n": 0}
    real = GMLoss.components

    def poisoned(self, x, y):  # noqa: ANN001, ANN202
        calls["n"] += 1
        parts = real(self, x, y)
        if calls["n"] == 21 + 3:  # digits: 21 steps an epoch at batch 64; epoch 2, step 3
            return LossParts(parts.loss * float("nan"), parts.cls, parts.lkd, parts.logits)
        return parts

    monkeypatch.setattr(GMLoss, "components", poisoned)
    run = tmp_path / "run"
    with pytest.raises(GmcliError, match=r"loss became nan at epoch 2, step 3.*last good checkpoint"):
        Trainer(recipe, run_dir=run, device="cpu").run()
    meta = read_checkpoint(run / "checkpoint.safetensors")[1]
    assert meta["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_run_directory_is_never_clobbered(tmp_path: Path) -> None:
    recipe = small_recipe("train.epochs=1")
    run = tmp_path / "run"
    Trainer(recipe, run_dir=run, device="cpu").run()
    before = (run / "checkpoint.safetensors").read_bytes()
    with pytest.raises(GmcliError, match="already holds a run; pass --resume.*--overwrite"):
        Trainer(small_recipe("train.epochs=1", "seed=1"), run_dir=run, device="cpu").run()
    assert (run / "checkpoint.safetensors").read_bytes() == before
    with pytest.raises(GmcliError, match="recipe differs .* at seed"):
        Trainer(small_recipe("train.epochs=1", "seed=1"), run_dir=run, device="cpu", resume=True).run()
    Trainer(small_recipe("train.epochs=1", "seed=1"), run_dir=run, device="cpu", overwrite=True).run()
    assert (run / "checkpoint.safetensors").read_bytes() != before


def test_crafted_training_state_is_refused(tmp_path: Path) -> None:
    from test_checkpoint import _RunsCode

    recipe = small_recipe("train.epochs=1")
    run = tmp_path / "run"
    Trainer(recipe, run_dir=run, device="cpu").run()
    marker = tmp_path / "pwned"
    torch.save({"version": 1, "model": _RunsCode(marker)}, run / "state.pt")
    with pytest.raises(GmcliError, match="cannot be read safely"):
        Trainer(recipe, run_dir=run, device="cpu", resume=True).run()
    assert not marker.exists()


# ---- the command line ------------------------------------------------------------


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args))


def test_cli_train_and_info(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = invoke("train", str(RECIPES / "digits-softmax.yaml"), "--run-dir", str(run), "--set",
                 "train.epochs=2", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["head"] == "softmax" and out["epochs"] == 2 and 0 < out["test_acc"] <= 1
    res = invoke("info", str(run), "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["fingerprint"] == out["fingerprint"] and "calib.tied_cov" in info["calibration"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.yaml"], "recipe 'missing.yaml' does not exist"),
        (["train", "{recipes}/digits-gm.yaml", "--set", "train.lrr=1"], "'train.lrr' is not known"),
        (["train", "{recipes}/digits-gm.yaml", "--set", "data.name=imagenet"], "unknown data set 'imagenet'"),
        (["train", "{recipes}/digits-gm.yaml", "--set", "model.backbone=vgg"], "unknown backbone 'vgg'"),
        (["train", "{recipes}/digits-gm.yaml", "--set", "train.optimizer=lbfgs"], "'train.optimizer'"),
        (["train", "{recipes}/digits-gm.yaml", "--device", "tpu"], "device 'tpu' is not known"),
        (["train", "{recipes}/digits-gm.yaml", "--set", "data.name=mnist"], "mnist"),
        (["info", "{tmp}/garbage.safetensors"], "not a readable safetensors file"),
        (["info", "{tmp}/nothing"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 100)
    args = [a.format(recipes=RECIPES, tmp=tmp_path) for a in args]
    res = invoke(*args, "--run-dir", str(tmp_path / "run")) if args[0] == "train" else invoke(*args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_cli_refuses_an_existing_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", str(RECIPES / "digits-gm.yaml"), "--run-dir", str(run), "--set", "train.epochs=1", "-q"]
    assert invoke(*args).exit_code == 0
    res = invoke(*args)
    assert res.exit_code == 2 and "already holds a run" in res.output
    assert invoke(*args, "--overwrite").exit_code == 0


def test_cuda_without_a_device_is_refused(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = invoke("train", str(RECIPES / "digits-gm.yaml"), "--run-dir", str(tmp_path / "r"), "--device", "cuda")
    assert res.exit_code == 2 and "no CUDA device" in res.output
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_latest_run_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gmcli.runs import latest_run

    monkeypatch.setenv("GMCLI_RUNS", str(tmp_path / "runs"))
    recipe = small_recipe("train.epochs=1")
    Trainer(recipe, device="cpu").run()
    assert latest_run() == (tmp_path / "runs" / "digits-gm").resolve()
    assert os.path.exists(tmp_path / "runs" / ".latest")
