"""``valign eval``: vanilla, RAG, SFT and SFT+DPO side by side on held-out questions.

Every system answers through the runtime users chat with (llama.cpp on the exported GGUF
files) with the same greedy decoding. Answers are scored against the grounded reference
answers (sacreBLEU, ROUGE-L, BERTScore), each system's model is asked which answer of each
held-out preference pair it finds likelier (length-normalized), and ``dpo`` is compared
with every other system by a judge model (both orders) and by a reference-based judge.

Answers, preference scores and judgments are cached under ``RUN/eval/`` per system and
per input, so an interrupted evaluation resumes where it stopped. Writes
``eval/report.json`` (``systems``, ``columns``, ``table`` plus intervals, counts and
details), ``eval/report.md`` and one bar chart per metric (``eval/<metric>.png``).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import judge as judging
from . import metrics, models
from .config import RunConfig
from .errors import UserError
from .events import Callback, Event, Progress, log
from .filters import normalized
from .runtime import DECODING, Runtime, auto_threads
from .workspace import (Run, append_jsonl, atomic_write_text, hash_file, hash_obj, read_jsonl, write_json,
                        write_jsonl)

EVAL_VERSION = 3  # in the cache keys of answers: bump when what a system answers would change
REPORT_VERSION = 3  # in the stage key only: bump when the report changes, cached answers stay valid
SYSTEMS = ("vanilla", "rag", "sft", "dpo", "dpo_rag")
REFERENCE_SYSTEM = "dpo"  # the system the win rates are about
COLUMNS = ("bleu", "bleu_sentence", "rouge_l", "bertscore_f1", "pref_acc", "win_judge", "win_ref")
COLUMN_LABELS = {
    "bleu": "BLEU (corpus)",
    "bleu_sentence": "BLEU (sentence, mean)",
    "rouge_l": "ROUGE-L F1",
    "bertscore_f1": "BERTScore F1",
    "pref_acc": "Preference accuracy",
    "win_judge": "dpo win rate vs system (judge model)",
    "win_ref": "dpo win rate vs system (reference judge)",
}
@dataclass
class System:
    name: str
    model: Path
    lora: Path | None = None
    rag: bool = False


@dataclass
class TestSet:
    questions: list[dict]  # {"id", "question", "reference", "chunk_id", "kind"}
    pairs: list[dict]  # {"id", "prompt", "chosen", "rejected", "chunk_id"}
    chunks: list[dict]
    source: dict


# --- inputs -------------------------------------------------------------------------------

def find_systems(run: Run, cfg: RunConfig, emit: Callback) -> list[System]:
    """The systems this run's exports support; a one-line error when the export stage is missing."""
    out = run.export_dir

    def pick(prefix: str) -> Path | None:
        preferred = out / f"{prefix}-{cfg.export.quant}.gguf"
        found = [preferred] if preferred.exists() else sorted(out.glob(f"{prefix}-*.gguf"))
        return found[0] if found else None

    base, model = pick("base"), pick("model")
    if base is None or model is None:
        missing = "export/model-*.gguf" if model is None else "export/base-*.gguf"
        raise UserError(f"{run.root} has no exported models ({missing} is missing: the export stage has not run); "
                        f"run: valign export {run.root}")
    sft_adapter = out / "adapter-sft.gguf"
    systems = {"vanilla": System("vanilla", base), "rag": System("rag", base, rag=True),
               "sft": System("sft", base, lora=sft_adapter), "dpo": System("dpo", model),
               "dpo_rag": System("dpo_rag", model, rag=True)}
    wanted = [s.strip() for s in cfg.eval.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in systems]
    if unknown:
        raise UserError(f"config eval.systems: unknown system {unknown[0]!r} (known: {', '.join(SYSTEMS)})")
    if "sft" in wanted and not sft_adapter.exists():
        log(emit, "eval", f"no {sft_adapter.name} in the export (this backend did not export the SFT adapter): "
                          "the sft system is left out")
        wanted.remove("sft")
    if REFERENCE_SYSTEM not in wanted:
        wanted.append(REFERENCE_SYSTEM)
    return [systems[name] for name in SYSTEMS if name in wanted]


def _question_rows(sft_rows: list[dict], dpo_rows: list[dict]) -> list[dict]:
    """SFT questions (reference: the grounded answer) interleaved with DPO prompts (reference: chosen)."""
    sft = [{"id": r.get("meta", {}).get("id") or hash_obj(r["messages"][0]["content"])[:12],
            "question": r["messages"][0]["content"], "reference": r["messages"][-1]["content"],
            "chunk_id": r.get("meta", {}).get("chunk_id"), "kind": "sft"} for r in sft_rows]
    dpo = [{"id": r.get("meta", {}).get("id") or hash_obj(r["prompt"])[:12], "question": r["prompt"],
            "reference": r["chosen"], "chunk_id": r.get("meta", {}).get("chunk_id"), "kind": "dpo"}
           for r in dpo_rows]
    out, seen = [], set()
    for i in range(max(len(sft), len(dpo))):
        for group in (sft, dpo):
            if i < len(group) and group[i]["question"] not in seen:
                seen.add(group[i]["question"])
                out.append(group[i])
    return out


def _pair_rows(dpo_rows: list[dict]) -> list[dict]:
    return [{"id": r.get("meta", {}).get("id") or hash_obj(r["prompt"])[:12], "prompt": r["prompt"],
             "chosen": r["chosen"], "rejected": r["rejected"], "chunk_id": r.get("meta", {}).get("chunk_id")}
            for r in dpo_rows]


def _trained_prompts(run: Run) -> set[str]:
    """Normalized questions and DPO prompts of the run's train split."""
    return ({normalized(r["messages"][0]["content"]) for r in read_jsonl(run.split_path("sft", "train"))} |
            {normalized(r["prompt"]) for r in read_jsonl(run.split_path("dpo", "train"))})


def _check_test_split(run: Run) -> None:
    if not run.split_path("sft", "test").exists():
        raise UserError(f"{run.root} has no test split (data/sft/test.jsonl: the generate stage has not run); "
                        f"run: valign generate DOC --out {run.root}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "doc"


def load_test_set(run: Run, cfg: RunConfig, emit: Callback, doc: Path | None = None) -> TestSet:
    """The run's test split, or one from ``doc``: a document (a test set is generated from it by
    the teacher and cached), a JSONL file of SFT and/or DPO rows, or another run folder."""
    chunks = read_jsonl(run.chunks_path)
    if doc is None:
        splits = [s.strip() for s in cfg.eval.splits.split(",") if s.strip()] or ["test"]
        if any(s not in ("test", "valid") for s in splits):
            raise UserError(f"config eval.splits: {cfg.eval.splits!r} may name only test and valid (train is "
                            "what the models learned from)")
        sft = [r for s in splits for r in read_jsonl(run.split_path("sft", s))]
        dpo = [r for s in splits for r in read_jsonl(run.split_path("dpo", s))]
        source = {"kind": "run", "path": str(run.root), "splits": splits}
    else:
        doc = Path(doc).expanduser()
        if not doc.exists():
            raise UserError(f"--doc {doc}: no such file or folder")
        if doc.is_dir():
            other = Run(doc)
            if not other.split_path("sft", "test").exists():
                raise UserError(f"--doc {doc} is a folder without a test split (data/sft/test.jsonl)")
            sft, dpo = read_jsonl(other.split_path("sft", "test")), read_jsonl(other.split_path("dpo", "test"))
            chunks = read_jsonl(other.chunks_path)
            source = {"kind": "run", "path": str(doc)}
        elif doc.suffix == ".jsonl":
            rows = read_jsonl(doc)
            sft = [r for r in rows if isinstance(r.get("messages"), list) and len(r["messages"]) >= 2]
            dpo = [r for r in rows if all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected"))]
            if not sft and not dpo:
                raise UserError(f"--doc {doc} holds no SFT rows ({{\"messages\": [...]}}) or DPO rows "
                                "({\"prompt\", \"chosen\", \"rejected\"})")
            source = {"kind": "jsonl", "path": str(doc)}
        else:
            sub = Run.open(run.eval_dir / "docs" / f"{_slug(doc.stem)}-{hash_file(doc)[:8]}", create=True)
            sub_cfg = copy.deepcopy(cfg)
            sub_cfg.generate.valid_fraction, sub_cfg.generate.test_fraction = 0.0, 1.0
            from .generate import generate

            log(emit, "eval", f"generating a test set from {doc.name} (cached in {sub.root})")
            generate(sub, sub_cfg, emit, doc=doc)
            sft, dpo = read_jsonl(sub.split_path("sft", "test")), read_jsonl(sub.split_path("dpo", "test"))
            chunks = read_jsonl(sub.chunks_path)
            source = {"kind": "document", "path": str(doc), "cache": str(sub.root)}
    if doc is not None:  # a test set from elsewhere must not ask what the models were trained on
        seen = _trained_prompts(run)
        kept_sft = [r for r in sft if normalized(r["messages"][0]["content"]) not in seen]
        kept_dpo = [r for r in dpo if normalized(r["prompt"]) not in seen]
        dropped = len(sft) - len(kept_sft) + len(dpo) - len(kept_dpo)
        if dropped:
            log(emit, "eval", f"{dropped} test questions dropped: the run trained on them")
        sft, dpo = kept_sft, kept_dpo
        source["dropped_trained"] = dropped
    questions, pairs = _question_rows(sft, dpo), _pair_rows(dpo)
    limit = cfg.eval.max_questions
    if limit:
        questions, pairs = questions[:limit], pairs[:limit]
    if not questions:
        where = source["path"]
        raise UserError(f"the test split of {where} is empty (too little generated data); "
                        "generate more (a longer document or --set generate.questions_per_chunk=...)")
    return TestSet(questions, pairs, chunks, source)


# --- stages of the evaluation ---------------------------------------------------------------

class Retriever:
    def __init__(self, chunks: list[dict], top_k: int):
        self.top_k = top_k
        self.index = None
        if chunks:
            from .retrieval import ChunkIndex

            self.index = ChunkIndex(chunks)

    def messages(self, question: str, rag: bool) -> list[dict]:
        if not rag or self.index is None:
            return [{"role": "user", "content": question}]
        from .retrieval import rag_messages

        return rag_messages(question, self.index.search(question, self.top_k))


def _file_id(path: Path | None, cache: dict) -> str | None:
    if path is None:
        return None
    if path not in cache:
        cache[path] = hash_file(path)
    return cache[path]


def system_key(system: System, cfg: RunConfig, chunks_id: str, ids: dict) -> str:
    """What a system's answers depend on: weights, adapter, retrieval and decoding."""
    return hash_obj([EVAL_VERSION, _file_id(system.model, ids), _file_id(system.lora, ids), system.rag,
                     cfg.eval.rag_top_k if system.rag else None, chunks_id if system.rag else None,
                     cfg.eval.max_new_tokens, DECODING])


def generate_answers(run: Run, systems: list[System], keys: dict, tests: TestSet, retriever: Retriever,
                     cfg: RunConfig, emit: Callback, timings: dict) -> dict[str, list[dict]]:
    """Each system's answer to every question, from the cache where present."""
    folder = run.eval_dir / "answers"
    cached = {s.name: {r["qid"]: r for r in read_jsonl(folder / f"{s.name}.jsonl") if r.get("key") == keys[s.name]}
              for s in systems}
    todo = {s.name: [q for q in tests.questions if q["id"] not in cached[s.name]] for s in systems}
    total = sum(len(v) for v in todo.values())
    timings.setdefault("reused", {})["answers"] = len(systems) * len(tests.questions) - total
    emit(Event("stage", "eval", f"answering {len(tests.questions)} questions with {len(systems)} systems"
                                f" ({total} answers to generate)"))
    progress = Progress(emit, "eval", total, "answers")
    for system in systems:
        if todo[system.name]:
            start = time.perf_counter()
            runtime = Runtime(system.model, system.lora, seed=cfg.seed, threads=timings["threads"])
            for q in todo[system.name]:
                t0 = time.perf_counter()
                text, n_tokens = runtime.answer(retriever.messages(q["question"], system.rag), cfg.eval.max_new_tokens)
                row = {"qid": q["id"], "key": keys[system.name], "question": q["question"], "answer": text,
                       "tokens": n_tokens, "seconds": round(time.perf_counter() - t0, 3)}
                append_jsonl(folder / f"{system.name}.jsonl", row)
                cached[system.name][q["id"]] = row
                progress.update(1, system.name)
            runtime.close()
            timings.setdefault("answers", {})[system.name] = round(time.perf_counter() - start, 2)
    return {s.name: [cached[s.name][q["id"]] for q in tests.questions] for s in systems}


def preference_scores(run: Run, systems: list[System], keys: dict, tests: TestSet, retriever: Retriever,
                      cfg: RunConfig, emit: Callback, timings: dict) -> dict[str, list[dict]]:
    """Per system and held-out pair: log-probability and length of the chosen and the rejected answer."""
    folder = run.eval_dir / "preference"
    cached = {s.name: {r["pid"]: r for r in read_jsonl(folder / f"{s.name}.jsonl") if r.get("key") == keys[s.name]}
              for s in systems}
    todo = {s.name: [p for p in tests.pairs if p["id"] not in cached[s.name]] for s in systems}
    total = sum(len(v) for v in todo.values())
    timings.setdefault("reused", {})["pairs"] = len(systems) * len(tests.pairs) - total
    if tests.pairs:
        emit(Event("stage", "eval", f"preference accuracy on {len(tests.pairs)} held-out pairs"))
    progress = Progress(emit, "eval", total, "pairs")
    for system in systems:
        if todo[system.name]:
            start = time.perf_counter()
            runtime = Runtime(system.model, system.lora, logits=True, seed=cfg.seed, threads=timings["threads"])
            for p in todo[system.name]:
                chosen, rejected = runtime.reply_logprobs(retriever.messages(p["prompt"], system.rag),
                                                          [p["chosen"], p["rejected"]])
                row = {"pid": p["id"], "key": keys[system.name],
                       "chosen_logprob": chosen[0] if chosen else None, "chosen_tokens": chosen[1] if chosen else 0,
                       "rejected_logprob": rejected[0] if rejected else None,
                       "rejected_tokens": rejected[1] if rejected else 0}
                append_jsonl(folder / f"{system.name}.jsonl", row)
                cached[system.name][p["id"]] = row
                progress.update(1, system.name)
            runtime.close()
            timings.setdefault("preference", {})[system.name] = round(time.perf_counter() - start, 2)
    return {s.name: [cached[s.name][p["id"]] for p in tests.pairs] for s in systems}


def preference_margin(row: dict) -> float | None:
    """Mean log-probability per token of the chosen answer minus that of the rejected one."""
    if row.get("chosen_logprob") is None or row.get("rejected_logprob") is None:
        return None
    return row["chosen_logprob"] / row["chosen_tokens"] - row["rejected_logprob"] / row["rejected_tokens"]


def score_answers(answers: dict[str, list[dict]], tests: TestSet, emit: Callback, timings: dict) -> dict:
    """Per system: per-question sentence BLEU, ROUGE-L F1, BERTScore P/R/F1."""
    refs = [q["reference"] for q in tests.questions]
    emit(Event("stage", "eval", "scoring answers (BLEU, ROUGE-L, BERTScore)"))
    start = time.perf_counter()
    scorer = metrics.BertScorer(threads=timings["threads"][1])
    timings["bertscore_load"] = round(time.perf_counter() - start, 2)
    progress = Progress(emit, "eval", len(answers), "systems")
    out = {}
    for name, rows in answers.items():
        hyps = [r["answer"] for r in rows]
        p, r, f = scorer.score(hyps, refs)
        out[name] = {"bleu_sentence": [metrics.sentence_bleu(h, ref) for h, ref in zip(hyps, refs)],
                     "rouge_l": metrics.rouge_l(hyps, refs), "bertscore_p": p, "bertscore_r": r,
                     "bertscore_f1": f}
        progress.update(1, name)
    timings["scoring"] = round(time.perf_counter() - start, 2)
    return out


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def judge_model_ref(cfg: RunConfig) -> models.ModelRef:
    ref = models.resolve(cfg.eval.judge or cfg.teacher, "judge")
    if ref.kind != "gguf":
        raise UserError(f"judge {ref.name!r} must be a GGUF chat model run by llama.cpp")
    return ref


def judge_answers(run: Run, systems: list[System], answers: dict[str, list[dict]], tests: TestSet,
                  cfg: RunConfig, emit: Callback, timings: dict) -> tuple[dict, dict]:
    """The judge model on ``dpo`` against every other system, both answer orders (cached).

    Per judgment the judge's log-probabilities of replying A, B and tie are kept; ``verdict`` mode
    takes the likeliest reply per order, ``logits`` mode compares A with B across both orders so
    the judge's position bias cancels in the margin (see judge.py)."""
    ref = judge_model_ref(cfg)
    from .generate import model_id

    judge_id = hash_obj([EVAL_VERSION, model_id(ref), judging.judge_messages("{q}", "{p}", "{a}", "{b}"),
                         judging.REPLIES, judging.ANSWERS_START])
    path = run.eval_dir / "judgments.jsonl"
    cache = {r["key"]: r["logprobs"] for r in read_jsonl(path) if "logprobs" in r}
    others = [s.name for s in systems if s.name != REFERENCE_SYSTEM]
    n = min(len(tests.questions), cfg.eval.judge_pairs or len(tests.questions))
    passages = {c["id"]: c["text"] for c in tests.chunks}

    def key_of(i: int, a: str, b: str) -> str:
        q = tests.questions[i]
        return hash_obj([judge_id, q["question"], passages.get(q["chunk_id"], ""), a, b])

    # Question-major, dpo's answer first in a run of calls: consecutive prompts share the passage,
    # the question and often answer A, which the runtime keeps in its KV cache.
    needed = {}
    for i in range(n):
        mine = answers[REFERENCE_SYSTEM][i]["answer"]
        theirs = [answers[o][i]["answer"] for o in others if not _same(mine, answers[o][i]["answer"])]
        for a, b in [(mine, t) for t in theirs] + [(t, mine) for t in theirs]:
            needed[key_of(i, a, b)] = (i, a, b)
    jobs = {key: job for key, job in needed.items() if key not in cache}
    timings.setdefault("reused", {})["judgments"] = len(needed) - len(jobs)
    emit(Event("stage", "eval", f"judge {ref.name}: {n} questions x {len(others)} comparisons x 2 orders "
                                f"({len(jobs)} judgments to make)"))
    stats = {"model": ref.name, "path": str(ref.path), "questions": n, "mode": cfg.eval.judge_mode,
             "tie_margin": cfg.eval.judge_tie_margin if cfg.eval.judge_mode == "logits" else None}
    if jobs:
        start = time.perf_counter()
        judge = judging.ModelJudge(ref.path, seed=cfg.seed, threads=timings["threads"])
        progress = Progress(emit, "eval", len(jobs), "judgments")
        for key, (i, a, b) in jobs.items():
            q = tests.questions[i]
            logprobs = judge(q["question"], passages.get(q["chunk_id"], ""), a, b)
            append_jsonl(path, {"key": key, "logprobs": logprobs})
            cache[key] = logprobs
            progress.update(1)
        stats["prompt_tokens"] = {"evaluated": judge.runtime.evaluated_tokens, "reused": judge.runtime.reused_tokens}
        judge.close()
        timings["judge"] = round(time.perf_counter() - start, 2)
    results = {}
    for other in others:
        scores, verdicts = [], []
        for i in range(n):
            mine, theirs = answers[REFERENCE_SYSTEM][i]["answer"], answers[other][i]["answer"]
            if _same(mine, theirs):
                verdicts.append(("tie", "tie"))
                scores.append(0.5)
                continue
            first, second = cache[key_of(i, mine, theirs)], cache[key_of(i, theirs, mine)]
            if first is None or second is None:  # the prompt did not fit the judge's context
                verdicts.append(("tie", "tie"))
                scores.append(0.5)
                continue
            if cfg.eval.judge_mode == "logits":
                verdicts.append((judging.ab_verdict(first), judging.ab_verdict(second)))
                scores.append(judging.debiased_score(first, second, cfg.eval.judge_tie_margin))
            else:
                pair = (judging.likeliest(first), judging.likeliest(second))
                verdicts.append(pair)
                scores.append(judging.combine(*pair))
        results[other] = judging.summarize(scores, verdicts) | {"verdicts": [list(v) for v in verdicts]}
    all_verdicts = [tuple(v) for r in results.values() for v in r["verdicts"]]
    if all_verdicts:
        overall = judging.summarize([0.5] * len(all_verdicts), all_verdicts)
        stats["first_position_rate"] = overall.get("first_position_rate")
        stats["order_consistency"] = overall.get("order_consistency")
    return results, stats


def reference_judge(systems: list[System], scores: dict, n_questions: int, margin: float) -> dict:
    """Which answer is closer to the grounded reference (mean of ROUGE-L F1 and BERTScore F1)."""
    def closeness(name: str, i: int) -> float:
        return (scores[name]["rouge_l"][i] + scores[name]["bertscore_f1"][i]) / 2

    out = {}
    for other in (s.name for s in systems if s.name != REFERENCE_SYSTEM):
        verdicts = [judging.reference_verdict(closeness(REFERENCE_SYSTEM, i), closeness(other, i), margin)
                    for i in range(n_questions)]
        out[other] = judging.summarize([judging.order_score(v, True) for v in verdicts]) | {"verdicts": verdicts}
    return out


# --- the report -------------------------------------------------------------------------------

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


def _rounded(value: float | None, column: str) -> float | None:
    if value is None:
        return None
    return round(value, 2 if column.startswith("bleu") else 4)


def build_report(run: Run, cfg: RunConfig, systems: list[System], tests: TestSet, answers: dict, prefs: dict,
                 scores: dict, win_judge: dict, win_ref: dict, judge_stats: dict, timings: dict) -> dict:
    resamples = cfg.eval.bootstrap
    refs = [q["reference"] for q in tests.questions]
    table, intervals, counts, preference = [], {}, {}, {}
    for s in systems:
        name = s.name
        hyps = [r["answer"] for r in answers[name]]
        row: dict = {"system": name}
        ci: dict = {}
        row["bleu"] = metrics.corpus_bleu(hyps, refs)
        ci["bleu"] = metrics.bootstrap_ci(list(zip(hyps, refs)), lambda pairs: metrics.corpus_bleu(
            [h for h, _ in pairs], [r for _, r in pairs]), resamples=resamples, seed=cfg.seed)
        for col in ("bleu_sentence", "rouge_l", "bertscore_f1"):
            row[col] = metrics.mean(scores[name][col])
            ci[col] = metrics.bootstrap_ci(scores[name][col], resamples=resamples, seed=cfg.seed)
        margins = [preference_margin(p) for p in prefs[name]]
        scored = [m for m in margins if m is not None]
        correct = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in scored)
        row["pref_acc"] = correct / len(scored) if scored else None
        ci["pref_acc"] = metrics.wilson(correct, len(scored)) if scored else None
        summed = [p["chosen_logprob"] - p["rejected_logprob"] for p in prefs[name]
                  if p.get("chosen_logprob") is not None and p.get("rejected_logprob") is not None]
        preference[name] = {"correct": correct, "n": len(scored), "skipped": len(prefs[name]) - len(scored),
                            "mean_margin": metrics.mean(scored), "margins": [round(m, 4) for m in scored],
                            # without length normalization, for comparison with DPO's own (summed) reward
                            "accuracy_unnormalized": (sum(m > 0 for m in summed) / len(summed)) if summed else None}
        for col, source in (("win_judge", win_judge), ("win_ref", win_ref)):
            summary = source.get(name)
            row[col] = summary["win_rate"] if summary else None
            ci[col] = summary["ci95"] if summary else None
        counts[name] = {"bleu": len(hyps), "bleu_sentence": len(hyps), "rouge_l": len(hyps),
                        "bertscore_f1": len(hyps), "pref_acc": len(scored),
                        "win_judge": win_judge.get(name, {}).get("n", 0), "win_ref": win_ref.get(name, {}).get("n", 0)}
        table.append({"system": name, **{c: _rounded(row[c], c) for c in COLUMNS}})
        intervals[name] = {c: [_rounded(v, c) for v in ci[c]] if ci.get(c) else None for c in COLUMNS}
    strip = lambda d: {k: {kk: vv for kk, vv in v.items() if kk != "verdicts"} for k, v in d.items()}  # noqa: E731
    examples = [{"question": q["question"], "reference": q["reference"],
                 **{s.name: answers[s.name][i]["answer"] for s in systems}} for i, q in enumerate(tests.questions[:3])]
    return {
        "format": EVAL_VERSION,
        "run": str(run.root),
        "created": time.time(),
        "systems": [s.name for s in systems],
        "columns": list(COLUMNS),
        "column_labels": COLUMN_LABELS,
        "table": table,
        "intervals": intervals,
        "counts": counts,
        "interval_method": {"bleu": "percentile bootstrap over questions", "bleu_sentence": "percentile bootstrap",
                            "rouge_l": "percentile bootstrap", "bertscore_f1": "percentile bootstrap",
                            "pref_acc": "Wilson score", "win_judge": "Wilson score (ties count half)",
                            "win_ref": "Wilson score (ties count half)", "level": 0.95, "bootstrap": resamples},
        "win_rate": {"system": REFERENCE_SYSTEM, "judge": strip(win_judge), "reference": strip(win_ref),
                     "reference_margin": cfg.eval.ref_judge_margin},
        "preference": preference,
        "judge": judge_stats,
        "test_set": {**tests.source, "questions": len(tests.questions), "pairs": len(tests.pairs),
                     "sft_questions": sum(q["kind"] == "sft" for q in tests.questions),
                     "dpo_questions": sum(q["kind"] == "dpo" for q in tests.questions)},
        "models": {s.name: {"model": s.model.name, "lora": s.lora.name if s.lora else None, "rag": s.rag}
                   for s in systems},
        "decoding": {**DECODING, "max_tokens": cfg.eval.max_new_tokens, "rag_top_k": cfg.eval.rag_top_k,
                     "runtime": "llama.cpp (llama-cpp-python) on the exported GGUF files"},
        "answers": {s.name: {"mean_words": metrics.mean([len(r["answer"].split()) for r in answers[s.name]]),
                             "mean_tokens": metrics.mean([r.get("tokens", 0) for r in answers[s.name]]),
                             "mean_seconds": metrics.mean([r.get("seconds", 0) for r in answers[s.name]])}
                    for s in systems},
        "examples": examples,
        "eval_config": asdict(cfg.eval),
        "machine": machine_info(),
        "timings": timings,
    }


def _fmt(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if column.startswith("bleu") else f"{value:.3f}"


def render_markdown(report: dict) -> str:
    cols = report["columns"]
    labels = report.get("column_labels", {})
    lines = [f"# Evaluation: {report['run']}", ""]
    ts = report.get("test_set", {})
    splits = f" ({'+'.join(ts['splits'])} split)" if ts.get("splits") else ""
    lines.append(f"Test set: {ts.get('questions')} held-out questions ({ts.get('sft_questions')} SFT questions, "
                 f"{ts.get('dpo_questions')} DPO prompts; reference = the grounded answer) and {ts.get('pairs')} "
                 f"preference pairs, from {ts.get('kind')} `{ts.get('path')}`{splits}.")
    dec = report.get("decoding", {})
    lines.append(f"Every system answers through {dec.get('runtime', 'llama.cpp')}, greedy, repeat penalty "
                 f"{dec.get('repeat_penalty')}, at most {dec.get('max_tokens')} tokens; RAG retrieves "
                 f"{dec.get('rag_top_k')} chunks (BM25).")
    lines += ["", "| system | " + " | ".join(labels.get(c, c) for c in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for row in report["table"]:
        cells = []
        for c in cols:
            ci = (report.get("intervals", {}).get(row["system"]) or {}).get(c)
            cell = _fmt(row.get(c), c)
            if ci and row.get(c) is not None:
                cell += f" [{_fmt(ci[0], c)}, {_fmt(ci[1], c)}]"
            cells.append(cell)
        lines.append(f"| {row['system']} | " + " | ".join(cells) + " |")
    lines += ["", "Values with 95% intervals: bootstrap over questions for BLEU, ROUGE-L and BERTScore; Wilson "
              "for preference accuracy and win rates. BLEU is sacreBLEU (0-100); BERTScore uses all-MiniLM-L6-v2 "
              "(layer 6, no idf, no baseline rescaling). Preference accuracy: share of held-out pairs where the "
              "system's model gives the faithful answer the higher mean log-probability per token.", ""]
    win = report.get("win_rate", {})
    judge = report.get("judge", {})
    mode = ("log-probabilities of A vs B, position bias cancelled across the two orders, ties within "
            f"{judge.get('tie_margin')} nats" if judge.get("mode") == "logits" else "its likeliest reply per order")
    for kind, title in (("judge", f"judge model `{judge.get('model', '?')}` ({mode})"),
                        ("reference", "reference judge (closer to the grounded answer: mean of ROUGE-L and "
                                      f"BERTScore F1, margin {win.get('reference_margin')})")):
        rows = win.get(kind) or {}
        if not rows:
            continue
        lines += [f"Win rate of `{win.get('system', 'dpo')}` by the {title}, both answer orders:", "",
                  "| vs | win rate | 95% CI | wins | ties | losses | n |", "|---|---|---|---|---|---|---|"]
        for other, s in rows.items():
            ci = s.get("ci95") or [None, None]
            lines.append(f"| {other} | {_fmt(s.get('win_rate'), 'w')} | [{_fmt(ci[0], 'w')}, {_fmt(ci[1], 'w')}] "
                         f"| {s['wins']} | {s['ties']} | {s['losses']} | {s['n']} |")
        lines.append("")
    if judge.get("first_position_rate") is not None:
        lines += [f"The judge model picked the first answer shown in {judge['first_position_rate']:.0%} of its "
                  f"decided verdicts; its two orders agreed on {judge['order_consistency']:.0%} of the pairs.", ""]
    m = report.get("machine", {})
    lines += [f"Machine: {m.get('cpu')} ({m.get('cores')} cores, {m.get('memory_gb')} GiB, {m.get('os')}), "
              f"load average at the end {m.get('load_avg')}.", ""]
    timings = report.get("timings", {})
    if timings.get("total") is not None:
        reused = timings.get("reused") or {}
        note = (f" (reused from the cache: {reused.get('answers', 0)} answers, {reused.get('pairs', 0)} pair "
                f"scores, {reused.get('judgments', 0)} judgments)") if any(reused.values()) else ""
        lines += [f"Evaluation wall time: {timings['total']:.0f} s{note}.", ""]
    for ex in report.get("examples", [])[:2]:
        lines += [f"Example: **{ex['question']}**", "", f"- reference: {ex['reference']}"]
        lines += [f"- {name}: {ex.get(name, '')}" for name in report["systems"]]
        lines.append("")
    return "\n".join(lines)


def write_plots(report: dict, folder: Path) -> list[Path]:
    """One bar chart per metric, with the 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for col in report["columns"]:
        names, values, lows, highs = [], [], [], []
        for row in report["table"]:
            if row.get(col) is None:
                continue
            ci = (report.get("intervals", {}).get(row["system"]) or {}).get(col) or [row[col], row[col]]
            names.append(row["system"])
            values.append(row[col])
            lows.append(max(0.0, row[col] - ci[0]))
            highs.append(max(0.0, ci[1] - row[col]))
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
        colors = ["#d95f02" if n == REFERENCE_SYSTEM else "#7570b3" for n in names]
        labels = [f"dpo vs {n}" if col.startswith("win") else n for n in names]
        ax.bar(labels, values, yerr=[lows, highs], capsize=4, color=colors)
        ax.tick_params(axis="x", labelsize=8)
        if col.startswith("win"):
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(report.get("column_labels", {}).get(col, col), fontsize=10)
        ax.set_ylim(0, 100 if col.startswith("bleu") and max(values) > 1 else 1.0)
        if col.startswith("bleu"):
            ax.set_ylim(0, min(100.0, max(v + h for v, h in zip(values, highs)) * 1.2 + 1))
        fig.tight_layout()
        path = folder / f"{col}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_details(run: Run, systems: list[System], tests: TestSet, answers: dict, scores: dict) -> None:
    rows = []
    for i, q in enumerate(tests.questions):
        row = {"id": q["id"], "kind": q["kind"], "question": q["question"], "reference": q["reference"], "answers": {}}
        for s in systems:
            row["answers"][s.name] = {"text": answers[s.name][i]["answer"],
                                      **{k: round(scores[s.name][k][i], 4) for k in
                                         ("bleu_sentence", "rouge_l", "bertscore_f1")}}
        rows.append(row)
    write_jsonl(run.eval_dir / "details.jsonl", rows)


# --- entry points -------------------------------------------------------------------------------

def evaluate(run: Run, cfg: RunConfig, emit: Callback, doc: Path | None = None) -> dict:
    """Run the evaluation stage (skipped when up to date) and return the report."""
    started = time.perf_counter()
    if doc is None:
        _check_test_split(run)
    if cfg.eval.judge_mode not in ("logits", "verdict"):
        raise UserError(f"config eval.judge_mode: {cfg.eval.judge_mode!r} is not one of logits, verdict")
    systems = find_systems(run, cfg, emit)
    tests = load_test_set(run, cfg, emit, doc)
    ids: dict = {}
    chunks_id = hash_obj([c.get("text") for c in tests.chunks])
    keys = {s.name: system_key(s, cfg, chunks_id, ids) for s in systems}
    judge_ref = judge_model_ref(cfg)
    from .generate import model_id

    key = hash_obj([REPORT_VERSION, keys, hash_obj([tests.questions, tests.pairs]), asdict(cfg.eval),
                    model_id(judge_ref), cfg.seed])
    report_path = run.eval_dir / "report.json"
    if run.is_done("eval", key) and report_path.exists():
        log(emit, "eval", "eval: up to date, skipped")
        return json.loads(report_path.read_text(encoding="utf-8"))
    retriever = Retriever(tests.chunks, cfg.eval.rag_top_k)
    timings: dict = {"threads": auto_threads(cfg.eval.n_threads, cfg.eval.n_threads_batch)}
    log(emit, "eval", f"llama.cpp threads (decode, prompt): {timings['threads']}")
    with run.stage("eval", key, {"test_set": tests.source, "systems": [s.name for s in systems]}) as result:
        answers = generate_answers(run, systems, keys, tests, retriever, cfg, emit, timings)
        prefs = preference_scores(run, systems, keys, tests, retriever, cfg, emit, timings)
        scores = score_answers(answers, tests, emit, timings)
        win_judge, judge_stats = judge_answers(run, systems, answers, tests, cfg, emit, timings)
        win_ref = reference_judge(systems, scores, len(tests.questions), cfg.eval.ref_judge_margin)
        timings["total"] = round(time.perf_counter() - started, 2)
        report = build_report(run, cfg, systems, tests, answers, prefs, scores, win_judge, win_ref, judge_stats,
                              timings)
        write_details(run, systems, tests, answers, scores)
        write_json(report_path, report)
        atomic_write_text(run.eval_dir / "report.md", render_markdown(report))
        plots = write_plots(report, run.eval_dir)
        result.update(questions=len(tests.questions), pairs=len(tests.pairs), systems=report["systems"],
                      plots=[p.name for p in plots])
    emit(Event("stage", "eval", f"report: {report_path}"))
    return report


def compare(run_dirs: list[Path]) -> str:
    """The reports of several runs side by side, one small table per metric (markdown)."""
    reports = []
    for d in run_dirs:
        path = Path(d) / "eval" / "report.json"
        if not path.exists():
            raise UserError(f"{d} has no evaluation report (eval/report.json); run: valign eval {d}")
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None
    names = [Path(d).name or str(d) for d in run_dirs]
    lines = ["# Evaluation reports side by side", ""]
    for name, rep in zip(names, reports):
        ts = rep.get("test_set", {})
        lines.append(f"- **{name}**: `{rep.get('run')}`, {ts.get('questions')} questions, {ts.get('pairs')} pairs "
                     f"from `{ts.get('path')}`")
    columns = list(dict.fromkeys(c for rep in reports for c in rep.get("columns", [])))
    systems = list(dict.fromkeys(s for rep in reports for s in rep.get("systems", [])))
    labels = {k: v for rep in reports for k, v in rep.get("column_labels", {}).items()}
    for col in columns:
        header = " | ".join(names) + (" | difference" if len(reports) == 2 else "")
        lines += ["", f"**{labels.get(col, col)}**", "", f"| system | {header} |",
                  "|---|" + "---|" * (len(reports) + (len(reports) == 2))]
        for system in systems:
            values = []
            for rep in reports:
                row = next((r for r in rep.get("table", []) if r.get("system") == system), None)
                values.append(row.get(col) if row else None)
            cells = [_fmt(v, col) for v in values]
            if len(reports) == 2:
                cells.append(_fmt(values[1] - values[0], col) if None not in values else "-")
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
