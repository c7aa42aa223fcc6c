"""The end of ``make demo``: what alignment measurably changed, on the document's shipped probe.

Vanilla against the aligned model (``dpo``), computed by the same code as ``valign eval --probe`` (and
cached with it): first which side the answers take on the probe's answer rows with a verdict (forced
Yes/No and the free greedy answer, balanced over yes- and no-rows), then preference accuracy on its
preference rows, each with n and 95% intervals, then both models' answers to three of the probe's
questions, side by side. The three questions are fixed here, before any run, by id: they are not
picked for looking good.
"""

from __future__ import annotations

import copy
from pathlib import Path

from valign_edge.config import RunConfig
from valign_edge.cpu import auto_threads
from valign_edge.evaluation import metrics
from valign_edge.evaluation.answers import generate_answers, preference_scores
from valign_edge.evaluation.evidence import assess_cell
from valign_edge.evaluation.probes import Probe, load_probe, shipped_probe_for_run
from valign_edge.evaluation.systems import (
    BASELINE_SYSTEM,
    REFERENCE_SYSTEM,
    Context,
    Retriever,
    find_systems,
    system_keys,
)
from valign_edge.evaluation.verdicts import forced_verdicts, verdict_section
from valign_edge.events import Callback, null_callback
from valign_edge.files import read_jsonl
from valign_edge.runs.workspace import Run

DEMO_QUESTIONS = {"code_of_conduct": ("coc-a01", "coc-a02", "coc-a03")}
LABELS = {BASELINE_SYSTEM: "vanilla", REFERENCE_SYSTEM: "aligned"}


def demo_questions(probe: Probe, count: int = 3) -> list[dict]:
    """The probe's fixed demo questions (by id), else its first ``count`` answer rows in file order."""
    by_id = {q["probe_id"]: q for q in probe.questions}
    ids = DEMO_QUESTIONS.get(probe.name, ())
    if ids and all(i in by_id for i in ids):
        return [by_id[i] for i in ids]
    return probe.questions[:count]


def measured_effect(run: Run, cfg: RunConfig, probe_path: Path | None = None,
                    emit: Callback = null_callback) -> dict | None:
    """Vanilla vs aligned on a probe (the run's shipped one by default); None when there is none."""
    shipped = probe_path is None
    path = shipped_probe_for_run(run) if shipped else probe_path
    if path is None:
        return None
    probe = load_probe(path, shipped=shipped)
    pair_cfg = copy.deepcopy(cfg)
    pair_cfg.eval.systems = f"{BASELINE_SYSTEM},{REFERENCE_SYSTEM}"
    systems = find_systems(run, pair_cfg, emit)
    ctx = Context(run, cfg, emit, systems, threads=auto_threads(cfg.eval.n_threads, cfg.eval.n_threads_batch))
    retriever = Retriever(read_jsonl(run.chunks_path), cfg.eval.rag_top_k, cfg.eval.retriever)
    keys = system_keys(systems, cfg, retriever, {})  # the same keys as valign eval: one shared cache
    prefs = preference_scores(ctx, keys, probe.pairs, retriever, f"probe pairs ({probe.name})") if probe.pairs else {}
    summaries = {s.name: metrics.preference_summary(prefs.get(s.name, []), cfg.eval.bootstrap, cfg.seed)
                 for s in systems}
    questions = demo_questions(probe)
    rows = [q for q in probe.questions if q.get("verdict")]
    verdicts = {}
    if rows:
        forced = forced_verdicts(ctx, keys, rows, retriever, f"verdict rows ({probe.name})")
        free = generate_answers(ctx, keys, rows, retriever, f"probe questions ({probe.name})")
        verdicts = verdict_section([s.name for s in systems], rows, forced, free, cfg.eval.bootstrap, cfg.seed)
    answers = generate_answers(ctx, keys, questions, retriever, f"probe questions ({probe.name})") \
        if questions else {}
    base, aligned = summaries[BASELINE_SYSTEM], summaries[REFERENCE_SYSTEM]
    verdict = assess_cell(aligned["accuracy"], aligned["ci95"], aligned["n"], base["accuracy"], "pref_acc")
    return {"probe": probe.source(), "preference": summaries, "verdict": verdict, "verdicts": verdicts,
            "examples": [{"id": q["probe_id"], "question": q["question"], "reference": q["reference"],
                          **{s.name: answers[s.name][i]["answer"] for s in systems}}
                         for i, q in enumerate(questions)]}


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _verdict_lines(verdicts: dict) -> list[str]:
    if not verdicts:
        return []
    first = verdicts[BASELINE_SYSTEM]["forced"]
    lines = [f"  which side the answers take, on {first['n']} hand-written questions with the document's verdict "
             f"({first['yes_n']} yes, {first['no_n']} no); balanced accuracy, 95% interval (always No scores 0.5):"]
    for kind, what in (("forced", "forced Yes/No"), ("free", "free answer")):
        for name, label in LABELS.items():
            s = verdicts[name].get(kind)
            if not s:
                continue
            ci = s["ci95"] or [None, None]
            extra = f", {s['unclear']} without a verdict" if kind == "free" else ""
            lines.append(f"  {what:>13} {label:>8}: {_num(s['balanced'])} [{_num(ci[0])}, {_num(ci[1])}] "
                         f"(yes-rows {s['yes_correct']}/{s['yes_n']}, no-rows {s['no_correct']}/{s['no_n']}{extra})")
    return lines


def format_effect(effect: dict) -> str:
    probe = effect["probe"]
    lines = [f"\nmeasured on the probe {probe['name']} (hand-written; generation and training never read it):"]
    lines += _verdict_lines(effect.get("verdicts") or {})
    lines += [f"  preference accuracy on {probe['pairs']} situations with a faithful and an unfaithful answer: how "
              "often the model finds the faithful answer likelier (per token), 95% Wilson interval"]
    for name, label in LABELS.items():
        s = effect["preference"][name]
        ci = s["ci95"] or [None, None]
        lines.append(f"  {label:>8}: {_num(s['accuracy'])} [{_num(ci[0])}, {_num(ci[1])}] n={s['n']}, "
                     f"mean margin {_num(s['mean_margin'], '+.3f')} nats/token")
    verdict = effect["verdict"]
    outcome = ("a real difference" if verdict["conclusive"] else "not a measurable difference") \
        if verdict["conclusive"] is not None else "nothing to compare"
    lines.append(f"  aligned vs vanilla: {verdict['note'] or '-'} ({outcome})")
    if effect["examples"]:
        ids = ", ".join(ex["id"] for ex in effect["examples"])
        lines.append(f"\nthree probe questions fixed before any run ({ids}):")
        for ex in effect["examples"]:
            lines.append(f"\nquestion: {ex['question']}")
            lines += [f"  {label:>8}: {' '.join(ex[name].split()) or '(an empty answer)'}"
                      for name, label in LABELS.items()]
    return "\n".join(lines)


def show_measured_effect(run: Run, cfg: RunConfig) -> bool:
    """Print the measured effect on the run's shipped probe; False when the document has none."""
    if shipped_probe_for_run(run) is None:
        return False
    print("\nmeasuring vanilla vs aligned on the document's shipped probe...", flush=True)
    effect = measured_effect(run, cfg)
    if effect is None:
        return False
    print(format_effect(effect))
    return True
