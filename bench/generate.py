"""Benchmark `valign generate` against a naive teacher loop, side by side, on the UDHR.

Both use the same model, prompts and thread settings. The naive loop is what one writes
first: one llama-cpp-python call at a time (questions, then one call per answer, one call
per preference pair), free text, no prefix reuse. Both outputs go through the same
filters; we report valid records per minute, duplicates, identical pairs, and the
teacher's decode rate against raw llama.cpp (from llama.cpp's own perf counters).

    .venv/bin/python bench/generate.py [--chunks 10] [--doc ../shared/data/udhr.txt]

``--server``: instead, the in-process teacher against llama.cpp's ``llama-server`` (built from the same
pinned source, ``scripts/llama_server.sh``) with 1 slot and 1 or 4 requests in flight, and with 4 slots
and ``generate.concurrency`` 4: the same synthesizer, document, chunks and total thread count (``--threads``),
valid records per minute side by side.

    .venv/bin/python bench/generate.py --server [--chunks 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from valign_edge.backends.llama_cpp import LlamaTeacher, quiet_native  # noqa: E402
from valign_edge.config import GenerateConfig  # noqa: E402
from valign_edge.documents.chunking import chunk_text  # noqa: E402
from valign_edge.documents.ingest import read_document  # noqa: E402
from valign_edge.generation import filters  # noqa: E402
from valign_edge.generation.synth import synthesize  # noqa: E402
from valign_edge.generation.teacher_io import messages  # noqa: E402
from valign_edge.models import resolve  # noqa: E402
from valign_edge.runs.workspace import Run  # noqa: E402


def perf(llm) -> tuple[int, float]:
    import llama_cpp

    p = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return p.n_eval, p.t_eval_ms


def reset_perf(llm) -> None:
    import llama_cpp

    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)


def raw_decode_rate(teacher: LlamaTeacher) -> float:
    """Plain llama.cpp decoding, no grammar: tokens/s from llama.cpp's counters."""
    llm = teacher.llm
    llm.reset()
    reset_perf(llm)
    with quiet_native():
        llm.create_chat_completion(messages=[{"role": "user", "content": "Tell a long story about a lighthouse."}],
                                   max_tokens=200, temperature=0.0)
    n, ms = perf(llm)
    return n / ms * 1000


def naive(teacher: LlamaTeacher, chunks, cfg: GenerateConfig) -> dict:
    llm = teacher.llm
    sft, dpo, seen = [], [], filters.QuestionIndex(cfg.dedup_threshold)
    dup = same = 0

    def call(msgs, max_tokens, temperature):
        llm.reset()  # no prefix reuse
        with quiet_native():
            out = llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=temperature)
        return out["choices"][0]["message"]["content"] or ""

    for c in chunks:
        text = call(messages("questions", c.text, k=cfg.questions_per_chunk), 200, cfg.question_temperature)
        qs = [re.sub(r"^\W*\d*[.)]?\s*", "", q).strip() for q in text.splitlines() if q.strip().endswith("?")]
        for q in qs[: cfg.questions_per_chunk]:
            if seen.is_duplicate(q):
                dup += 1
            seen.add(q)
            answer = call(messages("answer", c.text, question=q), cfg.answer_max_tokens, 0.0).strip()
            sft.append((q, answer, c.text))
        if len(filters.value_cues(c.text)) >= cfg.value_threshold:
            for _ in range(cfg.pairs_per_chunk):
                out = call([{"role": "user", "content": f"<document>\n{c.text}\n</document>\n\nWrite a question about "
                             "the values of this document, a good answer that follows it and a bad answer that goes "
                             "against it, as lines 'Question:', 'Good:', 'Bad:'."}], 200, 0.7)
                m = {k: re.search(rf"{k}:\s*(.+)", out) for k in ("Question", "Good", "Bad")}
                if all(m.values()):
                    good, bad = m["Good"].group(1).strip(), m["Bad"].group(1).strip()
                    same += not filters.distinct_pair(good, bad)
                    dpo.append((m["Question"].group(1).strip(), good, bad, c.text))
    valid_index = filters.QuestionIndex(cfg.dedup_threshold)
    valid_sft = 0
    for q, a, chunk in sft:
        if filters.question_ok(q) and not valid_index.is_duplicate(q) and filters.answer_ok(a, q) \
                and filters.grounding(a, chunk) >= cfg.min_grounding:
            valid_sft += 1
            valid_index.add(q)
    valid_dpo = sum(1 for q, g, b, chunk in dpo if filters.distinct_pair(g, b)
                    and filters.grounding(g, chunk) >= cfg.min_grounding)
    return {"sft_raw": len(sft), "dpo_raw": len(dpo), "valid_sft": valid_sft, "valid_dpo": valid_dpo,
            "duplicate_questions": dup, "identical_pairs": same}


def engines(chunks, cfg: GenerateConfig, threads: int, model: Path) -> dict:
    """Valid records per minute: in-process teacher vs llama-server (1 slot with 1 and 4 requests in
    flight; 4 slots, 4 in flight); whether the server's records match those of 1 slot, 1 in flight."""
    from dataclasses import replace

    from valign_edge.backends.llama_server import LlamaServer, binary
    from valign_edge.backends.openai_teacher import OpenAITeacher
    from valign_edge.files import read_jsonl

    binary()  # built before any clock starts

    def measure(teacher, gen: GenerateConfig) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            run = Run.open(Path(tmp) / "run")
            t0 = time.perf_counter()
            synthesize(run, chunks, teacher, gen, 0, "bench", lambda e: None)
            seconds = time.perf_counter() - t0
            recs = {k: read_jsonl(run.synth_dir / f"{k}.jsonl") for k in ("sft", "dpo")}
        for rows in recs.values():
            for r in rows:
                r.pop("key", None)
        valid = sum(len(r["items"]) for rows in recs.values() for r in rows)
        return {"seconds": round(seconds, 1), "valid_records": valid, "records_per_min": valid / seconds * 60,
                "calls": teacher.stats()["calls"], "records": recs}

    out = {}
    local = LlamaTeacher(model, n_ctx=cfg.n_ctx, n_threads=threads, n_threads_batch=threads)
    out["in-process"] = measure(local, cfg)
    local.llm.close()
    del local
    for slots, concurrency in ((1, 1), (1, 4), (4, 4)):
        with LlamaServer(model, parallel=slots, threads=threads, ctx_per_slot=cfg.n_ctx) as server:
            teacher = OpenAITeacher(server.url)
            out[f"server {slots} slot(s), {concurrency} in flight"] = measure(teacher, replace(cfg, concurrency=concurrency))
    names = list(out)
    same = {n: out[n]["records"] == out[names[1]]["records"] for n in names[2:]}
    for r in out.values():
        r.pop("records")
    print(f"{len(chunks)} chunks, {threads} threads in every configuration")
    print(f"{'':34}{'seconds':>9}{'valid':>7}{'calls':>7}{'records/min':>13}")
    for name, r in out.items():
        print(f"{name:34}{r['seconds']:>9.1f}{r['valid_records']:>7}{r['calls']:>7}{r['records_per_min']:>13.2f}")
    base = out[names[0]]["records_per_min"]
    for name in names[1:]:
        print(f"{name} / in-process: {out[name]['records_per_min'] / base:.2f}x")
    print(f"records identical to {names[1]}'s: {same}")
    return {"chunks": len(chunks), "threads": threads, "engines": out, "same_records_as_1_slot": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default=str(ROOT.parent / "shared" / "data" / "udhr.txt"))
    ap.add_argument("--chunks", type=int, default=10, help="articles to use (from Article 1)")
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--server", action="store_true", help="in-process teacher vs llama-server (see above)")
    ap.add_argument("--threads", type=int, default=2, help="--server: threads for every configuration")
    args = ap.parse_args()
    cfg = GenerateConfig(questions_per_chunk=args.questions, pairs_per_chunk=1)
    model = resolve("smollm2-135m-instruct").path
    teacher = LlamaTeacher(model, n_ctx=cfg.n_ctx)
    chunks = [c for c in chunk_text(read_document(args.doc).text, cfg.chunk_tokens, cfg.chunk_overlap,
                                     teacher.count_tokens) if c.heading.startswith("Article")][: args.chunks]
    if args.server:
        teacher.llm.close()
        result = engines(chunks, cfg, args.threads, model)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
    raw = raw_decode_rate(teacher)

    t0 = time.perf_counter()
    base = naive(teacher, chunks, cfg)
    base["seconds"] = time.perf_counter() - t0

    teacher.llm.reset()
    reset_perf(teacher.llm)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.open(Path(tmp) / "run")
        t0 = time.perf_counter()
        counts = synthesize(run, chunks, teacher, cfg, 0, "bench", lambda e: None)
        ours_s = time.perf_counter() - t0
        from valign_edge.files import read_jsonl

        sft = [i for r in read_jsonl(run.synth_dir / "sft.jsonl") for i in r["items"]]
        dpo = [i for r in read_jsonl(run.synth_dir / "dpo.jsonl") for i in r["items"]]
    n_eval, t_eval = perf(teacher.llm)
    qs = [i["question"] for i in sft]
    idx, dups = filters.QuestionIndex(cfg.dedup_threshold), 0
    for q in qs:
        dups += idx.is_duplicate(q)
        idx.add(q)
    ours = {"valid_sft": len(sft), "valid_dpo": len(dpo), "duplicate_questions": dups,
            "identical_pairs": sum(not filters.distinct_pair(p["chosen"], p["rejected"]) for p in dpo),
            "seconds": ours_s, "teacher_decode_tok_s": n_eval / t_eval * 1000 if t_eval else 0.0,
            "rejected": counts["rejected"]}
    rate = lambda r: (r["valid_sft"] + r["valid_dpo"]) / r["seconds"] * 60  # noqa: E731
    result = {"chunks": len(chunks), "raw_decode_tok_s": raw, "naive": base, "valign": ours,
              "records_per_min": {"naive": rate(base), "valign": rate(ours)},
              "speedup": rate(ours) / rate(base) if rate(base) else float("inf"),
              "decode_vs_raw": ours["teacher_decode_tok_s"] / raw}
    print(f"chunks: {len(chunks)} UDHR articles, {args.questions} questions per chunk, 1 pair per value chunk")
    print(f"{'':18}{'naive':>12}{'valign':>12}")
    for key in ("valid_sft", "valid_dpo", "duplicate_questions", "identical_pairs"):
        print(f"{key:18}{base[key]:>12}{ours[key]:>12}")
    print(f"{'seconds':18}{base['seconds']:>12.1f}{ours['seconds']:>12.1f}")
    print(f"{'records/min':18}{rate(base):>12.1f}{rate(ours):>12.1f}")
    print(f"speedup (valid records/min): {result['speedup']:.2f}x")
    print(f"teacher decode {ours['teacher_decode_tok_s']:.1f} tok/s vs raw llama.cpp {raw:.1f} tok/s "
          f"({result['decode_vs_raw']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
