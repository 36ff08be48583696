"""The ``gmcli`` command: one typer app, one module per command."""

from __future__ import annotations

import os

# foolbox imports GitPython, which wants a git program; stay quiet without one.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import typer  # noqa: E402

from gmcli.cli import attack, detect, info, report, run, train  # noqa: E402
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
app.command("attack")(attack.attack)
app.command("detect")(detect.detect)
app.command("report")(report.report)
app.command("run")(run.run)


def cli() -> None:
    """The console entry point: like ``app()``, but a usage error (a flag's value of
    the wrong type, an unknown option) is also one line, ``error: ...``, exit code 2."""
    import sys

    from gmcli.cli.common import console

    try:  # typer 0.20+ carries its own copy of click
        from typer._click.exceptions import UsageError
        from typer.exceptions import Abort
    except ImportError:  # pragma: no cover - older typer on plain click
        from click.exceptions import Abort, UsageError

    command = typer.main.get_command(app)
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        code = command.main(args=sys.argv[1:], prog_name="gmcli", standalone_mode=False)
    except UsageError as exc:
        hint = f" (see gmcli {exc.ctx.info_name} --help)" if exc.ctx and exc.ctx.parent else ""
        console.print(f"[bold red]error:[/] {exc.format_message()}{hint}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Abort:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
