"""What every main screen shares: header, screen bar, footer, and redrawing from the app's state."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header

from valign_edge.tui.state import JobState
from valign_edge.tui.widgets.nav import NavBar


def type_into(field, event) -> bool:
    """A printable key that reached the screen because no text field had focus (a button, a list, a tree
    had it) goes into ``field`` instead of being lost: the field takes focus and the character. A key
    something binds (the screen numbers, ?) keeps its binding."""
    from textual.widgets import Input

    screen = field.screen
    if (not event.is_printable or event.character == " " or isinstance(screen.focused, Input)
            or event.key in screen.active_bindings):
        return False
    field.select_on_focus = False  # else the focus selects the character, and the next key replaces it
    field.focus()
    field.insert_text_at_cursor(event.character)
    event.stop()
    return True


class Controls(Protocol):
    """What a screen may ask of the app (``tui.app.ValignApp`` provides it). A protocol, so that screens
    never import the app that imports them: the screens sit below the app, not beside it."""

    active_run: Any  # valign_edge.runs.workspace.Run or None
    cfg: Any  # valign_edge.config.RunConfig or None
    job: JobState
    allow_remote: bool  # the user's --allow-remote: a teacher or judge server off this machine may be used

    def show_error(self, exc: BaseException | str, title: str = "Error") -> None: ...
    def notify(self, message: str, *, severity: str = "information", **kwargs: Any) -> None: ...
    def open_run(self, path: Path, announce: bool = True) -> bool: ...
    def open_run_dialog(self) -> None: ...
    def new_run(self, doc: Path, run_dir: Path, preset: str | None, overrides: dict[str, Any]) -> bool: ...
    def start_pipeline(self) -> None: ...
    def start_eval(self) -> None: ...
    def cancel_job(self) -> None: ...
    def action_goto(self, name: str) -> None: ...


class ValignScreen(Screen):
    """A main screen. Subclasses compose ``body()`` and draw from state in ``refresh_from_state()``."""

    SCREEN_NAME = ""

    @property
    def valign(self) -> Controls:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield NavBar(self.SCREEN_NAME, id="nav")
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    def on_screen_resume(self) -> None:
        self._safe_refresh()

    def run_changed(self) -> None:
        self._safe_refresh()

    def _safe_refresh(self) -> None:
        try:
            self.refresh_from_state()
        except Exception as exc:  # noqa: BLE001 - unreadable run files become a message, not a crash
            self.valign.show_error(exc)

    def refresh_from_state(self) -> None:
        pass
