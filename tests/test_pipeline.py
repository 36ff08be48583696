"""``gmcli run``: the plan a recipe makes, the staleness rule on a real run, and the smoke
pipeline end to end."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gmcli.cli.app import app
from gmcli.errors import GmcliError
from gmcli.pipeline import SMOKE, Pipeline, Stamps, load_plan, run_pipeline

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "digits-gm.yaml"
runner = CliRunner()


def write_recipe(path: Path, base: dict, **sections: dict) -> Path:
    path.write_text(yaml.safe_dump({**base, **sections}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the plan


def test_the_recipe_sections_decide_the_stages(tmp_path):
    base = {k: v for k, v in yaml.safe_load(RECIPE.read_text()).items() if k not in ("attack", "detect", "report")}
    plain = load_plan(write_recipe(tmp_path / "plain.yaml", base))
    assert plain.stages == ["train", "report"]
    assert plain.run_dir.name == "digits-gm"

    full = load_plan(
        write_recipe(tmp_path / "full.yaml", base, attack={"method": "fgsm", "eps": [0.3, 0.1]},
                     detect={"tpr": 0.9}, report={"projection": "pca"}),
        ["attack.limit=32", "report.max_points=300"],
    )
    assert full.stages == ["train", "attack", "detect", "report"]
    assert (full.attack.method, full.attack.eps, full.attack.limit) == ("fgsm", [0.1, 0.3], 32)
    assert full.detect.tpr == 0.9
    assert (full.report.projection, full.report.max_points) == ("pca", 300)

    only = load_plan(write_recipe(tmp_path / "only.yaml", base), stages=["train", "attack"])
    assert only.stages == ["train", "attack"] and only.attack.method == "pgd"


def test_smoke_shrinks_every_stage_into_its_own_run_dir(tmp_path):
    base = yaml.safe_load(RECIPE.read_text())
    plan = load_plan(write_recipe(tmp_path / "r.yaml", base, attack={"method": "pgd", "limit": 1000}),
                     smoke=True)
    assert plan.stages == ["train", "attack", "detect", "report"]
    assert plan.run_dir.name == "digits-gm-smoke"
    assert plan.recipe.train.epochs == SMOKE["epochs"] == 1
    assert plan.recipe.data.limit_train == SMOKE["limit_train"]
    assert (plan.attack.limit, plan.attack.steps) == (SMOKE["attack_limit"], SMOKE["attack_steps"])
    assert plan.report.max_points == SMOKE["max_points"]


@pytest.mark.parametrize(
    ("sections", "overrides", "message"),
    [
        ({"attack": {"method": "pgd", "epz": 0.1}}, [], r"recipe key '?attack\.epz'?"),
        ({"detect": {"tpr": 2}}, [], r"recipe key '?detect\.tpr'?"),
        ({"report": {"dpi": 10}}, [], r"recipe key '?report\.dpi'?"),
        ({"attack": [0.1]}, [], r"recipe key '?attack'?"),
        ({}, ["train.epochs=0"], r"recipe key 'train\.epochs'"),
        ({}, ["attack.eps=[2]"], r"recipe key '?attack\.eps'?"),
    ],
)
def test_bad_sections_name_their_key(tmp_path, sections, overrides, message):
    # The recipe schema or the stage's own configuration names the key (both are one line).
    base = yaml.safe_load(RECIPE.read_text())
    with pytest.raises(GmcliError, match=message) as err:
        load_plan(write_recipe(tmp_path / "r.yaml", base, **sections), overrides)
    assert "\n" not in str(err.value)


def test_unknown_stage_and_missing_recipe(tmp_path):
    res = runner.invoke(app, ["run", str(RECIPE), "--stages", "train,plot"])
    assert res.exit_code == 2
    assert "--stages: unknown stage 'plot'; accepted: train, attack, detect, report" in res.stderr
    res = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_stamps_compare_inputs_and_output_contents(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("a")
    stamps = Stamps(tmp_path)
    assert stamps.current("attack", "h1") == (False, "no record of an earlier run")
    stamps.record("attack", "h1", [out], 1.0)
    stamps.save()
    again = Stamps(tmp_path)
    assert again.current("attack", "h1") == (True, "outputs current")
    assert again.current("attack", "h2") == (False, "its inputs changed")
    out.write_text("b")
    assert again.current("attack", "h1") == (False, f"{out} changed since")
    out.unlink()
    assert again.current("attack", "h1") == (False, f"{out} is missing")


# --------------------------------------------------------------------------- on a real run


def test_current_stages_are_skipped_and_changed_ones_rerun(tmp_path, monkeypatch, digits_gm_run):
    monkeypatch.setenv("GMCLI_RUNS", str(tmp_path / "runs"))
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.safetensors", "recipe.yaml", "metrics.jsonl", "train.json"):
        shutil.copy2(digits_gm_run / name, run / name)
    # The recipe the run was trained with, and the later stages on a small budget.
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe = write_recipe(tmp_path / "r.yaml", saved,
                          attack={"method": "fgsm", "eps": [0.1, 0.3], "limit": 40},
                          detect={}, report={"formats": ["json"], "max_points": 100})

    def statuses(result):
        return {s.name: s.status for s in result.stages}

    # The training, and an attack made by hand with the recipe's settings, are recognised
    # from their own files; detection and the report run.
    from gmcli.attacks import run_attack

    plan = load_plan(recipe, run_dir=run)
    made = run_attack(run, config=plan.attack, device="cpu")
    first = run_pipeline(plan, device="cpu")
    assert statuses(first) == {"train": "skipped", "attack": "skipped", "detect": "ran", "report": "ran"}
    assert first.stage("train").reason == "trained earlier with the same recipe"
    assert first.stage("attack").reason == f"set {made.attack_id} was made earlier from this checkpoint"
    attack_dirs = list((run / "attacks").iterdir())
    assert len(attack_dirs) == 1 and (run / "detect" / "metrics.json").is_file()
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["runs"][0]["attacks"][0]["attack_id"] == attack_dirs[0].name

    second = run_pipeline(load_plan(recipe, run_dir=run), device="cpu")
    assert set(statuses(second).values()) == {"skipped"}

    # Another detection setting: detect and the report run again, the attack does not.
    third = run_pipeline(load_plan(recipe, ["detect.tpr=0.9"], run_dir=run), device="cpu")
    assert statuses(third) == {"train": "skipped", "attack": "skipped", "detect": "ran", "report": "ran"}
    threshold = json.loads((run / "detect" / "metrics.json").read_text())["thresholds"]["gm"]
    assert threshold["tpr"] == 0.9

    # An output replaced by hand is not current any more.
    (run / "report" / "report.json").write_text("{}")
    fourth = run_pipeline(load_plan(recipe, ["detect.tpr=0.9"], run_dir=run), device="cpu")
    assert statuses(fourth)["report"] == "ran" and statuses(fourth)["detect"] == "skipped"
    assert "changed since" in fourth.stage("report").reason
    forced = Pipeline(load_plan(recipe, run_dir=run), force=True, device="cpu")
    assert forced._decide("attack", "x") == (True, "--force")

    # A bar that cannot be reached fails the build with exit code 1, after every file is written.
    res = runner.invoke(app, ["run", str(recipe), "--run-dir", str(run), "--device", "cpu", "--json", "-q",
                              "--set", "detect.tpr=0.9", "--set", "detect.fail_under={auroc: 1.01}"])
    assert res.exit_code == 1, res.output
    assert "detect.fail_under: auroc of score gm on adv:" in res.stderr
    shown = json.loads(res.stdout)
    assert [s["status"] for s in shown["stages"]] == ["skipped", "skipped", "ran", "ran"]
    assert shown["failures"] and all("under 1.01" in f for f in shown["failures"])


# --------------------------------------------------------------------------- smoke, end to end


@pytest.mark.slow
def test_smoke_pipeline_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("GMCLI_RUNS", str(tmp_path / "runs"))
    tic = time.perf_counter()
    res = runner.invoke(app, ["run", str(RECIPE), "--smoke", "--json", "-q", "--device", "cpu"])
    wall = time.perf_counter() - tic
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert [(s["name"], s["status"]) for s in shown["stages"]] == [
        ("train", "ran"), ("attack", "ran"), ("detect", "ran"), ("report", "ran")]
    assert wall < 60, f"smoke pipeline took {wall:.1f} s"

    run = tmp_path / "runs" / "digits-gm-smoke"
    assert shown["run_dir"] == str(run)
    trained = json.loads((run / "train.json").read_text())
    assert (trained["epochs"], trained["n_train"]) == (1, SMOKE["limit_train"])
    [attack] = list((run / "attacks").iterdir())
    manifest = json.loads((attack / "manifest.json").read_text())
    assert (manifest["n"], manifest["params"]["steps"]) == (SMOKE["attack_limit"], SMOKE["attack_steps"])
    assert (run / "detect" / "scores.csv").is_file()
    report = json.loads((run / "report" / "report.json").read_text())
    metrics = json.loads((run / "detect" / "metrics.json").read_text())
    assert report["runs"][0]["detection"]["results"] == metrics["results"]
    assert (run / "report" / "report.html").is_file()
    assert (tmp_path / "runs" / ".latest").read_text().strip() == str(run.resolve())
