"""Area 5: detection cost, GM scoring against the forward pass that feeds it.

- library: ``extract`` (logits and features, batch 256 as ``gmcli detect``) plus
  ``GMScore``, against ``extract`` alone, on the first N test images, timed as two
  phases of one call;
- ``GMHead.nll`` on random features (K = 10, D = 64), in samples per second, in
  float64 (as ``GMScore`` calls it) and float32, against the same distances from
  ``torch.cdist`` (a reference that never holds the (N, K, D) differences);
- end to end: ``run_detection`` on an adversarial set (thresholds already stored),
  GM score only and all scores, against ``extract`` over the same inputs (the
  set's clean and adversarial images, read from disk in the same batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from bench.common import Context, Row, Samples, Section, Stat, fmt_stat, interleave
from bench.fixtures import adversarial_set, trained_run

KEY = "detect"
TITLE = "5. Detection: GM scoring vs the forward pass"
TARGET = 1.05
K, D = 10, 64


def run(ctx: Context) -> Section:
    from gmcli.attacks.advset import load_advset
    from gmcli.checkpoint import load_checkpoint
    from gmcli.data import load_dataset
    from gmcli.detectors.config import DetectConfig
    from gmcli.detectors.features import extract, tensor_batches
    from gmcli.detectors.runner import run_detection
    from gmcli.detectors.scores import GMScore
    from gmcli.losses.gm import GMHead

    tic = time.perf_counter()
    n, n_random = (256, 4096) if ctx.quick else (1024, 65536)
    bs = DetectConfig().batch_size
    run_dir = trained_run(ctx)
    model, meta, _ = load_checkpoint(run_dir / "checkpoint.safetensors")
    model.eval()
    x = load_dataset(**meta["dataset"]).split("test").subset(n).float_x()
    score = GMScore(model.head)

    section = Section(
        key=KEY, title=TITLE,
        method=[
            f"The benchmark run's checkpoint ({model.head.feat_dim}-d features); batches of {bs}.",
            "First row: each call times the forward pass (`extract`) and then `GMScore` on its",
            "outputs, so both figures share one forward pass. Other rows: each pair",
            "interleaved on its own.",
        ],
        columns=["comparison", "candidate", "baseline"],
    )

    # One call, two phases: the forward pass, then the GM score of its outputs. The
    # ratio (forward + score) / forward of each call shares the forward's noise.
    both, forward = Samples(), Samples()
    for r in range(ctx.warmup + (ctx.reps if ctx.quick else max(ctx.reps, 9))):
        w0, c0 = time.perf_counter(), time.process_time()
        out = extract(model, tensor_batches(x, bs))
        w1, c1 = time.perf_counter(), time.process_time()
        score(out)
        w2, c2 = time.perf_counter(), time.process_time()
        if r >= ctx.warmup:
            forward.wall.append(w1 - w0)
            forward.cpu.append(c1 - c0)
            both.wall.append(w2 - w0)
            both.cpu.append(c2 - c0)
    ctx.say(f"detect: forward {Stat.of(forward.wall).median:.3g}s, "
            f"score {Stat.of(both.wall).median - Stat.of(forward.wall).median:.3g}s")
    section.rows.append(Row.timed(
        [f"forward + GM score vs forward, {n} test images",
         fmt_stat(Stat.of(both.wall), "s"), fmt_stat(Stat.of(forward.wall), "s")],
        both, forward, TARGET,
    ))

    # Scoring throughput on random features.
    torch.manual_seed(0)
    head = GMHead(D, K)
    f64 = torch.randn(n_random, D, dtype=torch.float64)
    f32 = f64.float()

    def cdist(f: torch.Tensor) -> Callable[[], object]:
        mu = head.mu.detach().to(f.dtype)
        return lambda: torch.cdist(f, mu, compute_mode="donot_use_mm_for_euclid_dist").square_()

    with torch.no_grad():
        t = interleave(
            {"nll64": lambda: head.nll(f64), "cdist64": cdist(f64),
             "nll32": lambda: head.nll(f32), "cdist32": cdist(f32)},
            reps=ctx.reps, warmup=ctx.warmup, say=ctx.say, label="detect nll",
        )
    for bits in ("64", "32"):
        a, b = t[f"nll{bits}"], t[f"cdist{bits}"]
        section.rows.append(Row.timed(
            [f"`GMHead.nll` float{bits} vs `cdist`, N = {n_random}, K = {K}, D = {D}",
             fmt_stat(Stat.of(a.wall).inverse(n_random), "/s"),
             fmt_stat(Stat.of(b.wall).inverse(n_random), "/s")],
            a, b, None,
        ))

    # End to end on an adversarial set; the warm-up call calibrates and stores thresholds.
    attack_id = adversarial_set(ctx)
    advset = load_advset(run_dir / "attacks" / attack_id)

    def forward_set() -> None:
        for arr in (advset.clean, *(advset.adv(i) for i in range(len(advset.epsilons)))):
            batches = (torch.from_numpy(np.array(arr[s : s + bs], dtype=np.float32))
                       for s in range(0, len(arr), bs))
            extract(model, batches)

    def detect(scores: list[str] | None) -> Callable[[], object]:
        overrides = {"inputs": [f"adv:{attack_id}"], "scores": scores, "threshold": "auto"}
        return lambda: run_detection(run_dir, overrides=overrides, device="cpu")

    run_detection(run_dir, overrides={"inputs": [f"adv:{attack_id}"]}, device="cpu")
    images = advset.n * (1 + len(advset.epsilons))
    for name, label, scores in (("gm", "GM score", ["gm"]), ("all", "all six scores", None)):
        t = interleave({name: detect(scores), "forward": forward_set}, reps=ctx.reps,
                       warmup=ctx.warmup, say=ctx.say, label=f"detect end to end, {name}")
        section.rows.append(Row.timed(
            [f"`run_detection`, {label}, vs forward, {images} images",
             fmt_stat(Stat.of(t[name].wall), "s"), fmt_stat(Stat.of(t["forward"].wall), "s")],
            t[name], t["forward"], None,
        ))
    section.notes.append(
        "`run_detection` also loads the checkpoint, computes the metrics and writes "
        "`scores.csv` and `metrics.json`; its thresholds were calibrated and stored by an "
        "untimed call first, so the timed calls do not load the data set."
    )
    section.seconds = time.perf_counter() - tic
    return section
