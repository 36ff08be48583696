"""The console entry point: usage errors are one line and exit code 2, like every other error."""

from __future__ import annotations

import subprocess
import sys

import pytest


def gmcli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gmcli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trian"], "No such command 'trian'. Did you mean 'train'?"),
        (["attack", "--steps", "abc"], "Invalid value for '--steps'"),
        (["train"], "Missing argument 'recipe'"),
        (["train", "recipes/digits-gm.yaml", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str) -> None:
    res = gmcli(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert res.stdout == ""


def test_no_arguments_show_help() -> None:
    res = gmcli()
    assert res.returncode == 0
    for command in ("train", "attack", "detect", "report", "run", "info"):
        assert command in res.stdout
