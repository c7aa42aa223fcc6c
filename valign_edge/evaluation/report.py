"""The report: per section (the held-out set, each probe) a systems x metrics table with 95% intervals,
sample sizes and what they can show; plus the machine, the decoding and the timings."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict

from valign_edge.backends.llama_cpp import DECODING
from valign_edge.evaluation import metrics
from valign_edge.evaluation.evidence import assess_section, conclusions, small_sample_advice
from valign_edge.evaluation.systems import EVAL_VERSION, REFERENCE_SYSTEM, Context

COLUMNS = ("bleu", "bleu_sentence", "rouge_l", "bertscore_f1", "pref_acc", "win_judge", "win_ref")
PROBE_COLUMNS = ("verdict_forced", "verdict_free", "pref_acc", "pref_margin", "bleu", "bleu_sentence", "rouge_l",
                 "bertscore_f1", "win_judge", "win_ref")
PAIR_COLUMNS = ("pref_acc", "pref_margin")
VERDICT_COLUMNS = ("verdict_forced", "verdict_free")
COLUMN_LABELS = {
    "verdict_forced": "Verdict, forced Yes/No (balanced accuracy)",
    "verdict_free": "Verdict of the free answer (balanced accuracy)",
    "bleu": "BLEU (corpus)",
    "bleu_sentence": "BLEU (sentence, mean)",
    "rouge_l": "ROUGE-L F1",
    "bertscore_f1": "BERTScore F1",
    "pref_acc": "Preference accuracy",
    "pref_margin": "Preference margin (nats/token)",
    "win_judge": "dpo preferred by the judge model (vs system)",
    "win_ref": "dpo closer to the reference than system (ROUGE-L + BERTScore; closeness, not faithfulness)",
}
INTERVAL_METHOD = {"bleu": "percentile bootstrap over questions", "bleu_sentence": "percentile bootstrap",
                   "rouge_l": "percentile bootstrap", "bertscore_f1": "percentile bootstrap",
                   "pref_acc": "Wilson score", "pref_margin": "percentile bootstrap over pairs",
                   "win_judge": "Wilson score (ties count half)", "win_ref": "Wilson score (ties count half)",
                   "verdict_forced": "stratified percentile bootstrap over yes- and no-rows",
                   "verdict_free": "stratified percentile bootstrap over yes- and no-rows",
                   "level": 0.95}
HELD_OUT_NOTE = ("generator-made: questions and preference pairs the teacher wrote the same way as the training "
                 "data, held out from training. A sanity check, not a measure of generalization.")
PROBE_NOTE = ("independent: written by a person, never read by generation or training. The measure of "
              "whether alignment generalizes.")


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"os": platform.platform(), "arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        from importlib.metadata import version

        info["llama_cpp_python"] = version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def rounded(value: float | None, column: str) -> float | None:
    if value is None:
        return None
    return round(value, 2 if column.startswith("bleu") else 4)


def _strip_verdicts(d: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "verdicts"} for k, v in d.items()}


def metric_section(names: list[str], columns: tuple[str, ...], questions: list[dict], answers: dict, prefs: dict,
                   scores: dict, win_judge: dict, win_ref: dict, resamples: int = 1000, seed: int = 0,
                   verdicts: dict | None = None) -> dict:
    """Table, intervals, sample sizes, preference details and their assessment for one test set.

    ``answers``/``scores`` per system over ``questions`` (may be empty), ``prefs`` per system the rows of
    ``answers.preference_scores`` (may be empty), ``verdicts`` per system the summaries of
    ``verdicts.verdict_section`` (None: no verdict rows); pure, so it is tested on constructed inputs."""
    refs = [q["reference"] for q in questions]
    table, intervals, counts, preference = [], {}, {}, {}
    for name in names:
        row: dict = {}
        ci: dict = {}
        n: dict = {}
        if questions:
            hyps = [r["answer"] for r in answers[name]]
            row["bleu"] = metrics.corpus_bleu(hyps, refs)
            ci["bleu"] = metrics.bootstrap_ci(list(zip(hyps, refs)), lambda pairs: metrics.corpus_bleu(
                [h for h, _ in pairs], [r for _, r in pairs]), resamples=resamples, seed=seed)
            for col in ("bleu_sentence", "rouge_l", "bertscore_f1"):
                row[col] = metrics.mean(scores[name][col])
                ci[col] = metrics.bootstrap_ci(scores[name][col], resamples=resamples, seed=seed)
            n.update(dict.fromkeys(("bleu", "bleu_sentence", "rouge_l", "bertscore_f1"), len(hyps)))
        for col, kind in (("verdict_forced", "forced"), ("verdict_free", "free")):
            found = (verdicts or {}).get(name, {}).get(kind)
            if found:
                row[col], ci[col], n[col] = found["balanced"], found["ci95"], found["n"]
        summary = metrics.preference_summary(prefs.get(name, []), resamples=resamples, seed=seed)
        row["pref_acc"], ci["pref_acc"], n["pref_acc"] = summary["accuracy"], summary["ci95"], summary["n"]
        row["pref_margin"], ci["pref_margin"], n["pref_margin"] = (summary["mean_margin"], summary["margin_ci95"],
                                                                   summary["n"])
        preference[name] = {k: v for k, v in summary.items() if k not in ("accuracy", "ci95")}
        for col, source in (("win_judge", win_judge), ("win_ref", win_ref)):
            found = source.get(name)
            row[col] = found["win_rate"] if found else None
            ci[col] = found["ci95"] if found else None
            n[col] = found["n"] if found else 0
        table.append({"system": name, **{c: rounded(row.get(c), c) for c in columns}})
        intervals[name] = {c: [rounded(v, c) for v in ci[c]] if ci.get(c) else None for c in columns}
        counts[name] = {c: n.get(c, 0) for c in columns}
    section = {"columns": list(columns), "table": table, "intervals": intervals, "counts": counts,
               "preference": preference, **({"verdicts": verdicts} if verdicts else {}),
               "win_rate": {"system": REFERENCE_SYSTEM, "judge": _strip_verdicts(win_judge),
                            "reference": _strip_verdicts(win_ref)}}
    section["evidence"] = assess_section(section)
    section["conclusions"] = conclusions(section, section["evidence"], COLUMN_LABELS)
    return section


def probe_columns(pairs: int, questions: int, verdict_rows: int = 0) -> tuple[str, ...]:
    def wanted(c: str) -> bool:
        if c in VERDICT_COLUMNS:
            return bool(verdict_rows)
        return bool(pairs) if c in PAIR_COLUMNS else bool(questions)

    return tuple(c for c in PROBE_COLUMNS if wanted(c))


def examples(names: list[str], questions: list[dict], answers: dict, limit: int = 3) -> list[dict]:
    return [{"question": q["question"], "reference": q["reference"],
             **({"id": q["probe_id"]} if "probe_id" in q else {}),
             **{name: answers[name][i]["answer"] for name in names}} for i, q in enumerate(questions[:limit])]


def build_report(ctx: Context, tests, held_out: dict, answers: dict, judge_stats: dict, probes: list[dict]) -> dict:
    """The whole report; ``held_out`` is its ``metric_section`` (kept at the top level, as before probes)."""
    cfg = ctx.cfg
    names = [s.name for s in ctx.systems]
    advice = small_sample_advice(len(tests.questions), len(tests.pairs), bool(probes), tests.source.get("kind", ""),
                                 tests.source.get("splits"))
    return {
        "format": EVAL_VERSION,
        "run": str(ctx.run.root),
        "created": time.time(),
        "systems": names,
        "column_labels": COLUMN_LABELS,
        **{k: v for k, v in held_out.items() if k != "win_rate"},
        "interval_method": {**INTERVAL_METHOD, "bootstrap": cfg.eval.bootstrap},
        "win_rate": {**held_out["win_rate"], "reference_margin": cfg.eval.ref_judge_margin},
        "judge": judge_stats,
        "test_set": {**tests.source, "questions": len(tests.questions), "pairs": len(tests.pairs),
                     "sft_questions": sum(q["kind"] == "sft" for q in tests.questions),
                     "dpo_questions": sum(q["kind"] == "dpo" for q in tests.questions),
                     "independent": False, "note": HELD_OUT_NOTE},
        "advice": advice,
        "probes": probes,
        "models": {s.name: {"model": s.model.name, "lora": s.lora.name if s.lora else None, "rag": s.rag}
                   for s in ctx.systems},
        "decoding": {**DECODING, "max_tokens": cfg.eval.max_new_tokens, "rag_top_k": cfg.eval.rag_top_k,
                     "threads": list(ctx.threads),
                     "runtime": "llama.cpp (llama-cpp-python) on the exported GGUF files"},
        "answers": {name: {"mean_words": metrics.mean([len(r["answer"].split()) for r in answers[name]]),
                           "mean_tokens": metrics.mean([r.get("tokens", 0) for r in answers[name]]),
                           "mean_seconds": metrics.mean([r.get("seconds", 0) for r in answers[name]])}
                    for name in names},
        "examples": examples(names, tests.questions, answers),
        "eval_config": asdict(cfg.eval),
        "machine": machine_info(),
        "timings": ctx.timings,
    }
