"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input, models or environment, explained in one line."""


class Cancelled(Exception):
    """Raised inside a stage when the user asked to stop (Ctrl-C, TUI cancel)."""
