"""Read what train, attack and detect wrote into one plain dict per run.

:func:`collect_run` reads a run directory (docs/architecture.md) without
building a model: the checkpoint's metadata, ``train.json`` and
``metrics.jsonl``, every adversarial set under ``attacks/`` and the detection
results under ``detect/``. What is absent is listed under ``missing``, each
entry with the command that makes it; results made from another checkpoint
are kept but listed under ``warnings``. :func:`collect_runs` checks that
several runs can share one report.

Two readers feed the plots and are kept out of the dict, which must stay
small enough for ``report.json``:

- :func:`load_scores`: the per-sample scores of ``detect/scores.csv``;
- :func:`feature_sample`: features of a data split and the head's Gaussians,
  the one step that runs the model.

Every figure in the dict is copied from the file it comes from, except the
attack figures, which are recomputed from the set's arrays with the
definitions of :mod:`gmcli.attacks.runner` (so that partial sets, whose
manifests may lag, are reported exactly):

- clean accuracy: mean(clean_pred == labels) over the n samples;
- robust accuracy at eps_i: mean(clean_pred == labels and pred_i == labels);
- success rate at eps_i: among eligible samples (correct when clean, and for
  a targeted set label != target), the fraction with ``success_i``;
- mean norm at eps_i: the mean of ``norm_i`` over the n samples.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gmcli import runs
from gmcli.attacks.advset import ATTACKS_DIR
from gmcli.detectors.calibration import THRESHOLD_FILE as DETECT_THRESHOLD
from gmcli.detectors.results import DETECT_DIR
from gmcli.detectors.results import METRICS_FILE as DETECT_METRICS
from gmcli.detectors.results import REFERENCE as REFERENCE_SOURCE
from gmcli.detectors.results import SCORES_FILE as DETECT_SCORES
from gmcli.errors import GmcliError
from gmcli.runs import resolve_run

log = logging.getLogger(__name__)

# Suggested commands in "what is missing" messages.
ATTACK_COMMAND = "gmcli attack {run}"
DETECT_COMMAND = "gmcli detect {run} --threshold auto"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GmcliError(f"{what} {str(path)!r} is not readable JSON ({type(exc).__name__})") from None


def _jsonable(obj: Any) -> Any:
    """NaN and infinities -> None, numpy scalars -> Python, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _missing(stage: str, message: str, command: str | None) -> dict[str, Any]:
    return {"stage": stage, "message": message, "command": command}


# --------------------------------------------------------------------------- training


def _training(run_dir: Path, missing: list[dict[str, Any]]) -> dict[str, Any]:
    """``train.json`` (final figures) and ``metrics.jsonl`` (one record per epoch)."""
    result = None
    path = run_dir / runs.TRAIN_RESULT
    if path.is_file():
        result = _read_json(path, "training result")
    else:
        missing.append(_missing(
            "train", f"training of {run_dir} did not finish (no {runs.TRAIN_RESULT}): test "
            "accuracy is unknown", f"gmcli train --resume {run_dir}",
        ))

    epochs: list[dict[str, Any]] = []
    path = run_dir / runs.METRICS
    if path.is_file():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                epochs.append(json.loads(line))
            except ValueError:
                log.warning("%s: line %d is not JSON; skipped", path, number)
    if not epochs:
        missing.append(_missing(
            "train", f"{run_dir} has no per-epoch metrics ({runs.METRICS}): no training curves", None
        ))
    return {"result": result, "epochs": epochs}


# --------------------------------------------------------------------------- attacks


def attack_figures(advset: Any) -> dict[str, Any]:
    """The figures of one adversarial set, recomputed from its arrays (module doc)."""
    labels = np.asarray(advset.labels)
    correct = np.asarray(advset.clean_pred) == labels
    targets = advset.targets
    eligible = correct if targets is None else correct & (labels != np.asarray(targets))
    n, n_eligible = len(labels), int(eligible.sum())
    per_eps = []
    for i, eps in enumerate(advset.epsilons):
        pred = np.asarray(advset.pred(i))
        success = np.asarray(advset.success(i), dtype=bool)
        norms = np.asarray(advset.norms(i), dtype=np.float64)
        n_success = int((eligible & success).sum())
        per_eps.append({
            "eps": float(eps),
            "robust_accuracy": float(np.mean(correct & (pred == labels))) if n else None,
            "success_rate": n_success / n_eligible if n_eligible else None,
            "n_success": n_success,
            "mean_norm": float(norms.mean()) if n else None,
        })
    return {
        "n": n,
        "n_eligible": n_eligible,
        "clean_accuracy": float(correct.mean()) if n else None,
        "per_eps": per_eps,
    }


def _manifest_fingerprint(manifest: dict[str, Any]) -> str | None:
    ckpt = manifest.get("checkpoint")
    if isinstance(ckpt, dict) and isinstance(ckpt.get("fingerprint"), str):
        return ckpt["fingerprint"]
    value = manifest.get("checkpoint_fingerprint")
    return value if isinstance(value, str) else None


def attack_label(entry: dict[str, Any]) -> str:
    """A short human name of an attack set: ``pgd (L-inf, test, n=360)``."""
    norm = {"linf": "L-inf", "l2": "L2"}.get(str(entry.get("norm")), str(entry.get("norm")))
    extra = ", targeted" if entry.get("targeted") else ""
    return f"{entry.get('method')} ({norm}, {entry.get('split')}, n={entry.get('n')}{extra})"


def _attacks(run_dir: Path, fingerprint: str, missing: list, warnings: list) -> list[dict[str, Any]]:
    from gmcli.attacks.advset import list_advsets, load_advset

    out = []
    for folder in list_advsets(run_dir):
        try:
            advset = load_advset(folder)
        except GmcliError as exc:
            warnings.append(f"adversarial set {folder.name} skipped: {exc}")
            continue
        m = advset.manifest
        made_from = _manifest_fingerprint(m)
        entry: dict[str, Any] = {
            "attack_id": folder.name,
            "path": str(folder),
            "method": m.get("method"),
            "norm": m.get("norm"),
            "split": m.get("split"),
            "targeted": bool(m.get("targeted", False)),
            "params": m.get("params", {}),
            "seed": m.get("seed"),
            "limit": m.get("limit"),
            "epsilons": [float(e) for e in advset.epsilons],
            "complete": advset.complete,
            "n_planned": m.get("n_planned"),
            "fingerprint": made_from,
            "current": made_from == fingerprint,
            "created": m.get("finished") or m.get("created"),
        }
        entry.update(attack_figures(advset))
        entry["label"] = attack_label(entry)
        if not advset.complete:
            warnings.append(
                f"adversarial set {folder.name} is partial ({advset.n} of {m.get('n_planned')} "
                f"samples): rerun gmcli attack {run_dir} to complete it"
            )
        if made_from != fingerprint:
            warnings.append(
                f"adversarial set {folder.name} was made from checkpoint {str(made_from)[:12]}, not "
                f"the current {fingerprint[:12]}: attack again ({ATTACK_COMMAND.format(run=run_dir)})"
            )
        out.append(entry)
    if not out:
        missing.append(_missing(
            "attack", f"{run_dir} holds no adversarial set ({ATTACKS_DIR}/): no robustness or "
            "detection figures", ATTACK_COMMAND.format(run=run_dir),
        ))
    return out


# --------------------------------------------------------------------------- detection


def _detection(run_dir: Path, fingerprint: str, attacks: list[dict[str, Any]], missing: list,
               warnings: list) -> dict[str, Any] | None:
    folder = run_dir / DETECT_DIR
    path = folder / DETECT_METRICS
    command = DETECT_COMMAND.format(run=run_dir)
    if not path.is_file():
        what = "" if attacks else ", and no adversarial set to judge yet (attack it first)"
        missing.append(_missing(
            "detect", f"{run_dir} has no detection results ({DETECT_DIR}/{DETECT_METRICS}){what}",
            command,
        ))
        return None
    doc = _read_json(path, "detection metrics")
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise GmcliError(
            f"detection metrics {str(path)!r} hold no 'results' list: not written by gmcli detect"
        )

    made_from = doc.get("fingerprint")
    current = made_from == fingerprint
    if not current:
        warnings.append(
            f"detection results were made from checkpoint {str(made_from)[:12]}, not the current "
            f"{fingerprint[:12]}: run {command}"
        )
    scores = list(doc.get("scores") or dict.fromkeys(r.get("score") for r in doc["results"]))
    thresholds = doc.get("thresholds") or {}

    stored_path = folder / DETECT_THRESHOLD
    if stored_path.is_file():
        stored = (_read_json(stored_path, "thresholds").get("thresholds") or {})
        for name, t in thresholds.items():
            value = (t or {}).get("value")
            kept = (stored.get(name) or {}).get("value")
            if value is not None and kept is not None and kept != value:
                warnings.append(
                    f"{DETECT_DIR}/{DETECT_THRESHOLD} holds a {name} threshold ({kept:.6g}) other "
                    f"than the one the detection figures use ({value:.6g}): run {command}"
                )

    judged = {r.get("source") for r in doc["results"]}
    for a in attacks:
        if f"adv:{a['attack_id']}" not in judged:
            missing.append(_missing(
                "detect", f"adversarial set {a['attack_id']} has no detection results", command
            ))

    has_scores = (folder / DETECT_SCORES).is_file()
    if not has_scores:
        missing.append(_missing(
            "detect", f"{DETECT_DIR}/{DETECT_SCORES} is missing: no ROC curves or histograms",
            command,
        ))
    return {
        "path": str(path),
        "fingerprint": made_from,
        "current": current,
        "created": doc.get("created"),
        "primary_score": doc.get("primary_score") or (scores[0] if scores else None),
        "scores": scores,
        "thresholds": thresholds,
        "results": doc["results"],
        "summary": doc.get("summary") or {},
        "sources": doc.get("sources") or [],
        "scores_file": str(folder / DETECT_SCORES) if has_scores else None,
    }


# --------------------------------------------------------------------------- runs


def collect_run(run: str | os.PathLike | None) -> dict[str, Any]:
    """Everything a report shows about one run, as a JSON-ready dict.

    Args:
        run: a run directory or checkpoint file; None: the latest run.

    Returns:
        ``name``, ``run_dir``, ``checkpoint``, ``head``, ``dataset`` (its name),
        ``dataset_spec``, ``feat_dim``, ``num_classes``, ``class_names``,
        ``input_shape``, ``covariance``, ``backbone``, ``fingerprint``,
        ``train`` (``result``: train.json, ``epochs``: metrics.jsonl records),
        ``attacks`` (one dict per set, see :func:`attack_figures`),
        ``detection`` (the content of detect/metrics.json, or None),
        ``missing`` (stage, message, command) and ``warnings``.

    Raises:
        GmcliError: the run or its checkpoint does not exist or is unreadable.
    """
    from gmcli.checkpoint import read_checkpoint

    run_dir, ckpt = resolve_run(run)
    _, meta = read_checkpoint(ckpt)
    fingerprint = str(meta.get("fingerprint"))
    missing: list[dict[str, Any]] = []
    warnings: list[str] = []

    train = _training(run_dir, missing)
    attacks = _attacks(run_dir, fingerprint, missing, warnings)
    detection = _detection(run_dir, fingerprint, attacks, missing, warnings)
    dataset = meta.get("dataset") or {}
    out = {
        "name": meta.get("name") or run_dir.name,
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt),
        "head": meta.get("head"),
        "dataset": dataset.get("name"),
        "dataset_spec": dataset,
        "feat_dim": meta.get("feat_dim"),
        "num_classes": meta.get("num_classes"),
        "class_names": meta.get("class_names"),
        "input_shape": meta.get("input_shape"),
        "covariance": (meta.get("head_config") or {}).get("covariance") if meta.get("head") == "gm" else None,
        "backbone": (meta.get("backbone") or {}).get("name"),
        "fingerprint": fingerprint,
        "train": train,
        "attacks": attacks,
        "detection": detection,
        "missing": missing,
        "warnings": warnings,
    }
    # Listed in the result (the CLI shows them once); logged for library callers.
    for m in missing:
        log.info("%s", m["message"] + (f"; make it with: {m['command']}" if m["command"] else ""))
    for w in warnings:
        log.info("%s", w)
    return _jsonable(out)


def collect_runs(sources: Sequence[str | os.PathLike | None]) -> list[dict[str, Any]]:
    """:func:`collect_run` for each source (none: the latest run), checked to share a data set.

    Each dict gains ``label``: the run's name, with its folder where names repeat.

    Raises:
        GmcliError: runs of different data sets (naming them).
    """
    items = list(sources) or [None]
    collected: list[dict[str, Any]] = []
    seen: set[str] = set()
    for source in items:
        run = collect_run(source)
        key = str(Path(run["run_dir"]).resolve())
        if key in seen:
            log.warning("run %s given more than once: shown once", run["run_dir"])
            continue
        seen.add(key)
        collected.append(run)
    # Labels for tables and legends: the run names, made unique by their folders.
    names_seen = [r["name"] for r in collected]
    for r in collected:
        r["label"] = r["name"] if names_seen.count(r["name"]) == 1 else f"{r['name']} ({r['run_dir']})"
    names = {r["dataset"] for r in collected}
    if len(names) > 1:
        listed = ", ".join(f"{r['run_dir']} ({r['dataset']})" for r in collected)
        raise GmcliError(
            f"runs of different data sets cannot share one report: {listed}; report them separately"
        )
    return collected


# --------------------------------------------------------------------------- per-sample scores


@dataclass
class ScoreTable:
    """The counted per-sample scores of ``detect/scores.csv``.

    ``values[(source, eps_index, role, score)]`` holds the scores (n,) of the
    rows with ``counted == 1``: the correctly classified clean inputs, the
    successful adversarial examples of those, OOD inputs, the reference split.
    ``eps_index`` is None for rows without an epsilon.
    """

    values: dict[tuple[str, int | None, str, str], np.ndarray]

    def get(self, source: str, eps_index: int | None, role: str, score: str) -> np.ndarray | None:
        return self.values.get((source, eps_index, role, score))

    def clean_and_abnormal(
        self, source: str, kind: str, eps_index: int | None, score: str
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(clean, abnormal) scores of one source (and epsilon), as detect compared them."""
        if kind == "adversarial":
            clean = self.get(source, None, "clean", score)
            abnormal = self.get(source, eps_index, "adversarial", score)
        elif kind == "ood":
            clean = self.get(REFERENCE_SOURCE, None, "clean", score)
            abnormal = self.get(source, None, "abnormal", score)
        else:
            return None
        if clean is None or abnormal is None:
            return None
        return clean, abnormal


def load_scores(path: str | os.PathLike) -> ScoreTable:
    """Read the counted rows of a ``scores.csv`` written by gmcli detect."""
    path = Path(path)
    lists: dict[tuple[str, int | None, str, str], list[float]] = defaultdict(list)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            needed = {"source", "eps_index", "role", "counted", "score", "value"}
            if reader.fieldnames is None or not needed <= set(reader.fieldnames):
                raise GmcliError(
                    f"scores file {str(path)!r} lacks the columns {', '.join(sorted(needed))}: "
                    "not written by gmcli detect"
                )
            for row in reader:
                if row["counted"] != "1":
                    continue
                idx = int(row["eps_index"]) if row["eps_index"] not in ("", None) else None
                lists[(row["source"], idx, row["role"], row["score"])].append(float(row["value"]))
    except OSError as exc:
        raise GmcliError(f"scores file {str(path)!r} cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise GmcliError(f"scores file {str(path)!r} has a malformed row ({exc})") from None
    return ScoreTable({k: np.asarray(v, dtype=np.float64) for k, v in lists.items()})


# --------------------------------------------------------------------------- features


@dataclass
class FeatureSample:
    """Features of a data split and the head's class statistics.

    Attributes:
        x: features (N, D) of at most ``max_points`` inputs (a seeded random
            sample of the split).
        y: labels (N,); pred: predictions (N,).
        mu: the GM head's means (K, D), or for a softmax head the class means of
            the training features stored in the checkpoint (None if absent).
        log_var: the GM head's clamped log-variances, (K, 1) isotropic, (K, D)
            diagonal; None for identity covariance (and softmax heads).
        covariance: ``identity``, ``isotropic``, ``diagonal`` or None (softmax).
        class_names: K names; split: the split drawn.
    """

    x: np.ndarray
    y: np.ndarray
    pred: np.ndarray
    mu: np.ndarray | None
    log_var: np.ndarray | None
    covariance: str | None
    class_names: list[str]
    split: str


def feature_sample(
    run: dict[str, Any], *, split: str = "test", max_points: int = 2000, device: str = "cpu", seed: int = 0
) -> FeatureSample:
    """Run the run's model on (a sample of) one split of its data set.

    Args:
        run: a dict of :func:`collect_run`.
        split: ``train``, ``val`` or ``test``.
        max_points: the most inputs to draw.
        device: where the model runs.
        seed: the sample's seed.
    """
    import torch

    from gmcli.checkpoint import load_checkpoint
    from gmcli.data import Split, load_dataset

    model, meta, calib = load_checkpoint(run["checkpoint"], device=device)
    data = load_dataset(**meta["dataset"]).split(split)
    n = len(data)
    if n == 0:
        raise GmcliError(f"report split {split!r} of run {run['run_dir']!r} is empty; choose another split")
    # A seeded random sample, so that every class shows up even in a sorted split.
    g = np.random.default_rng(seed)
    keep = torch.from_numpy(np.sort(g.permutation(n)[:max_points]) if n > max_points else np.arange(n))
    sample = Split(data.x[keep], data.y[keep])
    xs, preds = [], []
    with torch.no_grad():
        for inputs, _ in sample.batches(512):
            logits, feats = model.logits_and_features(inputs.to(device))
            xs.append(feats.double().cpu().numpy())
            preds.append(logits.argmax(1).cpu().numpy())
    head = model.head
    mu, log_var, covariance = None, None, None
    if model.head_kind == "gm":
        mu = head.mu.detach().double().cpu().numpy()
        lv = head.clamped_log_var()
        log_var = None if lv is None else lv.detach().double().cpu().numpy()
        covariance = head.covariance
    elif "class_means" in calib:
        mu = calib["class_means"].double().numpy()
    return FeatureSample(
        x=np.concatenate(xs),
        y=sample.y.numpy(),
        pred=np.concatenate(preds),
        mu=mu,
        log_var=log_var,
        covariance=covariance,
        class_names=[str(c) for c in (meta.get("class_names") or range(head.num_classes))],
        split=split,
    )


def recipe_section(run_dir: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """The ``key:`` section of a run's saved recipe (``recipe.yaml``), or None."""
    import yaml

    path = Path(run_dir) / runs.RECIPE
    if not path.is_file():
        return None
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise GmcliError(f"recipe {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    section = recipe.get(key) if isinstance(recipe, dict) else None
    if section is not None and not isinstance(section, dict):
        raise GmcliError(f"recipe key {key}: expected a mapping, got {type(section).__name__}")
    return section
