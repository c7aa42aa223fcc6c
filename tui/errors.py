"""One readable line for an exception, shared by the app and its screens (which must not import the app)."""

from __future__ import annotations

from valign_edge.errors import Cancelled, UserError


def error_text(exc: BaseException) -> str:
    """One readable line for an exception."""
    if isinstance(exc, (UserError, Cancelled)):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected error: {type(exc).__name__}" + (f": {text}" if text else "")
