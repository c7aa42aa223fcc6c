"""Evaluation: the systems x metrics tables from ``eval/report.json`` (each probe: the independent measure;
the held-out set: a generator-made sanity check), every cell with its sample size, bar charts, a probe
file picker and a button to run it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, DataTable, ProgressBar, Static

from valign_edge.events import Event
from valign_edge.tui import state
from valign_edge.tui.screens.base import ValignScreen
from valign_edge.tui.widgets.charts import BarChart

HELD_OUT_TITLE = "held-out: generator-made sanity check"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def short_note(cell: dict | None) -> tuple[str, str]:
    """(words, style) for the second line of a cell: its sample size and what it can show."""
    if not cell or not cell.get("note"):
        return "", "dim"
    n = cell.get("n", 0)
    note = cell["note"]
    if "too few" in note:
        return f"n={n}: too few", "yellow"
    if "judge unreliable" in note:
        return f"n={n}: judge unreliable", "yellow"
    if cell.get("conclusive") is False:
        return f"n={n}: inconclusive", "yellow"
    if cell.get("conclusive") is True:
        return f"n={n}: clear", "green"
    return f"n={n}", "dim"


def cell(section: dict, system: str, column: str, value) -> Text:
    if value is None:
        return Text("n/a", style="dim", justify="right")
    text = Text(_value(value), justify="right")
    ci = ((section.get("intervals") or {}).get(system) or {}).get(column)
    if ci:
        text.append(f" [{_value(ci[0])}, {_value(ci[1])}]", style="dim")
    words, style = short_note(((section.get("evidence") or {}).get(system) or {}).get(column))
    if words:
        text.append("\n" + words, style=style)
    return text


class EvalScreen(ValignScreen):
    SCREEN_NAME = "eval"
    AUTO_FOCUS = "#eval-run"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("e", "run_eval", "Run evaluation", id="eval.run"),
        Binding("p", "pick_probe", "Probe file", id="eval.probe"),
    ]
    DEFAULT_CSS = """
    #eval-notes { margin: 0 1; height: auto; }
    #eval-body { height: 1fr; }
    #eval-probe-table { margin-top: 1; border: round $accent 50%; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.report: dict | None = None
        self._shipped: dict[Path, Path | None] = {}

    def body(self) -> ComposeResult:
        with Horizontal(id="eval-controls"):
            yield Button("Run evaluation", id="eval-run", variant="primary", compact=True)
            yield Button("Probe…", id="eval-pick-probe", compact=True)
            yield ProgressBar(id="eval-bar", show_eta=False)
            yield Static("", id="eval-status")
        yield Static("", id="eval-empty")
        with VerticalScroll(id="eval-body"):  # tables, notes and charts scroll together
            yield DataTable(id="eval-probe-table", cursor_type="row", zebra_stripes=True)
            yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="eval-notes")
            yield VerticalScroll(id="eval-charts")

    # --- drawing ----------------------------------------------------------------------------------------
    def _fill(self, table: DataTable, section: dict, title: str) -> None:
        table.clear(columns=True)
        table.border_title = title
        columns = list(section.get("columns", []))
        labels = (self.report or {}).get("column_labels") or {}
        table.add_column("system", key="system")
        for column in columns:
            table.add_column(column, key=column)
        tall = bool(section.get("evidence"))
        for row in section.get("table", []):
            system = str(row.get("system", ""))
            table.add_row(Text(system, style="bold"), *[cell(section, system, c, row.get(c)) for c in columns],
                          height=2 if tall else 1)
        # header, border, and the horizontal scrollbar wide tables get
        table.styles.height = table.row_count * (2 if tall else 1) + 3 + (len(columns) > 4)
        table.tooltip = "\n".join(f"{c}: {labels.get(c, c)}" for c in columns) or None

    def refresh_from_state(self) -> None:
        app = self.valign
        self.report = state.load_report(app.active_run) if app.active_run is not None else None
        report = self.report
        empty = self.query_one("#eval-empty", Static)
        self.query_one("#eval-body").display = report is not None
        self.query_one("#eval-charts").styles.height = "auto"  # inside the scrolling body
        empty.display = report is None
        probe_table = self.query_one("#eval-probe-table", DataTable)
        probes = (report or {}).get("probes") or []
        probe_table.display = bool(probes)
        self.query_one("#eval-notes").display = False
        if report is None:
            if app.active_run is None:
                empty.update("Open a run to see its evaluation.")
            else:
                empty.update("No evaluation yet: press e (or the button) to compare vanilla, RAG, SFT and "
                             "SFT+DPO on held-out questions, and p to add a hand-written probe file. It takes "
                             "a few minutes on a CPU.")
        else:
            if probes:  # the first probe in the table; every probe in the notes and charts
                self._fill(probe_table, probes[0], f"probe {probes[0].get('name')}: independent, hand-written")
            self._fill(self.query_one("#eval-table", DataTable), report,
                       HELD_OUT_TITLE if report.get("counts") or probes else "")
            self._draw_notes()
        self._draw_charts()
        self._draw_status()

    def _draw_notes(self) -> None:
        from valign_edge.evaluation.evidence import summary_line

        report = self.report or {}
        lines = []
        for probe in report.get("probes") or []:
            if probe.get("conclusions"):
                lines.append(summary_line(f"probe {probe.get('name')}", probe["conclusions"], limit=3))
        if report.get("conclusions"):
            lines.append(summary_line("held-out", report["conclusions"], limit=3))
        judge = report.get("judge") or {}
        if judge.get("reliable") is False:
            lines.append(f"- judge model: its two answer orders agree on {judge['order_consistency']:.0%} of the "
                         "pairs: its win rates are unreliable.")
        if report.get("advice"):
            lines.append(report["advice"])
        notes = self.query_one("#eval-notes", Static)
        notes.display = bool(lines)
        notes.update(Text("\n".join(line.replace("**", "") for line in lines)))

    def _draw_charts(self) -> None:
        """One bar chart per metric and test set, systems as bars with their sample size."""
        box = self.query_one("#eval-charts", VerticalScroll)
        box.remove_children()
        if self.report is None:
            return
        charts = []
        labels = self.report.get("column_labels") or {}
        sections = [("", self.report)] + [(f" · probe {p.get('name')}", p) for p in self.report.get("probes") or []]
        for suffix, section in sections:
            for column in section.get("columns", []):
                bars = []
                for row in section.get("table", []):
                    value = row.get(column)
                    system = str(row.get("system", ""))
                    n = ((section.get("counts") or {}).get(system) or {}).get(column)
                    weak = (((section.get("evidence") or {}).get(system) or {}).get(column) or {}).get("conclusive")
                    label = system if n is None else f"{system} n={n}{'*' if weak is False else ''}"
                    bars.append((label, float(value) if isinstance(value, (int, float)) else None))
                charts.append(BarChart(f"{labels.get(column, column)}{suffix}", bars, classes="metric-chart"))
        box.mount_all(charts)

    def _probe_choice(self) -> str:
        app = self.valign
        chosen = (getattr(getattr(app.cfg, "eval", None), "probe", "") or "").strip()
        if chosen.lower() == "none":
            return "probe: none"
        if chosen:
            return f"probe: {', '.join(Path(p).stem for p in chosen.split(','))}"
        run = app.active_run
        if run is None:
            return ""
        if run.root not in self._shipped:
            from valign_edge.evaluation.probes import shipped_probe_for_run

            self._shipped[run.root] = shipped_probe_for_run(run)
        found = self._shipped[run.root]
        return f"probe: {found.stem} (auto)" if found else "probe: none (p to pick one)"

    def _draw_status(self) -> None:
        app = self.valign
        status = self.query_one("#eval-status", Static)
        bar = self.query_one("#eval-bar", ProgressBar)
        view = app.job.stages["eval"]
        running = app.job.job == "eval"
        self.query_one("#eval-run", Button).disabled = app.job.job is not None or app.active_run is None
        self.query_one("#eval-pick-probe", Button).disabled = app.job.job is not None or app.active_run is None
        if running:
            status.update(Text(view.stats() or view.message or "starting…"))
            bar.update(total=view.total or None, progress=view.done or 0)
        else:
            bar.update(total=100, progress=100 if self.report else 0)
            probe = self._probe_choice()
            if app.job.job:
                status.update(Text(f"the {app.job.job} job is running", style="dim"))
            else:
                status.update(Text(probe, style="dim"))

    # --- events -----------------------------------------------------------------------------------------
    def job_event(self, event: Event) -> None:
        self._draw_status()

    def job_done(self, message) -> None:
        self.refresh_from_state()

    @on(Button.Pressed, "#eval-run")
    def action_run_eval(self) -> None:
        self.valign.start_eval()
        self._draw_status()

    @on(Button.Pressed, "#eval-pick-probe")
    def action_pick_probe(self) -> None:
        app = self.valign
        if app.active_run is None or app.cfg is None or app.job.job is not None:
            return
        from valign_edge.errors import UserError
        from valign_edge.evaluation.probes import load_probe
        from valign_edge.tui.screens.dialogs import PathPicker

        def picked(path: Path | None) -> None:
            if path is None:
                return
            try:
                probe = load_probe(path)  # a malformed file is refused here, with its bad rows
            except UserError as exc:
                app.show_error(exc, "Probe file")
                return
            app.cfg.eval.probe = str(path.expanduser().resolve())
            app.notify(f"{probe.name}: {len(probe.pairs)} preference rows, {len(probe.questions)} answer rows; "
                       "press e to evaluate", title="Probe")
            self._draw_status()

        app.push_screen(PathPicker("Choose a probe file (.jsonl)", folders=False, suffixes={".jsonl"}), picked)
