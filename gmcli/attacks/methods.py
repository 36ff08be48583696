"""The attack catalogue: gmcli method names -> foolbox 3.3.4 attacks.

Every attack runs in pixel space [0, 1] on a model whose normalisation is
inside (gm-method.md section 5). Names, norms and defaults:

==============  =====  =========================================  =====  =========  ======
method          norm   foolbox attack                             steps  step_size  random
==============  =====  =========================================  =====  =========  ======
fgsm            linf   LinfFastGradientAttack                     1      1 (eps)    off
bim             linf   LinfBasicIterativeAttack                   10     2.5/steps  off
pgd             linf   LinfProjectedGradientDescentAttack         40     2.5/steps  on
pgd-l2          l2     L2ProjectedGradientDescentAttack           50     2.5/steps  on
deepfool        linf   LinfDeepFoolAttack (overshoot 0.02)        50     -          -
deepfool-l2     l2     L2DeepFoolAttack (overshoot 0.02)          50     -          -
cw              l2     L2CarliniWagnerAttack (5 binary steps)     100    0.01 (lr)  -
pgd-adaptive    linf   PGD on CE - w * GM score (adaptive.py)     40     2.5/steps  on
pgd-likelihood  linf   PGD on -min_{k != y} nll_k (adaptive.py)   40     2.5/steps  on
==============  =====  =========================================  =====  =========  ======

``step_size`` is relative to eps (foolbox ``rel_stepsize``) except for C&W,
where it is Adam's learning rate. The default 2.5 / steps of the iterative
methods (Madry et al., ICLR 2018) lets the steps travel 2.5 eps in all,
whatever the number of steps; foolbox's fixed defaults (1/30 for PGD) would
leave a 20-step PGD short of the eps-ball's surface, weaker than FGSM.
DeepFool and C&W are minimisation attacks:
foolbox returns one raw result for all budgets, and only its clipping to
each eps differs.

Note:
    C&W runs 5 binary-search rounds of ``steps`` Adam steps (foolbox's default
    is 9 rounds of 10,000 steps, far too slow for a command-line sweep).
    DeepFool considers the 10 most likely classes (foolbox's default).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gmcli.attacks.config import AttackConfig
    from gmcli.models.classifier import Classifier

log = logging.getLogger(__name__)

CW_BINARY_SEARCH_STEPS = 5
DEEPFOOL_CANDIDATES = 10
DEEPFOOL_OVERSHOOT = 0.02


RULE = -1.0  # step_size sentinel: 2.5 / steps (the travel covers 2.5 eps)


@dataclass(frozen=True)
class MethodSpec:
    """One entry of the catalogue.

    Attributes:
        name: the method name users type.
        norm: ``"linf"`` or ``"l2"``, the norm of eps and of the stored norms.
        minimization: foolbox returns one raw result for every eps (DeepFool, C&W).
        targeted: foolbox supports a TargetedMisclassification criterion.
        gm_only: needs a GM head (the adaptive attacks).
        steps, step_size, random_start: defaults; ``None`` = not a knob of it;
            ``RULE`` as step_size = 2.5 / steps.
        summary: one line for help texts.
    """

    name: str
    norm: Literal["linf", "l2"]
    minimization: bool
    targeted: bool
    gm_only: bool
    steps: int | None
    step_size: float | None
    random_start: bool | None
    summary: str

    @property
    def slug(self) -> str:
        """Name and norm for attack ids, e.g. ``pgd-linf``, ``pgd-l2``."""
        return self.name if self.name.endswith(f"-{self.norm}") else f"{self.name}-{self.norm}"


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "fgsm", "linf", minimization=False, targeted=False, gm_only=False,
            steps=1, step_size=1.0, random_start=False,
            summary="fast gradient sign method, one step of size eps",
        ),
        MethodSpec(
            "bim", "linf", minimization=False, targeted=True, gm_only=False,
            steps=10, step_size=RULE, random_start=False,
            summary="basic iterative method (iterated FGSM)",
        ),
        MethodSpec(
            "pgd", "linf", minimization=False, targeted=True, gm_only=False,
            steps=40, step_size=RULE, random_start=True,
            summary="L-inf projected gradient descent",
        ),
        MethodSpec(
            "pgd-l2", "l2", minimization=False, targeted=True, gm_only=False,
            steps=50, step_size=RULE, random_start=True,
            summary="L2 projected gradient descent",
        ),
        MethodSpec(
            "deepfool", "linf", minimization=True, targeted=False, gm_only=False,
            steps=50, step_size=None, random_start=None,
            summary="DeepFool, L-inf (minimal perturbation, clipped to each eps)",
        ),
        MethodSpec(
            "deepfool-l2", "l2", minimization=True, targeted=False, gm_only=False,
            steps=50, step_size=None, random_start=None,
            summary="DeepFool, L2 (minimal perturbation, clipped to each eps)",
        ),
        MethodSpec(
            "cw", "l2", minimization=True, targeted=True, gm_only=False,
            steps=100, step_size=0.01, random_start=None,
            summary="Carlini-Wagner L2 (minimal perturbation, clipped to each eps)",
        ),
        MethodSpec(
            "pgd-adaptive", "linf", minimization=False, targeted=True, gm_only=True,
            steps=40, step_size=RULE, random_start=True,
            summary="GM-aware PGD: cross-entropy minus a weighted GM detection score",
        ),
        MethodSpec(
            "pgd-likelihood", "linf", minimization=False, targeted=True, gm_only=True,
            steps=40, step_size=RULE, random_start=True,
            summary="GM-aware PGD: pull the feature onto the nearest wrong class's mean",
        ),
    )
}


def method_names() -> list[str]:
    """The method names, in catalogue order."""
    return list(METHODS)


def import_foolbox() -> ModuleType:
    """Import foolbox quietly: no git program needed, no SciPy deprecation warning."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import foolbox

    return foolbox


def resolve_params(spec: MethodSpec, config: AttackConfig) -> dict[str, Any]:
    """The parameters this method really uses, defaults filled in, for the manifest.

    Settings a method has no use for are dropped with a logged warning, so the
    manifest (and the attack id) records only what shaped the result.
    """
    params: dict[str, Any] = {}
    if spec.name == "fgsm":
        if config.steps not in (None, 1) or config.step_size is not None:
            log.warning("fgsm takes one step of size eps: steps and step_size are ignored")
        params["random_start"] = bool(config.random_start)
    else:
        params["steps"] = config.steps if config.steps is not None else spec.steps
        if spec.step_size is not None:
            default = 2.5 / params["steps"] if spec.step_size == RULE else spec.step_size
            params["step_size"] = config.step_size if config.step_size is not None else default
        elif config.step_size is not None:
            log.warning("%s has no step size: step_size is ignored", spec.name)
        if spec.random_start is not None:
            rs = config.random_start if config.random_start is not None else spec.random_start
            params["random_start"] = bool(rs)
        elif config.random_start:
            log.warning("%s has no random start: random_start is ignored", spec.name)

    restarts = config.restarts
    if restarts > 1 and not params.get("random_start", False):
        log.warning(
            "restarts=%d without a random start repeat the same deterministic attack: "
            "running it once", restarts,
        )
        restarts = 1
    params["restarts"] = restarts
    params["targeted"] = config.targeted
    if config.targeted:
        params["target_class"] = config.target_class
    if spec.name == "pgd-adaptive":
        params["adaptive_weight"] = config.adaptive_weight
    if spec.name == "cw":
        params["binary_search_steps"] = CW_BINARY_SEARCH_STEPS
    if spec.name.startswith("deepfool"):
        params["candidates"] = DEEPFOOL_CANDIDATES
        params["overshoot"] = DEEPFOOL_OVERSHOOT
    return params


def build_attack(spec: MethodSpec, params: dict[str, Any], model: Classifier) -> Any:
    """The foolbox attack for ``spec`` with resolved ``params`` (see :func:`resolve_params`).

    ``model`` is needed by the GM-aware attacks only, which read its features.
    """
    fb = import_foolbox()
    attacks = fb.attacks
    name = spec.name
    if name == "fgsm":
        attack = attacks.LinfFastGradientAttack(random_start=params["random_start"])
    elif name in ("bim", "pgd", "pgd-l2"):
        cls = {
            "bim": attacks.LinfBasicIterativeAttack,
            "pgd": attacks.LinfProjectedGradientDescentAttack,
            "pgd-l2": attacks.L2ProjectedGradientDescentAttack,
        }[name]
        attack = cls(
            rel_stepsize=params["step_size"],
            steps=params["steps"],
            random_start=params["random_start"],
        )
    elif name in ("deepfool", "deepfool-l2"):
        cls = attacks.LinfDeepFoolAttack if name == "deepfool" else attacks.L2DeepFoolAttack
        attack = cls(
            steps=params["steps"], candidates=params["candidates"], overshoot=params["overshoot"]
        )
    elif name == "cw":
        attack = attacks.L2CarliniWagnerAttack(
            binary_search_steps=params["binary_search_steps"],
            steps=params["steps"],
            stepsize=params["step_size"],
        )
    elif name in ("pgd-adaptive", "pgd-likelihood"):
        from gmcli.attacks.adaptive import GMLikelihoodPGD, GMPenaltyPGD

        common = dict(
            rel_stepsize=params["step_size"],
            steps=params["steps"],
            random_start=params["random_start"],
        )
        if name == "pgd-adaptive":
            attack = GMPenaltyPGD(model, weight=params["adaptive_weight"], **common)
        else:
            attack = GMLikelihoodPGD(model, **common)
    else:  # the catalogue and this function are out of step
        raise NotImplementedError(f"method {name!r} is in METHODS but build_attack cannot build it")

    if params["restarts"] > 1:
        attack = attack.repeat(params["restarts"])
    return attack
