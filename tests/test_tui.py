"""The Textual app: Pilot tests that drive every screen, a real quick run started from the app,
data review decisions, chat with the exported model, and snapshots of each screen at 100x32.

Two run folders are built once per session:
- ``sample_run``: a run folder written with the library's own functions (real chunks of the sample
  document, records in the synth format, splits built by ``datasets.build``, an evaluation report
  made by the evaluation's own functions from fixed answers and held to the format of a report the
  real ``valign eval`` wrote, the real SmolLM2 GGUF linked as its export). Deterministic, so snapshots
  are stable; anything that differs between machines (the backend) is checked, then left out of them.
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


async def wait_for_backend(pilot, screen) -> str:
    """Wait until the start screen's backend check has answered (importing torch can take minutes on a
    loaded machine); the text must name what ``choose_backend`` picks on this machine."""
    from valign_edge.backends import choose_backend

    def shown() -> str:
        return str(screen.query_one("#backend-info").render())

    await wait_for(pilot, lambda: "auto → " in shown() or "error" in shown().lower(), 600, "the backend check")
    choice = choose_backend("auto")
    assert shown().startswith(f"auto → {choice.name} on {choice.device} ({choice.reason})"), shown()
    return shown()


def notices(app) -> list[tuple[str, str]]:
    return [(n.severity, n.message) for n in app._notifications]


# --- the sample run folder ---------------------------------------------------------------------------
def _sentences(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", " ".join(body.split())) if len(s.strip()) > 20]


def build_sample_run(root: Path) -> Path:
    """A finished-looking run folder, written through the library (no model calls, fixed content)."""
    from valign_edge import config, models
    from valign_edge.documents.chunking import chunk_text
    from valign_edge.documents.ingest import read_document
    from valign_edge.events import Event, JsonlSink
    from valign_edge.files import append_jsonl, atomic_write_text, write_json, write_jsonl
    from valign_edge.generation import datasets
    from valign_edge.generation.generate import save_config
    from valign_edge.generation.synth import synth_key
    from valign_edge.models import model_id
    from valign_edge.runs.workspace import Run

    run = Run.open(root, create=True)
    cfg = config.resolve_config(preset="quick")
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
    write_json(run.eval_dir / "report.json", sample_report(run, cfg))
    run.export_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model-q8_0.gguf", "base-q8_0.gguf"):
        (run.export_dir / name).symlink_to(teacher.path)
    return run.root


def sample_report(run, cfg) -> dict:
    """``eval/report.json`` as ``valign eval`` writes it, made by the evaluation's own functions
    (``metric_section``, ``reference_judge``, ``build_report``) from fixed answers instead of model calls,
    so it is the same on every machine. ``test_sample_report_has_the_format_valign_eval_writes`` holds it
    to a report the real ``valign eval`` wrote."""
    from valign_edge.config import SYSTEMS
    from valign_edge.evaluation import judge, metrics
    from valign_edge.evaluation.judging import reference_judge
    from valign_edge.evaluation.report import COLUMNS, build_report, metric_section
    from valign_edge.evaluation.systems import REFERENCE_SYSTEM, Context, System
    from valign_edge.evaluation.testset import TestSet
    from valign_edge.generation import datasets

    rows = [r for split in ("test", "valid", "train") for r in datasets.load(run, "sft", split)][:12]
    questions = [{"id": r["meta"]["id"], "question": r["messages"][0]["content"], "kind": "sft",
                  "reference": r["messages"][1]["content"], "chunk_id": r["meta"]["chunk_id"]} for r in rows]
    pairs = [{"id": r["meta"]["id"], "prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
              "chunk_id": r["meta"]["chunk_id"]} for split in ("test", "valid", "train")
             for r in datasets.load(run, "dpo", split)]

    def answer(system: str, i: int, ref: str) -> str:
        words = ref.split()
        keep = {"vanilla": 0, "rag": len(words) // 2, "sft": len(words) - 3, "dpo": len(words) - (i % 3),
                "dpo_rag": len(words)}[system]
        return " ".join(words[:max(0, keep)] + ["Please", "ask", "your", "manager."][: 4 if keep <= 0 else 1])

    refs = [q["reference"] for q in questions]
    answers, scores, prefs = {}, {}, {}
    for n, system in enumerate(SYSTEMS):
        hyps = [answer(system, i, ref) for i, ref in enumerate(refs)]
        answers[system] = [{"answer": h, "tokens": len(h.split()) + 2, "seconds": 0.5} for h in hyps]
        rouge = metrics.rouge_l(hyps, refs)
        scores[system] = {"bleu_sentence": [metrics.sentence_bleu(h, r) for h, r in zip(hyps, refs)],
                          "rouge_l": rouge, "bertscore_f1": [0.45 + 0.5 * x for x in rouge]}  # no model: fixed
        prefs[system] = [{"chosen_logprob": -4.0 - (i + n) % 4, "chosen_tokens": 6, "rejected_tokens": 6,
                          "rejected_logprob": -6.0 + (i * (5 - n)) % 4} for i in range(len(pairs))]
    win_judge = {}
    for n, other in enumerate(s for s in SYSTEMS if s != REFERENCE_SYSTEM):
        verdicts = [("A", "B") if (i + n) % 3 else ("tie", "tie") for i in range(len(questions))]
        win_judge[other] = judge.summarize([judge.combine(*v) for v in verdicts], verdicts) | {
            "verdicts": [list(v) for v in verdicts]}
    win_ref = reference_judge(list(SYSTEMS), scores, len(questions), cfg.eval.ref_judge_margin)
    held_out = metric_section(list(SYSTEMS), COLUMNS, questions, answers, prefs, scores, win_judge, win_ref,
                              cfg.eval.bootstrap, cfg.seed)
    systems = [System(name, run.export_dir / ("model-q8_0.gguf" if name.startswith("dpo") else "base-q8_0.gguf"),
                      run.export_dir / "adapter-sft.gguf" if name == "sft" else None, name.endswith("rag"))
               for name in SYSTEMS]
    ctx = Context(run, cfg, lambda event: None, systems, threads=(1, 1), timings={"total": 61.0})
    tests = TestSet(questions, pairs, [], {"kind": "run", "path": str(run.root), "splits": ["test"]})
    judge_stats = {"model": "smollm2-135m-instruct", "questions": len(questions), "mode": cfg.eval.judge_mode,
                   "first_position_rate": 0.5, "order_consistency": 0.75, "reliable": True}
    report = build_report(ctx, tests, held_out, answers, judge_stats, [])
    return report | {"run": "demo-run", "created": EVENT_TIME,
                     "machine": {"os": "Linux", "arch": "x86_64", "cpu": "test", "cores": 2, "python": "3.12"}}


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
        # the form proposes runs/<document>; only then type our own folder, or the proposal overwrites it
        await wait_for(pilot, lambda: screen.query_one("#run-path", Input).value == f"runs/{doc.stem}", 30,
                       "the proposed run folder")
        screen.query_one("#run-path", Input).value = str(run_dir)
        screen.query_one("#extra", Input).value = QUICK_SETTINGS
        await pilot.click("#start-run")
        await wait_for(pilot, lambda: app.job.job == "pipeline", 20, "the pipeline to start")
        seen["screen_after_start"] = type(app.screen).__name__
        # Generation's first progress event (0 of 2 chunks) comes just before the first chunk starts: a
        # cancel now lands while that chunk is generated, which finishes, and the stage stops before the next.
        await wait_for(pilot, lambda: app.job.stages["generate"].total, 600, "generation's first progress")
        await pilot.press("c")  # cancel
        await wait_for(pilot, lambda: app.job.job is None, 600, "the cancel to take effect")
        seen["after_cancel"] = app.job.outcome
        seen["cancelled_stage"] = (app.job.current, app.job.current and app.job.stages[app.job.current].status)
        synth = run_dir / "synth" / "sft.jsonl"
        seen["synth_at_cancel"] = synth.read_text() if synth.exists() else ""
        await pilot.press("s")  # resume
        await wait_for(pilot, lambda: app.job.job == "pipeline", 20, "the resume to start")
        await wait_for(pilot, lambda: app.job.job is None, 1500, "the pipeline to finish")
        seen["outcome"] = app.job.outcome
        seen["statuses"] = {k: v.status for k, v in app.job.stages.items()}
        seen["losses"] = {k: list(v) for k, v in app.job.losses.items()}
        seen["log"] = list(app.job.log)
        seen["errors"] = [m for s, m in notices(app) if s == "error"]
        seen["title"] = str(app.screen.query_one("#current-title").render())
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
    assert seen["cancelled_stage"] == ("generate", "cancelled")
    assert seen["outcome"] == "finished", seen["log"][-5:] + seen["errors"]
    assert seen["errors"] == []
    for stage in ("generate", "train_sft", "train_dpo", "export"):
        assert seen["statuses"][stage] == "done", seen["statuses"]
    assert len(seen["losses"]["train_sft"]) == 2 and len(seen["losses"]["train_dpo"]) == 2
    # The resume continued generation where the cancel left it, rather than starting again.
    before = [json.loads(line) for line in seen["synth_at_cancel"].splitlines()]
    assert len(before) == 1, "the first chunk should have been generated before the cancel took effect"
    after = (run_dir / "synth" / "sft.jsonl").read_text()
    assert after.startswith(seen["synth_at_cancel"])  # kept as it was, not rewritten
    assert len({json.loads(line)["chunk_id"] for line in after.splitlines()}) == len(after.splitlines()) == 2
    assert any("resuming: 1 of 2 chunks already generated" in line for line in seen["log"]), seen["log"]
    assert "finished" in seen["title"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("generate", "train_sft", "train_dpo", "export"))
    assert (run_dir / "export" / "model-q8_0.gguf").exists()
    events = [json.loads(line) for line in (run_dir / "logs" / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "metric" and e["stage"] == "train_dpo" for e in events)
    cancelled = next(i for i, e in enumerate(events) if e["kind"] == "log" and e["message"].startswith("cancelled"))
    resumed = [e["done"] for e in events[cancelled:] if e["kind"] == "progress" and e["stage"] == "generate"]
    assert resumed and resumed[0] == 1 and resumed[-1] == 2 and resumed == sorted(resumed), resumed


def test_chat_streams_from_the_exported_model(tiny_run, monkeypatch):
    from textual.widgets import Input

    from valign_edge.chat import ChatSession

    run_dir, _ = tiny_run
    real_ask = ChatSession.ask
    seen_partial = threading.Event()

    def held_ask(self, question):
        """The real model's pieces; after the first visible one, the rest wait until the test has seen it
        on screen (or 120 s pass), so streaming is observed without depending on timing."""
        text = ""
        for piece in real_ask(self, question):
            yield piece
            held, text = bool(text.strip()), text + piece
            if text.strip() and not held and not seen_partial.is_set():
                seen_partial.wait(120)

    monkeypatch.setattr(ChatSession, "ask", held_ask)

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
            partial: list[str] = []

            def first_piece_shown() -> bool:
                shown = [str(w.render()) for w in screen.query("#pane-aligned .answer")]
                if screen.busy and shown and shown[0].strip() not in ("", "…"):
                    partial.append(shown[0])
                    seen_partial.set()
                return bool(partial) or not screen.busy

            await wait_for(pilot, first_piece_shown, 180, "the first piece of the answer")
            await wait_for(pilot, lambda: not screen.busy, 180, "the answer to finish")
            answers = [str(w.render()) for w in screen.query("#pane-aligned .answer")]
            assert len(answers) == 1 and answers[0].strip() and answers[0] != "(no answer)"
            # the answer was on screen while it was still being written, and grew from there
            assert partial, "the answer appeared only when it was complete"
            assert answers[0].startswith(partial[0]) and len(answers[0]) > len(partial[0]), (partial, answers)
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
            found = app.screen.query_one("CommandList")  # the search runs in a worker: wait for its one hit
            await wait_for(pilot, lambda: app.screen._list_visible and found.option_count == 1
                           and "data review" in str(found.get_option_at_index(0).prompt).lower(), 30,
                           "the palette's match")
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
            await wait_for_backend(pilot, screen)
            # A missing document: a readable message, no crash, no run folder created.
            screen.query_one("#doc-path", Input).value = "missing.md"
            await wait_for(pilot, lambda: "not found" in str(screen.query_one("#preview").render()), 20,
                           "the preview error")
            screen.query_one("#run-path", Input).value = str(tmp_path / "new-run")
            await pilot.click("#start-run")
            await wait_for(pilot, lambda: any(s == "error" and "document not found" in m for s, m in notices(app)),
                           30, "the missing-document message")
            assert not (tmp_path / "new-run").exists()
            # A bad setting and a folder that is not a run: messages again.
            screen.query_one("#doc-path", Input).value = "code_of_conduct.md"
            screen.query_one("#extra", Input).value = "train.lora_rank=many"
            # a button ignores clicks during its short pressed animation: click again once it is released
            await wait_for(pilot, lambda: not screen.query_one("#start-run").has_class("-active"), 10,
                           "the button's release")
            await pilot.click("#start-run")
            await wait_for(pilot, lambda: any(s == "error" and "lora_rank" in m for s, m in notices(app)), 30,
                           "the bad-setting message")
            assert not (tmp_path / "new-run").exists()
            assert app.open_run(tmp_path) is False
            assert type(app.screen).__name__ == "StartScreen" and app.active_run is None

    run_async(go())


def test_new_run_with_another_document_into_a_run_is_refused(sample_copy, tmp_path):
    """The CLI refuses to generate another document into a run (its data would be overwritten); the app's
    new-run path skipped that guard."""
    from conftest import CANARY_DOC

    other = tmp_path / "other.md"
    other.write_text(CANARY_DOC)
    before = {p.name: p.read_bytes() for p in sample_copy.iterdir() if p.is_file() and p.name != ".lock"}

    async def go():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert app.new_run(other, sample_copy, None, {}) is False
            await wait_for(pilot, lambda: any(s == "error" and "different document" in m for s, m in notices(app)),
                           30, "the different-document message")
            assert app.job.job is None

    run_async(go())
    assert {p.name: p.read_bytes() for p in sample_copy.iterdir() if p.is_file() and p.name != ".lock"} == before


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


def test_typing_with_no_field_focused_is_not_lost(in_sample):
    """Text typed on the Start screen while its button has focus goes into the document field, and in the
    run-folder picker while its tree has focus into the path field; the screen keys still switch screens."""
    from textual.widgets import Input

    from valign_edge.tui.screens.dialogs import PathPicker

    async def go():
        app = create_app()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            screen = app.screen
            assert not isinstance(screen.focused, Input)
            await pilot.press("c", "o", "c", ".", "m", "d")
            assert screen.query_one("#doc-path", Input).value == "coc.md"
            screen.query_one("#start-run").focus()
            await pilot.pause()
            await pilot.press("x")
            assert screen.query_one("#doc-path", Input).value == "coc.mdx"
            app.open_run_dialog()
            await pilot.pause()
            picker = app.screen
            assert isinstance(picker, PathPicker) and picker.focused is picker.query_one("#picker-tree")
            await pilot.press("d", "e", "m", "o")
            assert picker.query_one("#picker-path", Input).value == "demo"
            await pilot.press("escape")
            await pilot.pause()
            screen.query_one("#start-run").focus()
            await pilot.pause()
            await pilot.press("5")  # a bound key is not typed: it switches to the chat screen
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ChatScreen", 10, "the chat screen")
            assert screen.query_one("#doc-path", Input).value == "coc.mdx"

    run_async(go())


def test_start_screen_fills_the_form_from_an_opened_run(sample_copy):
    from textual.widgets import Input, Select

    from valign_edge import config

    cfg = config.resolve_config(saved=sample_copy / "config.toml", overrides={"train.max_steps": 7})
    (sample_copy / "config.toml").write_text(config.to_toml(cfg))

    async def go():
        app = create_app(Path("demo-run"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("1")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "StartScreen"
                           and app.screen.query_one("#set-train-max-steps", Input).value == "7", 30, "the run's form")
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
            await pilot.press("u")  # the selection is now on a record never changed: nothing to restore
            await wait_for(pilot, lambda: any("nothing to restore" in m for _, m in notices(app)), 10,
                           "the nothing-to-restore notice")
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


def _show_report(run: Path, report: dict) -> dict:
    """Open ``run`` on the Evaluation screen; what its table, charts, notes and notices show."""
    from textual.widgets import DataTable, Static

    from valign_edge.tui.widgets.charts import BarChart

    async def go():
        app = create_app(run)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "EvalScreen"
                           and app.screen.query_one("#eval-table", DataTable).row_count > 0, 30, "the report")
            await wait_for(pilot, lambda: len(app.screen.query(BarChart)) > 0, 30, "the charts")
            table = app.screen.query_one("#eval-table", DataTable)
            return {"columns": [str(c.label.plain) for c in table.columns.values()],
                    "rows": [[c.plain if hasattr(c, "plain") else str(c) for c in table.get_row_at(i)]
                             for i in range(table.row_count)],
                    "charts": [(c.title, str(c.render())) for c in app.screen.query(BarChart)],
                    "notes": str(app.screen.query_one("#eval-notes", Static).render()),
                    "errors": [m for sev, m in notices(app) if sev == "error"]}

    return run_async(go())


def _check_screen_shows(shown: dict, report: dict) -> None:
    """Every system a row, every column of the report a column and a chart, each cell its value and n."""
    columns = report["columns"]
    assert shown["errors"] == []
    assert shown["columns"] == ["system", *columns]
    assert [row[0] for row in shown["rows"]] == report["systems"] == [r["system"] for r in report["table"]]
    for row, data in zip(shown["rows"], report["table"]):
        for text, column in zip(row[1:], columns):
            value = data[column]
            assert text.startswith("n/a") if value is None else text.split()[0] == (
                f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"), (data["system"], column, text)
            n = report["counts"][data["system"]][column]
            assert value is None or f"n={n}" in text, (data["system"], column, text)
    assert [title for title, _ in shown["charts"]] == [report["column_labels"][c] for c in columns]
    if report.get("advice"):
        assert report["advice"][:60] in shown["notes"].replace("\n", " ")


def test_evaluation_screen_shows_table_and_bars(in_sample):
    report = json.loads((in_sample / "demo-run" / "eval" / "report.json").read_text())
    shown = _show_report(Path("demo-run"), report)
    _check_screen_shows(shown, report)
    assert len(shown["rows"]) == 5 and len(shown["columns"]) == 8  # 5 systems, 7 metrics
    dpo_judge = dict(shown["charts"])["dpo preferred by the judge model (vs system)"]
    assert "n/a" in dpo_judge  # dpo is what the win rates are about: no bar of its own


def test_evaluation_screen_shows_a_report_made_by_valign_eval(evaluated_run, tmp_path):
    """The screen on the report the real ``valign eval`` wrote for the shared run (conftest)."""
    from conftest import copy_run

    run = copy_run(evaluated_run.path, tmp_path / "run")
    report = json.loads((run / "eval" / "report.json").read_text())
    _check_screen_shows(_show_report(run, report), report)


def test_sample_report_has_the_format_valign_eval_writes(evaluated_run, sample_base):
    """The snapshots' report, built from fixed answers, has every field a real report has, down to the cells."""
    real = json.loads((evaluated_run.path / "eval" / "report.json").read_text())
    sample = json.loads((sample_base / "demo-run" / "eval" / "report.json").read_text())
    assert sample.keys() == real.keys()
    assert (sample["systems"], sample["columns"], sample["column_labels"]) == (
        real["systems"], real["columns"], real["column_labels"])
    assert [row.keys() for row in sample["table"]] == [row.keys() for row in real["table"]]
    for key in ("intervals", "counts", "evidence", "preference", "answers", "models"):
        assert {k: sorted(v) for k, v in sample[key].items()} == {k: sorted(v) for k, v in real[key].items()}, key
    assert sample["conclusions"].keys() == real["conclusions"].keys()
    assert sample["win_rate"].keys() == real["win_rate"].keys()


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
            await pilot.press("1")  # the start screen starts its worker threads (backend check, preview)
            await wait_for(pilot, lambda: type(app.screen).__name__ == "StartScreen", 30, "the start screen")
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
    from rich.text import Text

    async def before(pilot):
        screen = pilot.app.screen
        screen.query_one("#doc-path").value = "code_of_conduct.md"
        await wait_for(pilot, lambda: "chunks" in str(screen.query_one("#preview-title").render()), 60,
                       "the preview")
        await wait_for_backend(pilot, screen)
        await _settle(pilot)
        # The backend differs between machines (cpu, cuda, metal): checked above, a fixed text in the image.
        screen.query_one("#backend-info").update(Text("auto → (this machine's backend)", style="dim"))
        await pilot.pause()

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
