"""What every command shares: the console, errors, JSON output, logging."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from gmcli.errors import GmcliError

# Human output goes to stderr; stdout is kept for --json.
console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: bool = False) -> None:
    """Show the library's warnings (or info with --verbose) through rich on stderr."""
    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger("gmcli")
    root.handlers[:] = [RichHandler(console=console, show_time=False, show_path=False, markup=False)]
    root.setLevel(level)
    root.propagate = False


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on one line and exit with ``code``."""
    console.print(f"[bold red]error:[/] {' '.join(str(message).split())}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn GmcliError (and Ctrl-C) into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GmcliError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """One JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
