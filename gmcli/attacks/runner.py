"""Run one attack sweep and stream the adversarial set to disk.

:func:`run_attack` is the library entry point behind ``gmcli attack``: it
resolves the run, loads the checkpoint and the data split, and calls
:func:`attack_split`, which works on any :class:`~gmcli.models.classifier.Classifier`
and :class:`~gmcli.data.Split`. Nothing here prints; progress goes to an
optional callback and warnings to the module logger.

Sizes: N samples, B a batch, E budgets, K classes, (C, H, W) the input shape.

Figures, per budget (``EpsResult``):

- robust accuracy: the fraction of the N samples classified correctly on the
  clipped adversarial input; a sample already misclassified when clean counts
  as not robust;
- success rate: among the *eligible* samples (correct when clean, and for a
  targeted attack with label != target), the fraction whose adversarial
  input meets the criterion (prediction != label; targeted: == target);
- mean norm: the mean perturbation norm over all N samples, and over the
  successful eligible ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gmcli.attacks.advset import ATTACKS_DIR, AdvSetWriter
from gmcli.attacks.config import AttackConfig, resolve_config
from gmcli.attacks.methods import METHODS, MethodSpec, build_attack, import_foolbox, resolve_params
from gmcli.errors import GmcliError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
ATTACK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class EpsResult:
    """Figures for one budget (see the module doc)."""

    eps: float
    robust_accuracy: float
    success_rate: float
    mean_norm: float
    mean_norm_success: float
    n_success: int


@dataclass
class AttackResult:
    """What one sweep produced; ``to_json()`` is the ``--json`` object."""

    attack_id: str
    path: Path | None
    method: str
    norm: str
    split: str
    n: int
    n_eligible: int
    clean_accuracy: float
    per_eps: list[EpsResult]
    seconds: float
    complete: bool
    device: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = None if self.path is None else str(self.path)
        return out


# --------------------------------------------------------------------------- devices


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.

    The choice is made once, here, and passed explicitly to everything.
    """
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", text):
        if not torch.cuda.is_available():
            raise GmcliError(f"--device: {name!r} asked for, but CUDA is not available here; use cpu or auto")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise GmcliError(
                f"--device: {name!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(text)
    raise GmcliError(f"--device: unknown device {name!r}; accepted: auto, cpu, cuda, cuda:<index>")


# --------------------------------------------------------------------------- model guards


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Switch parameter gradients off for the attack; restore flags and ``.grad`` after.

    foolbox 3.3.4's gradient attacks call ``backward()`` through eagerpy, which
    would also accumulate into every parameter's ``.grad``.
    """
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Attack in eval mode (batch norm, dropout); warn if the model was training."""
    was_training = model.training
    if was_training:
        log.warning("the model was in training mode: attacking it in eval mode (and restoring it after)")
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generator (foolbox's random starts draw from it), then restore it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------- helpers


def check_inputs(x: Tensor, *, where: str, input_shape: tuple[int, ...]) -> None:
    """Refuse inputs foolbox would reject with a bare assertion: say what is wrong.

    ``x`` (N, C, H, W) is uint8 (always in range once divided by 255) or float.
    """
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise GmcliError(
            f"{where}: inputs have shape {tuple(x.shape[1:])}, "
            f"the model expects {tuple(input_shape)} (C, H, W)"
        )
    if x.dtype == torch.uint8 or x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise GmcliError(f"{where}: inputs contain NaN or infinite values; expected values in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise GmcliError(
            f"{where}: inputs range over [{lo:.4g}, {hi:.4g}], outside the model bounds [0, 1]; "
            "gmcli attacks images in [0, 1] with the normalisation inside the model"
        )


def draw_targets(labels: Tensor, num_classes: int, *, seed: int, target_class: int | None) -> Tensor:
    """Target classes (N,) int64: ``target_class`` for all, or per sample a class != label.

    The drawn targets depend on the seed and the sample's position only.
    """
    if target_class is not None:
        return torch.full_like(labels, target_class)
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(1, num_classes, (len(labels),), generator=g)
    return (labels + offsets) % num_classes


def perturbation_norms(adv: Tensor, clean: Tensor, norm: str) -> Tensor:
    """||adv - clean|| per sample, (B,), L-inf or L2 over all C H W values."""
    delta = (adv - clean).flatten(1)
    if norm == "linf":
        return delta.abs().amax(dim=1)
    return delta.norm(p=2, dim=1)


def attack_id_for(spec: MethodSpec, config: AttackConfig, params: Mapping[str, Any], ckpt_name: str) -> str:
    """``<method>-<norm>-<split>-<hash>``: the same settings give the same id."""
    settings = {
        "method": spec.name,
        "params": dict(params),
        "eps": config.eps,
        "seed": config.seed,
        "split": config.split,
        "limit": config.limit,
        "checkpoint": ckpt_name,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{spec.slug}-{config.split}-{digest}"


def _read_recipe_section(run_dir: Path, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``attack:`` section of the run's recipe.yaml, else of the checkpoint's recipe."""
    from gmcli.runs import RECIPE

    path = run_dir / RECIPE
    if path.is_file():
        import yaml

        try:
            recipe = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GmcliError(f"recipe {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
        section = recipe.get("attack") if isinstance(recipe, dict) else None
    else:
        recipe = meta.get("recipe")
        section = recipe.get("attack") if isinstance(recipe, dict) else None
    if section is not None and not isinstance(section, dict):
        raise GmcliError(f"recipe key attack: expected a mapping, got {type(section).__name__}")
    return section


# --------------------------------------------------------------------------- the sweep


def attack_split(
    model: nn.Module,
    split: Any,
    config: AttackConfig,
    out_dir: str | os.PathLike,
    *,
    params: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> AttackResult:
    """Attack the samples of ``split`` and write the adversarial set to ``out_dir``.

    Args:
        model: a :class:`~gmcli.models.classifier.Classifier` (inputs in [0, 1],
            normalisation inside, ``input_shape`` attribute); it runs on the
            device of its parameters.
        split: a :class:`~gmcli.data.Split` (``batches``, ``subset``, ``len``).
        config: the resolved settings (``config.split`` is only recorded here).
        params: the method's parameters from :func:`resolve_params` (derived
            from ``config`` when omitted).
        out_dir: the set's final folder, ``<run>/attacks/<attack-id>``.
        provenance: extra manifest entries (checkpoint, dataset ...).
        progress: called as ``progress(samples_done, samples_total)`` per batch.

    Returns:
        The figures per budget; the set's ``complete`` flag and path.
    """
    spec = METHODS[config.method]
    params = dict(params) if params is not None else resolve_params(spec, config)
    device = next(model.parameters()).device
    input_shape = tuple(getattr(model, "input_shape", ()))
    num_classes = int(model.head.num_classes)
    epsilons = list(config.eps)
    if config.target_class is not None and config.target_class >= num_classes:
        raise GmcliError(
            f"--target-class: {config.target_class} is not a class of this model; "
            f"accepted: 0..{num_classes - 1}"
        )

    # Bound the budget by what the input space allows.
    if spec.norm == "l2" and input_shape:
        diameter = math.sqrt(math.prod(input_shape))
        if max(epsilons) > diameter:
            raise GmcliError(
                f"--eps: an L2 eps above sqrt(C*H*W) = {diameter:.4g} exceeds the input range, "
                f"got {max(epsilons)!r}"
            )

    # Targets are drawn for the whole split, so a sample's target does not depend on --limit.
    targets_all = (
        draw_targets(split.y, num_classes, seed=config.seed, target_class=config.target_class)
        if config.targeted
        else None
    )
    if config.limit is not None and config.limit < len(split):
        split = split.subset(config.limit)
    n = len(split)
    if n == 0:
        raise GmcliError(f"--split: split {config.split!r} has no samples to attack")
    input_shape = input_shape or tuple(split.x.shape[1:])
    check_inputs(split.x, where=f"split {config.split!r}", input_shape=input_shape)

    # Build the attack first: a GM-only method on a softmax model fails here,
    # before anything is written.
    fb = import_foolbox()
    attack = build_attack(spec, params, model)

    manifest = {
        "method": spec.name,
        "norm": spec.norm,
        "params": params,
        "foolbox_attack": repr(attack),
        "seed": config.seed,
        "split": config.split,
        "limit": config.limit,
        "batch_size": config.batch_size,
        "device": str(device),
        "versions": {"torch": torch.__version__, "foolbox": fb.__version__},
        "definitions": {
            "success": "prediction on adv_i != label (targeted: == target); true also for "
            "samples misclassified when clean",
            "robust_accuracy": "fraction of all n samples correct both clean and on adv_i",
            "success_rate": "among eligible samples (correct when clean; targeted: label != "
            "target), fraction with success",
        },
        **dict(provenance or {}),
    }
    writer = AdvSetWriter(
        out_dir,
        n=n,
        input_shape=input_shape,
        epsilons=epsilons,
        manifest=manifest,
        targeted=config.targeted,
    )

    stats = _Stats(len(epsilons))
    started = time.perf_counter()
    try:
        with eval_mode(model), frozen_parameters(model), seeded(config.seed, device):
            fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)
            for start, (xb, yb) in _numbered(split.batches(config.batch_size)):
                x = xb.to(device=device, dtype=torch.float32)
                y = yb.to(device=device, dtype=torch.int64)
                t = None if targets_all is None else targets_all[start : start + len(xb)].to(device)
                batch = _attack_batch(fb, fmodel, model, attack, spec, x, y, t, epsilons)
                stats.add(batch, y.cpu().numpy(), None if t is None else t.cpu().numpy())
                writer.write(batch, results=stats.summary(epsilons))
                if progress is not None:
                    progress(writer.n_done, n)
    except KeyboardInterrupt:
        kept = writer.keep_partial()
        if kept is None:
            log.warning("interrupted after %d of %d samples: no adversarial set kept", writer.n_done, n)
        else:
            log.warning(
                "interrupted after %d of %d samples: kept them as a partial set (complete=false) in %s",
                writer.n_done, n, kept,
            )
        raise
    except BaseException:
        writer.abort()
        raise

    seconds = time.perf_counter() - started
    writer.update_manifest(results=stats.summary(epsilons), seconds=round(seconds, 3))
    path = writer.finish()
    if stats.n_eligible == 0:
        log.warning("no sample of the %d attacked is eligible (correct when clean): success rates are 0", n)
    for i, eps in enumerate(epsilons):
        if stats.n_eligible and stats.success[i] < max(1, 0.01 * stats.n_eligible):
            log.warning(
                "eps=%g: only %d successful adversarial examples out of %d",
                eps, stats.success[i], stats.n_eligible,
            )

    return AttackResult(
        attack_id=path.name,
        path=path,
        method=spec.name,
        norm=spec.norm,
        split=config.split,
        n=n,
        n_eligible=stats.n_eligible,
        clean_accuracy=stats.clean_correct / n,
        per_eps=stats.results(epsilons),
        seconds=seconds,
        complete=True,
        device=str(device),
        params=params,
    )


def _numbered(batches: Iterator[tuple[Tensor, Tensor]]) -> Iterator[tuple[int, tuple[Tensor, Tensor]]]:
    start = 0
    for xb, yb in batches:
        yield start, (xb, yb)
        start += len(xb)


def _attack_batch(
    fb: Any,
    fmodel: Any,
    model: nn.Module,
    attack: Any,
    spec: MethodSpec,
    x: Tensor,
    y: Tensor,
    t: Tensor | None,
    epsilons: list[float],
) -> dict[str, np.ndarray]:
    """One batch through foolbox; every stored figure recomputed on the clipped inputs."""
    with torch.no_grad():
        clean_pred = model(x).argmax(dim=1)

    criterion = fb.criteria.Misclassification(y) if t is None else fb.criteria.TargetedMisclassification(t)
    with torch.enable_grad():
        _, clipped, _ = attack(fmodel, x, criterion, epsilons=epsilons)

    out: dict[str, np.ndarray] = {
        "clean": x.cpu().numpy(),
        "labels": y.cpu().numpy(),
        "clean_pred": clean_pred.cpu().numpy(),
    }
    if t is not None:
        out["targets"] = t.cpu().numpy()
    for i, adv in enumerate(clipped):
        adv = adv.detach()
        with torch.no_grad():
            pred = model(adv).argmax(dim=1)
        success = pred == t if t is not None else pred != y
        out[f"adv_{i}"] = adv.cpu().numpy()
        out[f"pred_{i}"] = pred.cpu().numpy()
        out[f"success_{i}"] = success.cpu().numpy()
        out[f"norm_{i}"] = perturbation_norms(adv, x, spec.norm).cpu().numpy()
    return out


class _Stats:
    """Running counts for the figures, so no array is kept in memory."""

    def __init__(self, num_eps: int) -> None:
        self.n = 0
        self.clean_correct = 0
        self.n_eligible = 0
        self.robust = [0] * num_eps
        self.success = [0] * num_eps
        self.norm_sum = [0.0] * num_eps
        self.norm_success_sum = [0.0] * num_eps

    def add(self, batch: Mapping[str, np.ndarray], labels: np.ndarray, targets: np.ndarray | None) -> None:
        correct = batch["clean_pred"] == labels
        eligible = correct if targets is None else correct & (labels != targets)
        self.n += len(labels)
        self.clean_correct += int(correct.sum())
        self.n_eligible += int(eligible.sum())
        for i in range(len(self.robust)):
            ok = eligible & batch[f"success_{i}"]
            norms = batch[f"norm_{i}"].astype(np.float64)
            self.robust[i] += int((correct & (batch[f"pred_{i}"] == labels)).sum())
            self.success[i] += int(ok.sum())
            self.norm_sum[i] += float(norms.sum())
            self.norm_success_sum[i] += float(norms[ok].sum())

    def results(self, epsilons: list[float]) -> list[EpsResult]:
        return [
            EpsResult(
                eps=eps,
                robust_accuracy=self.robust[i] / max(self.n, 1),
                success_rate=self.success[i] / max(self.n_eligible, 1),
                mean_norm=self.norm_sum[i] / max(self.n, 1),
                mean_norm_success=self.norm_success_sum[i] / max(self.success[i], 1),
                n_success=self.success[i],
            )
            for i, eps in enumerate(epsilons)
        ]

    def summary(self, epsilons: list[float]) -> dict[str, Any]:
        return {
            "n": self.n,
            "clean_accuracy": self.clean_correct / max(self.n, 1),
            "n_eligible": self.n_eligible,
            "per_eps": [asdict(r) for r in self.results(epsilons)],
        }


# --------------------------------------------------------------------------- entry point


def run_attack(
    source: str | os.PathLike | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    config: AttackConfig | None = None,
    device: str | torch.device = "auto",
    attack_id: str | None = None,
    progress: Progress | None = None,
) -> AttackResult:
    """Attack a trained run and write ``<run>/attacks/<attack-id>/``.

    Args:
        source: a run directory or checkpoint file; None = the latest run.
        overrides: settings given by the caller (the CLI flags); they override
            the run recipe's ``attack:`` section. ``None`` values are ignored.
        config: a fully resolved configuration instead (recipe not read).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.
        attack_id: folder name instead of the one derived from the settings.
        progress: called as ``progress(samples_done, samples_total)``.

    Raises:
        GmcliError: bad settings, missing run or checkpoint, a split the data
            lacks, absent CUDA; raised before anything is written.
    """
    from gmcli.checkpoint import load_checkpoint
    from gmcli.runs import resolve_run

    if attack_id is not None and not ATTACK_ID.fullmatch(attack_id):
        raise GmcliError(
            f"--out: attack id {attack_id!r} is not a plain folder name; "
            "accepted: letters, digits, '.', '_' and '-', not starting with '.' or '-'"
        )
    run_dir, ckpt_path = resolve_run(source)
    dev = resolve_device(device)
    model, meta, _ = load_checkpoint(ckpt_path, device=dev)
    if config is None:
        config = resolve_config(_read_recipe_section(run_dir, meta), overrides)

    spec = METHODS[config.method]
    if spec.gm_only and model.head_kind != "gm":
        raise GmcliError(
            f"--method {spec.name}: needs a GM checkpoint (its objective reads the Gaussian-mixture "
            f"head), but {str(ckpt_path)!r} has a {model.head_kind} head; use pgd, bim, fgsm, "
            "pgd-l2, deepfool, deepfool-l2 or cw"
        )

    dataset_kwargs = meta.get("dataset")
    if not isinstance(dataset_kwargs, dict) or "name" not in dataset_kwargs:
        raise GmcliError(f"checkpoint {str(ckpt_path)!r} does not record its dataset (meta key 'dataset')")
    from gmcli.data import load_dataset

    bundle = load_dataset(**dataset_kwargs)
    split = bundle.split(config.split)

    params = resolve_params(spec, config)
    name = attack_id or attack_id_for(spec, config, params, ckpt_path.name)
    out_dir = run_dir / ATTACKS_DIR / name
    provenance = {
        "checkpoint": {"path": str(ckpt_path.resolve()), "fingerprint": meta.get("fingerprint")},
        "dataset": dataset_kwargs,
        "class_names": meta.get("class_names"),
    }
    log.info(
        "attacking %s with %s on %s (%d samples), writing %s",
        ckpt_path, spec.name, config.split, len(split), out_dir,
    )
    return attack_split(
        model, split, config, out_dir, params=params, provenance=provenance, progress=progress
    )
