"""Retrieval finds the passage that decides a concrete case: the real MiniLM encoder and the real BM25
index over the shipped code of conduct, measured on its hand-written probe's labelled sections."""

from __future__ import annotations

import pytest

from conftest import ROOT
from valign_edge.chat import source_line
from valign_edge.chunking import chunk_text
from valign_edge.eval_probes import load_probe
from valign_edge.ingest import read_document
from valign_edge.retrieval import Encoder, make_index


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
