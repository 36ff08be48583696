"""``python -m gmcli``: the same as the ``gmcli`` command."""

from gmcli.cli.app import cli

cli()
