"""``gmcli run``: every stage a recipe asks for, each skipped while its outputs are current.

Stages, in order (``STAGES``):

- ``train``, always;
- ``attack``, when the recipe has an ``attack:`` section;
- ``detect``, when it has a ``detect:`` section;
- ``report``, by default (settings from a ``report:`` section when present).

A smoke run (:func:`load_plan` with ``smoke=True``) runs all four on a tiny
budget (``SMOKE``) into a separate run directory, ``<run dir>-smoke``, so a CI
job exercises the whole chain in well under a minute on digits.

Staleness rule. After a stage runs, ``<run>/pipeline.json`` records for it a
hash of its *inputs* (the stage's resolved settings, the checkpoint
fingerprint, and the content of the files it reads) and a sha256 of each
*output* file. A stage is current, and skipped, when both still match: the
same settings applied to the same upstream results, and outputs that nobody
has replaced since. Anything else (a changed recipe key, a retrained
checkpoint, a later ``gmcli detect`` by hand, a deleted file, ``force``) runs
it again. Two stages are also recognised as current without a record, from
the provenance their own outputs carry: a training whose saved recipe equals
the recipe (except the later stages' sections) and whose ``train.json``
names the checkpoint's fingerprint; an attack whose set, under the id the
attack settings give, is complete and records the checkpoint's fingerprint.

A training that must run again replaces the run in its directory (and with
it the run's attack, detect and report folders); an interrupted one with the
same recipe is resumed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gmcli import runs
from gmcli.attacks.advset import ATTACKS_DIR, MANIFEST
from gmcli.checkpoint import atomic_write
from gmcli.detectors.calibration import THRESHOLD_FILE
from gmcli.detectors.results import DETECT_DIR, METRICS_FILE, SCORES_FILE
from gmcli.errors import GmcliError
from gmcli.recipe import Recipe, apply_override, parse_recipe, read_yaml

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("train", "attack", "detect", "report")
SECTIONS: tuple[str, ...] = ("attack", "detect", "report")
STAMP_FILE = "pipeline.json"
STAMP_FORMAT = "gmcli-pipeline"

# The budget of a smoke run: small enough for CI, large enough to touch every path.
SMOKE: dict[str, Any] = {
    "epochs": 1,
    "limit_train": 600,
    "attack_limit": 64,
    "attack_steps": 5,
    "attack_batch_size": 64,
    "fit_limit": 500,
    "max_points": 500,
}


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """What ``gmcli run`` will do: the recipe, the run directory and each stage's settings.

    Attributes:
        recipe: the validated recipe (training keys; the later sections may be
            absent from its schema).
        source: where the recipe came from (for messages).
        run_dir: the run directory.
        attack, detect, report: the stages' settings; None = stage not asked for.
        smoke: a smoke run.
    """

    recipe: Recipe
    source: str
    run_dir: Path
    attack: Any = None
    detect: Any = None
    report: Any = None
    smoke: bool = False

    @property
    def stages(self) -> list[str]:
        """The stages to run, in order."""
        return ["train"] + [s for s in SECTIONS if getattr(self, s) is not None]


def _as_dict(section: Any) -> dict[str, Any] | None:
    """A recipe section as a plain mapping (the schema may hold a model, a dict or None)."""
    if section is None:
        return None
    if hasattr(section, "model_dump"):
        return section.model_dump(mode="json", exclude_unset=True)
    if isinstance(section, Mapping):
        return dict(section)
    raise GmcliError(f"recipe section must be a mapping of keys, got {type(section).__name__}")


def _smoke_sections(data: dict[str, Any], sections: dict[str, dict[str, Any] | None]) -> None:
    """Shrink the recipe (in place) and every stage's settings to the smoke budget."""
    train = data.setdefault("train", {}) or {}
    data["train"] = train
    train["epochs"] = SMOKE["epochs"]
    d = data.setdefault("data", {}) or {}
    data["data"] = d
    limit = d.get("limit_train")
    d["limit_train"] = min(limit, SMOKE["limit_train"]) if isinstance(limit, int) else SMOKE["limit_train"]

    from gmcli.attacks.methods import METHODS

    attack = sections["attack"] = dict(sections.get("attack") or {})
    limit = attack.get("limit")
    attack["limit"] = min(limit, SMOKE["attack_limit"]) if isinstance(limit, int) else SMOKE["attack_limit"]
    attack["batch_size"] = min(int(attack.get("batch_size") or SMOKE["attack_batch_size"]),
                               SMOKE["attack_batch_size"])
    spec = METHODS.get(attack.get("method", "pgd"))
    if spec is not None and spec.steps is not None and spec.steps > 1:
        attack["steps"] = min(int(attack.get("steps") or spec.steps), SMOKE["attack_steps"])

    detect = sections["detect"] = dict(sections.get("detect") or {})
    fit = detect.get("fit_limit")
    detect["fit_limit"] = SMOKE["fit_limit"] if not isinstance(fit, int) else min(fit, SMOKE["fit_limit"])

    report = sections["report"] = dict(sections.get("report") or {})
    report["max_points"] = min(int(report.get("max_points") or SMOKE["max_points"]), SMOKE["max_points"])
    if report.get("projection") == "tsne":
        report["projection"] = "pca"


def load_plan(
    path: str | os.PathLike,
    overrides: Iterable[str] = (),
    *,
    smoke: bool = False,
    run_dir: str | os.PathLike | None = None,
    stages: Iterable[str] | None = None,
) -> Plan:
    """Read a recipe with its ``attack:``, ``detect:`` and ``report:`` sections.

    Args:
        path: the recipe YAML file.
        overrides: ``key=value`` assignments (``--set``), also for the later
            sections (``attack.eps=[0.1]``).
        smoke: shrink every stage to the smoke budget and run all of them, in
            ``<run dir>-smoke``.
        run_dir: the run directory (default: the recipe's, ``runs/<name>``).
        stages: run only these stages (train is always part of a plan; the
            others get default settings when the recipe lacks their section).

    Raises:
        GmcliError: an unreadable recipe, a bad key (named), an unknown stage.
    """
    from gmcli.attacks.config import resolve_config as attack_config
    from gmcli.detectors.config import resolve_config as detect_config
    from gmcli.reports.config import resolve_config as report_config

    source = f"recipe {str(path)!r}"
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise GmcliError(f"{source} must be a YAML mapping of keys, got {type(data).__name__}")
    data = copy.deepcopy(data)
    for assignment in overrides:
        apply_override(data, assignment)

    # The later stages' sections. Those the recipe schema does not know (yet) are taken
    # out before it validates the rest; each is validated by its owner's resolve_config.
    known = Recipe.model_fields
    sections: dict[str, dict[str, Any] | None] = {}
    for name in SECTIONS:
        if name not in data:
            continue
        value = data[name] if name in known else data.pop(name)
        if value is None:  # "attack:" with nothing under it: the stage is off
            continue
        if not isinstance(value, dict):
            raise GmcliError(f"{source}: recipe key '{name}' must be a mapping of keys, got {value!r}")
        sections[name] = dict(value)
    if smoke:
        _smoke_sections(data, sections)
        for name in SECTIONS:
            if name in known and name in data:
                data[name] = sections[name]
    recipe = parse_recipe(data, source=source)
    for name in SECTIONS:
        if name in known and name not in sections:
            sections[name] = _as_dict(getattr(recipe, name, None))

    wanted = set(STAGES) if stages is None else set(stages)
    unknown = wanted - set(STAGES)
    if unknown:
        raise GmcliError(f"--stages: unknown stage {sorted(unknown)[0]!r}; accepted: {', '.join(STAGES)}")
    if stages is None and not smoke:
        # The recipe's sections decide; the report is made by default.
        wanted = {"train", "report"} | {s for s in ("attack", "detect") if sections.get(s) is not None}

    where = Path(run_dir) if run_dir is not None else recipe.resolved_run_dir()
    if smoke and run_dir is None:
        where = where.with_name(where.name + "-smoke")
    plan = Plan(recipe=recipe, source=str(path), run_dir=where, smoke=smoke)
    if "attack" in wanted:
        plan.attack = attack_config(sections.get("attack"))
    if "detect" in wanted:
        plan.detect = detect_config(sections.get("detect"))
    if "report" in wanted:
        plan.report = report_config(sections.get("report"))
    return plan


# --------------------------------------------------------------------------- staleness


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str | None:
    """sha256 of a file's bytes, or None when it does not exist."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def training_keys(recipe: Recipe | Mapping[str, Any]) -> dict[str, Any]:
    """The recipe keys a training depends on: all but the run directory and later sections."""
    data = recipe.to_dict() if isinstance(recipe, Recipe) else dict(recipe)
    return {k: v for k, v in data.items() if k not in ("run_dir", *SECTIONS)}


class Stamps:
    """``<run>/pipeline.json``: per stage, the inputs hash and output files' sha256."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / STAMP_FILE
        self.run_dir = run_dir
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
                if doc.get("format") == STAMP_FORMAT:
                    self.stages = dict(doc.get("stages") or {})
            except (OSError, ValueError, AttributeError):
                log.warning("%s is unreadable: every stage runs again", self.path)

    def current(self, stage: str, inputs: str) -> tuple[bool, str]:
        """(current, why): the record matches ``inputs`` and every output is unchanged."""
        rec = self.stages.get(stage)
        if not rec:
            return False, "no record of an earlier run"
        if rec.get("inputs") != inputs:
            return False, "its inputs changed"
        for name, sha in (rec.get("outputs") or {}).items():
            path = self._path(name)
            now = file_sha256(path)
            if now is None:
                return False, f"{path} is missing"
            if now != sha:
                return False, f"{path} changed since"
        return True, "outputs current"

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.run_dir / p

    def record(self, stage: str, inputs: str, outputs: Iterable[Path], seconds: float) -> None:
        recorded = {}
        for path in outputs:
            path = Path(path)
            try:
                name = str(path.resolve().relative_to(self.run_dir.resolve()))
            except ValueError:
                name = str(path.resolve())
            sha = file_sha256(path)
            if sha is not None:
                recorded[name] = sha
        self.stages[stage] = {
            "inputs": inputs,
            "outputs": recorded,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 3),
        }

    def forget(self, *stages: str) -> None:
        for s in stages:
            self.stages.pop(s, None)

    def save(self) -> None:
        doc = {"format": STAMP_FORMAT, "format_version": 1, "stages": self.stages}
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))


# --------------------------------------------------------------------------- results


@dataclass
class StageResult:
    """One stage: ``status`` is ``ran`` or ``skipped`` (current), with the reason and figures."""

    name: str
    status: str
    reason: str
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineResult:
    """What ``gmcli run`` did. ``failures``: ``detect.fail_under`` bars not reached."""

    recipe: str
    name: str
    run_dir: Path
    smoke: bool
    stages: list[StageResult]
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def stage(self, name: str) -> StageResult | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "name": self.name,
            "run_dir": str(self.run_dir),
            "smoke": self.smoke,
            "seconds": self.seconds,
            "stages": [asdict(s) for s in self.stages],
            "failures": self.failures,
        }


class PipelineObserver:
    """Progress of a pipeline; every hook does nothing by default."""

    def stage_start(self, name: str, reason: str) -> None:
        """Stage ``name`` starts, because ``reason``."""

    def stage_end(self, result: StageResult) -> None:
        """A stage ran or was skipped."""

    def train_observer(self) -> Any:
        """A :class:`~gmcli.training.observer.TrainObserver` for the training, or None."""
        return None

    def attack_progress(self) -> Callable[[int, int], None] | None:
        """A ``progress(done, total)`` callback for the attack, or None."""
        return None


# --------------------------------------------------------------------------- the stages


class Pipeline:
    """Runs a :class:`Plan`; see the module doc for the staleness rule.

    Args:
        plan: what to run.
        force: run every stage, current or not.
        device: ``auto``, ``cpu`` or ``cuda`` (default: the recipe's train.device).
        observer: receives progress.
    """

    def __init__(self, plan: Plan, *, force: bool = False, device: str | None = None,
                 observer: PipelineObserver | None = None) -> None:
        from gmcli.training.build import resolve_device

        self.plan = plan
        self.force = force
        self.device_name = device or plan.recipe.train.device
        self.device = str(resolve_device(self.device_name))
        self.observer = observer or PipelineObserver()
        self.run_dir = plan.run_dir
        self.stamps = Stamps(self.run_dir)
        self.fingerprint: str | None = None
        self.detect_result: Any = None

    def run(self) -> PipelineResult:
        started = time.perf_counter()
        results: list[StageResult] = []
        for name in self.plan.stages:
            results.append(getattr(self, f"_{name}")())
            self.observer.stage_end(results[-1])
        runs.mark_latest(self.run_dir)
        failures = self._failures()
        return PipelineResult(
            recipe=self.plan.source,
            name=self.plan.recipe.name,
            run_dir=self.run_dir,
            smoke=self.plan.smoke,
            stages=results,
            failures=failures,
            seconds=time.perf_counter() - started,
        )

    # -- helpers -------------------------------------------------------------------

    def _checkpoint_fingerprint(self) -> str:
        from gmcli.checkpoint import read_checkpoint

        _, meta = read_checkpoint(self.run_dir / runs.CHECKPOINT)
        return str(meta["fingerprint"])

    def _decide(self, stage: str, inputs: str,
                fallback: Callable[[], str | None] | None = None) -> tuple[bool, str]:
        """(run it, why)."""
        if self.force:
            return True, "--force"
        current, why = self.stamps.current(stage, inputs)
        if current:
            return False, why
        if stage not in self.stamps.stages and fallback is not None:
            found = fallback()
            if found:
                return False, found
        return True, why

    def _ran(self, stage: str, inputs: str, outputs: list[Path], seconds: float, reason: str,
             figures: dict[str, Any]) -> StageResult:
        self.stamps.record(stage, inputs, outputs, seconds)
        self.stamps.save()
        return StageResult(stage, "ran", reason, seconds, figures)

    # -- train ---------------------------------------------------------------------

    def _train(self) -> StageResult:
        from gmcli.training.trainer import RUN_OUTPUTS, Trainer

        recipe = self.plan.recipe
        inputs = _digest({"recipe": training_keys(recipe)})
        go, why = self._decide("train", inputs, self._trained_already)
        if not go:
            self.fingerprint = self._checkpoint_fingerprint()
            figures = json.loads((self.run_dir / runs.TRAIN_RESULT).read_text())
            return StageResult("train", "skipped", why, 0.0, figures)

        resume = overwrite = False
        holds_run = any((self.run_dir / n).exists() for n in RUN_OUTPUTS)
        if holds_run:
            if not self.force and self._resumable():
                resume, why = True, "resuming the interrupted training"
            else:
                overwrite = True
                log.warning("retraining %s (%s): the run there, with its attack, detect and report "
                            "results, is replaced", self.run_dir, why)
        self.observer.stage_start("train", why)
        tic = time.perf_counter()
        result = Trainer(recipe, run_dir=self.run_dir, resume=resume, overwrite=overwrite,
                         device=self.device_name, observer=self.observer.train_observer()).run()
        self.fingerprint = str(result["fingerprint"])
        self.stamps.forget(*SECTIONS)
        outputs = [self.run_dir / runs.CHECKPOINT, self.run_dir / runs.TRAIN_RESULT]
        return self._ran("train", inputs, outputs, time.perf_counter() - tic, why, result)

    def _saved_recipe_matches(self) -> bool:
        import yaml

        path = self.run_dir / runs.RECIPE
        try:
            saved = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return False
        return isinstance(saved, dict) and training_keys(saved) == training_keys(self.plan.recipe)

    def _trained_already(self) -> str | None:
        """A finished training of the same recipe, recognised from its own files."""
        path = self.run_dir / runs.TRAIN_RESULT
        if not (path.is_file() and (self.run_dir / runs.CHECKPOINT).is_file()):
            return None
        try:
            done = json.loads(path.read_text())
            same_weights = done.get("fingerprint") == self._checkpoint_fingerprint()
        except (OSError, ValueError, GmcliError):
            return None
        if same_weights and self._saved_recipe_matches():
            return "trained earlier with the same recipe"
        return None

    def _resumable(self) -> bool:
        return (self.run_dir / runs.STATE).is_file() and not (self.run_dir / runs.TRAIN_RESULT).is_file() \
            and self._saved_recipe_matches()

    # -- attack --------------------------------------------------------------------

    def _attack(self) -> StageResult:
        from gmcli.attacks import run_attack

        config = self.plan.attack
        inputs = _digest({"attack": config.model_dump(mode="json"), "checkpoint": self.fingerprint})
        go, why = self._decide("attack", inputs, lambda: self._attacked_already(config))
        if not go:
            return StageResult("attack", "skipped", why, 0.0, self._attack_figures(config))
        self.observer.stage_start("attack", why)
        tic = time.perf_counter()
        result = run_attack(self.run_dir, config=config, device=self.device,
                            progress=self.observer.attack_progress())
        outputs = [Path(result.path) / MANIFEST]
        return self._ran("attack", inputs, outputs, time.perf_counter() - tic, why, result.to_json())

    def _attack_id(self, config: Any) -> str | None:
        """The folder name ``gmcli attack`` gives a set made with ``config``."""
        try:
            from gmcli.attacks.methods import METHODS, resolve_params
            from gmcli.attacks.runner import attack_id_for

            spec = METHODS[config.method]
            return attack_id_for(spec, config, resolve_params(spec, config), runs.CHECKPOINT)
        except (ImportError, KeyError, TypeError):  # the attack package changed its helpers
            return None

    def _attacked_already(self, config: Any) -> str | None:
        attack_id = self._attack_id(config)
        if attack_id is None:
            return None
        path = self.run_dir / ATTACKS_DIR / attack_id / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        made_from = (manifest.get("checkpoint") or {}).get("fingerprint")
        if manifest.get("complete") and made_from == self.fingerprint:
            return f"set {attack_id} was made earlier from this checkpoint"
        return None

    def _attack_figures(self, config: Any) -> dict[str, Any]:
        rec = self.stamps.stages.get("attack") or {}
        names = list(rec.get("outputs") or {})
        if names:
            path = self.stamps._path(names[0])
        else:
            attack_id = self._attack_id(config)
            path = self.run_dir / ATTACKS_DIR / str(attack_id) / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return {"attack_id": manifest.get("attack_id"), "path": str(path.parent),
                "method": manifest.get("method"), **(manifest.get("results") or {})}

    # -- detect --------------------------------------------------------------------

    def _advset_manifests(self) -> dict[str, str | None]:
        from gmcli.attacks.advset import list_advsets

        return {p.name: file_sha256(p / MANIFEST) for p in list_advsets(self.run_dir)}

    def _detect(self) -> StageResult:
        from gmcli.detectors import run_detection

        config = self.plan.detect
        inputs = _digest({"detect": config.model_dump(mode="json"), "checkpoint": self.fingerprint,
                          "sets": self._advset_manifests()})
        go, why = self._decide("detect", inputs)
        folder = self.run_dir / DETECT_DIR
        if not go:
            return StageResult("detect", "skipped", why, 0.0, self._detect_figures(folder))
        self.observer.stage_start("detect", why)
        tic = time.perf_counter()
        if self._stored_tpr_differs(config):
            # "auto" applies a stored threshold unchanged; the recipe's tpr is the one meant.
            log.info("the stored thresholds were calibrated at another TPR than detect.tpr=%g: "
                     "calibrating anew", config.tpr)
            config = config.model_copy(update={"recalibrate": True})
        result = run_detection(self.run_dir, config=config, device=self.device)
        self.detect_result = result
        outputs = [folder / METRICS_FILE, folder / SCORES_FILE, folder / THRESHOLD_FILE]
        figures = {"primary_score": result.primary, "summary": result.summary,
                   "thresholds": {k: (v.value if v else None) for k, v in result.thresholds.items()}}
        return self._ran("detect", inputs, outputs, time.perf_counter() - tic, why, figures)

    def _stored_tpr_differs(self, config: Any) -> bool:
        if config.threshold != "auto" or config.recalibrate:
            return False
        try:
            stored = json.loads((self.run_dir / DETECT_DIR / THRESHOLD_FILE).read_text())["thresholds"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return any(isinstance(t, dict) and t.get("rule") == "auto" and t.get("tpr") != config.tpr
                   for t in stored.values())

    def _detect_figures(self, folder: Path) -> dict[str, Any]:
        try:
            doc = json.loads((folder / METRICS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return {"primary_score": doc.get("primary_score"), "summary": doc.get("summary"),
                "thresholds": {k: (v or {}).get("value") for k, v in (doc.get("thresholds") or {}).items()}}

    def _failures(self) -> list[str]:
        """``detect.fail_under`` bars not reached, whether detect ran now or earlier."""
        config = self.plan.detect
        if config is None or not config.fail_under:
            return []
        from gmcli.detectors import check_fail_under

        result = self.detect_result
        if result is None:
            try:
                doc = json.loads((self.run_dir / DETECT_DIR / METRICS_FILE).read_text())
            except (OSError, ValueError):
                return ["detect.fail_under: no detection results to check"]
            result = SimpleNamespace(results=doc.get("results") or [], primary=doc.get("primary_score"))
        return check_fail_under(result, config.fail_under)

    # -- report --------------------------------------------------------------------

    def _report(self) -> StageResult:
        from gmcli.reports import make_report
        from gmcli.reports.collect import resolve_run

        config = self.plan.report
        if config.out is None:
            config = config.model_copy(update={"out": str(self.run_dir / "report")})
        watched = [self.run_dir]
        for other in config.compare:
            try:
                watched.append(resolve_run(other)[0])
            except GmcliError:
                pass
        inputs = _digest({"report": config.model_dump(mode="json"), "checkpoint": self.fingerprint,
                          "runs": {str(r): self._report_inputs(r) for r in watched}})
        go, why = self._decide("report", inputs)
        if not go:
            from gmcli.reports.render import HTML_FILE, JSON_FILE, MD_FILE

            names = {"html": HTML_FILE, "md": MD_FILE, "json": JSON_FILE}
            files = {k: str(Path(config.out) / names[k]) for k in config.formats}
            return StageResult("report", "skipped", why, 0.0, {"out_dir": config.out, "files": files})
        self.observer.stage_start("report", why)
        tic = time.perf_counter()
        result = make_report([self.run_dir], config, device=self.device)
        outputs = [Path(p) for p in result.files.values()]
        return self._ran("report", inputs, outputs, time.perf_counter() - tic, why, result.to_json())

    @staticmethod
    def _report_inputs(run_dir: Path) -> dict[str, Any]:
        """sha256 of every file a report reads from a run."""
        from gmcli.attacks.advset import list_advsets

        names = [runs.TRAIN_RESULT, runs.METRICS, runs.RECIPE,
                 *(f"{DETECT_DIR}/{n}" for n in (METRICS_FILE, SCORES_FILE, THRESHOLD_FILE))]
        files = {n: file_sha256(run_dir / n) for n in names}
        files.update({f"{ATTACKS_DIR}/{p.name}": file_sha256(p / MANIFEST) for p in list_advsets(run_dir)})
        files["checkpoint"] = file_sha256(run_dir / runs.CHECKPOINT)
        return files


def run_pipeline(plan: Plan, *, force: bool = False, device: str | None = None,
                 observer: PipelineObserver | None = None) -> PipelineResult:
    """Run every stage of ``plan`` that is not current; see :class:`Pipeline`."""
    return Pipeline(plan, force=force, device=device, observer=observer).run()
