"""``valign eval``: vanilla, RAG, SFT and SFT+DPO side by side, on two kinds of test data.

- **Probe sets** (``--probe FILE.jsonl``, ``eval.probe``, or the shipped probe when the run's document
  is a shipped one): situations and questions a person wrote, which generation and training never
  read. They measure whether alignment generalizes (see probes.py).
- **The held-out split** (or ``--doc``): questions and preference pairs the teacher wrote the same way
  as the training data. A sanity check that training took.

Every system answers through the runtime users chat with (llama.cpp on the exported GGUF files)
with the same greedy decoding. The report leads with which side the answers take: on probe answer
rows with the document's verdict, the forced Yes/No choice and the free answer's verdict, balanced
over yes- and no-rows (verdicts.py). Then each system's model is asked which answer of each
preference pair it finds likelier (length-normalized); answers are compared with the reference
answers for closeness (sacreBLEU, ROUGE-L, BERTScore: wording overlap, not faithfulness), and ``dpo``
with every other system by a judge model (both orders) and by closeness to the reference. Every cell
carries its sample size and whether it can tell the system from ``vanilla`` (evidence.py).
A person can grade the answers blind (grading.py).

Answers, preference scores and judgments are cached under ``RUN/eval/`` per system and per input,
so an interrupted evaluation resumes where it stopped. Writes ``eval/report.json``,
``eval/report.md``, ``eval/details.jsonl``, ``eval/probe-<name>-details.jsonl`` and one bar chart per
metric and test set. The modules of this package: systems (what is compared), testset and probes (on what), answers
(answers, pair scores, text scores), judging, report, evidence, markdown (report.md and ``--compare``),
plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from valign_edge.config import RunConfig
from valign_edge.cpu import auto_threads
from valign_edge.errors import UserError
from valign_edge.evaluation.answers import Scorer, generate_answers, preference_scores
from valign_edge.evaluation.evidence import small_sample_advice
from valign_edge.evaluation.judging import judge_answers, judge_key, judge_model_ref, reference_judge
from valign_edge.evaluation.markdown import render_markdown
from valign_edge.evaluation.metrics import preference_margin
from valign_edge.evaluation.plots import write_plots
from valign_edge.evaluation.probes import Probe, load_probe, probe_paths
from valign_edge.evaluation.report import (
    COLUMNS,
    PROBE_NOTE,
    build_report,
    examples,
    metric_section,
    probe_columns,
)
from valign_edge.evaluation.systems import (
    Context,
    Retriever,
    find_systems,
    system_key,
)
from valign_edge.evaluation.testset import check_test_split, load_test_set
from valign_edge.evaluation.verdicts import answer_verdict, forced_verdicts, verdict_section
from valign_edge.events import Callback, Event, log
from valign_edge.files import atomic_write_text, read_jsonl, write_json, write_jsonl
from valign_edge.runs.workspace import Run, hash_obj

REPORT_VERSION = 5  # in the stage key only: bump when the report changes, cached answers stay valid
# Settings that change how fast, not what: left out of the stage key. The probe files enter by content.
KEY_EXCLUDED = ("n_threads", "n_threads_batch", "probe", "judge_model")  # judge_model: in judge_key


def answer_details(names: list[str], questions: list[dict], answers: dict, scores: dict) -> list[dict]:
    rows = []
    for i, q in enumerate(questions):
        row = {"id": q.get("probe_id", q["id"]), "kind": q["kind"], "question": q["question"],
               "reference": q["reference"], **({"verdict": q["verdict"]} if q.get("verdict") else {}), "answers": {}}
        for name in names:
            row["answers"][name] = {"text": answers[name][i]["answer"], "opens_with": answer_verdict(
                                        answers[name][i]["answer"]),
                                    **{k: round(scores[name][k][i], 4) for k in
                                       ("bleu_sentence", "rouge_l", "bertscore_f1")}}
        rows.append(row)
    return rows


def pair_details(names: list[str], pairs: list[dict], prefs: dict) -> list[dict]:
    def margin(row: dict) -> float | None:
        m = preference_margin(row)
        return None if m is None else round(m, 4)

    return [{"id": p.get("probe_id", p["id"]), "kind": "preference",
             "margins": {name: margin(prefs[name][i]) for name in names}} for i, p in enumerate(pairs)]


def evaluate_probe(ctx: Context, probe: Probe, keys: dict, retriever: Retriever, scorer: Scorer) -> dict:
    """One probe's section of the report (and its per-row details)."""
    names = [s.name for s in ctx.systems]
    prefs = preference_scores(ctx, keys, probe.pairs, retriever, f"probe pairs ({probe.name})") \
        if probe.pairs else {}
    answers, scores, win_judge, win_ref, judge_stats, verdicts = {}, {}, {}, {}, {}, None
    if probe.questions:
        for q in probe.questions:  # the judge reads the passage of the run's document closest to the question
            q["chunk_id"] = retriever.best_chunk(q["question"])
        answers = generate_answers(ctx, keys, probe.questions, retriever, f"probe questions ({probe.name})")
        scores = scorer.score(answers, probe.questions)
        win_judge, judge_stats = judge_answers(ctx, answers, probe.questions, retriever.chunks)
        win_ref = reference_judge(names, scores, len(probe.questions), ctx.cfg.eval.ref_judge_margin)
        rows = [i for i, q in enumerate(probe.questions) if q.get("verdict")]
        if rows:
            verdict_rows = [probe.questions[i] for i in rows]
            forced = forced_verdicts(ctx, keys, verdict_rows, retriever, f"verdict rows ({probe.name})")
            verdicts = verdict_section(names, verdict_rows, forced,
                                       {n: [answers[n][i] for i in rows] for n in names},
                                       ctx.cfg.eval.bootstrap, ctx.cfg.seed)
    columns = probe_columns(len(probe.pairs), len(probe.questions),
                            sum(bool(q.get("verdict")) for q in probe.questions))
    section = metric_section(names, columns, probe.questions, answers, prefs, scores, win_judge, win_ref,
                             ctx.cfg.eval.bootstrap, ctx.cfg.seed, verdicts)
    write_jsonl(ctx.run.eval_dir / f"probe-{probe.name}-details.jsonl",
                pair_details(names, probe.pairs, prefs) + answer_details(names, probe.questions, answers, scores))
    return {**probe.source(), "independent": True, "note": PROBE_NOTE, **section, "judge": judge_stats,
            "examples": examples(names, probe.questions, answers)}


def _load_probes(run: Run, cfg: RunConfig, emit: Callback, given: list[Path] | None) -> list[Probe]:
    paths, shipped = probe_paths(cfg.eval.probe, given, run)
    probes = [load_probe(p, shipped) for p in paths]  # every file checked before any work starts
    seen: dict[str, int] = {}
    for probe in probes:
        seen[probe.name] = seen.get(probe.name, 0) + 1
        if seen[probe.name] > 1:
            probe.name = f"{probe.name}-{seen[probe.name]}"
    if shipped and probes:
        log(emit, "eval", f"the run's document is a shipped one: evaluating on its shipped probe {probes[0].path} "
                          f"({len(probes[0].pairs)} preference rows, {len(probes[0].questions)} answer rows, "
                          "hand-written; --set eval.probe=none leaves it out)")
    for probe in probes:
        if not shipped:
            log(emit, "eval", f"probe {probe.path}: {len(probe.pairs)} preference rows, "
                              f"{len(probe.questions)} answer rows")
    return probes


def check_probe_files(cfg: RunConfig) -> None:
    """Refuse a bad ``eval.probe`` before a long ``valign run --eval`` starts (one line per bad row)."""
    value = (cfg.eval.probe or "").strip()
    if value and value.lower() != "none":
        for path in value.split(","):
            if path.strip():
                load_probe(Path(path.strip()))


def evaluate(run: Run, cfg: RunConfig, emit: Callback, doc: Path | None = None,
             probes: list[Path] | None = None, allow_remote: bool = False) -> dict:
    """Run the evaluation stage (skipped when up to date) and return the report. A judge or teacher server
    off this machine is refused unless ``allow_remote`` (the user's ``--allow-remote``)."""
    started = time.perf_counter()
    if doc is None:
        check_test_split(run)
    if cfg.eval.judge_mode not in ("logits", "verdict"):
        raise UserError(f"config eval.judge_mode: {cfg.eval.judge_mode!r} is not one of logits, verdict")
    loaded = _load_probes(run, cfg, emit, probes)
    systems = find_systems(run, cfg, emit)
    tests = load_test_set(run, cfg, emit, doc, allow_remote)
    run_chunks = tests.chunks if doc is None else read_jsonl(run.chunks_path)  # probes are about the run's document
    ids: dict = {}
    chunks_id = hash_obj([c.get("text") for c in tests.chunks])
    keys = {s.name: system_key(s, cfg, chunks_id, ids) for s in systems}
    run_chunks_id = hash_obj([c.get("text") for c in run_chunks])
    probe_keys = {s.name: system_key(s, cfg, run_chunks_id, ids) for s in systems}
    judge_ref = judge_model_ref(cfg, allow_remote)
    settings = {k: v for k, v in asdict(cfg.eval).items() if k not in KEY_EXCLUDED}
    key = hash_obj([REPORT_VERSION, keys, hash_obj([tests.questions, tests.pairs]), settings,
                    judge_key(cfg, judge_ref), cfg.seed, [[p.name, p.sha256] for p in loaded],
                    probe_keys if loaded else None])
    report_path = run.eval_dir / "report.json"
    if run.is_done("eval", key) and report_path.exists():
        log(emit, "eval", "eval: up to date, skipped")
        return json.loads(report_path.read_text(encoding="utf-8"))
    ctx = Context(run, cfg, emit, systems, threads=auto_threads(cfg.eval.n_threads, cfg.eval.n_threads_batch),
                  allow_remote=allow_remote)
    log(emit, "eval", f"llama.cpp threads (decode, prompt): {ctx.threads}")
    advice = small_sample_advice(len(tests.questions), len(tests.pairs), bool(loaded), tests.source.get("kind", ""),
                                 tests.source.get("splits"))
    if advice:
        log(emit, "eval", advice)
    retriever = Retriever(tests.chunks, cfg.eval.rag_top_k, cfg.eval.retriever)
    probe_retriever = retriever if doc is None else Retriever(run_chunks, cfg.eval.rag_top_k, cfg.eval.retriever)
    names = [s.name for s in systems]
    inputs = {"test_set": tests.source, "systems": names, "probes": [p.source() for p in loaded]}
    with run.stage("eval", key, inputs) as result:
        scorer = Scorer(ctx)
        answers = generate_answers(ctx, keys, tests.questions, retriever, "held-out questions")
        prefs = preference_scores(ctx, keys, tests.pairs, retriever, "held-out pairs")
        scores = scorer.score(answers, tests.questions)
        win_judge, judge_stats = judge_answers(ctx, answers, tests.questions, tests.chunks)
        win_ref = reference_judge(names, scores, len(tests.questions), cfg.eval.ref_judge_margin)
        held_out = metric_section(names, COLUMNS, tests.questions, answers, prefs, scores, win_judge, win_ref,
                                  cfg.eval.bootstrap, cfg.seed)
        sections = [evaluate_probe(ctx, probe, probe_keys, probe_retriever, scorer) for probe in loaded]
        ctx.timings["total"] = round(time.perf_counter() - started, 2)
        report = build_report(ctx, tests, held_out, answers, judge_stats, sections)
        write_jsonl(run.eval_dir / "details.jsonl", answer_details(names, tests.questions, answers, scores))
        write_json(report_path, report)
        atomic_write_text(run.eval_dir / "report.md", render_markdown(report))
        plots = write_plots(report, run.eval_dir)
        result.update(questions=len(tests.questions), pairs=len(tests.pairs), systems=report["systems"],
                      probes=[p.name for p in loaded], plots=[p.name for p in plots])
    emit(Event("stage", "eval", f"report: {report_path}"))
    return report
