"""Area 1: one training step with the GM head against the linear softmax head.

Both models share the backbone's initial weights, the batch, the optimiser built
by ``gmcli.training.build.build_optimizer`` (SGD, Nesterov momentum, weight decay
except on the GM means) and the trainer's step: features, ``components`` of the
loss, ``zero_grad``, ``backward``, ``step``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from bench.common import Context, Row, Section, Stat, fmt_stat, interleave

KEY = "step"
TITLE = "1. Training step: GM head vs linear softmax head"
TARGET = 1.05

# backbone, input shape (C, H, W), batch, steps per timed call, repetitions (full run).
# The digits step is short and noisy: more, shorter repetitions steady its median.
CASES = (
    ("digits-cnn", (1, 8, 8), 64, 4, 25),
    ("cnn28", (1, 28, 28), 128, 1, 15),
    ("resnet20", (3, 32, 32), 128, 1, 11),
)
HEAD_ITERS = 100  # forward-backward passes of a head and its loss per timed call
QUICK_BATCH = {"digits-cnn": 16, "cnn28": 16, "resnet20": 8}
NUM_CLASSES = 10


def make_step(backbone: torch.nn.Module, head_kind: str, input_shape: tuple[int, int, int],
              x: torch.Tensor, y: torch.Tensor, steps: int) -> Callable[[], None]:
    """A closure running ``steps`` training steps of a fresh classifier on (x, y)."""
    from gmcli.losses.gm import GMHead, GMLoss
    from gmcli.losses.softmax import SoftmaxHead, SoftmaxLoss
    from gmcli.models.classifier import Classifier
    from gmcli.recipe import parse_recipe
    from gmcli.training.build import build_optimizer

    c = input_shape[0]
    dim = backbone.out_dim
    if head_kind == "gm":
        head = GMHead(dim, NUM_CLASSES)
        loss = GMLoss(head, alpha=0.3, lam=0.1)
    else:
        head = SoftmaxHead(dim, NUM_CLASSES)
        loss = SoftmaxLoss(head)
    model = Classifier(copy.deepcopy(backbone), head, mean=[0.5] * c, std=[0.25] * c,
                       input_shape=input_shape)
    model.train()
    optimizer = build_optimizer(parse_recipe({"name": "bench-step"}), model)

    def run() -> None:
        for _ in range(steps):
            feats = model.features(x)
            parts = loss.components(feats, y)
            optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            optimizer.step()

    return run


def head_extra(dim: int, batch: int, ctx: Context) -> float:
    """CPU seconds the GM head and loss add to one step over the softmax ones.

    Both heads' forward and backward on the same random features (batch, D), timed
    alone, so that the backbone's noise does not enter.
    """
    from gmcli.losses.gm import GMHead, GMLoss
    from gmcli.losses.softmax import SoftmaxHead, SoftmaxLoss

    x = torch.randn(batch, dim, requires_grad=True)
    y = torch.randint(0, NUM_CLASSES, (batch,))

    def passes(loss: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            for _ in range(HEAD_ITERS):
                loss.components(x, y).loss.backward()
        return run

    times = interleave(
        {"gm": passes(GMLoss(GMHead(dim, NUM_CLASSES), alpha=0.3, lam=0.1)),
         "softmax": passes(SoftmaxLoss(SoftmaxHead(dim, NUM_CLASSES)))},
        reps=max(ctx.reps, 7), warmup=1,
    )
    return (Stat.of(times["gm"].cpu).median - Stat.of(times["softmax"].cpu).median) / HEAD_ITERS


def run(ctx: Context) -> Section:
    from gmcli.models.backbones import build_backbone

    section = Section(
        key=KEY, title=TITLE,
        method=[
            "Forward, loss, backward and SGD step of one batch of random images and labels",
            "(K = 10), timed per call of several steps; GM (identity covariance, alpha 0.3,",
            "lambda 0.1, likelihood 'paper') against SoftmaxHead + cross-entropy on a copy of",
            "the same backbone. Figures are per step. The column 'heads alone' times the",
            "two heads' forward and backward with their losses on random features of the",
            "step's size (CPU time, no backbone, so little noise): what the GM head adds to",
            "a step, and the step ratio that this alone would give.",
        ],
        columns=["backbone", "input", "batch", "reps x steps", "GM step", "softmax step",
                 "heads alone: GM - softmax (step ratio)"],
    )
    tic = time.perf_counter()
    for name, shape, batch, steps, reps in CASES:
        if ctx.quick:
            batch, steps, reps = QUICK_BATCH[name], 1, ctx.reps
        torch.manual_seed(0)
        backbone = build_backbone(name, input_shape=shape)
        x = torch.rand(batch, *shape)
        y = torch.randint(0, NUM_CLASSES, (batch,))
        candidates = {
            "gm": make_step(backbone, "gm", shape, x, y, steps),
            "softmax": make_step(backbone, "softmax", shape, x, y, steps),
        }
        times = interleave(candidates, reps=reps, warmup=max(ctx.warmup, 1), say=ctx.say,
                           label=f"step {name}")
        gm = Stat.of(times["gm"].wall).scaled(1 / steps)
        sm = Stat.of(times["softmax"].wall).scaled(1 / steps)
        extra = head_extra(backbone.out_dim, batch, ctx)
        bound = 1 + extra / (Stat.of(times["softmax"].cpu).median / steps)
        section.rows.append(Row.timed(
            [name, "x".join(map(str, shape)), str(batch), f"{reps} x {steps}",
             fmt_stat(gm, "ms"), fmt_stat(sm, "ms"),
             f"{extra * 1e3:+.2f} ms ({bound:.3f})"],
            times["gm"], times["softmax"], TARGET,
        ))
    section.seconds = time.perf_counter() - tic
    return section
