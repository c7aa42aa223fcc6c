"""``valign generate``: document -> chunks -> teacher-generated SFT and DPO datasets."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from valign_edge import advice, models
from valign_edge.config import RunConfig, to_toml
from valign_edge.documents.chunking import chunk_text
from valign_edge.documents.ingest import load_page_starts, read_document, save_page_starts
from valign_edge.errors import UserError
from valign_edge.events import Callback, Event, log
from valign_edge.files import atomic_write_text, write_jsonl
from valign_edge.generation import datasets
from valign_edge.generation.synth import synth_key, synthesize
from valign_edge.models import model_id  # lives in models.py; still importable from here
from valign_edge.runs.workspace import Run, hash_obj, require_free_disk


def save_config(run: Run, cfg: RunConfig, student_checked: bool = False) -> None:
    """Write the run's config.toml. The student is only written once training has loaded it (or
    when the run has no saved student yet), so a bad ``--student`` never becomes the run's setting
    and a good one is what a later ``valign export`` merges onto."""
    if not student_checked and run.config_path.exists():
        from dataclasses import replace

        from valign_edge.config import resolve_config

        try:
            cfg = replace(cfg, student=resolve_config(run.config_path).student)
        except UserError:
            pass  # an unreadable saved config is replaced whole
    atomic_write_text(run.config_path, to_toml(cfg))


def load_document(run: Run, doc: str | Path | None) -> str:
    """The run's normalized document, (re)read from ``doc`` when given."""
    if doc is None:
        if not run.document_path.exists():
            raise UserError(f"{run.root} has no document yet; give one: valign generate DOC --out {run.root}")
        return run.document_path.read_text(encoding="utf-8")
    document = read_document(doc)
    text = document.text
    if not run.document_path.exists() or run.document_path.read_text(encoding="utf-8") != text:
        # the document, its chunks and the teacher's records: a few times the text, plus logs
        require_free_disk(run.root, 4 * len(text.encode("utf-8")) + 16e6, "the document and its generated data")
        atomic_write_text(run.document_path, text)
    save_page_starts(run.root, text, document.pages)
    return text


def generate(run: Run, cfg: RunConfig, emit: Callback, doc: str | Path | None = None,
             should_stop=lambda: False, allow_remote: bool = False) -> dict:
    """Run the generation stage (skipped when up to date); returns the stage's counts. A teacher server off
    this machine is refused unless ``allow_remote`` (the user's ``--allow-remote``)."""
    text = load_document(run, doc)
    teacher_ref = models.resolve(cfg.teacher, "teacher", allow_remote)
    if teacher_ref.kind not in ("gguf", "server"):
        raise UserError(f"teacher {cfg.teacher!r} must be a GGUF file run by llama.cpp")
    gen = cfg.generate
    key = hash_obj([hash_obj(text), model_id(teacher_ref), asdict(gen), cfg.seed])
    if run.is_done("generate", key) and run.split_path("sft", "train").exists():
        save_config(run, cfg)
        log(emit, "generate", "generate: up to date, skipped")
        return run.stage_info("generate")
    from valign_edge.backends.llama_cpp import LlamaTeacher

    emit(Event("stage", "generate", f"teacher {teacher_ref.name}"))
    if teacher_ref.kind == "server":  # an OpenAI-compatible server (backends/openai_teacher.py)
        from valign_edge.backends.openai_teacher import OpenAITeacher

        teacher = OpenAITeacher(teacher_ref.preset["url"], model=gen.teacher_model, allow_remote=allow_remote)
    else:
        teacher = LlamaTeacher(teacher_ref.path, n_ctx=gen.n_ctx, n_threads=gen.n_threads,
                               n_threads_batch=gen.n_threads_batch, seed=cfg.seed)
    # Saved only once the teacher loads: a bad --teacher must not become the run's setting.
    save_config(run, cfg)
    with run.stage("generate", key, {"document": hash_obj(text), "teacher": model_id(teacher_ref)}) as result:
        budget = gen.chunk_tokens
        chunks = chunk_text(text, budget, gen.chunk_overlap, teacher.count_tokens, load_page_starts(run.root, text))
        write_jsonl(run.chunks_path, [c.to_dict() for c in chunks])
        if gen.max_chunks:
            chunks = chunks[: gen.max_chunks]
        log(emit, "generate", f"{len(chunks)} chunks of at most {budget} tokens")
        counts = synthesize(run, chunks, teacher, gen, cfg.seed, model_id(teacher_ref), emit, should_stop)
        skey = synth_key(gen, model_id(teacher_ref), cfg.seed)
        counts["splits"] = datasets.build(run, [c.id for c in chunks], gen.valid_fraction, gen.test_fraction,
                                          cfg.seed, skey, gen.balance_verdicts, gen.verdict_pairs,
                                          gen.passages, gen.reason_first)
        counts["teacher"] = teacher.stats()
        if counts["sft_records"] == 0:
            raise UserError(advice.no_records(chunks, counts))
        result.update(counts)
    emit(Event("stage", "generate", json.dumps(counts["splits"])))
    return run.stage_info("generate")


def rebuild_splits(run: Run, cfg: RunConfig) -> dict:
    """Rebuild ``data/`` from the synth records and ``data/edits.jsonl`` (after a data review)."""
    from valign_edge.files import read_jsonl

    chunks = read_jsonl(run.chunks_path)
    if not chunks:
        raise UserError(f"{run.root} has no generated data yet; run: valign generate DOC --out {run.root}")
    if cfg.generate.max_chunks:
        chunks = chunks[: cfg.generate.max_chunks]
    teacher_ref = models.resolve(cfg.teacher, "teacher", allow_remote=True)  # its id only: nothing is sent
    gen = cfg.generate
    return datasets.build(run, [c["id"] for c in chunks], gen.valid_fraction, gen.test_fraction, cfg.seed,
                          synth_key(gen, model_id(teacher_ref), cfg.seed), gen.balance_verdicts, gen.verdict_pairs,
                          gen.passages, gen.reason_first)


def add_edit(run: Run, record_id: str, action: str, fields: dict | None = None) -> None:
    """Record a review decision (``reject`` or ``edit``) that every rebuild applies."""
    from valign_edge.files import append_jsonl

    if action not in ("reject", "edit", "restore"):
        raise UserError(f"unknown edit action {action!r}")
    append_jsonl(run.data_dir / "edits.jsonl", {"id": record_id, "action": action, "fields": fields or {}})


def check_document(run, text: str, replace: bool) -> None:
    """Refuse to generate another document into a run made from a different one, unless ``replace``;
    then every stage is marked stale (each is redone from the new document)."""
    from valign_edge.runs.workspace import STAGES

    recorded = run.stage_info("generate").get("inputs", {}).get("document")
    if recorded is None and run.document_path.exists():
        recorded = hash_obj(run.document_path.read_text(encoding="utf-8"))
    if recorded is None or recorded == hash_obj(text):
        return
    if not replace:
        raise UserError(f"{run.root} was made from a different document; to replace it (its data, training and "
                        "export are redone) add --new-document, or give --out a new folder")
    run.invalidate(*STAGES)
