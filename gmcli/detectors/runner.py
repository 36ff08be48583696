"""``gmcli detect`` as a library call: score inputs, apply thresholds, measure, write.

:func:`run_detection` loads a run's checkpoint, resolves the thresholds
(:mod:`gmcli.detectors.calibration`), scores every source
(:mod:`gmcli.detectors.inputs`) with every score (:mod:`gmcli.detectors.scores`),
measures (:mod:`gmcli.detectors.metrics`) and writes ``<run>/detect/``
(``threshold.json``, ``scores.csv``, ``metrics.json``; see
:mod:`gmcli.detectors.results`).

What counts (gm-method.md section 4): for an adversarial set, the clean inputs
are the set's clean inputs the model classified correctly, and the abnormal
ones are the adversarial examples that succeeded on those; a failed attack is
not an adversarial example (their number is reported as ``n_failed``). For an
out-of-distribution source every input is abnormal and the clean reference is
the correctly classified part of the run's test split. For a split of the
run's own data every input is clean: the figures are the fraction flagged, the
clean TPR and the accuracy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gmcli.checkpoint import load_checkpoint
from gmcli.detectors import metrics
from gmcli.detectors.calibration import THRESHOLD_FILE, Threshold, ThresholdStore, resolve_threshold
from gmcli.detectors.config import DetectConfig, resolve_config
from gmcli.detectors.features import Outputs, TrainingStats, check_inputs, extract, tensor_batches
from gmcli.detectors.inputs import InputReader, Source
from gmcli.detectors.results import (
    DETECT_DIR,
    REFERENCE,
    DetectResult,
    ScoreRows,
    check_fail_under,
    summarise,
    write_results,
)
from gmcli.detectors.scores import SCORES, Score, build_score, check_scores, default_scores
from gmcli.errors import GmcliError
from gmcli.runs import resolve_run

log = logging.getLogger(__name__)

SEPARATION = (
    "auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr_clean_accepted", "fpr_at_95_detection",
)
# Fewer successful adversarial examples than this make the figures noisy.
FEW = 20


def _numpy_batches(arr: np.ndarray, batch_size: int) -> Iterator[Tensor]:
    """Float32 batches of a (memory-mapped) array, read one batch at a time."""
    for start in range(0, len(arr), batch_size):
        yield torch.from_numpy(np.array(arr[start : start + batch_size], dtype=np.float32))


class Detection:
    """One detection call on a run; see :func:`run_detection`."""

    def __init__(
        self,
        run: str | Path | None,
        config: DetectConfig | None = None,
        *,
        overrides: dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> None:
        self.run_dir, self.ckpt = resolve_run(run)
        self.model, self.meta, self.calib = load_checkpoint(self.ckpt, device)
        if config is None:
            config = resolve_config(_recipe_section(self.run_dir, self.meta), overrides)
        self.config = config
        self.fingerprint = str(self.meta["fingerprint"])
        self.head_kind = self.model.head_kind
        self.names = list(config.scores) if config.scores else default_scores(self.head_kind)
        check_scores(self.names, self.head_kind)
        self.detect_dir = self.run_dir / DETECT_DIR
        self._bundle: Any = None
        self._val: tuple[Outputs, int] | None = None
        self._reference: Outputs | None = None
        self.scorers: dict[str, Score] = {}

    # -- data of the run, loaded when first needed -------------------------------

    def bundle(self) -> Any:
        if self._bundle is None:
            from gmcli.data import load_dataset

            spec = dict(self.meta.get("dataset") or {})
            if "name" not in spec:
                raise GmcliError(f"checkpoint {str(self.ckpt)!r} records no dataset to load")
            log.info("loading the run's data set %s", spec["name"])
            self._bundle = load_dataset(**spec)
        return self._bundle

    def outputs(self, x: Tensor, what: str) -> Outputs:
        check_inputs(self.model, x, what)
        return extract(self.model, tensor_batches(x, self.config.batch_size))

    def training_stats(self) -> TrainingStats:
        k = self.model.head.num_classes
        stats = TrainingStats.from_calib(self.calib, k)
        if stats is not None:
            return stats
        train = self.bundle().split("train")
        limit = self.config.fit_limit
        if limit is not None and len(train) > limit:
            train = train.subset(limit)
        log.info(
            "checkpoint has no training-feature statistics (calib.*): computing them from %d "
            "images of the train split", len(train),
        )
        out = self.outputs(train.x, "train split")
        return TrainingStats.fit(out.features, train.y, k)

    def validation(self, score: str) -> tuple[np.ndarray, int]:
        """Scores of the correctly classified validation inputs, and the split's size."""
        if self._val is None:
            val = self.bundle().split("val")
            if len(val) == 0:
                raise GmcliError(
                    f"threshold calibration: run {str(self.run_dir)!r} has no validation data "
                    "(its data set was loaded with val_fraction 0); pass --threshold VALUE "
                    "or use a stored threshold (--threshold stored)"
                )
            out = self.outputs(val.x, "validation split")
            correct = out.pred == val.y
            self._val = (Outputs(out.logits[correct], out.features[correct]), len(val))
        out, n_split = self._val
        return self._score(score, out), n_split

    def reference(self) -> Outputs:
        """The correctly classified inputs of the run's test split: OOD's clean side."""
        if self._reference is None:
            test = self.bundle().split("test")
            out = self.outputs(test.x, "test split")
            correct = out.pred == test.y
            self._reference = Outputs(out.logits[correct], out.features[correct])
        return self._reference

    def _score(self, name: str, out: Outputs) -> np.ndarray:
        values = self.scorers[name](out).cpu().numpy().astype(np.float64)
        if not np.isfinite(values).all():
            raise GmcliError(
                f"score {name!r} is not finite for {int((~np.isfinite(values)).sum())} inputs "
                "(NaN or infinite features: is the checkpoint sound?)"
            )
        return values

    # -- the call -----------------------------------------------------------------

    def run(self) -> DetectResult:
        cfg = self.config
        reader = InputReader(self.run_dir, self.meta, self.bundle, on_error=cfg.on_error)
        sources = reader.read(list(cfg.inputs))

        head = self.model.head
        stats = None
        if any(SCORES[n].needs_stats for n in self.names):
            stats = self.training_stats()
        self.scorers = {n: build_score(n, head, stats, cfg) for n in self.names}

        store = ThresholdStore(self.detect_dir / THRESHOLD_FILE)
        thresholds: dict[str, Threshold | None] = {}
        for i, name in enumerate(self.names):
            thresholds[name] = resolve_threshold(
                store, name, mode=cfg.threshold if i == 0 else _secondary(cfg.threshold),
                fingerprint=self.fingerprint, tpr=cfg.tpr, recalibrate=cfg.recalibrate,
                calibration=self.validation, required=(i == 0),
            )
        _check_not_calibrated_on(sources, thresholds)

        rows = ScoreRows()
        results: list[dict[str, Any]] = []
        broken: dict[str, list[np.ndarray]] = {n: [] for n in self.names}
        for source in sources:
            log.info("scoring %s (%s, %d inputs)", source.name, source.kind, source.n)
            if source.kind == "adversarial":
                results += self._adversarial(source, thresholds, rows, broken)
            else:
                results += self._plain(source, thresholds, rows)
        if any(s.kind == "ood" and s.n for s in sources):
            self._reference_rows(thresholds, rows)
        for source in sources:  # an empty source still replaces its earlier rows
            rows.sources.add(source.name)

        summary = summarise(results, broken, _aligned(sources))
        store.save()
        result = DetectResult(
            run_dir=self.run_dir,
            checkpoint=self.ckpt,
            fingerprint=self.fingerprint,
            head=self.head_kind,
            scores=self.names,
            thresholds=thresholds,
            results=results,
            summary=summary,
            sources=[{"name": s.name, "kind": s.kind, "n": s.n, "split": s.split,
                      "skipped": s.skipped} for s in sources],
        )
        write_results(self.detect_dir, result, rows)
        result.files["threshold"] = str(store.path)
        result.failures = check_fail_under(result, cfg.fail_under)
        return result

    def _adversarial(self, source: Source, thresholds: dict[str, Threshold | None],
                     rows: ScoreRows, broken: dict[str, list]) -> list[dict[str, Any]]:
        a = source.advset
        manifest = a.manifest
        labels = np.asarray(a.labels, dtype=np.int64)
        clean_pred = np.asarray(a.clean_pred, dtype=np.int64)
        correct = clean_pred == labels
        bs = self.config.batch_size
        check_inputs(self.model, torch.empty(0, *a.clean.shape[1:]), source.name)
        clean_out = extract(self.model, _numpy_batches(a.clean, bs))
        if len(clean_out):
            differ = int((clean_out.pred.numpy() != clean_pred).sum())
            if differ:
                log.warning("%s: %d of %d clean predictions differ from those stored in the set",
                            source.name, differ, a.n)
        clean_scores = {n: self._score(n, clean_out) for n in self.names}
        for n in self.names:
            rows.add(source.name, source.kind, role="clean", values=clean_scores[n], score=n,
                     threshold=thresholds[n], label=labels, pred=clean_pred, counted=correct)

        out: list[dict[str, Any]] = []
        for i, eps in enumerate(a.epsilons):
            success = np.asarray(a.success(i), dtype=bool)
            adv_pred = np.asarray(a.pred(i), dtype=np.int64)
            counted = correct & success
            n_adv, n_failed = int(counted.sum()), int((correct & ~success).sum())
            if a.n == 0:
                log.warning("%s holds no samples: its figures are undefined", source.name)
            elif n_adv == 0:
                log.warning("%s, eps %g: no successful adversarial example among %d correctly "
                            "classified inputs; figures undefined",
                            source.name, eps, int(correct.sum()))
            elif n_adv < FEW:
                log.warning("%s, eps %g: only %d successful adversarial examples (of %d); "
                            "figures are noisy", source.name, eps, n_adv, int(correct.sum()))
            adv_out = extract(self.model, _numpy_batches(a.adv(i), bs))
            for n in self.names:
                s_adv = self._score(n, adv_out)
                t = thresholds[n]
                row = self._row(source, n, t, eps=eps, eps_index=i)
                row.update(attack=manifest.get("method"), norm=manifest.get("norm"),
                           n_total=a.n, n_clean=int(correct.sum()),
                           n_clean_misclassified=int((~correct).sum()),
                           n_abnormal=n_adv, n_failed=n_failed)
                row.update(_separation(clean_scores[n][correct], s_adv[counted]))
                row.update(clean_tpr=math.nan, detection_rate=math.nan, robust_error=math.nan)
                if t is not None:
                    row.update(metrics.at_threshold(clean_scores[n][correct], s_adv[counted],
                                                    t.value))
                    errors = (adv_pred != labels) & (s_adv <= t.value)
                    row["robust_error"] = metrics.rate(errors)
                    broken[n].append(errors)
                out.append(row)
                rows.add(source.name, source.kind, role="adversarial", values=s_adv, score=n,
                         threshold=t, label=labels, pred=adv_pred, counted=counted,
                         epsilon=eps, eps_index=i)
        return out

    def _plain(self, source: Source, thresholds: dict[str, Threshold | None],
               rows: ScoreRows) -> list[dict[str, Any]]:
        if source.n == 0:
            log.warning("%s holds no inputs: its figures are undefined (n = 0)", source.name)
        out_ = self.outputs(source.x, source.name)
        y = source.y.numpy() if source.y is not None else np.full(source.n, -1)
        pred = out_.pred.numpy()
        labelled = y >= 0
        correct = labelled & (pred == y)
        ref = self.reference() if source.kind == "ood" and source.n else None
        out: list[dict[str, Any]] = []
        for n in self.names:
            s = self._score(n, out_)
            t = thresholds[n]
            row = self._row(source, n, t)
            row.update(n_inputs=source.n, n_skipped=len(source.skipped))
            row.update(clean_tpr=math.nan, flagged_fraction=math.nan)
            if source.kind == "ood":
                s_ref = self._score(n, ref) if ref is not None else np.zeros(0)
                row.update(n_clean=len(s_ref), n_abnormal=source.n, detection_rate=math.nan)
                row.update(_separation(s_ref, s))
                if t is not None:
                    row.update(metrics.at_threshold(s_ref, s, t.value))
                    row["flagged_fraction"] = row["detection_rate"]
            else:
                row.update(n_clean=int(correct.sum()), n_abnormal=0,
                           accuracy=metrics.rate(correct[labelled]))
                if t is not None:
                    row.update(flagged_fraction=metrics.rate(s > t.value),
                               clean_tpr=metrics.rate(s[correct] <= t.value))
            out.append(row)
            ood = source.kind == "ood"
            rows.add(source.name, source.kind, role="abnormal" if ood else "clean", values=s,
                     score=n, threshold=t, label=y, pred=pred,
                     counted=np.ones(source.n, dtype=bool) if ood else correct)
        return out

    def _reference_rows(self, thresholds: dict[str, Threshold | None], rows: ScoreRows) -> None:
        """The reference scores of OOD sources (correctly classified: label = pred)."""
        ref = self.reference()
        pred = ref.pred.numpy()
        for n in self.names:
            rows.add(REFERENCE, "in-distribution", role="clean",
                     values=self._score(n, ref), score=n, threshold=thresholds[n],
                     label=pred, pred=pred, counted=np.ones(len(ref), dtype=bool))

    def _row(self, source: Source, score: str, t: Threshold | None, *,
             eps: float | None = None, eps_index: int | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "source": source.name, "kind": source.kind, "attack": None, "norm": None,
            "epsilon": eps, "eps_index": eps_index, "score": score,
            "threshold": None if t is None else t.value,
        }
        if source.kind != "in-distribution":
            # Threshold-free figures; NaN (null in JSON) until both sides are non-empty.
            row.update(dict.fromkeys(SEPARATION, math.nan))
        return row


def _secondary(mode: str | float) -> str:
    """The threshold rule of the scores after the first: a number is the first's only."""
    return "stored" if mode == "stored" else "auto"


def _separation(clean: np.ndarray, abnormal: np.ndarray) -> dict[str, float]:
    if len(clean) == 0 or len(abnormal) == 0:
        return {}
    return metrics.separation(clean, abnormal)


def _check_not_calibrated_on(sources: list[Source], thresholds: dict[str, Threshold | None]) -> None:
    """Refuse to judge inputs from the split a threshold was calibrated on."""
    for source in sources:
        for t in thresholds.values():
            if t is not None and source.split is not None and t.split == source.split:
                raise GmcliError(
                    f"--input {source.name}: its inputs come from the {t.split} split, on which "
                    f"the {t.score} threshold was calibrated; judge another split, or pass "
                    "--threshold VALUE"
                )


def _recipe_section(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The ``detect:`` section of the run's recipe.yaml, else of the checkpoint's recipe."""
    from gmcli.runs import RECIPE

    path = run_dir / RECIPE
    recipe: Any = meta.get("recipe")
    if path.is_file():
        import yaml

        try:
            recipe = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GmcliError(
                f"recipe {str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}"
            ) from None
    section = recipe.get("detect") if isinstance(recipe, dict) else None
    if section is not None and not isinstance(section, dict):
        raise GmcliError(f"recipe key detect: expected a mapping, got {type(section).__name__}")
    return section


def run_detection(
    run: str | Path | None = None,
    config: DetectConfig | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
) -> DetectResult:
    """Judge inputs with a run's checkpoint and write ``<run>/detect/``.

    Args:
        run: a run directory or checkpoint (None: the latest run).
        config: the options, fully resolved; None: the run recipe's ``detect:``
            section (if any) with ``overrides`` on top (``None`` values ignored).
        overrides: options given by the caller (the CLI's flags).
        device: where the model runs.

    Returns:
        the thresholds, figures and files (:class:`DetectResult`).

    Raises:
        GmcliError: bad input (an adversarial set of another checkpoint, a GM
            score on a softmax head, no validation data to calibrate on, ...).
    """
    return Detection(run, config, overrides=overrides, device=device).run()


def _aligned(sources: list[Source]) -> bool:
    """Whether every adversarial set holds the same test points (labels and clean inputs)."""
    sets = [s.advset for s in sources if s.kind == "adversarial"]
    return len(sets) > 0 and all(
        a.n == sets[0].n and np.array_equal(a.labels, sets[0].labels)
        and np.array_equal(a.clean, sets[0].clean)
        for a in sets[1:]
    )
