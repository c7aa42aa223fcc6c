"""Help on ``?``: what each screen does and its keys."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# valign-edge

Align a small local model to the values in a document, entirely offline: the teacher writes
questions and answers grounded in the document (SFT data) and faithful/unfaithful answer pairs
(DPO data), the student is trained with LoRA (SFT, then DPO), merged and exported to GGUF.

| key | screen | what it does |
|---|---|---|
| `1` | Start | choose the document, teacher, student, backend, preset and settings; start a run or open one |
| `2` | Pipeline | stage statuses, progress with rate and ETA, loss curves, the live log; `s` start/resume, `c` cancel |
| `3` | Data | review SFT and DPO records next to their source chunk; `r` reject, `u` restore, `e` edit, `k` SFT/DPO |
| `4` | Evaluation | vanilla, RAG, SFT and SFT+DPO side by side; `e` runs the evaluation |
| `5` | Chat | talk to the exported model; `ctrl+t` compare with vanilla, `ctrl+g` RAG, `esc` stop, `ctrl+l` clear |

Everywhere: `ctrl+p` command palette, `?` this help, `ctrl+q` quit (a running stage stops at its next
step first; the run resumes later from where it stopped), `tab` moves between fields, `esc` leaves a
text field so that the number keys switch screens again (or click a name in the bar under the title).

Data decisions are saved in the run (`data/edits.jsonl`) and kept on resume: training runs again on
the next start because its inputs changed. The same run folder works with the `valign` command:
`valign run DOC --out RUN` resumes what the app started, and the other way round.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close", id="help.close"),
        Binding("question_mark", "close", "Close", show=False, id="help.close2"),
        Binding("q", "close", "Close", show=False, id="help.close3"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help", classes="dialog"):
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
