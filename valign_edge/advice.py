"""Advice that names the real cause when a stage has nothing to work with.

Each function turns what a stage saw (chunks, filter counts, settings) into one line; the stages
raise or log it. Kept apart so the stages stay short and the wording is tested in one place.
"""

from __future__ import annotations

import re
from typing import Any

# What each filter rejection means, in the words a user can act on.
REASONS = {
    "off_topic": "off the chunk's topic",
    "ungrounded": "not grounded in the chunk (generate.min_grounding)",
    "duplicate": "duplicates (generate.dedup_threshold)",
    "invalid_json": "unreadable teacher output",
    "truncated": "cut off (generate.answer_max_tokens)",
    "bad_question": "not questions",
    "no_answer_span": "no answering sentence found in the chunk",
    "empty_answer": "empty answers",
    "same_pair": "pairs whose two answers did not differ",
    "teacher_not_opposite": "unfaithful answers that did not contradict the chunk",
}


def body_words(text: str) -> int:
    """Words of a chunk outside its heading lines (Markdown ``#`` headings and setext underlines)."""
    lines = [ln for ln in text.splitlines() if not re.match(r"\s*(#{1,6}\s|[=-]{3,}\s*$)", ln)]
    return len(re.findall(r"\w+", " ".join(lines)))


def _top_reasons(rejected: dict[str, int], n: int = 3) -> str:
    top = sorted(rejected.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{count} {REASONS.get(reason, reason.replace('_', ' '))}" for reason, count in top)


def no_records(chunks: list[Any], counts: dict) -> str:
    """Why generation produced no SFT record: no text under the headings, or what the filters rejected."""
    texts = [getattr(c, "text", None) or (c.get("text", "") if isinstance(c, dict) else "") for c in chunks]
    body = sum(body_words(t) for t in texts)
    if texts and body < 12 * len(texts):
        return (f"the document is almost only headings ({body} words of text under {len(texts)} "
                f"section{'s' if len(texts) != 1 else ''}): "
                "write the values out as sentences under each heading and generate again")
    rejected = counts.get("rejected") or {}
    if rejected:
        return (f"every question or answer the teacher wrote was rejected ({_top_reasons(rejected)}); "
                "try a larger teacher (--teacher PATH.gguf) or relax the named setting")
    return "the teacher produced no usable records; try a larger teacher (--teacher PATH.gguf)"


def no_pairs(generate_info: dict) -> str:
    """Why the data holds no DPO pair: no value-bearing chunk, or every candidate pair rejected."""
    value_chunks = generate_info.get("value_chunks")
    rejected = generate_info.get("rejected") or {}
    pair_reasons = {k: v for k, v in rejected.items() if k in ("same_pair", "teacher_not_opposite", "off_topic",
                                                             "ungrounded", "duplicate", "no_answer_span")}
    if value_chunks:
        why = f" ({_top_reasons(pair_reasons)})" if pair_reasons else ""
        return (f"no preference pairs in the data: {value_chunks} chunks carry value cues, but every candidate "
                f"pair was rejected{why}")
    if value_chunks == 0:
        return "no preference pairs in the data: no chunk carries value cues (must, shall, right, ...)"
    return "no preference pairs in the data"


def memory(tc: Any) -> str:
    """Which training setting to lower when the memory estimate is too high."""
    micro = getattr(tc, "micro_batch_tokens", 0) or tc.batch_tokens
    if tc.max_seq_len >= min(tc.batch_tokens, micro):
        return f"lower train.max_seq_len (now {tc.max_seq_len}): the longest sequence sets the memory needed"
    return (f"lower train.micro_batch_tokens (now {getattr(tc, 'micro_batch_tokens', '?')}) or "
            f"train.batch_tokens (now {tc.batch_tokens})")
