"""Attacks: the foolbox catalogue, GM-aware attacks, and the adversarial set on disk.

- :mod:`gmcli.attacks.config`: ``AttackConfig``, the recipe's ``attack:`` section;
- :mod:`gmcli.attacks.methods`: method names -> foolbox attacks;
- :mod:`gmcli.attacks.adaptive`: PGD with GM-aware objectives;
- :mod:`gmcli.attacks.advset`: ``AdvSetWriter``, ``load_advset``, ``list_advsets``;
- :mod:`gmcli.attacks.runner`: ``run_attack`` and ``attack_split``.

Importing this package does not import foolbox; the attack modules do, when used.
"""

from __future__ import annotations

from typing import Any

from gmcli.attacks.advset import AdvSet, AdvSetWriter, list_advsets, load_advset
from gmcli.attacks.config import AttackConfig, resolve_config
from gmcli.attacks.methods import METHODS, MethodSpec, method_names

__all__ = [
    "METHODS",
    "AdvSet",
    "AdvSetWriter",
    "AttackConfig",
    "AttackResult",
    "MethodSpec",
    "attack_split",
    "list_advsets",
    "load_advset",
    "method_names",
    "resolve_config",
    "run_attack",
]


def __getattr__(name: str) -> Any:
    # The runner pulls in torch-heavy code; load it on first use only.
    if name in ("run_attack", "attack_split", "AttackResult"):
        from gmcli.attacks import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'gmcli.attacks' has no attribute {name!r}")
