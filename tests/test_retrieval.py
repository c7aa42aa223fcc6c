"""Retrieval finds the passage that decides a concrete case: the real MiniLM encoder and the real BM25
index over the shipped code of conduct, measured on its hand-written probe's labelled sections."""

from __future__ import annotations

import pytest
from conftest import ROOT

from valign_edge.chat import source_line
from valign_edge.documents.chunking import chunk_text
from valign_edge.documents.ingest import read_document
from valign_edge.documents.retrieval import Encoder, make_index
from valign_edge.evaluation.probes import load_probe


@pytest.fixture(scope="module")
def coc():
    doc = read_document(ROOT / "valign_edge" / "data" / "code_of_conduct.md")
    chunks = [c.to_dict() for c in chunk_text(doc.text)]
    probe = load_probe(ROOT / "valign_edge" / "data" / "probes" / "code_of_conduct.jsonl")
    queries = [(q["question"], q["section"]) for q in probe.questions] + [(p["prompt"], p["section"])
                                                                          for p in probe.pairs]
    return chunks, queries


def _recall(index, queries, k):
    return sum(any(c["heading"] == section for c in index.search(q, k)) for q, section in queries) / len(queries)


def test_dense_retrieval_finds_the_deciding_section(coc):
    chunks, queries = coc
    assert len(queries) >= 100
    encoder = Encoder(threads=1)
    dense, bm25 = make_index(chunks, "dense", encoder), make_index(chunks, "bm25")
    # Measured when written (bench/retrieval_recall.py): dense 0.625 / 0.894, BM25 0.404 / 0.721.
    assert _recall(dense, queries, 3) >= 0.85
    assert _recall(dense, queries, 1) > _recall(bm25, queries, 1) + 0.1
    # a concrete case that shares no content word with its rule ("gifts ... from suppliers")
    top = dense.search("A sales rep dropped off a $50 gift card for me. Can I keep it?", 1)[0]
    assert top["heading"] == "4. Gifts and conflicts of interest"
    hybrid = make_index(chunks, "hybrid", encoder)
    assert sorted(hybrid.ranked("Can I refuse treatment?")) == list(range(len(chunks)))
    with pytest.raises(ValueError, match="unknown retriever"):
        make_index(chunks, "tfidf")


def test_source_line_names_the_section_and_quotes_it():
    passage = {"heading": "4. Gifts", "text": "## 4. Gifts\n\nWe do not accept gifts from suppliers, however small "
                                              "they seem, because they create a sense of obligation that lasts."}
    line = source_line(passage, width=60)
    assert line.startswith('4. Gifts: "We do not accept gifts from suppliers') and line.endswith('..."')
    assert len(line) < 80


def test_training_rows_carry_passages_in_the_answer_time_layout(coc):
    """RAFT rows: a seeded share of rows gets passages, most often its own chunk among distractors; the
    layout is the one retrieval uses at answer time, and a rebuild picks the same passages."""
    from valign_edge.documents.passages import ORACLE, add_passages, with_passages
    from valign_edge.documents.retrieval import rag_messages

    chunks = {c["id"]: c["text"] for c in coc[0]}
    ids = sorted(chunks)
    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No.",
             "meta": {"id": f"r{i}", "chunk_id": ids[i % len(ids)]}} for i in range(400)]
    sft = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": "Yes."}],
            "meta": r["meta"]} for r in rows]
    out = add_passages(rows, chunks, 0.5, seed=7, k=2)
    assert add_passages(rows, chunks, 0.5, seed=7, k=2) == out
    with_ = [r for r in out if "passages" in r["meta"]]
    assert 0.4 < len(with_) / len(rows) < 0.6
    plain = [r for r in out if "passages" not in r["meta"]]
    assert all(r["prompt"].startswith("Question") for r in plain)
    own = [chunks[r["meta"]["chunk_id"]] in r["prompt"] for r in with_]
    assert abs(sum(own) / len(own) - ORACLE) < 0.1
    for r in with_:
        assert r["prompt"].endswith(f"\n\n{r['meta']['id'].replace('r', 'Question ')}?")
        assert sum(c in r["prompt"] for c in chunks.values()) == 2
    # SFT rows get the same passages in their first (user) turn, the answer untouched
    sft_out = add_passages(sft, chunks, 0.5, seed=7, k=2)
    assert [r["messages"][0]["content"] for r in sft_out] == [r["prompt"] for r in out]
    assert all(r["messages"][1]["content"] == "Yes." for r in sft_out)
    # retrieval at answer time: one user turn in the same layout
    passages = [{"text": chunks[ids[0]]}, {"text": chunks[ids[1]]}]
    assert rag_messages("Can I?", passages) == [
        {"role": "user", "content": with_passages("Can I?", [chunks[ids[0]], chunks[ids[1]]])}]
    assert rag_messages("Can I?", []) == [{"role": "user", "content": "Can I?"}]
