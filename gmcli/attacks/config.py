"""The ``attack:`` section of a recipe, and the settings of one ``gmcli attack`` call.

The recipe gives the defaults, command-line flags override them
(:func:`resolve_config`). Validation errors become one-line
:class:`~gmcli.errors.GmcliError` messages that name the recipe key or the flag.

Conventions:

- ``eps``: the perturbation budgets of one sweep, in the attack's norm, in
  pixel space [0, 1]. Sorted ascending and deduplicated, so ``adv_<i>.npy``
  always holds the i-th smallest budget. An L-inf budget above 1 is
  meaningless (the input range) and is refused; L2 budgets may exceed 1 up to
  sqrt(C H W), checked when the input shape is known.
- ``step_size``: relative to eps (foolbox's ``rel_stepsize``): each step moves
  ``step_size * eps``. For ``cw`` it is the absolute learning rate of the Adam
  optimiser instead, as C&W has no budget during optimisation. ``None`` takes
  the method's default (see :data:`gmcli.attacks.methods.METHODS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gmcli.attacks.methods import METHODS, method_names
from gmcli.errors import GmcliError

# The command-line flag behind each field, to name it in error messages.
FLAGS: dict[str, str] = {
    "method": "--method",
    "eps": "--eps",
    "steps": "--steps",
    "step_size": "--step-size",
    "random_start": "--random-start",
    "restarts": "--restarts",
    "targeted": "--targeted",
    "target_class": "--target-class",
    "batch_size": "--batch-size",
    "limit": "--limit",
    "split": "--split",
    "seed": "--seed",
    "adaptive_weight": "--adaptive-weight",
}


class AttackConfig(BaseModel):
    """Settings of one attack sweep: the recipe's ``attack:`` section.

    Attributes:
        method: a name of :data:`~gmcli.attacks.methods.METHODS`.
        eps: budgets of the sweep (one foolbox call with ``epsilons=eps``).
        steps: iterations (PGD/BIM steps, DeepFool iterations, C&W steps per
            binary-search round); ``None`` = the method's default. FGSM is
            one step by definition.
        step_size: step relative to eps (C&W: Adam learning rate); ``None`` =
            the method's default.
        random_start: start from a uniform point of the eps-ball; ``None`` =
            the method's default (on for PGD, off for BIM).
        restarts: runs per sample; the first successful one is kept
            (foolbox ``attack.repeat``). Useful only with ``random_start``.
        targeted: aim at a target class instead of any wrong class.
        target_class: the one target for every sample (implies ``targeted``);
            ``None`` draws, from ``seed``, a class != label per sample.
        batch_size: samples per attack call and per write to disk.
        limit: attack only the first ``limit`` samples of the split.
        split: the data split to attack.
        seed: seeds random starts and drawn targets.
        adaptive_weight: weight of the GM detection-score penalty in
            ``pgd-adaptive``.
    """

    model_config = ConfigDict(extra="forbid")

    method: str = "pgd"
    eps: list[float] = Field(default_factory=lambda: [0.1, 0.3], min_length=1, max_length=64)
    steps: int | None = Field(default=None, ge=1, le=100_000)
    step_size: float | None = Field(default=None, gt=0.0, le=10.0)
    random_start: bool | None = None
    restarts: int = Field(default=1, ge=1, le=100)
    targeted: bool = False
    target_class: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=128, ge=1, le=65_536)
    limit: int | None = Field(default=None, ge=1)
    split: Literal["train", "val", "test"] = "test"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    adaptive_weight: float = Field(default=1.0, ge=0.0, le=1e6)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; accepted: {', '.join(method_names())}")
        return value

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_list(cls, value: Any) -> Any:
        # Accept one number or the CLI's comma-separated text as well as a list.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            try:
                return [float(p) for p in parts]
            except ValueError:
                raise ValueError(
                    f"expected comma-separated numbers such as 0.1,0.3, got {value!r}"
                ) from None
        return value

    @field_validator("eps")
    @classmethod
    def _eps_values(cls, value: list[float], info: ValidationInfo) -> list[float]:
        for eps in value:
            if not math.isfinite(eps) or eps < 0:
                raise ValueError(f"every eps must be a finite number >= 0, got {eps!r}")
        method = info.data.get("method")
        if method in METHODS and METHODS[method].norm == "linf" and max(value) > 1.0:
            raise ValueError(
                f"an L-inf eps above 1 exceeds the input range [0, 1], got {max(value)!r}; "
                "accepted: 0 <= eps <= 1"
            )
        return sorted(set(float(e) for e in value))

    @field_validator("targeted", "target_class")
    @classmethod
    def _method_targets(cls, value: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        asked = value is not None and value is not False
        if asked and method in METHODS and not METHODS[method].targeted:
            supported = ", ".join(n for n in method_names() if METHODS[n].targeted)
            raise ValueError(
                f"method {method!r} has no targeted variant in foolbox; targeted methods: {supported}"
            )
        return value

    @model_validator(mode="after")
    def _target_class_implies_targeted(self) -> AttackConfig:
        if self.target_class is not None:
            self.targeted = True
        return self


def _one_line(exc: ValidationError, values: Mapping[str, Any], flags: set[str]) -> str:
    """The first validation error as ``<key or flag>: <message>, got <value>``.

    A field in ``flags`` came from the command line and is named by its flag,
    any other by its recipe key.
    """
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    if field in flags or (not field and flags):
        where = FLAGS.get(field, field or "attack options")
    else:
        where = f"recipe key attack.{field}" if field else "recipe section attack"
    message = err["msg"].removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    if err["type"] == "extra_forbidden":
        accepted = ", ".join(AttackConfig.model_fields)
        return f"{where}: unknown key; accepted keys: {accepted}"
    if field in values and "got" not in message and repr(values[field]) not in message:
        message += f", got {values[field]!r}"
    return f"{where}: {message}"


def resolve_config(
    recipe: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> AttackConfig:
    """The settings of one call: the recipe's ``attack:`` section, then the flags.

    Args:
        recipe: the ``attack`` mapping of a recipe (or None).
        overrides: field values given on the command line; ``None`` values
            mean "not given" and are dropped.

    Raises:
        GmcliError: naming the recipe key or the flag that is wrong.
    """
    base: dict[str, Any] = dict(recipe or {})
    try:
        AttackConfig.model_validate(base)
    except ValidationError as exc:
        raise GmcliError(_one_line(exc, base, set())) from None

    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return AttackConfig.model_validate({**base, **given})
    except ValidationError as exc:
        raise GmcliError(_one_line(exc, {**base, **given}, set(given))) from None
