"""Help on ``?``: what each screen does and its keys."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# valign-edge: keys

`ctrl+p` command palette · `?` this help · `ctrl+q` quit (a running stage stops first) · `tab` next
field · `esc` leave a text field, so the number keys switch screens (or click a screen's name).

- **1 Start**: document (with a preview of its chunks), teacher, student, backend, preset, settings;
  `ctrl+s` start the run, `ctrl+r` open a run folder, `ctrl+o` browse for a document.
- **2 Pipeline**: each stage's status, progress with rate and ETA, SFT and DPO loss curves, the live log;
  `s` start or resume, `c` cancel (the stage stops at its next step and resumes from there later).
- **3 Data**: SFT and DPO records beside their source chunk, filtered by split and chunk;
  `r` reject, `u` restore, `e` edit, `k` switch SFT/DPO. Decisions are saved in the run
  (`data/edits.jsonl`) and kept on resume; training runs again on the next start.
- **4 Evaluation**: vanilla, RAG, SFT and SFT+DPO side by side, as a table and bar charts; `e` runs it.
- **5 Chat**: streaming answers from the exported model; `ctrl+t` compare with the vanilla model,
  `ctrl+g` RAG from the document, `esc` stop an answer, `ctrl+l` clear.

The run folder is shared with the `valign` command: `valign run DOC --out RUN` resumes what the app
started, and the other way round.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="help.close"),
        Binding("question_mark", "close", "Close", show=False, id="help.close2"),
        Binding("q", "close", "Close", show=False, id="help.close3"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
