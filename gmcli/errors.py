"""The one exception type that reaches users of the command line."""

from __future__ import annotations


class GmcliError(ValueError):
    """A problem with the user's input: a recipe key, a path, a value, a file.

    The message is one line that names what is wrong, the value received and
    what is accepted. The CLI prints it as ``error: <message>`` and exits with
    code 2; library callers can catch it as a ``ValueError``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
