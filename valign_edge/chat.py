"""Chat with an exported GGUF through llama.cpp (streaming), optionally with RAG over the document."""

from __future__ import annotations

import sys
from pathlib import Path

from valign_edge.errors import UserError

RETRIEVAL_FILE = "retrieval.json"  # beside an export's GGUF: what chat --rag needs without the run


def resolve_target(target: Path, vanilla: bool = False) -> tuple[Path, Path | None]:
    """(GGUF to load, run or export folder or None) for a run folder, an export folder or a GGUF path."""
    target = Path(target).expanduser()
    if target.is_file():
        return target, None
    if not target.is_dir():
        raise UserError(f"{target} is neither a run folder nor a GGUF file")
    pattern = "base-*.gguf" if vanilla else "model-*.gguf"
    here = sorted(target.glob(pattern))
    if here and not (target / "manifest.json").exists():
        return here[0], target  # an export folder, copied anywhere
    found = sorted((target / "export").glob(pattern))
    if not found:
        if not (target / "manifest.json").exists():
            raise UserError(f"{target} is neither a run folder nor a GGUF file")
        if not (target / "adapters" / "dpo" / "training.json").exists():
            raise UserError(f"{target} has no exported model: it is not trained yet; "
                            f"run: valign train {target} && valign export {target}")
        raise UserError(f"{target} has no exported model yet; run: valign export {target}")
    return found[0], target


def _rag_index(run_dir: Path | None):
    """The index over the run's chunks (the run's ``eval.retriever``), or over an export folder's
    ``retrieval.json``; else one line saying why there is none."""
    if run_dir is None:
        raise UserError("--rag needs a run folder or an export folder (it retrieves from the document)")
    if not (run_dir / "manifest.json").exists():
        return _export_index(run_dir)
    from valign_edge.config import resolve_config
    from valign_edge.documents.retrieval import make_index
    from valign_edge.files import read_jsonl
    from valign_edge.runs.workspace import Run

    run = Run.open(run_dir, create=False)
    if not read_jsonl(run.chunks_path):
        if run.manifest().get("purged"):
            raise UserError(f"{run_dir}'s chunks were purged (valign purge), so --rag has nothing to retrieve; "
                            "chat without --rag")
        raise UserError(f"{run_dir} has no chunks for --rag; run: valign generate DOC --out {run_dir}")
    chunks = read_jsonl(run.chunks_path)
    if not _all_text(chunks):
        raise UserError(f"{run.chunks_path}: every chunk needs its \"text\"; run generate again to rewrite it")
    kind = resolve_config(run.config_path).eval.retriever if run.config_path.exists() else "dense"
    return make_index(chunks, kind)


def _all_text(chunks: object) -> bool:
    return isinstance(chunks, list) and all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in chunks)


def _export_index(folder: Path):
    import json

    from valign_edge.documents.retrieval import make_index
    from valign_edge.files import JSONL_LIMIT, read_regular

    path = folder / RETRIEVAL_FILE
    if not path.exists():
        raise UserError(f"{folder} has no {RETRIEVAL_FILE} for --rag (valign purge deletes it unless "
                        "--keep-index; export the run again to write it)")
    data = read_regular(path, "retrieval file", JSONL_LIMIT)
    try:
        saved = json.loads(data.decode("utf-8"))
        chunks, kind = saved["chunks"], saved.get("retriever", "dense")
        if not _all_text(chunks):
            raise ValueError("chunks")
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a retrieval file valign wrote (chunks with text); export again") from None
    return make_index(chunks, kind)


def retrieval_record(chunks: list[dict], retriever: str, top_k: int, passages: float) -> dict:
    """What ``valign chat EXPORT_DIR --rag`` needs: the chunks (document text), the retriever and the
    embedding model it encodes with, and whether the model was trained with passages (RAFT)."""
    from valign_edge.models import model_id, resolve

    record = {"retriever": retriever, "top_k": top_k, "trained_with_passages": passages,
              "chunks": [{k: c[k] for k in ("id", "heading", "text") if k in c} for c in chunks]}
    if retriever != "bm25":
        embedder = resolve("minilm-l6-v2", "embedder")
        record["embedder"] = {"name": "minilm-l6-v2", "id": model_id(embedder)}
    return record


def source_line(passage: dict, width: int = 100) -> str:
    """Where a retrieved passage comes from: its section heading and the start of its text."""
    lines = [ln for ln in passage.get("text", "").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    quote = " ".join(" ".join(lines).split())
    quote = quote if len(quote) <= width else quote[: width - 3].rsplit(" ", 1)[0] + "..."
    heading = passage.get("heading") or "(no heading)"
    return f'{heading}: "{quote}"'


class ChatSession:
    """A conversation with one GGUF model; ``ask`` streams the answer's text pieces."""

    def __init__(self, gguf: Path, run_dir: Path | None = None, rag: bool = False, rag_top_k: int = 2,
                 max_tokens: int = 256):
        from valign_edge.backends.llama_cpp import Runtime

        self.index = _rag_index(run_dir) if rag else None  # before the model loads: a refusal is instant
        self.runtime = Runtime(gguf)
        self.history: list[dict] = []
        self.max_tokens = max_tokens
        self.rag_top_k = rag_top_k
        self.sources: list[dict] = []  # the passages the last answer was given

    def ask(self, question: str):
        messages = list(self.history)
        if self.index is not None:
            from valign_edge.documents.retrieval import rag_messages

            self.sources = self.index.search(question, self.rag_top_k)
            messages += rag_messages(question, self.sources)
        else:
            messages.append({"role": "user", "content": question})
        answer = []
        for piece in self.runtime.stream(messages, self.max_tokens):
            answer.append(piece)
            yield piece
        text = "".join(answer)
        if self.runtime.stop_loops:  # a base student's loop was shown once; it is not fed back to the model
            from valign_edge.repetition import cut_loop

            text = cut_loop(text)
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        self.history = self.history[-8:]  # keep the context small for small models

    def close(self) -> None:
        """Free the model now rather than when the session is collected."""
        self.runtime.close()


def _print_sources(session: ChatSession) -> None:
    for passage in session.sources:
        print(f"  source: {source_line(passage)}")


def chat_cli(target: Path, prompt: str | None = None, rag: bool = False, vanilla: bool = False,
             max_tokens: int = 256) -> int:
    gguf, run_dir = resolve_target(target, vanilla)
    session = ChatSession(gguf, run_dir, rag=rag, max_tokens=max_tokens)
    if prompt is not None:
        for piece in session.ask(prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        _print_sources(session)
        return 0
    print(f"chatting with {gguf.name}{' + RAG' if rag else ''}; Ctrl-D or /exit to leave", file=sys.stderr)
    while True:
        try:
            question = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if question in ("/exit", "/quit"):
            return 0
        if not question:
            continue
        sys.stdout.write("model> ")
        for piece in session.ask(question):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        _print_sources(session)


def side_by_side(run, cfg, question: str | None = None) -> None:
    """The measured effect on the document's shipped probe (vanilla vs aligned, with n and intervals, and
    three fixed probe questions side by side) when there is one; else one answer of the aligned model
    next to the vanilla model's answer to the same question."""
    from valign_edge.evaluation.demo import show_measured_effect
    from valign_edge.generation.datasets import load

    if question is None and show_measured_effect(run, cfg):
        return

    if question is None:
        rows = load(run, "sft", "test") or load(run, "sft", "train")
        question = rows[0]["messages"][0]["content"] if rows else "What values should guide my work?"
    print(f"\nquestion: {question}")
    for label, vanilla in (("vanilla", True), ("aligned", False)):
        gguf, _ = resolve_target(run.root, vanilla=vanilla)
        session = ChatSession(gguf, max_tokens=96)
        for _ in session.ask(question):
            pass
        answer = session.history[-1]["content"].strip()
        session.close()
        print(f"  {label:>8}: {answer}")
