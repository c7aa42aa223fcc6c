"""The Textual app: five screens over one run folder, long work in thread workers.

The app calls the same library functions as the CLI (``pipeline.run_all``, ``evaluate.evaluate``,
``generate.add_edit`` ...). Stage events reach the UI as ``JobEvent`` messages posted from the
worker thread; they are also appended to the run's ``logs/events.jsonl`` like the CLI does.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen

from valign_edge.errors import Cancelled, UserError
from valign_edge.events import Event
from valign_edge.tui.errors import error_text
from valign_edge.tui.state import JobState, display_path

SCREEN_NAMES = ("start", "pipeline", "data", "eval", "chat")


class JobEvent(Message):
    """A stage event from the worker thread."""

    def __init__(self, event: Event):
        super().__init__()
        self.event = event


class JobDone(Message):
    """A pipeline or evaluation job ended: ``status`` is done, cancelled or failed."""

    def __init__(self, job: str, status: str, message: str = "", result: Any = None):
        super().__init__()
        self.job, self.status, self.message, self.result = job, status, message, result


class ValignApp(App):
    """valign-edge's terminal app."""

    CSS_PATH = "app.tcss"
    TITLE = "valign-edge"
    SUB_TITLE = "align a small local model to a document"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "goto('start')", "Start", show=False, id="goto.start"),
        Binding("2", "goto('pipeline')", "Pipeline", show=False, id="goto.pipeline"),
        Binding("3", "goto('data')", "Data", show=False, id="goto.data"),
        Binding("4", "goto('eval')", "Evaluation", show=False, id="goto.eval"),
        Binding("5", "goto('chat')", "Chat", show=False, id="goto.chat"),
        Binding("question_mark", "help", "Help", id="app.help"),
        Binding("ctrl+q", "quit", "Quit", priority=True, id="app.quit"),
    ]

    def __init__(self, run_dir: Path | None = None, allow_remote: bool = False):
        super().__init__()
        self.initial_run_dir = Path(run_dir) if run_dir is not None else None
        self.allow_remote = allow_remote  # ``valign tui --allow-remote``: a server off this machine may be used
        self.active_run = None  # valign_edge.runs.workspace.Run
        self.cfg = None  # valign_edge.config.RunConfig
        self.doc: Path | None = None  # document to (re)read on the next pipeline start
        self.job = JobState()
        self.stop_requested = threading.Event()
        self.job_thread_busy = threading.Event()  # set from a job's start until its thread has returned
        self._quit_pending = False
        self._screens: dict[str, Screen] = {}

    # --- lifecycle -----------------------------------------------------------------------------------
    def on_mount(self) -> None:
        from valign_edge.tui.screens.chat import ChatScreen
        from valign_edge.tui.screens.data import DataScreen
        from valign_edge.tui.screens.evaluation import EvalScreen
        from valign_edge.tui.screens.pipeline import PipelineScreen
        from valign_edge.tui.screens.start import StartScreen

        for name, cls in zip(SCREEN_NAMES, (StartScreen, PipelineScreen, DataScreen, EvalScreen, ChatScreen)):
            self._screens[name] = cls()
            self.install_screen(self._screens[name], name)
        # Opened on a run, the app starts on its Pipeline screen; the Start screen (and its backend
        # check, which imports torch) waits until it is first shown.
        opened = self.initial_run_dir is not None and self.open_run(self.initial_run_dir, announce=False)
        self.push_screen("pipeline" if opened else "start")

    def on_resize(self) -> None:
        self.set_class(self.size.width < 96, "-narrow")

    def action_goto(self, name: str) -> None:
        if name in self._screens and self.screen is not self._screens[name]:
            if isinstance(self.screen, Screen) and self.screen in self._screens.values():
                self.switch_screen(name)
            else:  # a dialog is open: leave it first
                self.pop_screen()
                self.call_later(self.action_goto, name)

    def action_help(self) -> None:
        from valign_edge.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Stop a running stage at its next step, then exit; a second request exits at once."""
        self.stop_requested.set()
        if "chat" in self._screens:
            self._screens["chat"].stop_streaming()
        if self.job.job and not self._quit_pending:
            self._quit_pending = True
            self.notify("Stopping the running stage; the app closes when it has stopped "
                        "(press ctrl+q again to leave now; the run resumes later).", title="Quitting",
                        timeout=20)
            return
        self.exit()

    def on_unmount(self) -> None:
        self.stop_requested.set()
        chat = self._screens.get("chat")
        if chat is not None:
            chat.close_sessions()

    # --- errors ---------------------------------------------------------------------------------------
    def show_error(self, exc: BaseException | str, title: str = "Error") -> None:
        """Show an error as a readable notification (and keep unexpected tracebacks in a log file)."""
        if isinstance(exc, BaseException) and not isinstance(exc, (UserError, Cancelled)):
            self._log_traceback(exc)
        message = exc if isinstance(exc, str) else error_text(exc)
        self.notify(message, title=title, severity="error", timeout=12, markup=False)

    def _log_traceback(self, exc: BaseException) -> None:
        from valign_edge.models import CACHE_DIR

        path = (self.active_run.root / "logs" / "tui.log") if self.active_run is not None else CACHE_DIR / "tui.log"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(traceback.format_exception(exc)))
        except OSError:
            pass

    # --- runs ----------------------------------------------------------------------------------------
    def open_run(self, path: Path, announce: bool = True) -> bool:
        """Open an existing run folder and its saved configuration."""
        from valign_edge import config
        from valign_edge.runs.workspace import Run

        if self.job.job:
            self.show_error("wait for the running job to stop before opening another run")
            return False
        try:
            run = Run.open(Path(path), create=False)
            cfg = config.resolve_config(saved=run.config_path)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message
            self.show_error(exc, "Cannot open run")
            return False
        self._set_run(run, cfg, None)
        if announce:
            self.notify(f"opened {display_path(run.root)}", markup=False)
        return True

    def new_run(self, doc: Path, run_dir: Path, preset: str | None, overrides: dict[str, Any]) -> bool:
        """Create (or reopen) a run folder for ``doc`` with the chosen settings, and start the pipeline."""
        from valign_edge import config, models
        from valign_edge.documents.ingest import read_document
        from valign_edge.generation.generate import check_document
        from valign_edge.runs.workspace import Run

        if self.job.job:
            self.show_error("a job is already running; cancel it first")
            return False
        try:
            text = read_document(doc).text  # refuse bad input before touching the run folder, like the CLI
            saved = Path(run_dir) / "config.toml"
            cfg = config.resolve_config(saved=saved if saved.exists() else None, preset=preset, overrides=overrides)
            models.resolve(cfg.teacher, "teacher", self.allow_remote)  # a server off this machine is refused before the folder
            run = Run.open(Path(run_dir), create=True)
            check_document(run, text, replace=False)  # another document never overwrites a run's data
        except Exception as exc:  # noqa: BLE001
            self.show_error(exc, "Cannot start")
            return False
        self._set_run(run, cfg, Path(doc))
        self.action_goto("pipeline")
        self.start_pipeline()
        return True

    def _set_run(self, run, cfg, doc: Path | None) -> None:
        self.active_run, self.cfg, self.doc = run, cfg, doc
        self.sub_title = display_path(run.root)
        self.job.load_run(run)
        self._broadcast("run_changed")

    def _broadcast(self, method: str, *args: Any) -> None:
        """Call ``method`` on every screen that has been shown (the others draw from state when shown)."""
        for screen in self._screens.values():
            handler = getattr(screen, method, None)
            if handler is not None and screen.is_mounted:
                try:
                    handler(*args)
                except Exception as exc:  # noqa: BLE001 - a drawing problem must not end the app
                    self.show_error(exc)

    # --- jobs ----------------------------------------------------------------------------------------
    def start_pipeline(self) -> None:
        """Start or resume every stage (generate, train, export); finished stages are skipped."""
        if not self._can_start():
            return
        from valign_edge.pipeline import run_all

        run, cfg, doc, allow_remote = self.active_run, self.cfg, self.doc, self.allow_remote
        self._start_job("pipeline", lambda emit, stop: run_all(run, cfg, emit, doc=doc, evaluate=False,
                                                                should_stop=stop, allow_remote=allow_remote))

    def start_eval(self) -> None:
        if not self._can_start():
            return
        run, cfg = self.active_run, self.cfg

        def evaluate(emit, stop):
            try:
                from valign_edge.evaluation.evaluate import evaluate as run_eval
            except ImportError as exc:
                raise UserError(f"evaluation is not available in this installation ({exc})") from None
            return run_eval(run, cfg, emit, allow_remote=self.allow_remote)

        # evaluate() has no should_stop: a cancel raises from its next progress event instead.
        self._start_job("eval", evaluate, cancel_on_event=True)

    def cancel_job(self) -> None:
        if not self.job.job:
            self.notify("nothing is running")
            return
        self.stop_requested.set()
        self.notify("Cancelling: the stage stops at its next step and can be resumed later.", title="Cancel")

    def _can_start(self) -> bool:
        if self.active_run is None:
            self.show_error("no run is open: choose a document and a run folder on the Start screen (1)")
            return False
        if self.job.job:
            self.notify(f"the {self.job.job} job is already running", severity="warning")
            return False
        return True

    def _start_job(self, name: str, body: Callable, cancel_on_event: bool = False) -> None:
        self.stop_requested.clear()
        self.job_thread_busy.set()
        self.job.begin(name)
        self.on_job_event(JobEvent(Event("log", name, f"{name} started")))
        self._job_worker(name, self.active_run, body, cancel_on_event)

    @work(thread=True, exclusive=True, group="job", exit_on_error=False)
    def _job_worker(self, name: str, run, body: Callable, cancel_on_event: bool) -> None:
        from valign_edge.events import JsonlSink

        try:
            sink = JsonlSink(run.events_path)
        except OSError as exc:
            self.job_thread_busy.clear()
            self.post_message(JobDone(name, "failed", f"cannot write to {run.root}: {exc.strerror}"))
            return

        def emit(event: Event) -> None:
            sink(event)
            self.post_message(JobEvent(event))
            if cancel_on_event and self.stop_requested.is_set():
                raise Cancelled(f"{name} cancelled")

        status, message, result = "done", "", None
        try:
            with run.lock():
                result = body(emit, self.stop_requested.is_set)
        except Cancelled as exc:
            status, message = "cancelled", str(exc)
        except BaseException as exc:  # noqa: BLE001 - shown in the app, never a crash
            status, message = "failed", error_text(exc)
            if not isinstance(exc, UserError):
                self._log_traceback(exc)
        finally:
            if status != "done":  # keep the outcome in the run's event log for the next session
                sink(Event("log", name, f"{status}: {message}"))
            sink.close()
            self.job_thread_busy.clear()
        self.post_message(JobDone(name, status, message, result))

    def on_job_event(self, message: JobEvent) -> None:
        self.job.apply(message.event)
        self._broadcast("job_event", message.event)

    def on_job_done(self, message: JobDone) -> None:
        self.job.finish(message.status, message.message, self.active_run)
        if message.status == "failed":
            self.show_error(message.message, f"{message.job.capitalize()} failed")
        elif message.status == "cancelled":
            self.notify(f"{message.message}; press s on the Pipeline screen to resume", title="Cancelled",
                        severity="warning", markup=False)
        else:
            self.notify(f"{message.job} finished", title="Done")
        self._broadcast("job_done", message)
        if self._quit_pending:
            self.exit()

    # --- command palette -------------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield SystemCommand("Start or resume the pipeline", "generate data, train SFT + DPO, export GGUF",
                            self.start_pipeline)
        yield SystemCommand("Cancel the running job", "stops at the next step; resume later", self.cancel_job)
        yield SystemCommand("Run evaluation", "vanilla, RAG, SFT and SFT+DPO side by side", self.start_eval)
        yield SystemCommand("Open a run folder", "choose an existing run", self.open_run_dialog)
        for name, title in (("start", "Start"), ("pipeline", "Pipeline"), ("data", "Data review"),
                            ("eval", "Evaluation"), ("chat", "Chat")):
            yield SystemCommand(f"Go to {title}", f"show the {title} screen", lambda n=name: self.action_goto(n))
        yield SystemCommand("Help", "screens and keys", self.action_help)
        yield from super().get_system_commands(screen)

    def open_run_dialog(self) -> None:
        """Pick a run folder and open it (the start screen's "Open" when its path is no run)."""
        from valign_edge.tui.screens.dialogs import PathPicker

        def opened(path: Path | None) -> None:
            if path is not None and self.open_run(path):
                self.action_goto("pipeline")

        self.push_screen(PathPicker("Open a run folder", folders=True), opened)


def create_app(run_dir: Path | None = None, allow_remote: bool = False) -> ValignApp:
    """The app factory shared by ``valign tui`` and the tests."""
    return ValignApp(run_dir, allow_remote)


@contextlib.contextmanager
def native_output_to(log_path: Path) -> Iterator[None]:
    """Give Textual its own handle on the terminal and send fds 1 and 2 to ``log_path`` meanwhile.

    Textual draws on ``sys.__stderr__``. llama.cpp, torch and the GGUF converters write to fds 1
    and 2 from C, and the library silences llama.cpp by pointing those fds at /dev/null for the
    length of a call; either would blank or garble the screen. With the terminal on a duplicate
    descriptor, nothing written to fds 1 and 2 reaches it, and native messages land in a log file.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    encoding = sys.stderr.encoding or "utf-8"
    # Textual writes to sys.__stderr__ and sizes the screen from sys.__stdout__ (shutil).
    terminal = [os.fdopen(os.dup(fd), "w", encoding=encoding, errors="replace", buffering=1) for fd in (1, 2)]
    saved = [os.dup(1), os.dup(2)]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    original = (sys.__stdout__, sys.__stderr__)
    sys.__stdout__, sys.__stderr__ = terminal
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    try:
        yield
    finally:
        sys.__stdout__, sys.__stderr__ = original
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        for handle in terminal:
            handle.close()


def run_app(run_dir: Path | None = None, allow_remote: bool = False) -> None:
    from valign_edge.models import CACHE_DIR

    app = create_app(run_dir, allow_remote)
    if sys.stdout.isatty() and sys.stderr.isatty():
        with native_output_to(CACHE_DIR / "tui-native.log"):
            app.run()
    else:
        app.run()
    if app.job_thread_busy.is_set():  # quit twice while a stage was running: it stops at its next step
        print("valign: stopping the running stage (it resumes next time); Ctrl-C to leave at once",
              file=sys.stderr)
