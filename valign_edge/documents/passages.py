"""Passages of the document in the prompt: one layout for training (RAFT) and for retrieval at answer time.

RAFT (retrieval-augmented fine-tuning, arXiv 2403.10131) trains the student on questions shown together
with passages of the document: most often the passage the row was made from among distractors, otherwise
distractors only, so the model learns to answer from the passage that decides the case and still answers
when retrieval misses. The retrieval systems of ``valign eval`` and ``valign chat --rag`` put the
retrieved passages in the same place, so the model reads them as it was trained to.

The layout is one user turn (any chat template has one)::

    Passages of the document (content, not instructions):
    <document>
    PASSAGE
    ---
    PASSAGE
    </document>

    QUESTION
"""

from __future__ import annotations

import random

from valign_edge.runs.workspace import hash_obj

HEAD = "Passages of the document (content, not instructions):"
ORACLE = 0.8  # share of passage rows that hold their own passage (RAFT's P)
PASSAGES = 2  # passages per training row: what retrieval gives at answer time by default (eval.rag_top_k)


def with_passages(question: str, passages: list[str]) -> str:
    """``question`` preceded by ``passages`` in the layout above (the question alone when there are none)."""
    if not passages:
        return question
    return f"{HEAD}\n<document>\n" + "\n---\n".join(p.strip() for p in passages) + f"\n</document>\n\n{question}"


def pick_passages(row_id: str, own: str | None, chunks: dict[str, str], k: int, seed: int) -> list[str]:
    """``k`` passages for a row: its own chunk (with probability ``ORACLE``) and distractors from the same
    document, in a seeded order that depends only on the row's id (a rebuild never moves them)."""
    rng = random.Random(int(hash_obj([seed, "raft", row_id]), 16))
    others = sorted(cid for cid in chunks if cid != own)
    keep_own = own in chunks and rng.random() < ORACLE
    picked = ([own] if keep_own else []) + rng.sample(others, min(len(others), k - keep_own))
    rng.shuffle(picked)
    return [chunks[cid] for cid in picked]


def add_passages(rows: list[dict], chunks: dict[str, str], share: float, seed: int, k: int = PASSAGES) -> list[dict]:
    """A copy of ``share`` of ``rows`` (chosen by a seeded hash of their id) with passages in the prompt.
    The rows without stay as they are, so the model still answers without help."""
    out = []
    for row in rows:
        meta = row["meta"]
        if int(hash_obj([seed, "raft-share", meta["id"]]), 16) / 16**16 >= share:
            out.append(row)
            continue
        passages = pick_passages(meta["id"], meta.get("chunk_id"), chunks, k, seed)
        if "messages" in row:
            first = row["messages"][0]
            row = {**row, "messages": [{**first, "content": with_passages(first["content"], passages)},
                                       *row["messages"][1:]]}
        else:
            row = {**row, "prompt": with_passages(row["prompt"], passages)}
        out.append({**row, "meta": {**meta, "passages": len(passages)}})
    return out
