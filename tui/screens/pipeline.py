"""Pipeline: stage statuses, the running stage's progress with rate and ETA, loss curves, the live log."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, ProgressBar, RichLog, Static

from valign_edge.events import Event
from valign_edge.tui.screens.base import ValignScreen
from valign_edge.tui.state import STAGE_TITLES, display_path
from valign_edge.tui.widgets.charts import LineChart
from valign_edge.tui.widgets.stages import StageList


class PipelineScreen(ValignScreen):
    SCREEN_NAME = "pipeline"
    AUTO_FOCUS = "#log"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start/resume", id="pipeline.start"),
        Binding("c", "cancel", "Cancel", id="pipeline.cancel"),
    ]

    def body(self) -> ComposeResult:
        with Horizontal(id="pipe-top"):
            yield StageList(id="stages")
            with Vertical(id="current"):
                yield Static("", id="current-title")
                yield ProgressBar(id="stage-bar", show_eta=False)
                yield Static("", id="current-stats")
                yield Static("", id="privacy-notice")  # where the document's text goes (servers only)
                with Horizontal(id="pipe-buttons"):
                    yield Button("Start / resume", id="pipe-start", variant="primary", compact=True)
                    yield Button("Cancel", id="pipe-cancel", variant="error", compact=True)
        with Horizontal(id="charts"):
            yield LineChart("SFT loss", id="loss-sft", empty="SFT has not run yet")
            yield LineChart("DPO loss", id="loss-dpo", color="bright_magenta", empty="DPO has not run yet")
        yield RichLog(id="log", wrap=True, markup=False, max_lines=2000, auto_scroll=True)

    # --- drawing ----------------------------------------------------------------------------------------
    def refresh_from_state(self) -> None:
        app = self.valign
        state = app.job
        self.query_one(StageList).show(state)
        self._draw_current()
        self._draw_losses()
        self._draw_privacy()
        log = self.query_one(RichLog)
        log.clear()
        if app.active_run is None:
            log.write(Text("No run open. Choose a document and a run folder on the Start screen (press 1), "
                           "or open a run folder (ctrl+p, Open a run folder).", style="dim"))
        for line in state.log:
            log.write(line)
        self._draw_buttons()

    def _draw_buttons(self) -> None:
        app = self.valign
        running = app.job.job is not None
        self.query_one("#pipe-start", Button).disabled = running or app.active_run is None
        self.query_one("#pipe-cancel", Button).disabled = not running

    def _draw_current(self) -> None:
        app = self.valign
        state = app.job
        title = self.query_one("#current-title", Static)
        stats = self.query_one("#current-stats", Static)
        bar = self.query_one("#stage-bar", ProgressBar)
        stage = state.current
        if stage is None:
            done = False
            if app.active_run is None:
                title.update(Text("No run open", style="bold"))
                stats.update("")
            else:
                done = all(v.status in ("done", "skipped") for k, v in state.stages.items() if k != "eval")
                word = state.outcome or ("finished" if done else "ready")
                title.update(Text(f"{display_path(app.active_run.root)}: {word}", style="bold"))
                stats.update(Text("press s to start or resume" if not done else
                                  "all stages done: review data (3), evaluate (4) or chat (5)", style="dim"))
            bar.update(total=100, progress=100 if done else 0)
            return
        view = state.stages[stage]
        head = Text(STAGE_TITLES[stage], style="bold")
        if view.status != "running":
            head.append(f"  {view.status}", style="yellow")
        if view.message:
            head.append(f"  {view.message}", style="dim")
        title.update(head)
        stats.update(view.stats())
        if view.total:
            bar.update(total=view.total, progress=view.done or 0)
        else:
            bar.update(total=None)

    def _draw_privacy(self) -> None:
        from valign_edge.tui.privacy import where_text_goes

        cfg = self.valign.cfg
        text = (where_text_goes(cfg.teacher, cfg.eval.judge, self.valign.allow_remote)
                if self.valign.active_run and cfg else None)
        notice = self.query_one("#privacy-notice", Static)
        notice.update(text or "")
        notice.display = text is not None

    def _draw_losses(self) -> None:
        losses = self.valign.job.losses
        self.query_one("#loss-sft", LineChart).set_points(losses["train_sft"])
        self.query_one("#loss-dpo", LineChart).set_points(losses["train_dpo"])

    # --- live updates from the app ---------------------------------------------------------------------
    def job_event(self, event: Event) -> None:
        if event.kind == "metric":
            self._draw_losses()
            return
        if event.kind in ("log", "stage") and event.message:
            self.query_one(RichLog).write(self.valign.job.log[-1])
        self.query_one(StageList).show(self.valign.job)
        self._draw_current()
        self._draw_buttons()

    def job_done(self, message) -> None:
        self.refresh_from_state()

    # --- actions ---------------------------------------------------------------------------------------
    @on(Button.Pressed, "#pipe-start")
    def action_start(self) -> None:
        self.valign.start_pipeline()
        self._draw_buttons()

    @on(Button.Pressed, "#pipe-cancel")
    def action_cancel(self) -> None:
        self.valign.cancel_job()
