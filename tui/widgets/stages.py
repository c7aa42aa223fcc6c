"""The list of pipeline stages with a status mark, the time each took and what it is doing."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from valign_edge.tui.state import STAGE_TITLES, JobState

MARKS = {
    "pending": ("·", "dim"),
    "running": ("▶", "bold bright_yellow"),
    "done": ("✔", "bright_green"),
    "skipped": ("✔", "green"),
    "partial": ("◐", "yellow"),
    "stale": ("↻", "yellow"),
    "cancelled": ("■", "yellow"),
    "failed": ("✘", "bold bright_red"),
}
WORDS = {"partial": "stopped", "stale": "outdated", "skipped": "up to date"}


class StageList(Static):
    """One line per stage."""

    def show(self, state: JobState) -> None:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(width=1)
        table.add_column(no_wrap=True)
        table.add_column(justify="right", no_wrap=True, ratio=1)
        for stage, view in state.stages.items():
            mark, style = MARKS.get(view.status, ("?", ""))
            word = WORDS.get(view.status, view.status)
            if view.status == "done" and view.wall_s is not None:  # the mark says done; show how long
                seconds = round(view.wall_s)
                word = f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"
            elif view.status == "running" and view.total:
                word = f"{100 * (view.done or 0) / view.total:.0f}%"
            table.add_row(Text(mark, style=style), Text(STAGE_TITLES[stage]), Text(word, style=style))
        self.update(table)
