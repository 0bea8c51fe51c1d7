"""User-facing errors: one line naming the file, the field and what is allowed.

The CLI catches `LigerSimError` and prints its message without a traceback; anything
else escaping is a bug in ligersim, not in the user's input.
"""

from __future__ import annotations


class ScenarioWarning(UserWarning):
    """Something in the scenario that runs, but that the user should know (the CLI prints it as one
    `ligersim: warning:` line)."""


class LigerSimError(Exception):
    """An error in the user's input (scenario, trace, IR, profile) or environment."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        self.file = file
        self.field = field
        where = ": ".join(p for p in (str(file) if file else None, field) if p)
        super().__init__(f"{where}: {message}" if where else message)
