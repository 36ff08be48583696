"""The ``gmcli`` command: one typer app, one module per command."""

from __future__ import annotations

import os

# foolbox imports GitPython, which wants a git program; stay quiet without one.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import typer  # noqa: E402

from gmcli.cli import info, train  # noqa: E402
from gmcli.cli.common import setup_logging  # noqa: E402

app = typer.Typer(
    name="gmcli",
    help="Train, attack, audit and report image classifiers with the Gaussian-mixture loss.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the library's info messages."),
) -> None:
    setup_logging(verbose)


app.command("train")(train.train)
app.command("info")(info.info)
# further commands register here, one line each:
# (attack)
# (detect)
# (report)
# (run)
