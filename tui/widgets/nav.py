"""The row of screen names under the header: the current screen highlighted, each one clickable."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

SCREENS = (("start", "1", "Start"), ("pipeline", "2", "Pipeline"), ("data", "3", "Data"),
           ("eval", "4", "Evaluation"), ("chat", "5", "Chat"))


class NavBar(Static):
    """Screen names with their number keys; clicking one switches to it."""

    def __init__(self, current: str, **kwargs):
        super().__init__(**kwargs)
        self.current = current

    def on_mount(self) -> None:
        self.update(self._content())

    def _content(self) -> Content:
        parts = []
        for name, key, title in SCREENS:
            style = "reverse bold" if name == self.current else ""
            part = Content.from_markup(f"[@click=app.goto('{name}')] {key} {title} [/]")
            parts.append(part.stylize(style) if style else part)
        return Content(" ").join(parts)
