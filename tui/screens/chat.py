"""Chat: stream answers from the exported GGUF, optionally next to the vanilla model and with RAG."""

from __future__ import annotations

import threading
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Static, Switch

from valign_edge.tui.errors import error_text
from valign_edge.tui.screens.base import ValignScreen
from valign_edge.tui.state import display_path

PANES = (("aligned", False), ("vanilla", True))


class ChatPiece(Message):
    def __init__(self, pane: str, text: str, error: bool = False):
        super().__init__()
        self.pane, self.text, self.error = pane, text, error


class ChatFinished(Message):
    pass


class ChatScreen(ValignScreen):
    SCREEN_NAME = "chat"
    AUTO_FOCUS = "#chat-input"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+t", "toggle_compare", "Compare", id="chat.compare"),
        Binding("ctrl+g", "toggle_rag", "RAG", id="chat.rag"),
        Binding("ctrl+l", "clear", "Clear", id="chat.clear"),
        Binding("escape", "stop", "Stop/leave", id="chat.stop"),
    ]
    max_tokens = 256

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[tuple[bool, bool], object] = {}
        self._sessions_lock = threading.Lock()
        self._stop = threading.Event()
        self._answers: dict[str, tuple[Static, str]] = {}
        self.busy = False
        self._loaded_run = None

    def body(self) -> ComposeResult:
        with Horizontal(id="chat-options"):
            yield Switch(id="compare")
            yield Label("compare with vanilla", classes="switch-label")
            yield Switch(id="rag")
            yield Label("RAG from the document", classes="switch-label")
            yield Static("", id="chat-model")
        with Horizontal(id="chat-panes"):
            for pane, _ in PANES:
                yield VerticalScroll(id=f"pane-{pane}", classes="chat-pane")
        yield Input(placeholder="Ask a question about the document's values and press enter", id="chat-input")

    def on_mount(self) -> None:
        self.query_one("#pane-vanilla").display = False

    # --- state ----------------------------------------------------------------------------------------
    def refresh_from_state(self) -> None:
        from valign_edge.chat import resolve_target

        app = self.valign
        if app.active_run is not self._loaded_run:
            self.close_sessions()
            self._loaded_run = app.active_run
        info = self.query_one("#chat-model", Static)
        if app.active_run is None:
            info.update(Text("no run open", style="dim"))
            self._set_titles("aligned", "vanilla")
            return
        try:
            aligned, _ = resolve_target(app.active_run.root)
            vanilla, _ = resolve_target(app.active_run.root, vanilla=True)
        except Exception as exc:  # noqa: BLE001
            info.update(Text(error_text(exc), style="yellow"))
            return
        info.update(Text(display_path(app.active_run.root), style="dim"))
        self._set_titles(f"aligned · {aligned.name}", f"vanilla · {vanilla.name}")

    def _set_titles(self, aligned: str, vanilla: str) -> None:
        self.query_one("#pane-aligned").border_title = aligned
        self.query_one("#pane-vanilla").border_title = vanilla

    def run_changed(self) -> None:
        self.action_clear()
        super().run_changed()

    def job_done(self, message) -> None:
        self._safe_refresh()  # an export may have just appeared

    # --- sessions -------------------------------------------------------------------------------------
    def _session(self, vanilla: bool, rag: bool):
        from valign_edge.chat import ChatSession, resolve_target

        with self._sessions_lock:
            key = (vanilla, rag)
            if key not in self.sessions:
                gguf, run_dir = resolve_target(self.valign.active_run.root, vanilla=vanilla)
                self.sessions[key] = ChatSession(gguf, run_dir, rag=rag, max_tokens=self.max_tokens)
            return self.sessions[key]

    def close_sessions(self) -> None:
        """Free the loaded models; while an answer streams, only drop them (closing would pull the
        model out from under the worker thread)."""
        with self._sessions_lock:
            if self.busy:
                self.sessions.clear()
                return
            for session in self.sessions.values():
                try:
                    session.close()
                except Exception:  # noqa: BLE001, S110 - closing is best effort
                    pass
            self.sessions.clear()

    def stop_streaming(self) -> None:
        self._stop.set()

    # --- asking -------------------------------------------------------------------------------------
    @on(Input.Submitted, "#chat-input")
    def _submitted(self, event: Input.Submitted) -> None:
        question = event.value.strip()
        if not question:
            return
        self.ask(question)

    def ask(self, question: str) -> None:
        app = self.valign
        if app.active_run is None:
            app.show_error("open a run with an exported model first (Start screen, 1)")
            return
        if self.busy:
            app.notify("still answering: press esc to stop it", severity="warning")
            return
        self.query_one("#chat-input", Input).value = ""
        compare = self.query_one("#compare", Switch).value
        rag = self.query_one("#rag", Switch).value
        targets = [(pane, vanilla) for pane, vanilla in PANES if compare or not vanilla]
        for pane, _ in targets:
            box = self.query_one(f"#pane-{pane}", VerticalScroll)
            answer = Static(Text("…", style="dim"), classes="answer")
            box.mount(Static(Text("you: " + question, style="bold"), classes="question"), answer)
            self._answers[pane] = (answer, "")
            box.scroll_end(animate=False)
        self.busy = True
        self._stop.clear()
        self._answer(question, targets, rag)

    @work(thread=True, exclusive=True, group="chat", exit_on_error=False)
    def _answer(self, question: str, targets: list[tuple[str, bool]], rag: bool) -> None:
        for pane, vanilla in targets:
            try:
                session = self._session(vanilla, rag)
                stream = session.ask(question)
                for piece in stream:
                    if self._stop.is_set():
                        stream.close()
                        self.post_message(ChatPiece(pane, " [stopped]"))
                        break
                    self.post_message(ChatPiece(pane, piece))
                else:
                    from valign_edge.chat import source_line

                    for passage in session.sources:  # where the answer's passages come from
                        self.post_message(ChatPiece(pane, f"\n  source: {source_line(passage)}"))
            except Exception as exc:  # noqa: BLE001 - shown in the pane
                self.post_message(ChatPiece(pane, error_text(exc), error=True))
            if self._stop.is_set():
                break
        self.post_message(ChatFinished())

    def on_chat_piece(self, message: ChatPiece) -> None:
        if message.pane not in self._answers:
            return
        widget, text = self._answers[message.pane]
        if message.error:
            widget.update(Text(message.text, style="red"))
            self._answers[message.pane] = (widget, message.text)
            return
        text += message.text
        self._answers[message.pane] = (widget, text)
        widget.update(Text(text.lstrip()))
        self.query_one(f"#pane-{message.pane}", VerticalScroll).scroll_end(animate=False)

    def on_chat_finished(self, message: ChatFinished) -> None:
        self.busy = False
        for widget, text in self._answers.values():
            if not text:
                widget.update(Text("(no answer)", style="dim"))
        self._answers = {}

    # --- toggles ----------------------------------------------------------------------------------------
    @on(Switch.Changed, "#compare")
    def _compare_changed(self, event: Switch.Changed) -> None:
        self.query_one("#pane-vanilla").display = event.value

    def action_toggle_compare(self) -> None:
        switch = self.query_one("#compare", Switch)
        switch.value = not switch.value

    def action_toggle_rag(self) -> None:
        switch = self.query_one("#rag", Switch)
        switch.value = not switch.value

    def action_clear(self) -> None:
        if self.busy:
            return
        for pane, _ in PANES:
            self.query_one(f"#pane-{pane}", VerticalScroll).remove_children()
        with self._sessions_lock:
            for session in self.sessions.values():
                session.history = []

    def action_stop(self) -> None:
        """Stop the answer being written; when idle, leave the question field so number keys switch screens."""
        if self.busy:
            self._stop.set()
        else:
            self.set_focus(None)
