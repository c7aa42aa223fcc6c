"""The systems an evaluation compares, what their answers depend on, and retrieval for the RAG ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from valign_edge.backends.llama_cpp import DECODING
from valign_edge.config import SYSTEMS, RunConfig
from valign_edge.documents.passages import with_passages
from valign_edge.errors import UserError
from valign_edge.events import Callback, log
from valign_edge.runs.workspace import Run, hash_file, hash_obj

EVAL_VERSION = 3  # in the cache keys of answers: bump when what a system answers would change
REFERENCE_SYSTEM = "dpo"  # the system the win rates are about
BASELINE_SYSTEM = "vanilla"  # the system every other one is compared with


@dataclass
class System:
    name: str
    model: Path
    lora: Path | None = None
    rag: bool = False


@dataclass
class Context:
    """What every step of one evaluation shares. ``timings`` holds measured seconds and counts only."""

    run: Run
    cfg: RunConfig
    emit: Callback
    systems: list[System]
    threads: tuple[int, int]  # llama.cpp (decode, prompt) threads
    timings: dict = field(default_factory=dict)
    allow_remote: bool = False  # a judge server off this machine may receive the prompts (--allow-remote)

    def add_time(self, what: str, seconds: float, system: str | None = None) -> None:
        """Accumulate (the held-out set and each probe add to the same step)."""
        if system is None:
            self.timings[what] = round(self.timings.get(what, 0.0) + seconds, 2)
        else:
            per = self.timings.setdefault(what, {})
            per[system] = round(per.get(system, 0.0) + seconds, 2)

    def add_reused(self, what: str, count: int) -> None:
        reused = self.timings.setdefault("reused", {})
        reused[what] = reused.get(what, 0) + count


def find_systems(run: Run, cfg: RunConfig, emit: Callback) -> list[System]:
    """The systems this run's exports support; a one-line error when the export stage is missing."""
    out = run.export_dir

    def pick(prefix: str) -> Path | None:
        preferred = out / f"{prefix}-{cfg.export.quant}.gguf"
        found = [preferred] if preferred.exists() else sorted(out.glob(f"{prefix}-*.gguf"))
        return found[0] if found else None

    base, model = pick("base"), pick("model")
    if base is None or model is None:
        missing = "export/model-*.gguf" if model is None else "export/base-*.gguf"
        trained = (run.adapter_dir("dpo") / "training.json").exists()
        step = f"valign export {run.root}" if trained else f"valign train {run.root} && valign export {run.root}"
        raise UserError(f"{run.root} has no exported models ({missing} is missing: "
                        f"{'the export stage has not run' if trained else 'it is not trained yet'}); run: {step}")
    sft_adapter = out / "adapter-sft.gguf"
    systems = {"vanilla": System("vanilla", base), "rag": System("rag", base, rag=True),
               "sft": System("sft", base, lora=sft_adapter), "dpo": System("dpo", model),
               "dpo_rag": System("dpo_rag", model, rag=True)}
    wanted = [s.strip() for s in cfg.eval.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in systems]
    if unknown:
        raise UserError(f"config eval.systems: unknown system {unknown[0]!r} (known: {', '.join(SYSTEMS)})")
    if "sft" in wanted and not sft_adapter.exists():
        log(emit, "eval", f"no {sft_adapter.name} in the export (this backend did not export the SFT adapter): "
                          "the sft system is left out")
        wanted.remove("sft")
    if REFERENCE_SYSTEM not in wanted:
        wanted.append(REFERENCE_SYSTEM)
    return [systems[name] for name in SYSTEMS if name in wanted]


class Retriever:
    """Retrieval over a set of chunks (``eval.retriever``); the RAG systems put the top ``top_k`` into the
    prompt. The index is built on first use: a run without RAG systems never loads the encoder."""

    def __init__(self, chunks: list[dict], top_k: int, kind: str = "bm25"):
        self.top_k = top_k
        self.chunks = chunks
        self.kind = kind
        self._index = None

    @property
    def index(self):
        if self._index is None and self.chunks:
            from valign_edge.documents.retrieval import make_index

            self._index = make_index(self.chunks, self.kind)
        return self._index

    def messages(self, question: str, rag: bool) -> list[dict]:
        if not rag or self.index is None:
            return [{"role": "user", "content": question}]
        from valign_edge.documents.retrieval import rag_messages

        return rag_messages(question, self.index.search(question, self.top_k))

    def best_chunk(self, question: str) -> str | None:
        """The id of the chunk closest to ``question`` (the judge's passage for a question without one)."""
        if self.index is None:
            return None
        found = self.index.search(question, 1)
        return found[0]["id"] if found else None

    @property
    def chunks_id(self) -> str:
        return hash_obj([c.get("text") for c in self.chunks])


def _file_id(path: Path | None, cache: dict) -> str | None:
    if path is None:
        return None
    if path not in cache:
        cache[path] = hash_file(path)
    return cache[path]


def system_key(system: System, cfg: RunConfig, chunks_id: str, ids: dict) -> str:
    """What a system's answers depend on: weights, adapter, retrieval and decoding."""
    return hash_obj([EVAL_VERSION, _file_id(system.model, ids), _file_id(system.lora, ids), system.rag,
                     cfg.eval.rag_top_k if system.rag else None, chunks_id if system.rag else None,
                     cfg.eval.max_new_tokens, DECODING]
                    + ([cfg.eval.retriever] if system.rag and cfg.eval.retriever != "bm25" else [])
                    # the passage layout itself: a new layout answers again
                    + ([with_passages("{question}", ["{passage}"])] if system.rag else []))


def system_keys(systems: list[System], cfg: RunConfig, retriever: Retriever, ids: dict) -> dict[str, str]:
    return {s.name: system_key(s, cfg, retriever.chunks_id, ids) for s in systems}
