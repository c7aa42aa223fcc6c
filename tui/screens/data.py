"""Data review: browse SFT and DPO records, see each one's source chunk, reject, restore or edit them.

Decisions go through ``generate.add_edit`` and ``generate.rebuild_splits``: they are kept in the run
(``data/edits.jsonl``) and training re-runs on the next resume because its key hashes the data.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Select, Static

from valign_edge.tui import state
from valign_edge.tui.screens.base import ValignScreen

ALL_CHUNKS = "__all__"
CONTEXT_CHARS = 160


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class DataScreen(ValignScreen):
    SCREEN_NAME = "data"
    AUTO_FOCUS = "#records"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reject", "Reject", id="data.reject"),
        Binding("u", "restore", "Restore", id="data.restore"),
        Binding("e", "edit", "Edit", id="data.edit"),
        Binding("k", "toggle_kind", "SFT/DPO", id="data.kind"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.chunks: dict[str, dict] = {}
        self.document = ""
        self._filling = False
        self._decisions = threading.Lock()  # one decision's rebuild at a time

    def body(self) -> ComposeResult:
        with Horizontal(id="data-controls"):
            yield Select([("SFT", "sft"), ("DPO", "dpo")], value="sft", allow_blank=False, id="data-kind",
                         compact=True)
            yield Select([(s, s) for s in state.REVIEW_SPLITS], value="train", allow_blank=False,
                         id="data-split", compact=True)
            yield Select([("all chunks", ALL_CHUNKS)], value=ALL_CHUNKS, allow_blank=False, id="data-chunk",
                         compact=True)
            yield Static("", id="data-count")
        with Horizontal(id="data-body"):
            yield DataTable(id="records", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="record-detail"):
                yield Static("", id="record-text")
                yield Static("", id="record-source")

    def _add_columns(self, table: DataTable) -> None:
        table.clear(columns=True)
        table.add_column("", key="status", width=1)
        table.add_column("id", key="id", width=6)
        table.add_column("chunk", key="chunk", width=5)
        width = max(24, table.size.width - 22)  # the other columns, cell padding and the scrollbar
        table.add_column("question" if self.kind == "sft" else "prompt", key="question", width=width)

    def on_resize(self) -> None:
        if self.rows:
            self.call_after_refresh(self.load_rows)

    # --- loading --------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.query_one("#data-kind", Select).value)

    @property
    def split(self) -> str:
        return str(self.query_one("#data-split", Select).value)

    def refresh_from_state(self) -> None:
        run = self.valign.active_run
        if run is None:
            self.chunks, self.document = {}, ""
        else:
            self.chunks = {c["id"]: c for c in state.load_chunks(run)}
            self.document = run.document_path.read_text(encoding="utf-8") if run.document_path.exists() else ""
        chunk_select = self.query_one("#data-chunk", Select)
        current = chunk_select.value
        options = [("all chunks", ALL_CHUNKS)] + [
            (f"{cid.split('-')[0]} {_short(c.get('heading') or '(no heading)', 28)}", cid)
            for cid, c in self.chunks.items()]
        self._filling = True
        chunk_select.set_options(options)
        chunk_select.value = current if current in self.chunks else ALL_CHUNKS
        self._filling = False
        self.load_rows()

    def load_rows(self, keep_id: str | None = None) -> None:
        run = self.valign.active_run
        table = self.query_one("#records", DataTable)
        old_index = max(0, table.cursor_row)
        if keep_id is None and table.row_count and table.cursor_row < len(self.rows):
            keep_id = self.rows[table.cursor_row]["meta"]["id"]
        self._add_columns(table)
        count = self.query_one("#data-count", Static)
        if run is None:
            self.rows = []
            count.update(Text("no run open", style="dim"))
            self._show_detail(None)
            return
        rows = state.review_rows(run, self.kind, self.split)
        wanted = self.query_one("#data-chunk", Select).value
        if wanted != ALL_CHUNKS:
            rows = [r for r in rows if r["meta"]["chunk_id"] == wanted]
        self.rows = rows
        decisions = state.latest_decisions(run)
        for row in rows:
            meta = row["meta"]
            fields = state.record_fields(row)
            first = fields.get("question") or fields.get("prompt", "")
            mark = self._mark(meta, decisions.get(meta["id"]))
            table.add_row(mark, meta["id"][:6], meta["chunk_id"].split("-")[0], _short(first, table.columns["question"].width),
                          key=meta["id"])
        total = len(rows)
        word = "rejected" if self.split == "rejected" else f"in {self.split}"
        count.update(Text(f"{total} {self.kind.upper()} records {word}", style="dim"))
        ids = [row["meta"]["id"] for row in rows]
        if rows:
            table.move_cursor(row=ids.index(keep_id) if keep_id in ids else min(old_index, len(rows) - 1))
        self._show_detail(self.current_row())

    @staticmethod
    def _mark(meta: dict, decision: str | None) -> Text:
        if decision == "reject":
            return Text("✘", style="red")
        if meta.get("edited"):
            return Text("✎", style="yellow")
        return Text(" ")

    def current_row(self) -> dict | None:
        table = self.query_one("#records", DataTable)
        if not self.rows or table.cursor_row < 0 or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def job_done(self, message) -> None:
        self._safe_refresh()  # generation may have written new records

    # --- detail ---------------------------------------------------------------------------------------
    @on(DataTable.RowHighlighted, "#records")
    def _row_highlighted(self) -> None:
        self._show_detail(self.current_row())

    def _show_detail(self, row: dict | None) -> None:
        text_widget = self.query_one("#record-text", Static)
        source = self.query_one("#record-source", Static)
        if row is None:
            text_widget.update(Text("No records here." if self.valign.active_run else "Open a run to review its data.",
                                    style="dim"))
            source.update("")
            return
        fields = state.record_fields(row)
        text = Text()
        styles = {"question": "bold", "prompt": "bold", "answer": "green", "chosen": "green",
                  "rejected": "red"}
        for name, value in fields.items():
            text.append(f"{name}: ", style="dim")
            text.append(value + "\n", style=styles.get(name, ""))
        if row["meta"].get("edited"):
            text.append("(edited)\n", style="yellow")
        text_widget.update(text)
        source.update(self._source_text(row, fields))

    def _source_text(self, row: dict, fields: dict[str, str]) -> Text:
        """The record's source chunk, highlighted inside its surroundings in the document."""
        meta = row["meta"]
        chunk = self.chunks.get(meta["chunk_id"], {})
        start, end = meta.get("span") or (chunk.get("start", 0), chunk.get("end", 0))
        out = Text()
        out.append(f"source {meta['chunk_id'].split('-')[0]}", style="bold")
        if chunk.get("heading"):
            out.append(f" · {chunk['heading']}", style="bold")
        pages = chunk.get("pages")  # PDFs: [first, last]
        if pages:
            out.append(f" · page {pages[0]}" if pages[0] == pages[-1] else f" · pages {pages[0]}-{pages[-1]}",
                       style="bold")
        out.append(f" · chars {start}-{end}\n", style="dim")
        doc = self.document
        if not doc or end > len(doc):
            out.append(chunk.get("text", "(the document is not in the run folder)"))
            return out
        before = doc[max(0, start - CONTEXT_CHARS):start]
        body = doc[start:end]
        after = doc[end:end + CONTEXT_CHARS]
        out.append(("…" if start > CONTEXT_CHARS else "") + before, style="dim")
        body_text = Text(body, style="on grey23")
        answer = fields.get("answer") or fields.get("chosen") or ""
        for sentence in filter(None, (s.strip() for s in answer.replace("\n", " ").split(". "))):
            probe = sentence[:60]
            at = body.find(probe)
            if len(probe) > 12 and at >= 0:
                body_text.stylize("bold bright_green on grey23", at, at + len(sentence))
        out.append_text(body_text)
        out.append(after + ("…" if end + CONTEXT_CHARS < len(doc) else ""), style="dim")
        return out

    # --- filters ----------------------------------------------------------------------------------------
    @on(Select.Changed, "#data-kind")
    @on(Select.Changed, "#data-split")
    @on(Select.Changed, "#data-chunk")
    def _filter_changed(self) -> None:
        if not self._filling and self.is_mounted:
            self.load_rows()

    def action_toggle_kind(self) -> None:
        select = self.query_one("#data-kind", Select)
        select.value = "dpo" if select.value == "sft" else "sft"

    # --- decisions --------------------------------------------------------------------------------------
    def _decide(self, action: str, fields: dict | None = None) -> None:
        app = self.valign
        row = self.current_row()
        if row is None:
            app.notify("no record selected", severity="warning")
            return
        if app.job.job:
            app.show_error("wait for the running job to stop before changing the data")
            return
        self._apply_decision(app.active_run, app.cfg, row["meta"]["id"], action, fields)

    @work(thread=True, group="decisions", exit_on_error=False)
    def _apply_decision(self, run, cfg, rid: str, action: str, fields: dict | None) -> None:
        """Record the decision and rebuild the splits off the UI thread (seconds on a large run)."""
        from valign_edge.generation.generate import add_edit, rebuild_splits

        try:
            with self._decisions, run.lock():
                add_edit(run, rid, action, fields)
                rebuild_splits(run, cfg)
        except Exception as exc:  # noqa: BLE001
            self.app.call_from_thread(self.valign.show_error, exc, "Data review")
            return
        self.app.call_from_thread(self._decided, rid, action)

    def _decided(self, rid: str, action: str) -> None:
        words = {"reject": "rejected", "restore": "restored", "edit": "edited"}
        self.valign.notify(f"record {rid[:6]} {words[action]}; training re-runs on the next start", markup=False)
        self.load_rows(keep_id=rid)

    def action_reject(self) -> None:
        if self.split == "rejected":
            self.valign.notify("already rejected: press u to restore it")
            return
        self._decide("reject")

    def action_restore(self) -> None:
        row = self.current_row()
        if row is not None and self.split != "rejected" and not row["meta"].get("edited"):
            # after r the selection moves on to the next record: u must not "restore" one never changed
            self.valign.notify("nothing to restore: this record was neither rejected nor edited "
                               "(rejected records are under Split: rejected)")
            return
        self._decide("restore")

    def action_edit(self) -> None:
        from valign_edge.tui.screens.dialogs import EditRecord

        row = self.current_row()
        if row is None:
            self.valign.notify("no record selected", severity="warning")
            return
        fields = state.record_fields(row)
        field = "answer" if "answer" in fields else "chosen"
        prompt = fields.get("question") or fields.get("prompt", "")

        def saved(text: str | None) -> None:
            if text is not None and text != fields[field]:
                self._decide("edit", {field: text})

        self.app.push_screen(EditRecord(prompt, field, fields[field]), saved)
