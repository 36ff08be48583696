"""Shared fixtures: trained digits runs (GM and its softmax twin), made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _train_digits(root: Path, recipe_name: str, epochs: int) -> Path:
    from gmcli.recipe import load_recipe
    from gmcli.training.trainer import train

    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml", [f"train.epochs={epochs}", "loss.warmup_epochs=3"])
    run_dir = root / recipe_name
    train(recipe, run_dir=run_dir, device="cpu")
    return run_dir


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder for the session (``GMCLI_RUNS`` points here while tests run)."""
    root = tmp_path_factory.mktemp("runs")
    old = os.environ.get("GMCLI_RUNS")
    os.environ["GMCLI_RUNS"] = str(root)
    yield root
    if old is None:
        os.environ.pop("GMCLI_RUNS", None)
    else:
        os.environ["GMCLI_RUNS"] = old


@pytest.fixture(scope="session")
def digits_gm_run(runs_root: Path) -> Path:
    """A digits run with the GM head, trained for 12 epochs (about 10 s on 2 cores)."""
    return _train_digits(runs_root, "digits-gm", 12)


@pytest.fixture(scope="session")
def digits_softmax_run(runs_root: Path) -> Path:
    """The softmax twin of ``digits_gm_run``: same backbone, budget and seed."""
    return _train_digits(runs_root, "digits-softmax", 12)


@pytest.fixture
def fashion_root() -> Path:
    """Debian's Fashion-MNIST folder; the test is skipped where it is not installed."""
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return FASHION_ROOT


@pytest.fixture(autouse=True)
def _library_logs_reach_caplog():
    """The CLI stops the ``gmcli`` logger from propagating (rich prints it); undo that
    after each test so pytest's caplog sees the library's records in later tests."""
    import logging

    yield
    logger = logging.getLogger("gmcli")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
