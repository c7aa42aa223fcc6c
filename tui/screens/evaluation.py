"""Evaluation: the systems x metrics table from ``eval/report.json``, bar charts, and a button to run it."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, ProgressBar, Static

from valign_edge.events import Event

from .. import state
from ..widgets.charts import BarChart
from .base import ValignScreen


def _cell(value) -> Text:
    if value is None:
        return Text("n/a", style="dim", justify="right")
    if isinstance(value, float):
        return Text(f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}", justify="right")
    return Text(str(value), justify="right")


class EvalScreen(ValignScreen):
    SCREEN_NAME = "eval"
    AUTO_FOCUS = "#eval-run"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "run_eval", "Run evaluation", id="eval.run"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.report: dict | None = None

    def body(self) -> ComposeResult:
        with Horizontal(id="eval-controls"):
            yield Button("Run evaluation", id="eval-run", variant="primary", compact=True)
            yield ProgressBar(id="eval-bar", show_eta=False)
            yield Static("", id="eval-status")
        yield Static("", id="eval-empty")
        yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
        yield VerticalScroll(id="eval-charts")

    # --- drawing ----------------------------------------------------------------------------------------
    def refresh_from_state(self) -> None:
        app = self.valign
        self.report = state.load_report(app.active_run) if app.active_run is not None else None
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        report = self.report
        empty = self.query_one("#eval-empty", Static)
        for widget in (table, self.query_one("#eval-charts")):
            widget.display = report is not None
        empty.display = report is None
        if report is None:
            if app.active_run is None:
                empty.update("Open a run to see its evaluation.")
            else:
                empty.update("No evaluation yet: press e (or the button) to compare vanilla, RAG, SFT and "
                             "SFT+DPO on held-out questions. It takes a few minutes on a CPU.")
        else:
            columns = [c for c in report.get("columns", [])]
            table.add_column("system", key="system")
            for column in columns:
                table.add_column(column, key=column)
            for row in report.get("table", []):
                table.add_row(Text(str(row.get("system", "")), style="bold"),
                              *[_cell(row.get(c)) for c in columns])
            table.styles.height = min(12, table.row_count + 3)  # header and border
        self._draw_charts()
        self._draw_status()

    def _draw_charts(self) -> None:
        """One bar chart per metric, systems as bars."""
        box = self.query_one("#eval-charts", VerticalScroll)
        box.remove_children()
        if self.report is None:
            return
        charts = []
        labels = self.report.get("column_labels") or {}
        for column in self.report.get("columns", []):
            bars = []
            for row in self.report.get("table", []):
                value = row.get(column)
                bars.append((str(row.get("system", "")),
                             float(value) if isinstance(value, (int, float)) else None))
            title = str(labels.get(column, column))
            charts.append(BarChart(title, bars, classes="metric-chart"))
        box.mount_all(charts)

    def _draw_status(self) -> None:
        app = self.valign
        status = self.query_one("#eval-status", Static)
        bar = self.query_one("#eval-bar", ProgressBar)
        view = app.job.stages["eval"]
        running = app.job.job == "eval"
        self.query_one("#eval-run", Button).disabled = app.job.job is not None or app.active_run is None
        if running:
            status.update(Text(view.stats() or view.message or "starting…"))
            bar.update(total=view.total or None, progress=view.done or 0)
        else:
            bar.update(total=100, progress=100 if self.report else 0)
            if app.job.job:
                status.update(Text(f"the {app.job.job} job is running", style="dim"))
            elif self.report is not None:
                systems = len(self.report.get("table", []))
                status.update(Text(f"{systems} systems · eval/report.json", style="dim"))
            else:
                status.update("")

    # --- events -----------------------------------------------------------------------------------------
    def job_event(self, event: Event) -> None:
        self._draw_status()

    def job_done(self, message) -> None:
        self.refresh_from_state()

    @on(Button.Pressed, "#eval-run")
    def action_run_eval(self) -> None:
        self.valign.start_eval()
        self._draw_status()
