"""What the systems say: answers, preference log-probabilities, and text scores, cached per system.

Answers and pair scores are appended to ``eval/answers/<system>.jsonl`` and
``eval/preference/<system>.jsonl`` as they are made, keyed by the item's id and the system's key
(weights, adapter, retrieval, decoding), so an interrupted evaluation resumes where it stopped and
the held-out set and the probes share one cache.
"""

from __future__ import annotations

import time

from valign_edge.backends.llama_cpp import Runtime
from valign_edge.evaluation import metrics
from valign_edge.evaluation.systems import Context, Retriever
from valign_edge.events import Event, Progress
from valign_edge.files import append_jsonl, read_jsonl


def generate_answers(ctx: Context, keys: dict, questions: list[dict], retriever: Retriever,
                     label: str = "questions") -> dict[str, list[dict]]:
    """Each system's answer to every question, from the cache where present."""
    folder = ctx.run.eval_dir / "answers"
    systems = ctx.systems
    cached = {s.name: {r["qid"]: r for r in read_jsonl(folder / f"{s.name}.jsonl") if r.get("key") == keys[s.name]}
              for s in systems}
    todo = {s.name: [q for q in questions if q["id"] not in cached[s.name]] for s in systems}
    total = sum(len(v) for v in todo.values())
    ctx.add_reused("answers", len(systems) * len(questions) - total)
    ctx.emit(Event("stage", "eval", f"answering {len(questions)} {label} with {len(systems)} systems"
                                    f" ({total} answers to generate)"))
    progress = Progress(ctx.emit, "eval", total, "answers")
    for system in systems:
        if todo[system.name]:
            start = time.perf_counter()
            runtime = Runtime(system.model, system.lora, seed=ctx.cfg.seed, threads=ctx.threads)
            for q in todo[system.name]:
                t0 = time.perf_counter()
                text, n_tokens = runtime.answer(retriever.messages(q["question"], system.rag),
                                                ctx.cfg.eval.max_new_tokens)
                row = {"qid": q["id"], "key": keys[system.name], "question": q["question"], "answer": text,
                       "tokens": n_tokens, "seconds": round(time.perf_counter() - t0, 3)}
                append_jsonl(folder / f"{system.name}.jsonl", row)
                cached[system.name][q["id"]] = row
                progress.update(1, system.name)
            runtime.close()
            ctx.add_time("answers", time.perf_counter() - start, system.name)
    return {s.name: [cached[s.name][q["id"]] for q in questions] for s in systems}


def preference_scores(ctx: Context, keys: dict, pairs: list[dict], retriever: Retriever,
                      label: str = "held-out pairs") -> dict[str, list[dict]]:
    """Per system and pair: log-probability and length of the chosen and the rejected answer."""
    folder = ctx.run.eval_dir / "preference"
    systems = ctx.systems
    cached = {s.name: {r["pid"]: r for r in read_jsonl(folder / f"{s.name}.jsonl") if r.get("key") == keys[s.name]}
              for s in systems}
    todo = {s.name: [p for p in pairs if p["id"] not in cached[s.name]] for s in systems}
    total = sum(len(v) for v in todo.values())
    ctx.add_reused("pairs", len(systems) * len(pairs) - total)
    if pairs:
        ctx.emit(Event("stage", "eval", f"preference accuracy on {len(pairs)} {label}"))
    progress = Progress(ctx.emit, "eval", total, "pairs")
    for system in systems:
        if todo[system.name]:
            start = time.perf_counter()
            runtime = Runtime(system.model, system.lora, logits=True, seed=ctx.cfg.seed, threads=ctx.threads)
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
            ctx.add_time("preference", time.perf_counter() - start, system.name)
    return {s.name: [cached[s.name][p["id"]] for p in pairs] for s in systems}


class Scorer:
    """BLEU, ROUGE-L and BERTScore; the BERTScore encoder is loaded once per evaluation."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._bert = None

    def bert(self) -> metrics.BertScorer:
        if self._bert is None:
            start = time.perf_counter()
            self._bert = metrics.BertScorer(threads=self.ctx.threads[1])
            self.ctx.add_time("bertscore_load", time.perf_counter() - start)
        return self._bert

    def score(self, answers: dict[str, list[dict]], questions: list[dict]) -> dict:
        """Per system: per-question sentence BLEU, ROUGE-L F1, BERTScore P/R/F1."""
        refs = [q["reference"] for q in questions]
        self.ctx.emit(Event("stage", "eval", "scoring answers (BLEU, ROUGE-L, BERTScore)"))
        scorer = self.bert()
        start = time.perf_counter()
        progress = Progress(self.ctx.emit, "eval", len(answers), "systems")
        out = {}
        for name, rows in answers.items():
            hyps = [r["answer"] for r in rows]
            p, r, f = scorer.score(hyps, refs)
            out[name] = {"bleu_sentence": [metrics.sentence_bleu(h, ref) for h, ref in zip(hyps, refs)],
                         "rouge_l": metrics.rouge_l(hyps, refs), "bertscore_p": p, "bertscore_r": r,
                         "bertscore_f1": f}
            progress.update(1, name)
        self.ctx.add_time("scoring", time.perf_counter() - start)
        return out
