"""Recall of the deciding section: BM25, dense (MiniLM) and hybrid retrieval on hand-written probes.

    python bench/retrieval_recall.py DOC PROBE.jsonl [DOC2 PROBE2.jsonl ...]

Every probe row with a ``section`` (the heading of the section that decides it) is a query: its
question, or a preference row's situation. Recall@k: the share of queries whose top k chunks include
a chunk of that section. The chunks are the document's (``chunking.chunk_text`` with the default
size); the model is the one ``valign`` uses (minilm-l6-v2 from PyPI). Prints recall@1 and @3 with
n, and the median and 95th-percentile time per query, for each retriever.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from valign_edge.documents.chunking import chunk_text  # noqa: E402
from valign_edge.documents.ingest import read_document  # noqa: E402
from valign_edge.documents.retrieval import KINDS, Encoder, make_index  # noqa: E402
from valign_edge.evaluation.probes import load_probe  # noqa: E402


def _norm(heading: str) -> str:
    return " ".join(heading.lstrip("#").split()).lower()


def recall(doc: Path, probe_path: Path, encoder: Encoder) -> dict:
    chunks = [{"id": c.id, "heading": c.heading, "text": c.text} for c in chunk_text(read_document(doc).text)]
    probe = load_probe(probe_path)
    queries = [(q["question"], q["section"]) for q in probe.questions if q.get("section")]
    queries += [(p["prompt"], p["section"]) for p in probe.pairs if p.get("section")]
    out = {"chunks": len(chunks), "queries": len(queries)}
    for kind in KINDS:
        index = make_index(chunks, kind, encoder)
        index.ranked("warm up")
        hits1 = hits3 = 0
        times = []
        for text, section in queries:
            t0 = time.perf_counter()
            top = index.search(text, 3)
            times.append(time.perf_counter() - t0)
            found = [_norm(c["heading"]) == _norm(section) for c in top]
            hits1 += any(found[:1])
            hits3 += any(found)
        times.sort()
        n = len(queries)
        out[kind] = {"recall@1": hits1 / n, "recall@3": hits3 / n, "ms_median": 1000 * times[n // 2],
                     "ms_p95": 1000 * times[int(0.95 * (n - 1))]}
    return out


def main() -> int:
    args = sys.argv[1:]
    if not args or len(args) % 2:
        print(__doc__)
        return 2
    encoder = Encoder(threads=2)
    for doc, probe in zip(args[::2], args[1::2]):
        found = recall(Path(doc), Path(probe), encoder)
        print(f"{Path(doc).name}: {found['chunks']} chunks, {found['queries']} probe queries with a section")
        for kind in KINDS:
            r = found[kind]
            print(f"  {kind:>6}: recall@1 {r['recall@1']:.3f}  recall@3 {r['recall@3']:.3f}  "
                  f"per query {r['ms_median']:.1f} ms median, {r['ms_p95']:.1f} ms p95")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
