"""The README stays true: its Python example runs and its recipe table matches the schema."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from gmcli.recipe import reference_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_recipe_reference_matches_the_schema() -> None:
    assert reference_markdown() in README


def test_python_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["logits"].shape == (32, 10)
    assert namespace["score"].shape == (32, 1)
    assert torch.isfinite(namespace["loss"])


def test_every_command_has_a_section() -> None:
    from gmcli.cli.app import app

    names = {c.name for c in app.registered_commands}
    assert {"train", "attack", "detect", "info"} <= names
    for name in names:
        assert f"### `gmcli {name}" in README, name
