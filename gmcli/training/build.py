"""Build the model, loss, optimiser and learning-rate schedule of a recipe."""

from __future__ import annotations

import torch
from torch import nn

from gmcli.data import DataBundle
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMHead, GMLoss
from gmcli.losses.schedules import CoefficientSchedule
from gmcli.losses.softmax import SoftmaxHead, SoftmaxLoss
from gmcli.models.backbones import build_backbone
from gmcli.models.classifier import Classifier
from gmcli.recipe import Recipe


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GmcliError("device 'cuda' was asked for, but this machine has no CUDA device; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise GmcliError(f"device {name!r} is not known; use auto, cpu or cuda")
    return torch.device(name)


def build_classifier(recipe: Recipe, data: DataBundle) -> Classifier:
    """A fresh classifier for the recipe's backbone and head on ``data``'s inputs."""
    m = recipe.model
    backbone = build_backbone(m.backbone, input_shape=data.input_shape, feat_dim=m.feat_dim)
    k = len(data.classes)
    if m.head == "gm":
        head: GMHead | SoftmaxHead = GMHead(
            backbone.out_dim,
            k,
            covariance=m.covariance,
            learn_priors=m.learn_priors,
            log_var_range=(m.log_var_min, m.log_var_max),
        )
    else:
        head = SoftmaxHead(backbone.out_dim, k)
    return Classifier(backbone, head, mean=data.mean, std=data.std, input_shape=data.input_shape)


def build_loss(recipe: Recipe, model: Classifier) -> GMLoss | SoftmaxLoss:
    """The GM loss for a GM head, cross-entropy for a softmax head."""
    if isinstance(model.head, GMHead):
        return GMLoss(model.head, alpha=recipe.loss.alpha, lam=recipe.loss.lam, lkd=recipe.loss.lkd)
    return SoftmaxLoss(model.head)


def build_schedule(recipe: Recipe) -> CoefficientSchedule:
    """The alpha / lambda schedule of the recipe."""
    s = recipe.loss
    return CoefficientSchedule(
        s.alpha, s.lam, kind=s.schedule, warmup_epochs=s.warmup_epochs, every=s.stepup_every, start=s.stepup_start
    )


def build_optimizer(recipe: Recipe, model: Classifier) -> torch.optim.Optimizer:
    """SGD or Adam. Weight decay on the backbone and a softmax head; none on GM
    means and log-variances (decay would pull the means to the origin), which
    train at the head's own learning rates (see GMHead.param_groups)."""
    t = recipe.train
    decay = [p for p in model.backbone.parameters() if p.requires_grad]
    groups: list[dict] = [{"params": decay, "weight_decay": t.weight_decay}]
    for g in model.head.param_groups(t.lr, var_lr_mult=recipe.model.var_lr_mult):
        g["weight_decay"] = t.weight_decay if isinstance(model.head, SoftmaxHead) else 0.0
        groups.append(g)
    if t.optimizer == "sgd":
        nesterov = t.nesterov and t.momentum > 0
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=nesterov)
    return torch.optim.Adam(groups, lr=t.lr)


def build_lr_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule, stepped once per epoch."""
    t = recipe.train
    sched = torch.optim.lr_scheduler
    if t.scheduler == "step":
        return sched.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
    if t.scheduler == "multistep":
        return sched.MultiStepLR(optimizer, milestones=t.milestones, gamma=t.gamma)
    if t.scheduler == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=t.epochs)
    return sched.LambdaLR(optimizer, lr_lambda=_constant)


def _constant(epoch: int) -> float:
    return 1.0


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
