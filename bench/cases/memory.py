"""Area 6: peak memory of train, attack and detect as the number of samples doubles.

Each task runs in its own forked child (see :mod:`bench.common`): training with
``data.limit_train`` = N and 2N (one epoch, then the test and the calibration
statistics, as ``gmcli train`` ends), ``run_attack`` on the first N and 2N test
images (PGD, one step: memory does not depend on the steps), and ``run_detection``
with every score on those two adversarial sets (thresholds stored beforehand,
so that neither call loads the data set to calibrate).

The ratio is the task's anonymous (heap) increase at 2N over its increase at N:
1 is flat, 2 is proportional to N; the same ratio of the whole resident size,
which also counts file-backed pages (memory-mapped arrays, library code), is shown
beside it. The slope is (increase(2N) - increase(N)) / N per sample, for both; a
float32 28x28 image is 3,136 bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import MB, Context, MemResult, Row, Section, Stat, fmt_mb
from bench.fixtures import attack_overrides, recipe_dict, runs_dir, trained_run

KEY = "memory"
TITLE = "6. Peak memory as the number of samples doubles"
TARGET = 1.10


# Tasks for the zygote: set-up here, the returned callable is measured.
def mem_train(recipe: dict[str, Any], run_dir: str) -> Callable[[], object]:
    import os

    from gmcli.recipe import parse_recipe
    from gmcli.training.trainer import Trainer

    # Its own runs root: two trainings at once would race on the root's .latest pointer.
    os.environ["GMCLI_RUNS"] = f"{run_dir}-root"
    spec = parse_recipe(recipe)
    return lambda: Trainer(spec, run_dir=Path(run_dir), overwrite=True, device="cpu").run()


def mem_attack(run_dir: str, overrides: dict[str, Any], attack_id: str) -> Callable[[], object]:
    from gmcli.attacks.methods import import_foolbox
    from gmcli.attacks.runner import run_attack

    import_foolbox()
    return lambda: run_attack(run_dir, overrides=overrides, device="cpu", attack_id=attack_id)


def mem_detect(run_dir: str, overrides: dict[str, Any]) -> Callable[[], object]:
    import sklearn.metrics  # noqa: F401 - imported before the measurement starts

    from gmcli.detectors.runner import run_detection

    return lambda: run_detection(run_dir, overrides=overrides, device="cpu")


def _row(task: str, n: int, small: MemResult, large: MemResult, target: float | None) -> Row:
    slope = (large.increase - small.increase) / n
    anon_slope = (large.anon_increase - small.anon_increase) / n
    return Row(
        [task, f"{n} / {2 * n}", f"{fmt_mb(small.peak_rss)} / {fmt_mb(large.peak_rss)}",
         f"{fmt_mb(small.increase)} / {fmt_mb(large.increase)}",
         f"{fmt_mb(small.anon_increase)} / {fmt_mb(large.anon_increase)}",
         f"{slope:,.0f} / {anon_slope:,.0f}"],
        Stat.of([large.anon_increase / small.anon_increase]), target,
        alt_ratio=Stat.of([large.increase / small.increase]),
    )


def run(ctx: Context) -> Section:
    from gmcli.detectors.runner import run_detection

    tic = time.perf_counter()
    n, m = (128, 128) if ctx.quick else (512, 1024)  # training images; attacked images
    run_dir = trained_run(ctx)
    section = Section(
        key=KEY, title=TITLE,
        method=[
            "Peak resident size (`ru_maxrss`) of a fresh child per task, and what the task",
            "added to it (increase over the child's size when the task began; the",
            "anonymous part, sampled every 2 ms, in its own column). The ratio (increase",
            "at 2N / increase at N) is taken on the anonymous part, what the task holds;",
            "the resident-size ratio beside it also counts file-backed pages.",
        ],
        alt_label="RSS ratio",
        columns=["task", "N / 2N", "peak RSS", "increase", "anonymous increase",
                 "slope B/sample (RSS / anon)"],
    )
    zygote = ctx.zygote
    results: dict[str, dict[int, MemResult]] = {}
    sizes = (n, 2 * n)
    ctx.say(f"memory: train with {n} and {2 * n} images (two children at once)")
    results["train"] = dict(zip(sizes, zygote.run_together([
        ("bench.cases.memory:mem_train",
         {"recipe": recipe_dict(ctx, epochs=1, limit_train=size),
          "run_dir": str(runs_dir(ctx) / f"mem-train-{size}")})
        for size in sizes
    ])))
    sizes = (m, 2 * m)
    ctx.say(f"memory: attack {m} and {2 * m} images (two children at once)")
    results["attack"] = dict(zip(sizes, zygote.run_together([
        ("bench.cases.memory:mem_attack",
         {"run_dir": str(run_dir), "attack_id": f"mem-{size}",
          "overrides": attack_overrides(ctx, limit=size, batch_size=128, steps=1)})
        for size in sizes
    ])))
    # Store every score's threshold first (this call calibrates, untimed and unmeasured).
    run_detection(run_dir, overrides={"inputs": [f"adv:mem-{m}"]}, device="cpu")
    results["detect"] = {}
    for size in sizes:  # one at a time: both write the run's detect/ folder
        ctx.say(f"memory: detect on {size} adversarial images")
        # Earlier results of other sources would be read back and kept: start both alike.
        for name in ("scores.csv", "metrics.json"):
            (run_dir / "detect" / name).unlink(missing_ok=True)
        results["detect"][size] = zygote.run(
            "bench.cases.memory:mem_detect", run_dir=str(run_dir),
            overrides={"inputs": [f"adv:mem-{size}"], "threshold": "stored"},
        )

    section.rows.append(_row("train (`Trainer.run`, 1 epoch)", n, *results["train"].values(),
                             None))
    section.rows.append(_row("attack (`run_attack`)", m, *results["attack"].values(), TARGET))
    section.rows.append(_row("detect (`run_detection`)", m, *results["detect"].values(), TARGET))
    det = results["detect"]
    slope = (det[2 * m].anon_increase - det[m].anon_increase) / m
    section.notes.append(
        f"Detection's anonymous memory grows by {slope:,.0f} bytes per adversarial sample "
        f"(one eps, every score): at that rate a source of 60,000 images (`split:train`) "
        f"would add about {slope * 60_000 / MB:,.0f} MB to the "
        f"{fmt_mb(det[m].anon_increase)} measured at N = {m}."
    )
    section.notes.append(
        "Training holds its data set in memory by design (no target). The attack writes "
        "its arrays through memory maps: their pages count in the resident size (not in "
        "the anonymous part) and the kernel may drop them."
    )
    section.seconds = time.perf_counter() - tic
    return section
