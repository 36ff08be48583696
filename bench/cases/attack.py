"""Area 4: ``gmcli attack`` PGD against a bare foolbox call and a plain PyTorch PGD loop.

Same checkpoint, the first N test images, L-inf PGD with one eps, the same steps,
relative step size (2.5 / steps), random start and batch size. Candidates:

- ``run_attack``: the library entry of ``gmcli attack`` (loads the checkpoint and
  the data set, attacks, streams the adversarial set to disk);
- ``attack_split``: the same sweep on the model and split already loaded (the part
  that grows with N);
- bare foolbox: ``fb.PyTorchModel`` + ``LinfPGD`` per batch, parameters frozen as
  gmcli freezes them (``requires_grad=False``), so that both compute the same
  gradients; and the naive call with parameters left trainable;
- plain PyTorch: the same iterations written out (cross-entropy summed over the
  batch, sign of the gradient, projection, clipping) and one forward pass on the
  result, as foolbox does to report success.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from bench.common import Context, Row, Samples, Section, Stat, fmt_stat, interleave, paired_ratio
from bench.fixtures import attack_overrides, trained_run

KEY = "attack"
TITLE = "4. Attack: `gmcli attack` PGD vs bare foolbox vs plain PyTorch"
TARGET = 1.10
EPS = 0.1


@contextlib.contextmanager
def frozen(model: torch.nn.Module, on: bool = True) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if on:
            for p, _ in flags:
                p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None


def bare_foolbox(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                 batch: int, freeze: bool) -> Callable[[], None]:
    from gmcli.attacks.methods import import_foolbox

    fb = import_foolbox()
    attack = fb.attacks.LinfPGD(rel_stepsize=2.5 / steps, steps=steps, random_start=True)

    def run() -> None:
        with frozen(model, freeze):
            fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device="cpu")
            for start in range(0, len(x), batch):
                attack(fmodel, x[start : start + batch], y[start : start + batch], epsilons=[EPS])

    return run


def plain_pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
              batch: int) -> Callable[[], None]:
    step = 2.5 / steps * EPS

    def run() -> None:
        with frozen(model):
            for start in range(0, len(x), batch):
                x0, yb = x[start : start + batch], y[start : start + batch]
                adv = (x0 + torch.empty_like(x0).uniform_(-EPS, EPS)).clamp_(0.0, 1.0)
                for _ in range(steps):
                    adv.requires_grad_(True)
                    loss = F.cross_entropy(model(adv), yb, reduction="sum")
                    (grad,) = torch.autograd.grad(loss, adv)
                    with torch.no_grad():
                        adv = adv + step * grad.sign()
                        adv = torch.min(torch.max(adv, x0 - EPS), x0 + EPS).clamp_(0.0, 1.0)
                with torch.no_grad():
                    model(adv).argmax(1).ne(yb)

    return run


def run(ctx: Context) -> Section:
    from gmcli.attacks.config import resolve_config
    from gmcli.attacks.methods import METHODS
    from gmcli.attacks.runner import attack_split, run_attack
    from gmcli.checkpoint import load_checkpoint
    from gmcli.data import load_dataset

    tic = time.perf_counter()
    # The toolkit's default PGD: 40 steps (gmcli.attacks.methods).
    n, batch, steps = (32, 16, 2) if ctx.quick else (64, 64, METHODS["pgd"].steps)
    run_dir = trained_run(ctx)
    model, meta, _ = load_checkpoint(run_dir / "checkpoint.safetensors")
    model.eval()
    split = load_dataset(**meta["dataset"]).split("test").subset(n)
    x, y = split.float_x(), split.y
    sweep_dir = ctx.work / "attack-split" / "attacks" / "bench-sweep"

    def seeded(fn: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            torch.manual_seed(0)
            fn()
        return call

    def candidates(steps: int) -> dict[str, Callable[[], None]]:
        overrides = attack_overrides(ctx, limit=n, batch_size=batch, steps=steps)
        config = resolve_config(None, overrides)
        return {
            "run_attack": seeded(lambda: run_attack(run_dir, overrides=overrides, device="cpu",
                                                    attack_id="bench-pgd")),
            "attack_split": seeded(lambda: attack_split(model, split, config, sweep_dir)),
            "foolbox": seeded(bare_foolbox(model, x, y, steps=steps, batch=batch, freeze=True)),
            "foolbox_trainable": seeded(bare_foolbox(model, x, y, steps=steps, batch=batch,
                                                     freeze=False)),
            "plain": seeded(plain_pgd(model, x, y, steps=steps, batch=batch)),
        }

    # Warm-up with one step (the same code paths), then the timed sweeps. Each target
    # is its own pair: a neighbour that frees a whole data set (run_attack) makes the
    # next call fault its memory in afresh, which would bias any candidate after it.
    for _ in range(ctx.warmup):
        for call in candidates(1).values():
            call()
    c = candidates(steps)
    groups = (("attack_split", "foolbox"), ("run_attack", "foolbox"),
              ("foolbox", "foolbox_trainable", "plain"))
    timed = [
        interleave({name: c[name] for name in group}, reps=ctx.reps, warmup=0, say=ctx.say,
                   label=f"attack {' / '.join(group)}")
        for group in groups
    ]

    # run_attack's fixed cost, timed on its own: what it does before it attacks.
    def setup() -> None:
        _, meta_, _ = load_checkpoint(run_dir / "checkpoint.safetensors")
        load_dataset(**meta_["dataset"]).split("test")

    setup_time = Stat.of(interleave({"setup": setup}, reps=ctx.reps, warmup=ctx.warmup)[
        "setup"].wall)

    section = Section(
        key=KEY, title=TITLE,
        method=[
            f"The benchmark run's checkpoint; the first {n} test images in batches of {batch};",
            f"L-inf PGD, eps {EPS}, {steps} steps of 2.5/{steps} eps, random start, seed 0;",
            "after a warm-up call of one step each, every target pair is interleaved on",
            "its own (and the bare calls together), so that no candidate follows one that",
            "frees a whole data set.",
        ],
        columns=["comparison", "candidate", "baseline"],
    )

    def row(label: str, times: dict[str, Samples], a: str, b: str,
            target: float | None) -> None:
        section.rows.append(Row.timed(
            [label, fmt_stat(Stat.of(times[a].wall), "s"), fmt_stat(Stat.of(times[b].wall), "s")],
            times[a], times[b], target,
        ))

    sweep_t, e2e_t, bare_t = timed
    row("`attack_split` (the sweep) vs bare foolbox", sweep_t, "attack_split", "foolbox", TARGET)
    row("`run_attack` (end to end) vs bare foolbox", e2e_t, "run_attack", "foolbox", TARGET)
    row("bare foolbox vs plain PyTorch PGD", bare_t, "foolbox", "plain", None)
    row("bare foolbox, parameters trainable vs frozen", bare_t, "foolbox_trainable", "foolbox",
        None)

    foolbox = Stat.of(sweep_t["foolbox"].wall).median
    per_image = foolbox / n
    sweep = paired_ratio(sweep_t["attack_split"].wall, sweep_t["foolbox"].wall).median
    extra = (sweep - 1.0) * foolbox / -(-n // batch)
    section.notes += [
        f"`run_attack`'s fixed cost, timed alone (`load_checkpoint` and `load_dataset` of "
        f"the whole data set, with its validation split and normalisation, to attack part "
        f"of one split): {fmt_stat(setup_time, 's')}. At {per_image * 1e3:.0f} ms per image "
        f"for this attack it stays under 10 % of the attack from about "
        f"{setup_time.median / (0.1 * per_image):,.0f} images on; on the whole test split "
        f"(10,000, the default) it is {setup_time.median / (per_image * 10_000):.2%}.",
        f"The sweep's own overhead, from its paired ratio: about {extra * 1e3:.0f} ms per "
        f"batch of {batch}. It predicts the clean batch and then each clipped adversarial "
        f"batch: two forward passes beside foolbox's {steps} forward-backward steps and its "
        "own check of each clipped batch; it also writes the arrays and the manifest.",
    ]
    section.seconds = time.perf_counter() - tic
    return section
