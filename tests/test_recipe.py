"""Recipes: every shipped one validates, and every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gmcli.errors import GmcliError
from gmcli.recipe import apply_override, load_recipe, parse_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem


def test_shipped_recipes_include_the_twins() -> None:
    names = {p.stem for p in RECIPES}
    for gm in [n for n in names if n.endswith("-gm")]:
        if gm in ("mnist-2d-gm", "cifar10-resnet20-gm"):
            continue
        twin = gm.removesuffix("-gm") + "-softmax"
        assert twin in names
        a, b = load_recipe(RECIPES[0].parent / f"{gm}.yaml"), load_recipe(RECIPES[0].parent / f"{twin}.yaml")
        assert (a.model.head, b.model.head) == ("gm", "softmax")
        assert a.model.backbone == b.model.backbone and a.train == b.train and a.data == b.data


def base() -> dict:
    return {"name": "t", "data": {"name": "digits"}, "train": {"epochs": 2}}


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda r: r.update(colour="red"), r"recipe key 'colour' is not known; the keys of the recipe are: name"),
        (lambda r: r["train"].update(lrr=0.1), r"'train.lrr' is not known; the keys of 'train' are: epochs"),
        (lambda r: r["train"].update(epochs="ten"), r"'train.epochs': .*integer.*\(got 'ten'\)"),
        (lambda r: r["train"].update(lr=-1), r"'train.lr': Input should be greater than 0 \(got -1\)"),
        (lambda r: r["data"].update(val_fraction=0.9), r"'data.val_fraction': .*less than 0.5"),
        (lambda r: r["data"].update(name="imagenet"), r"'data.name': unknown data set 'imagenet'; use one of digits"),
        (lambda r: r.update(model={"backbone": "vgg99"}), r"'model.backbone': unknown backbone 'vgg99'"),
        (lambda r: r.update(model={"covariance": "full"}), r"'model.covariance': Input should be 'identity'"),
        (lambda r: r.update(loss={"lkd": "l1"}), r"'loss.lkd'"),
        (lambda r: r.update(loss={"alpha": -0.1}), r"'loss.alpha': .*greater than or equal to 0"),
        (lambda r: r["train"].update(optimizer="rmsprop"), r"'train.optimizer': Input should be 'sgd' or 'adam'"),
        (lambda r: r["train"].update(milestones=[5, 3]), r"'train.milestones': milestones must be increasing"),
        (lambda r: r.pop("name"), r"recipe key 'name' is required"),
        (lambda r: r.update(name="a b"), r"'name': String should match pattern"),
    ],
)
def test_each_recipe_error_names_its_key(edit, pattern: str) -> None:  # noqa: ANN001
    data = base()
    edit(data)
    with pytest.raises(GmcliError, match=pattern) as info:
        parse_recipe(data)
    assert "\n" not in str(info.value)


def test_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(GmcliError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: [1, 2\n")
    with pytest.raises(GmcliError, match=r"not valid YAML at line \d+"):
        load_recipe(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(GmcliError, match="must be a YAML mapping"):
        load_recipe(listy)


def test_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(base()))
    recipe = load_recipe(path, ["train.epochs=7", "loss.alpha=0.5", "model.head=softmax", "data.augment=[crop]"])
    assert (recipe.train.epochs, recipe.loss.alpha, recipe.model.head) == (7, 0.5, "softmax")
    assert recipe.data.augment == ["crop"]
    with pytest.raises(GmcliError, match="'train.epoch' is not known"):
        load_recipe(path, ["train.epoch=3"])
    with pytest.raises(GmcliError, match="not of the form key=value"):
        load_recipe(path, ["train.epochs"])
    data = base()
    with pytest.raises(GmcliError, match="'epochs' is a value, not a section"):
        apply_override(data, "train.epochs.x=1")
