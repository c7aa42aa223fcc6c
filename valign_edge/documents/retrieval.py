"""Retrieval over the run's chunks: the RAG systems in evaluation and RAG in chat.

Three retrievers with one ``search(query, k)``: BM25 (``bm25s``, word overlap), dense (the
all-MiniLM-L6-v2 sentence encoder from the ``minilm-l6-v2`` preset, mean-pooled and normalized,
cosine similarity) and a hybrid of the two by reciprocal rank fusion. A person asks about a concrete
case in their own words ("a gift card from a vendor"), not in the rule's words ("gifts from
suppliers"): dense retrieval finds such passages where word overlap does not
(``bench/retrieval_recall.py`` measures recall of the deciding section on the hand-written probes).
"""

from __future__ import annotations

from valign_edge.files import read_jsonl
from valign_edge.runs.workspace import Run

KINDS = ("bm25", "dense", "hybrid")
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)


class ChunkIndex:
    """BM25 over the chunks' text."""

    def __init__(self, chunks: list[dict]):
        import bm25s

        self.chunks = chunks
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize([c["text"] for c in chunks], stopwords="en", show_progress=False),
                             show_progress=False)

    @classmethod
    def for_run(cls, run: Run) -> "ChunkIndex":
        return cls(read_jsonl(run.chunks_path))

    def ranked(self, query: str) -> list[int]:
        """Chunk indices, best first; chunks sharing no word with the query are left out."""
        import bm25s

        if not self.chunks:
            return []
        docs, scores = self.retriever.retrieve(bm25s.tokenize([query], stopwords="en", show_progress=False),
                                               k=len(self.chunks), show_progress=False)
        return [int(i) for i, s in zip(docs[0], scores[0]) if s > 0]

    def search(self, query: str, k: int = 2) -> list[dict]:
        return [self.chunks[i] for i in self.ranked(query)[:k]]


class Encoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling over the last layer, unit length)."""

    def __init__(self, model_dir=None, threads: int = 0):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            from valign_edge.models import resolve

            model_dir = resolve("minilm-l6-v2", "embedder").path
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()

    def encode(self, texts: list[str]):
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), 16):
                enc = self.tokenizer(texts[start:start + 16], padding=True, truncation=True, max_length=256,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


class DenseIndex:
    """Cosine similarity of sentence embeddings; a chunk is embedded with its section heading."""

    def __init__(self, chunks: list[dict], encoder: Encoder | None = None):
        self.chunks = chunks
        self.encoder = encoder or Encoder()
        self.vectors = self.encoder.encode([c["text"] for c in chunks])

    def ranked(self, query: str) -> list[int]:
        if not self.chunks:
            return []
        sims = self.vectors @ self.encoder.encode([query])[0]
        return [int(i) for i in sims.argsort(descending=True)]

    def search(self, query: str, k: int = 2) -> list[dict]:
        return [self.chunks[i] for i in self.ranked(query)[:k]]


class HybridIndex:
    """BM25 and dense ranks fused: score = sum of 1 / (RRF_K + rank) over the two rankings."""

    def __init__(self, chunks: list[dict], encoder: Encoder | None = None):
        self.chunks = chunks
        self.bm25, self.dense = ChunkIndex(chunks), DenseIndex(chunks, encoder)

    def ranked(self, query: str) -> list[int]:
        score: dict[int, float] = {}
        for ranking in (self.bm25.ranked(query), self.dense.ranked(query)):
            for rank, i in enumerate(ranking):
                score[i] = score.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
        return sorted(score, key=lambda i: (-score[i], i))

    def search(self, query: str, k: int = 2) -> list[dict]:
        return [self.chunks[i] for i in self.ranked(query)[:k]]


def make_index(chunks: list[dict], kind: str = "bm25", encoder: Encoder | None = None):
    if kind == "bm25":
        return ChunkIndex(chunks)
    if kind == "dense":
        return DenseIndex(chunks, encoder)
    if kind == "hybrid":
        return HybridIndex(chunks, encoder)
    raise ValueError(f"unknown retriever {kind!r} (known: {', '.join(KINDS)})")


def rag_messages(question: str, passages: list[dict]) -> list[dict]:
    """The question after the retrieved passages, in the layout the student is trained with (passages.py)."""
    from valign_edge.documents.passages import with_passages

    return [{"role": "user", "content": with_passages(question, [p["text"] for p in passages])}]
