"""The YAML recipe: its schema, loading, and ``--set key=value`` overrides.

Every key has a default and a range; an unknown key, a wrong type or a value
out of range stops with a :class:`GmcliError` that names the key. The
reference of every key is generated from this schema (``gmcli recipe-keys``)
and written into the README.
"""

from __future__ import annotations

import copy
import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gmcli.attacks.config import AttackConfig
from gmcli.detectors.config import DetectConfig
from gmcli.errors import GmcliError
from gmcli.reports.config import ReportConfig
from gmcli.losses.gm import COVARIANCES, LKD_VARIANTS
from gmcli.losses.schedules import SCHEDULES


class Section(BaseModel):
    """A recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(Section):
    """Which data set, where it lives, and how it is split."""

    name: str = Field("digits", description="data set: digits, fashion-mnist, mnist, cifar10, "
                      "cifar100, svhn, tv-mnist, imagefolder")
    root: str | None = Field(None, description="folder of the files (fashion-mnist defaults to "
                             "/usr/share/datasets/fashion-mnist)")
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="share of train held out for validation")
    download: bool = Field(False, description="let torchvision download its data sets")
    image_size: int | None = Field(None, ge=4, le=1024, description="imagefolder: resize to this size")
    limit_train: int | None = Field(None, ge=10, description="use only the first N training samples")
    augment: list[Literal["hflip", "crop"]] = Field(
        default_factory=list, description="training augmentation: hflip, crop"
    )

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from gmcli.data import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown data set {v!r}; use one of {', '.join(DATASETS)}")
        return v


class ModelSection(Section):
    """The backbone and the head."""

    backbone: str = Field("digits-cnn", description="digits-cnn, convnet6, cnn28, resnet20, or tv:<name>")
    feat_dim: int | None = Field(None, ge=1, le=8192, description="feature dimension D (backbone default)")
    head: Literal["gm", "softmax"] = Field("gm", description="gm or softmax (the twin)")
    covariance: Literal["identity", "isotropic", "diagonal"] = Field(
        "identity", description=f"GM covariance: {', '.join(COVARIANCES)}"
    )
    learn_priors: bool = Field(False, description="learn the class priors p(k)")
    log_var_min: float = Field(-4.0, ge=-20.0, le=0.0, description="lower clamp of learned log-variances")
    log_var_max: float = Field(4.0, ge=0.0, le=20.0, description="upper clamp of learned log-variances")
    var_lr_mult: float = Field(0.1, gt=0.0, le=10.0, description="learning-rate multiplier of log-variances")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from gmcli.models.backbones import BACKBONES

        if v not in BACKBONES and not (v.startswith("tv:") and len(v) > 3):
            raise ValueError(f"unknown backbone {v!r}; use one of {', '.join(BACKBONES)} or tv:<torchvision name>")
        return v


class LossSection(Section):
    """The GM loss coefficients (ignored by the softmax head)."""

    alpha: float = Field(0.3, ge=0.0, le=10.0, description="margin alpha")
    lam: float = Field(0.1, ge=0.0, le=100.0, description="likelihood weight lambda")
    lkd: Literal["paper", "euclidean-half", "no-half", "all-classes"] = Field(
        "paper", description=f"likelihood variant: {', '.join(LKD_VARIANTS)}"
    )
    schedule: Literal["constant", "warmup", "stepup"] = Field(
        "constant", description=f"alpha/lambda schedule: {', '.join(SCHEDULES)}"
    )
    warmup_epochs: int = Field(5, ge=1, le=10000, description="warmup: epochs to reach alpha and lambda")
    stepup_every: int = Field(1000, ge=1, description="stepup: iterations between doublings of alpha")
    stepup_start: float = Field(0.1, gt=0.0, le=10.0, description="stepup: the first alpha")


class TrainSection(Section):
    """Optimiser, schedule and budget."""

    epochs: int = Field(10, ge=1, le=100000, description="epochs")
    batch_size: int = Field(128, ge=2, le=65536, description="training batch size")
    eval_batch_size: int = Field(1024, ge=1, le=65536, description="evaluation batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (momentum, Nesterov) or adam")
    lr: float = Field(0.1, gt=0.0, le=10.0, description="learning rate")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    nesterov: bool = Field(True, description="SGD Nesterov momentum")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="weight decay (not on GM means/variances)")
    scheduler: Literal["none", "step", "multistep", "cosine"] = Field(
        "cosine", description="learning-rate schedule, stepped once per epoch"
    )
    step_size: int = Field(5, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step/multistep: decay factor")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which to decay")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto, cpu or cuda")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(m < 1 for m in v) or v != sorted(set(v)):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {v}")
        return v


class Recipe(Section):
    """A gmcli recipe: what to train, and the defaults of the later stages."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100,
                      description="run name; the run directory is runs/<name>")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed for splits, initialisation and shuffling")
    run_dir: str | None = Field(None, description="run directory (default runs/<name>)")
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    loss: LossSection = Field(default_factory=LossSection)
    train: TrainSection = Field(default_factory=TrainSection)
    attack: AttackConfig | None = Field(None, description="defaults of gmcli attack (and a stage of gmcli run)")
    detect: DetectConfig | None = Field(None, description="defaults of gmcli detect (and a stage of gmcli run)")
    report: ReportConfig | None = Field(None, description="defaults of gmcli report (gmcli run reports by default)")

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.model.log_var_min >= self.model.log_var_max:
            raise ValueError("model.log_var_min must be below model.log_var_max")
        return self

    def resolved_run_dir(self) -> Path:
        """The run directory: ``run_dir`` or ``<runs root>/<name>``."""
        from gmcli.runs import runs_root

        return Path(self.run_dir) if self.run_dir else runs_root() / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    """One line for one pydantic error, naming the dotted recipe key."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _keys_at(model, loc[:-1])
        where = f"'{'.'.join(loc[:-1])}'" if len(loc) > 1 else "the recipe"
        return f"recipe key '{key}' is not known; the keys of {where} are: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"recipe key '{key}' is required"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"recipe key '{key}': {msg}{shown}"


def _keys_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """The keys a recipe accepts at a dotted path (sections may be optional)."""
    for part in path:
        field = model.model_fields.get(part)
        candidates = [getattr(field, "annotation", None), *typing.get_args(getattr(field, "annotation", None))]
        sections = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not sections:
            return []
        model = sections[0]
    return list(model.model_fields)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping; a GmcliError names the first bad key."""
    if not isinstance(data, dict):
        raise GmcliError(f"{source} must be a YAML mapping of keys, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise GmcliError(f"{source}: {_describe(first, Recipe)}{extra}") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to a recipe mapping."""
    if "=" not in assignment:
        raise GmcliError(f"--set {assignment!r} is not of the form key=value (e.g. train.epochs=3)")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise GmcliError(f"--set key {key!r} is not a dotted recipe key (e.g. train.lr)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise GmcliError(f"--set {key}: value {raw!r} is not valid YAML") from None
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise GmcliError(f"--set {key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | os.PathLike) -> Any:
    """The parsed YAML of a recipe file, with one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise GmcliError(f"recipe {str(path)!r} does not exist (expected a YAML file such as recipes/digits-gm.yaml)")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise GmcliError(f"recipe {str(path)!r} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GmcliError(f"recipe {str(path)!r} cannot be read: {exc}") from None


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    data = read_yaml(path)
    if data is None:
        data = {}
    if isinstance(data, dict):
        data = copy.deepcopy(data)
        for assignment in overrides:
            apply_override(data, assignment)
    return parse_recipe(data, source=f"recipe {str(path)!r}")


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def _range(field: Any) -> str:
    """The bounds of a field as text, from its pydantic constraints."""
    parts = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    args = typing.get_args(field.annotation)
    literals = [a for a in typing.get_args(field.annotation) if isinstance(a, str)]
    if typing.get_origin(field.annotation) is Literal:
        parts.append(" / ".join(str(a) for a in args))
    elif literals:
        parts.append(" / ".join(literals))
    return ", ".join(parts)


def _attribute_docs(model: type[BaseModel]) -> dict[str, str]:
    """``name: text`` entries of a class docstring's ``Attributes:`` block, joined to one line."""
    doc = (model.__doc__ or "").splitlines()
    out: dict[str, str] = {}
    current = None
    inside = False
    for line in doc:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if not stripped:
            current = None
            continue
        head, sep, rest = stripped.partition(": ")
        if sep and head.replace("_", "").isalnum() and head in model.model_fields:
            current = head
            out[current] = rest
        elif current:
            out[current] += " " + stripped
    return out


def reference_markdown() -> str:
    """The recipe reference (every key, its default and range) as a Markdown table."""
    rows = ["| key | default | accepted | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        docs = _attribute_docs(model)
        for name, field in model.model_fields.items():
            ann = field.annotation
            nested = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
            if nested:
                if not field.is_required() and field.get_default() is None:
                    rows.append(f"| `{prefix}{name}` | absent | a section | {field.description or ''} |")
                walk(nested[0], f"{prefix}{name}.")
                continue
            default = "required" if field.is_required() else field.get_default(call_default_factory=True)
            shown = "required" if default == "required" else f"`{json_value(default)}`"
            meaning = (field.description or docs.get(name, "")).replace("|", "/").replace("``", "`")
            rows.append(f"| `{prefix}{name}` | {shown} | {_range(field)} | {meaning} |")

    walk(Recipe, "")
    return "\n".join(rows) + "\n"


def json_value(value: Any) -> str:
    import json

    return json.dumps(value)
