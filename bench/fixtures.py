"""Fixtures the areas share: the benchmark recipe, a trained run, an adversarial set.

Full runs use a Fashion-MNIST subset with the cnn28 backbone (Debian's IDX files);
``--quick`` uses scikit-learn's digits with digits-cnn, so that it takes seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench.common import Context

log = logging.getLogger(__name__)

RUN_NAME = "bench-gm"
ATTACK_ID = "bench-detect"


def recipe_dict(ctx: Context, *, epochs: int, limit_train: int | None = None) -> dict[str, Any]:
    """The benchmark recipe: GM head, constant alpha and lambda, no augmentation.

    Full: Fashion-MNIST, cnn28, batch 128, the first 1024 training images, 0.5 % of
    the official train split (300 images) held out for validation. Quick: digits.
    """
    if ctx.quick:
        data = {"name": "digits", "val_fraction": 0.1, "limit_train": limit_train or 256}
        model = {"backbone": "digits-cnn", "feat_dim": 32}
        batch = 64
    else:
        data = {"name": "fashion-mnist", "val_fraction": 0.005, "limit_train": limit_train or 1024}
        model = {"backbone": "cnn28", "feat_dim": 64}
        batch = 128
    return {
        "name": RUN_NAME,
        "seed": 0,
        "data": {**data, "augment": []},
        "model": {**model, "head": "gm", "covariance": "identity"},
        "loss": {"alpha": 0.3, "lam": 0.1, "schedule": "constant"},
        "train": {
            "epochs": epochs, "batch_size": batch, "eval_batch_size": 1024, "optimizer": "sgd",
            "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
            "scheduler": "cosine", "device": "cpu",
        },
    }


def runs_dir(ctx: Context) -> Path:
    return ctx.work / "runs"


def trained_run(ctx: Context) -> Path:
    """A finished run (checkpoint with calibration statistics); trained once per call."""
    if "run" not in ctx.shared:
        from gmcli.recipe import parse_recipe
        from gmcli.training.trainer import Trainer

        ctx.say("training the fixture run (1 epoch)")
        run_dir = runs_dir(ctx) / RUN_NAME
        recipe = parse_recipe(recipe_dict(ctx, epochs=1))
        Trainer(recipe, run_dir=run_dir, overwrite=True, device="cpu").run()
        ctx.shared["run"] = run_dir
    return ctx.shared["run"]


def attack_overrides(ctx: Context, *, limit: int, batch_size: int, steps: int) -> dict[str, Any]:
    """``gmcli attack`` settings of the benchmark: L-inf PGD, one eps, the test split."""
    return {
        "method": "pgd", "eps": [0.1], "steps": steps, "random_start": True,
        "limit": limit, "batch_size": batch_size, "split": "test", "seed": 0,
    }


def adversarial_set(ctx: Context) -> str:
    """The id of an adversarial set of the fixture run (made here unless the attack area did)."""
    if "advset" not in ctx.shared:
        from gmcli.attacks.runner import run_attack

        ctx.say("attacking the fixture run for an adversarial set")
        n = 64 if ctx.quick else 256
        run_attack(
            trained_run(ctx), overrides=attack_overrides(ctx, limit=n, batch_size=128, steps=2),
            device="cpu", attack_id=ATTACK_ID,
        )
        ctx.shared["advset"] = ATTACK_ID
    return ctx.shared["advset"]
