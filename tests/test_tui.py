"""The Textual app: Pilot tests that drive every screen, a real quick run started from the app,
data review decisions, chat with the exported model, and snapshots of each screen at 100x32.

Two run folders are built once per session:
- ``sample_run``: a run folder written with the library's own functions (real chunks of the sample
  document, records in the synth format, splits built by ``datasets.build``, a report in the
  evaluation's format, the real SmolLM2 GGUF linked as its export). Deterministic, so snapshots are stable.
- ``tiny_run``: a real pipeline started from the Start screen on a two-section document (real teacher,
  real training, real export), cancelled once and resumed. The chat test talks to its exported GGUF.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from valign_edge.tui.app import create_app

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DOC = ROOT / "valign_edge" / "data" / "code_of_conduct.md"
SIZE = (100, 32)
EVENT_TIME = 1767261600.0  # fixed times keep the log's timestamps stable in snapshots (shown in UTC)

TINY_DOC = """# Lakeside Food Bank Volunteer Code

## Dignity
Treat every visitor with dignity and respect. You must never ask visitors to prove they are poor,
and you must not comment on what they choose to take.

## Privacy
Names of visitors are private. You must not share who visited the food bank with anyone outside the team.
"""

QUICK_SETTINGS = ("generate.max_chunks=2 generate.n_threads=1 generate.n_threads_batch=1 "
                  "train.max_steps=2 train.threads=1 export.verify_prompts=1")


def run_async(coro):
    return asyncio.run(coro)


async def wait_for(pilot, predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.1)


def notices(app) -> list[tuple[str, str]]:
    return [(n.severity, n.message) for n in app._notifications]


# --- the sample run folder ---------------------------------------------------------------------------
def _sentences(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(body.split())) if len(s.strip()) > 20]


def build_sample_run(root: Path) -> Path:
    """A finished-looking run folder, written through the library (no model calls, fixed content)."""
    from valign_edge import config, datasets, models
    from valign_edge.chunking import chunk_text
    from valign_edge.events import Event, JsonlSink
    from valign_edge.generate import model_id, save_config
    from valign_edge.ingest import read_document
    from valign_edge.synth import synth_key
    from valign_edge.workspace import (
        Run,
        append_jsonl,
        atomic_write_text,
        write_json,
        write_jsonl,
    )

    run = Run.open(root, create=True)
    cfg = config.resolve(preset="quick")
    save_config(run, cfg)
    text = read_document(SAMPLE_DOC).text
    atomic_write_text(run.document_path, text)
    chunks = chunk_text(text, cfg.generate.chunk_tokens, cfg.generate.chunk_overlap)
    write_jsonl(run.chunks_path, [c.to_dict() for c in chunks])
    used = chunks[: cfg.generate.max_chunks]
    teacher = models.resolve(cfg.teacher, "teacher")
    key = synth_key(cfg.generate, model_id(teacher), cfg.seed)
    for chunk in used:
        topic = (chunk.heading or "this code").lstrip("0123456789. ").lower()
        found = _sentences(chunk.text) or [chunk.text.strip()]
        items = [{"question": q, "answer": found[i % len(found)]} for i, q in enumerate((
            f"What does the code ask of us about {topic}?",
            f"Why does {topic} matter at Harborlight?",
            f"What should I do about {topic} at work?"))]
        append_jsonl(run.synth_dir / "sft.jsonl", {"chunk_id": chunk.id, "span": [chunk.start, chunk.end],
                                                    "items": items, "rejected": {}, "key": key})
        pair = {"prompt": f"A colleague says {topic} does not matter. What do I tell them?",
                "chosen": found[0], "rejected": "Ignore the code; nobody checks it anyway.", "rejected_by": "negate"}
        append_jsonl(run.synth_dir / "dpo.jsonl", {"chunk_id": chunk.id, "span": [chunk.start, chunk.end],
                                                    "items": [pair], "rejected": {}, "key": key})
    datasets.build(run, [c.id for c in used], cfg.generate.valid_fraction, cfg.generate.test_fraction, cfg.seed,
                   key)
    manifest = run.manifest()
    manifest["stages"] = {
        "generate": {"status": "done", "wall_s": 41.0, "key": "k"},
        "train_sft": {"status": "done", "wall_s": 63.0, "key": "k"},
        "train_dpo": {"status": "done", "wall_s": 22.0, "key": "k"},
        "export": {"status": "done", "wall_s": 35.0, "key": "k"},
    }
    write_json(run.manifest_path, manifest)
    sink = JsonlSink(run.events_path)
    t = EVENT_TIME
    sink(Event("stage", "generate", "teacher smollm2-135m-instruct", time=t))
    sink(Event("log", "generate", f"{len(used)} chunks of at most 320 tokens", time=t + 1))
    sink(Event("log", "train", "backend torch on cpu (no GPU found)", time=t + 42))
    for stage, start, steps in (("train_sft", 3.2, 12), ("train_dpo", 0.6931, 6)):
        sink(Event("stage", stage, f"{stage[6:].upper()} with torch on cpu", time=t + 43))
        for step in range(1, steps + 1):
            loss = start * (0.8 ** step) + 0.05 * (step % 3)
            sink(Event("metric", stage, data={"step": step, "loss": round(loss, 4), "tokens_per_s": 250.0},
                       time=t + 44 + step))
    sink(Event("stage", "export", "merging adapters and converting to GGUF (q8_0)", time=t + 130))
    sink(Event("log", "export", "verification passed: q8_0 matches the merged model on 3 prompts", time=t + 165))
    sink.close()
    write_json(run.eval_dir / "report.json", {
        "systems": ["vanilla", "rag", "sft", "sft+dpo"],
        "columns": ["rougeL", "bleu", "bertscore_f1", "faithfulness"],
        "column_labels": {"rougeL": "ROUGE-L F1", "bleu": "BLEU (corpus)", "bertscore_f1": "BERTScore F1",
                          "faithfulness": "Faithfulness (judge)"},
        "table": [
            {"system": "vanilla", "rougeL": 0.121, "bleu": 2.4, "bertscore_f1": 0.512, "faithfulness": 0.31},
            {"system": "rag", "rougeL": 0.244, "bleu": 7.9, "bertscore_f1": 0.611, "faithfulness": 0.58},
            {"system": "sft", "rougeL": 0.318, "bleu": 12.6, "bertscore_f1": 0.664, "faithfulness": None},
            {"system": "sft+dpo", "rougeL": 0.342, "bleu": 13.8, "bertscore_f1": 0.679, "faithfulness": 0.71},
        ]})
    run.export_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model-q8_0.gguf", "base-q8_0.gguf"):
        (run.export_dir / name).symlink_to(teacher.path)
    return run.root


@pytest.fixture(scope="session")
def sample_base(tmp_path_factory) -> Path:
    """A folder holding ``demo-run`` and a copy of the sample document; tests chdir into it."""
    base = tmp_path_factory.mktemp("tui")
    shutil.copy(SAMPLE_DOC, base / "code_of_conduct.md")
    build_sample_run(base / "demo-run")
    return base


@pytest.fixture
def in_sample(sample_base, monkeypatch):
    monkeypatch.chdir(sample_base)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield sample_base
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def sample_copy(sample_base, tmp_path, monkeypatch) -> Path:
    """A private copy of the sample run for tests that change it."""
    dst = tmp_path / "demo-run"
    shutil.copytree(sample_base / "demo-run", dst, symlinks=True)
    monkeypatch.chdir(tmp_path)
    return dst


# --- the real quick run, started from the app ------------------------------------------------------
async def _drive_quick_run(doc: Path, run_dir: Path) -> dict:
    from textual.widgets import Input

    seen: dict = {}
    app = create_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        screen.query_one("#doc-path", Input).value = str(doc)
        await pilot.pause(0.5)
        screen.query_one("#run-path", Input).value = str(run_dir)
        screen.query_one("#extra", Input).value = QUICK_SETTINGS
        await pilot.click("#start-run")
        await wait_for(pilot, lambda: app.job.job == "pipeline", 20, "the pipeline to start")
        seen["screen_after_start"] = type(app.screen).__name__
        await wait_for(pilot, lambda: app.job.stages["generate"].status == "running", 120, "generation to start")
        await pilot.press("c")  # cancel
        await wait_for(pilot, lambda: app.job.job is None, 600, "the cancel to take effect")
        seen["after_cancel"] = app.job.outcome
        seen["cancelled_stage"] = app.job.current and app.job.stages[app.job.current].status
        await pilot.press("s")  # resume
        await wait_for(pilot, lambda: app.job.job == "pipeline", 20, "the resume to start")
        max_progress = {"generate": 0}

        def watch() -> bool:
            view = app.job.stages["generate"]
            if view.total:
                max_progress["generate"] = max(max_progress["generate"], view.done or 0)
            return app.job.job is None

        await wait_for(pilot, watch, 1500, "the pipeline to finish")
        seen["outcome"] = app.job.outcome
        seen["statuses"] = {k: v.status for k, v in app.job.stages.items()}
        seen["losses"] = {k: list(v) for k, v in app.job.losses.items()}
        seen["log"] = list(app.job.log)
        seen["errors"] = [m for s, m in notices(app) if s == "error"]
        seen["title"] = str(app.screen.query_one("#current-title").render())
        seen["generate_progress"] = max_progress["generate"]
    return seen


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    doc = base / "food_bank.md"
    doc.write_text(TINY_DOC)
    run_dir = base / "run"
    seen = run_async(_drive_quick_run(doc, run_dir))
    return run_dir, seen


def test_quick_run_started_in_the_app_finishes(tiny_run):
    run_dir, seen = tiny_run
    assert seen["screen_after_start"] == "PipelineScreen"
    assert seen["after_cancel"] == "cancelled"
    assert seen["cancelled_stage"] in ("cancelled", None)
    assert seen["outcome"] == "finished", seen["log"][-5:] + seen["errors"]
    assert seen["errors"] == []
    for stage in ("generate", "train_sft", "train_dpo", "export"):
        assert seen["statuses"][stage] == "done", seen["statuses"]
    assert len(seen["losses"]["train_sft"]) == 2 and len(seen["losses"]["train_dpo"]) == 2
    assert any("resuming" in line or "cancel" in line for line in seen["log"])
    assert "finished" in seen["title"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("generate", "train_sft", "train_dpo", "export"))
    assert (run_dir / "export" / "model-q8_0.gguf").exists()
    events = [json.loads(line) for line in (run_dir / "logs" / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "metric" and e["stage"] == "train_dpo" for e in events)


def test_chat_streams_from_the_exported_model(tiny_run, monkeypatch):
    from textual.widgets import Input

    from valign_edge.chat import ChatSession

    run_dir, _ = tiny_run
    real_ask = ChatSession.ask

    def paced_ask(self, question):  # the real model's pieces, paced so the test can watch them arrive
        for piece in real_ask(self, question):
            time.sleep(0.05)
            yield piece

    monkeypatch.setattr(ChatSession, "ask", paced_ask)

    async def go():
        app = create_app(run_dir)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("5")
            await pilot.pause()
            screen = app.screen
            screen.max_tokens = 32
            assert "model-q8_0.gguf" in str(screen.query_one("#pane-aligned").border_title)
            screen.query_one("#chat-input", Input).value = "May I tell my friends who visited the food bank?"
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.busy, 10, "the answer to start")
            seen_lengths = set()

            def done() -> bool:
                shown = [str(w.render()) for w in screen.query("#pane-aligned .answer")]
                seen_lengths.update(len(t) for t in shown)
                return not screen.busy

            await wait_for(pilot, done, 180, "the answer to finish")
            answers = [str(w.render()) for w in screen.query("#pane-aligned .answer")]
            assert len(answers) == 1 and answers[0].strip() and answers[0] != "(no answer)"
            assert len(seen_lengths) > 2  # the answer grew piece by piece while it streamed
            await pilot.press("ctrl+t")  # compare with the vanilla model on the next question
            screen.query_one("#chat-input", Input).value = "What must volunteers never ask visitors?"
            await pilot.press("enter")
            await wait_for(pilot, lambda: not screen.busy and len(screen.query("#pane-vanilla .answer")) == 1,
                           180, "both answers")
            vanilla = [str(w.render()) for w in screen.query("#pane-vanilla .answer")]
            aligned = [str(w.render()) for w in screen.query("#pane-aligned .answer")]
            assert screen.query_one("#pane-vanilla").display
            assert len(aligned) == 2 and vanilla[0].strip() and "error" not in vanilla[0].lower()
            assert not [m for s, m in notices(app) if s == "error"]

    run_async(go())


# --- screens on the sample run -------------------------------------------------------------------------
def test_every_screen_opens_from_keys_and_palette(in_sample):
    from textual.command import CommandPalette
    from valign_edge.tui.screens.data import DataScreen
    from valign_edge.tui.screens.help import HelpScreen

    async def go():
        app = create_app(Path("demo-run"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert type(app.screen).__name__ == "PipelineScreen"
            for key, name in (("1", "StartScreen"), ("3", "DataScreen"), ("4", "EvalScreen"), ("5", "ChatScreen"),
                              ("2", "PipelineScreen")):
                if name == "PipelineScreen":
                    await pilot.press("escape")  # leave the chat's question field first
                await pilot.press(key)
                await pilot.pause()
                assert type(app.screen).__name__ == name
            await pilot.press("question_mark")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.press("ctrl+p")
            await pilot.pause()
            assert isinstance(app.screen, CommandPalette)
            await pilot.press(*"go to data review")
            await pilot.pause(1.0)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DataScreen), 10, "the data screen")
            bindings = {b.binding.id for b in app.screen.active_bindings.values()}
            assert {"data.reject", "data.edit", "app.help", "app.quit"} <= bindings

    run_async(go())


def test_pipeline_screen_shows_a_finished_run(in_sample):
    from valign_edge.tui.widgets.charts import LineChart

    async def go():
        app = create_app(Path("demo-run"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            assert [v.status for v in app.job.stages.values()] == ["done"] * 4 + ["pending"]
            assert len(screen.query_one("#loss-sft", LineChart).points) == 12
            assert "finished" in str(screen.query_one("#current-title").render())
            assert screen.query_one("#pipe-cancel").disabled

    run_async(go())


def test_start_screen_previews_and_reports_bad_input(in_sample, tmp_path):
    from textual.widgets import Input

    async def go():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            screen.query_one("#doc-path", Input).value = "code_of_conduct.md"
            await wait_for(pilot, lambda: "chunks" in str(screen.query_one("#preview-title").render()), 20,
                           "the preview")
            assert "Harborlight" in str(screen.query_one("#preview").render())
            assert screen.query_one("#run-path", Input).value == "runs/code_of_conduct"
            assert "installed" in str(screen.query_one("#teacher-info").render())
            await wait_for(pilot, lambda: "checking" not in str(screen.query_one("#backend-info").render()), 60,
                           "the backend check")
            assert "auto → " in str(screen.query_one("#backend-info").render())
            # A missing document: a readable message, no crash, no run folder created.
            screen.query_one("#doc-path", Input).value = "missing.md"
            await wait_for(pilot, lambda: "not found" in str(screen.query_one("#preview").render()), 20,
                           "the preview error")
            screen.query_one("#run-path", Input).value = str(tmp_path / "new-run")
            await pilot.click("#start-run")
            await pilot.pause()
            assert any(s == "error" and "document not found" in m for s, m in notices(app))
            assert not (tmp_path / "new-run").exists()
            # A bad setting and a folder that is not a run: messages again.
            screen.query_one("#doc-path", Input).value = "code_of_conduct.md"
            screen.query_one("#extra", Input).value = "train.lora_rank=many"
            await pilot.click("#start-run")
            await pilot.pause()
            assert any(s == "error" and "lora_rank" in m for s, m in notices(app))
            assert app.open_run(tmp_path) is False
            assert type(app.screen).__name__ == "StartScreen" and app.active_run is None

    run_async(go())


def test_file_picker_chooses_a_document_and_a_run_folder(in_sample):
    from textual.widgets import Input
    from valign_edge.tui.screens.dialogs import PathPicker

    async def go():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await pilot.press("ctrl+o")
            await pilot.pause()
            assert isinstance(app.screen, PathPicker)
            app.screen.query_one("#picker-path", Input).value = "code_of_conduct.md"
            await pilot.click("#picker-choose")
            await pilot.pause()
            assert app.screen.query_one("#doc-path", Input).value.endswith("code_of_conduct.md")
            await pilot.press("ctrl+r")  # no run folder typed: the folder picker opens
            await pilot.pause()
            picker = app.screen
            assert isinstance(picker, PathPicker) and picker.folders
            picker.query_one("#picker-path", Input).value = "."
            await pilot.click("#picker-choose")
            await pilot.pause()
            assert "not a valign run folder" in str(picker.query_one("#picker-error").render())
            picker.query_one("#picker-path", Input).value = "demo-run"
            picker.query_one("#picker-path", Input).focus()
            await pilot.press("enter")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "PipelineScreen", 10, "the opened run")
            assert app.active_run is not None and app.active_run.root.name == "demo-run"

    run_async(go())


def test_start_screen_fills_the_form_from_an_opened_run(sample_copy):
    from textual.widgets import Input, Select

    from valign_edge import config

    cfg = config.resolve(saved=sample_copy / "config.toml", overrides={"train.max_steps": 7})
    (sample_copy / "config.toml").write_text(config.to_toml(cfg))

    async def go():
        app = create_app(Path("demo-run"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("1")
            await pilot.pause(0.5)
            screen = app.screen
            assert screen.query_one("#run-path", Input).value == "demo-run"
            assert screen.query_one("#doc-path", Input).value == "demo-run/document.txt"
            assert screen.query_one("#preset", Select).value == "quick"
            assert screen.query_one("#set-generate-max-chunks", Input).value == "6"
            assert screen.query_one("#set-train-max-steps", Input).value == "7"  # the run's, not the preset's
            assert screen.overrides()["train.max_steps"] == "7"

    run_async(go())


def test_reject_edit_and_restore_records(sample_copy):
    from textual.widgets import DataTable, Select, TextArea
    from valign_edge.tui.screens.dialogs import EditRecord

    def ids(kind: str, split: str) -> list[str]:
        path = sample_copy / "data" / kind / f"{split}.jsonl"
        return [json.loads(line)["meta"]["id"] for line in path.read_text().splitlines()]

    before = ids("sft", "train")

    async def go():
        app = create_app(sample_copy)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("3")
            await pilot.pause()
            screen = app.screen
            table = screen.query_one("#records", DataTable)
            assert table.row_count == len(before)
            first = screen.current_row()["meta"]["id"]
            await pilot.press("r")
            await wait_for(pilot, lambda: table.row_count == len(before) - 1, 30, "the rejection")  # a worker
            # Filter by chunk, then look at the rejected records.
            chunk_select = screen.query_one("#data-chunk", Select)
            some_chunk = screen.rows[0]["meta"]["chunk_id"]
            chunk_select.value = some_chunk
            await pilot.pause()
            assert screen.rows and all(r["meta"]["chunk_id"] == some_chunk for r in screen.rows)
            chunk_select.value = "__all__"
            screen.query_one("#data-split", Select).value = "rejected"
            await pilot.pause()
            assert [r["meta"]["id"] for r in screen.rows] == [first]
            source = str(screen.query_one("#record-source").render())
            assert "source c00" in source
            screen.query_one("#data-split", Select).value = "train"
            await pilot.pause()
            # Edit the answer of the selected record.
            target = screen.current_row()["meta"]["id"]
            await pilot.press("e")
            await pilot.pause()
            assert isinstance(app.screen, EditRecord)
            app.screen.query_one(TextArea).text = "Report it to your supervisor the same day."
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: "(edited)" in str(screen.query_one("#record-text").render()), 30, "the edit")
            assert screen.current_row()["messages"][1]["content"] == "Report it to your supervisor the same day."
            assert "(edited)" in str(screen.query_one("#record-text").render())
            return first, target

    first, edited = run_async(go())
    assert first not in ids("sft", "train") + ids("sft", "valid") + ids("sft", "test")
    edits = [json.loads(line) for line in (sample_copy / "data" / "edits.jsonl").read_text().splitlines()]
    assert [(e["id"], e["action"]) for e in edits] == [(first, "reject"), (edited, "edit")]

    async def reopen():  # decisions are kept in the run: a new session sees them, and can restore
        app = create_app(sample_copy)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("3")
            await pilot.pause()
            screen = app.screen
            screen.query_one("#data-split", Select).value = "rejected"
            await pilot.pause()
            assert [r["meta"]["id"] for r in screen.rows] == [first]
            await pilot.press("u")
            await wait_for(pilot, lambda: screen.rows == [], 30, "the restore")

    run_async(reopen())
    assert first in ids("sft", "train") + ids("sft", "valid") + ids("sft", "test")


def test_evaluation_screen_shows_table_and_bars(in_sample):
    from textual.widgets import DataTable
    from valign_edge.tui.widgets.charts import BarChart

    async def go():
        app = create_app(Path("demo-run"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            await pilot.pause()
            table = app.screen.query_one("#eval-table", DataTable)
            assert table.row_count == 4 and len(table.columns) == 5
            charts = list(app.screen.query(BarChart))
            assert [c.title for c in charts] == ["ROUGE-L F1", "BLEU (corpus)", "BERTScore F1",
                                                 "Faithfulness (judge)"]
            assert "n/a" in str(charts[3].render())

    run_async(go())


def test_evaluation_failure_is_a_message_not_a_crash(sample_copy):
    """Evaluating a run without an exported model fails inside the worker: a message, and the app stays up."""
    shutil.rmtree(sample_copy / "export")
    (sample_copy / "eval" / "report.json").unlink()

    async def go():
        app = create_app(sample_copy)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            await pilot.pause()
            assert "No evaluation yet" in str(app.screen.query_one("#eval-empty").render())
            await pilot.press("e")
            await wait_for(pilot, lambda: app.job.job is None and app.job.outcome, 120, "the evaluation to end")
            assert app.job.outcome == "failed"
            assert any(s == "error" for s, _ in notices(app))
            assert app.is_running and type(app.screen).__name__ == "EvalScreen"

    run_async(go())


def test_quit_leaves_no_threads_or_processes(in_sample):
    async def go():
        app = create_app(Path("demo-run"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("1")
            await pilot.pause(0.5)
            await pilot.press("ctrl+q")
            await pilot.pause()
        return app

    before = {t.ident for t in threading.enumerate()}
    app = run_async(go())
    assert app.return_code in (0, None)
    deadline = time.monotonic() + 30
    while True:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive() and not t.daemon]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not extra, extra
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    if children.exists():
        assert children.read_text().strip() == ""


# --- snapshots at 100x32 ---------------------------------------------------------------------------------
async def _settle(pilot):
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.3)


def test_snapshot_start(in_sample, snap_compare):
    async def before(pilot):
        pilot.app.screen.query_one("#doc-path").value = "code_of_conduct.md"
        await pilot.pause(0.5)
        await _settle(pilot)

    assert snap_compare(create_app(), terminal_size=SIZE, run_before=before)


def test_snapshot_pipeline(in_sample, snap_compare):
    assert snap_compare(create_app(Path("demo-run")), terminal_size=SIZE, run_before=_settle)


def test_snapshot_data(in_sample, snap_compare):
    async def before(pilot):
        await pilot.press("3")
        await pilot.press("down", "down")
        await _settle(pilot)

    assert snap_compare(create_app(Path("demo-run")), terminal_size=SIZE, run_before=before)


def test_snapshot_evaluation(in_sample, snap_compare):
    async def before(pilot):
        await pilot.press("4")
        await _settle(pilot)

    assert snap_compare(create_app(Path("demo-run")), terminal_size=SIZE, run_before=before)


def test_snapshot_chat(in_sample, snap_compare):
    async def before(pilot):
        await pilot.press("5")
        await pilot.press("ctrl+t")
        await pilot.press("escape")  # leave the question field: a blinking cursor makes snapshots flaky
        await _settle(pilot)

    assert snap_compare(create_app(Path("demo-run")), terminal_size=SIZE, run_before=before)


def test_snapshot_help(in_sample, snap_compare):
    async def before(pilot):
        await pilot.press("question_mark")
        await _settle(pilot)

    assert snap_compare(create_app(Path("demo-run")), terminal_size=SIZE, run_before=before)
