"""What every main screen shares: header, screen bar, footer, and redrawing from the app's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header

from ..widgets.nav import NavBar

if TYPE_CHECKING:
    from ..app import ValignApp


class ValignScreen(Screen):
    """A main screen. Subclasses compose ``body()`` and draw from state in ``refresh_from_state()``."""

    SCREEN_NAME = ""

    @property
    def valign(self) -> ValignApp:
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
