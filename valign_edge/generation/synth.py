"""Teacher-driven synthetic data: questions, grounded answers, faithful/unfaithful pairs.

Per chunk, three dense calls instead of one call per item: K questions in one sampled
call, the K grounded answers in one greedy call, and the preference pairs of a
value-bearing chunk in one call. All three share the system prompt and the chunk as their
prefix, so llama.cpp reuses the chunk's KV cache between them. Outputs are appended to
``synth/*.jsonl`` per chunk; a resumed run generates only the chunks that are missing.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from valign_edge.backends import Teacher
from valign_edge.config import GenerateConfig
from valign_edge.documents.chunking import Chunk
from valign_edge.errors import Cancelled
from valign_edge.events import Callback, Progress, log
from valign_edge.files import append_jsonl, read_jsonl
from valign_edge.generation import filters
from valign_edge.generation.negate import contradict
from valign_edge.generation.prefetch import Prefetch
from valign_edge.generation.teacher_io import chunk_seed, messages, parse_list
from valign_edge.generation.teacher_io import count as _count
from valign_edge.runs.workspace import Run, hash_obj


def synth_key(cfg: GenerateConfig, teacher_id: str, seed: int) -> str:
    """What the per-chunk outputs depend on: records made under another key are regenerated."""
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("max_chunks", "valid_fraction", "test_fraction",
                                                               "n_threads", "n_threads_batch", "chunk_tokens",
                                                               "chunk_overlap", "concurrency", "balance_verdicts",
                                                               "verdict_pairs", "passages", "reason_first")
              and not (k == "teacher_model" and not v)}
    return hash_obj([fields, teacher_id, seed])


class Synthesizer:
    """Writes one chunk's SFT and DPO records through the teacher.

    Answers are extractive by default: the teacher picks, under a grammar, the span of the
    chunk that answers the question among the few that share most words with it. A 135M
    teacher cannot write grounded prose, but it can choose; with a larger teacher,
    ``answer_style = "free"`` lets it write its own answers, filtered for grounding.
    """

    def __init__(self, teacher: Teacher, cfg: GenerateConfig, seed: int = 0):
        self.teacher, self.cfg, self.seed = teacher, cfg, seed
        self.questions = filters.QuestionIndex(cfg.dedup_threshold)
        self.scenarios = filters.QuestionIndex(cfg.dedup_threshold)

    def remember(self, sft: dict | None, dpo: dict | None) -> None:
        """Feed records loaded on resume into the duplicate indexes, in document order."""
        for item in (sft or {}).get("items", []):
            self.questions.add(item["question"])
        for item in (dpo or {}).get("items", []):
            self.scenarios.add(item["prompt"])

    def _questions(self, task: str, chunk: Chunk, k: int, index: filters.QuestionIndex, rejected: dict) -> list[str]:
        """Up to k new questions (sampled), retried a bounded number of times."""
        from valign_edge.backends.llama_cpp import questions_grammar

        kept: list[str] = []
        local = filters.QuestionIndex(self.cfg.dedup_threshold)
        for attempt in range(self.cfg.max_retries + 1):
            text = self.teacher.generate(messages(task, chunk.text, k=k), grammar=questions_grammar(k),
                                         temperature=self.cfg.question_temperature, max_tokens=56 * k + 16,
                                         seed=chunk_seed(self.seed, chunk.id, attempt, task))
            items = parse_list(text, "questions", k)
            if items is None:
                _count(rejected, "invalid_json")
                continue
            for q in items:
                q = str(q).strip()
                if not filters.question_ok(q):
                    _count(rejected, "bad_question")
                elif filters.grounding(q, chunk.text) < self.cfg.min_grounding:
                    _count(rejected, "off_topic")
                elif local.is_duplicate(q) or index.is_duplicate(q):
                    _count(rejected, "duplicate")
                elif len(kept) < k:
                    kept.append(q)
                    local.add(q)
            if len(kept) * 2 >= k:
                break
        return kept

    def _answer(self, chunk: Chunk, question: str, rejected: dict, prefer_values: bool = False) -> str | None:
        """A grounded answer (greedy, chunk in context), or None with the reason counted."""
        from valign_edge.backends.llama_cpp import FREE_TEXT, choice_grammar

        msgs = messages("answer", chunk.text, question=question)
        if self.cfg.answer_style == "extractive":
            options = filters.answer_candidates(question, chunk.text, prefer_values=prefer_values)
            if not options:
                _count(rejected, "no_answer_span")
                return None
            return self.teacher.generate(msgs, grammar=choice_grammar(options), temperature=0.0,
                                         max_tokens=max(self.teacher.count_tokens(o) for o in options) + 8).strip()
        answer = self.teacher.generate(msgs, grammar=FREE_TEXT, temperature=0.0,
                                       max_tokens=self.cfg.answer_max_tokens).strip()
        if not answer.endswith((".", "!", "?", '"', ")")):
            _count(rejected, "truncated")
            return None
        if not filters.answer_ok(answer, question):
            _count(rejected, "empty_answer")
            return None
        if filters.grounding(answer, chunk.text) < self.cfg.min_grounding:
            _count(rejected, "ungrounded")
            return None
        return answer

    def _unfaithful(self, chunk: Chunk, chosen: str, rejected: dict, situation: str = "") -> tuple[str, str] | None:
        """An answer that goes against ``chosen``: the teacher arguing the other side without the document
        (``negatives = "contrastive"``), else its rewrite of ``chosen`` as the opposite, else the rule-based flip."""
        from valign_edge.backends.llama_cpp import FREE_TEXT

        if self.cfg.negatives == "contrastive" and situation:
            from valign_edge.generation.stances import answer_against

            text = answer_against(self.teacher, situation, chunk_seed(self.seed, chunk.id, 0, situation))
            if text and filters.distinct_pair(chosen, text) and filters.grounding(text, chosen) < 0.6:
                return text, "teacher"
            _count(rejected, "teacher_unusable")

        text = self.teacher.generate(messages("opposite", chunk.text, answer=chosen), grammar=FREE_TEXT,
                                     temperature=0.0, max_tokens=self.cfg.answer_max_tokens).strip()
        if filters.contradicts(chosen, text):
            return text, "teacher"
        _count(rejected, "teacher_not_opposite")
        flipped = contradict(chosen)
        if flipped and filters.distinct_pair(chosen, flipped):
            return flipped, "negation"
        return None

    def sft_for_chunk(self, chunk: Chunk) -> dict:
        rejected: dict = {}
        items = []
        for q in self._questions("questions", chunk, self.cfg.questions_per_chunk, self.questions, rejected):
            answer = self._answer(chunk, q, rejected)
            if answer is None:
                continue
            if not filters.answer_ok(answer, q):
                _count(rejected, "empty_answer")
                continue
            items.append({"question": q, "answer": answer})
            self.questions.add(q)
        return {"chunk_id": chunk.id, "span": [chunk.start, chunk.end], "items": items, "rejected": rejected}

    def dpo_for_chunk(self, chunk: Chunk) -> dict:
        cfg, rejected = self.cfg, {}
        cues = filters.value_cues(chunk.text)
        record = {"chunk_id": chunk.id, "span": [chunk.start, chunk.end], "value_cues": cues, "items": [],
                  "rejected": rejected}
        if cfg.situations_per_norm > 0:
            from valign_edge.generation.stances import StanceWriter

            record["items"] = StanceWriter(self.teacher, cfg, self.seed).pairs(
                chunk, self.scenarios, rejected)
        # Situations the teacher writes itself: fewer, but in its own words, concrete, and about the
        # chunk's values as a whole (what the parsed norms do not reach).
        if len(cues) < cfg.value_threshold or cfg.pairs_per_chunk == 0:
            if not record["items"]:
                record["skipped"] = "no value cues"
            return record
        for situation in self._questions("situations", chunk, cfg.pairs_per_chunk, self.scenarios, rejected):
            chosen = self._answer(chunk, situation, rejected, prefer_values=True)
            if chosen is None:
                continue
            bad = self._unfaithful(chunk, chosen, rejected, situation)
            if bad is None or not filters.distinct_pair(chosen, bad[0]):
                _count(rejected, "same_pair")
                continue
            record["items"].append({"prompt": situation, "chosen": chosen, "rejected": bad[0], "rejected_by": bad[1]})
            self.scenarios.add(situation)
        return record


def synthesize(run: Run, chunks: list[Chunk], teacher: Teacher, cfg: GenerateConfig, seed: int, teacher_id: str,
               emit: Callback, should_stop=lambda: False) -> dict:
    """Generate what is missing for ``chunks``; return counts over all of them."""
    key = synth_key(cfg, teacher_id, seed)
    sft_path, dpo_path = run.synth_dir / "sft.jsonl", run.synth_dir / "dpo.jsonl"
    sft_done = {r["chunk_id"]: r for r in read_jsonl(sft_path) if r.get("key") == key}
    dpo_done = {r["chunk_id"]: r for r in read_jsonl(dpo_path) if r.get("key") == key}
    synth = Synthesizer(teacher, cfg, seed)
    for chunk in chunks:
        synth.remember(sft_done.get(chunk.id), dpo_done.get(chunk.id))
    todo = [c for c in chunks if c.id not in sft_done or c.id not in dpo_done]
    progress = Progress(emit, "generate", len(chunks), "chunks", done=len(chunks) - len(todo))
    if len(todo) < len(chunks):
        log(emit, "generate", f"resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks already generated")
    records = sum(len(r["items"]) for r in sft_done.values()) + sum(len(r["items"]) for r in dpo_done.values())
    # Each record is computed from an empty KV cache: with prefix reuse across records, a resumed run
    # (fresh cache) got slightly different logits and could pick other answers than an uninterrupted one.
    # generate.concurrency: chunks run ahead through a server teacher, and are still written here in order.
    needs = {c.id: (c.id not in sft_done, c.id not in dpo_done) for c in todo}
    with Prefetch(synth, teacher, cfg.concurrency, todo, needs) as ahead:
        for chunk in todo:
            if should_stop():
                raise Cancelled("generation cancelled")
            synth.teacher = ahead.teacher_for(chunk)
            if chunk.id not in sft_done:
                teacher.reset()
                rec = synth.sft_for_chunk(chunk) | {"key": key}
                append_jsonl(sft_path, rec)
                sft_done[chunk.id] = rec
                records += len(rec["items"])
            if chunk.id not in dpo_done:
                teacher.reset()
                rec = synth.dpo_for_chunk(chunk) | {"key": key}
                append_jsonl(dpo_path, rec)
                dpo_done[chunk.id] = rec
                records += len(rec["items"])
            progress.update(1, f"{chunk.heading or chunk.id}", records=records)
    counts: dict[str, Any] = {"chunks": len(chunks),
                              "sft_records": sum(len(sft_done[c.id]["items"]) for c in chunks),
                              "dpo_records": sum(len(dpo_done[c.id]["items"]) for c in chunks),
                              "value_chunks": sum(1 for c in chunks if not dpo_done[c.id].get("skipped"))}
    rejected: dict[str, int] = {}
    for rec in [sft_done[c.id] for c in chunks] + [dpo_done[c.id] for c in chunks]:
        for reason, n in rec.get("rejected", {}).items():
            rejected[reason] = rejected.get(reason, 0) + n
    counts["rejected"] = rejected
    return counts


