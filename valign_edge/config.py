"""Configuration: one dataclass per stage, a help string per field, presets, TOML and overrides.

Resolution order, later wins: defaults < the run's saved config.toml < preset < --config FILE
< ``--set section.key=value`` and explicit flags. The resolved config is saved in the run.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valign_edge.errors import UserError
from valign_edge.files import read_regular

# The systems an evaluation can compare, in report order (evaluation/systems.py builds them).
SYSTEMS = ("vanilla", "rag", "sft", "dpo", "dpo_rag")


def opt(default: Any, help: str, affects: tuple[str, ...] | None = None) -> Any:
    """A setting with its help; ``affects`` (training settings): the stages whose result it changes."""
    return field(default=default, metadata={"help": help, "affects": affects})


SFT_DPO, SFT, DPO, NONE = ("sft", "dpo"), ("sft",), ("dpo",), ()


@dataclass
class GenerateConfig:
    chunk_tokens: int = opt(320, "largest chunk, in teacher tokens")
    chunk_overlap: int = opt(32, "tokens shared by consecutive pieces of a section split across chunks")
    max_chunks: int = opt(0, "use only the first N chunks (0: all)")
    questions_per_chunk: int = opt(4, "questions the teacher writes per chunk (sampled)")
    pairs_per_chunk: int = opt(3, "faithful/unfaithful answer pairs per value-bearing chunk in which no norm is "
                                  "recognized (situations written by the teacher)")
    situations_per_norm: int = opt(10, "yes/no situations per norm the document states (must, never, has the "
                                      "right, ...), each with a faithful and an unfaithful answer (0: none)")
    rephrasings_per_norm: int = opt(2, "situations the teacher rewords per norm (sampled); kept when they "
                                       "still ask the same thing")
    negatives: str = opt("contrastive", "who writes unfaithful answers: contrastive (the teacher argues for "
                                        "the other side, no document) or negation (rule-based flips)")
    faithful: str = opt("document", "who writes the reason in a faithful answer: document (the verdict, then the "
                                    "document's sentence) or teacher (its own words, told the sentence; the same "
                                    "register as the unfaithful side)")
    question_temperature: float = opt(0.9, "sampling temperature for questions and scenarios")
    answer_style: str = opt("extractive", "extractive (the teacher picks the chunk's answering sentences; "
                                          "right for tiny teachers) or free (the teacher writes answers)")
    answer_max_tokens: int = opt(96, "token budget per free-written answer")
    max_retries: int = opt(2, "retries when the teacher's output fails validation")
    min_grounding: float = opt(0.25, "least share of an answer's content words found in its chunk")
    dedup_threshold: float = opt(0.7, "word-set Jaccard above which two questions count as duplicates")
    value_threshold: int = opt(1, "value cues a chunk needs to get DPO pairs (must, shall, right, ...)")
    balance_verdicts: bool = opt(False, "repeat training rows of the rarer verdict (yes or no) until both are as "
                                        "many (measured: no conclusive change; bench/RESULTS-eval.md)")
    verdict_pairs: bool = opt(False, "add a short preference pair per stance pair, the verdict sentence alone on "
                                     "each side (measured: no conclusive change; bench/RESULTS-eval.md)")
    passages: float = opt(0.0, "share of training rows whose prompt carries passages of the document, most often "
                               "the one the row was made from among distractors (RAFT); the eval's retrieval "
                               "systems and chat --rag use the same layout")
    reason_first: bool = opt(False, "stance answers give the document's reason first, then the verdict (\"You must not "
                                    "X. So no, you should not.\"), and each pair gets a twin that differs only in "
                                    "the verdict after that reason (measured: free verdict 0.59 -> 0.63 with "
                                    "retrieval, inside the intervals; bench/RESULTS-eval.md)")
    valid_fraction: float = opt(0.1, "share of records held out for validation")
    test_fraction: float = opt(0.15, "share of records held out for testing")
    n_ctx: int = opt(2048, "teacher context size")
    n_threads: int = opt(0, "teacher decode threads (0: auto)")
    n_threads_batch: int = opt(0, "teacher prompt threads (0: auto)")
    teacher_model: str = opt("", "model a server teacher (--teacher http://HOST:PORT/v1) is asked for; also "
                                 "--set teacher.model=NAME (empty: the one model the server lists)")
    concurrency: int = opt(1, "chunks in flight at once through a server teacher (its parallel slots); the "
                              "records are a sequential run's")


@dataclass
class TrainConfig:
    """Each setting says which stage's result it changes: a stage's key hashes only those, so lowering
    threads or micro_batch_tokens reruns nothing and a new dpo_beta reruns DPO, not SFT. backend and
    precision count as resolved (what ``auto`` chose); the device only through the precision it gives."""
    backend: str = opt("auto", "auto, torch or mlx", NONE)
    device: str = opt("auto", "torch device: auto, cpu, cuda or mps", NONE)
    lora_rank: int = opt(16, "LoRA rank", SFT_DPO)
    lora_alpha: float = opt(32.0, "LoRA alpha (scale = alpha / rank)", SFT_DPO)
    lora_dropout: float = opt(0.0, "LoRA dropout", SFT_DPO)
    max_seq_len: int = opt(384, "longest training sequence in tokens", SFT_DPO)
    batch_tokens: int = opt(1024, "tokens per optimizer step (sequences are packed up to this)", SFT_DPO)
    micro_batch_tokens: int = opt(384, "torch: most tokens per forward/backward pass; a step accumulates "
                                       "gradients over its batch (lower: less memory; 0: one pass)", NONE)
    sft_epochs: float = opt(3.0, "passes over the SFT data", SFT)
    sft_lr: float = opt(3e-4, "SFT learning rate", SFT)
    dpo_epochs: float = opt(2.0, "passes over the DPO data", DPO)
    dpo_lr: float = opt(1e-4, "DPO learning rate", DPO)
    dpo_beta: float = opt(0.1, "DPO beta (strength of the KL anchor to the SFT model)", DPO)
    dpo_sft_weight: float = opt(1.0, "weight of an SFT loss on the chosen answers during DPO (RPO; 0: plain "
                                     "DPO), per token of the chosen answer", DPO)
    max_steps: int = opt(0, "stop each stage after this many steps (0: from epochs)", SFT_DPO)
    warmup_steps: int = opt(5, "linear warm-up steps (at most a tenth of a stage's steps)", SFT_DPO)
    precision: str = opt("auto", "auto, fp32 or bf16 (auto: bf16 autocast on a CUDA GPU that has it, fp32 on "
                                 "the CPU, the checkpoint's dtype with MLX on a GPU)", NONE)
    checkpoint_every: int = opt(25, "steps between resumable checkpoints", NONE)
    threads: int = opt(0, "CPU threads for training (0: all cores, or 1 while the machine is busy)", NONE)
    processes: int = opt(1, "torch: data-parallel training processes on this machine (gloo on the CPU, NCCL on "
                            "CUDA GPUs, one GPU each); the update is one process's. Under torchrun or "
                            "accelerate launch the launcher's process count is used instead", NONE)
    fsdp: bool = opt(False, "torch on CUDA: shard the student's frozen weights over the processes with FSDP, for "
                            "a student that does not fit one GPU (untested on this project's machines)", NONE)

    def settings_for(self, stage: str) -> dict[str, Any]:
        """The settings that change the result of ``stage`` ("sft" or "dpo"), for its key."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if stage in f.metadata["affects"]}


@dataclass
class ExportConfig:
    quant: str = opt("q8_0", "f16, q8_0 or q4_k_m (Q4 drifts on very small models)")
    verify_prompts: int = opt(3, "test prompts the GGUF must reproduce")
    verify_tokens: int = opt(24, "greedy tokens compared per prompt")


@dataclass
class EvalConfig:
    max_questions: int = opt(0, "evaluate on at most N test questions (0: all)")
    max_new_tokens: int = opt(128, "answer length limit")
    rag_top_k: int = opt(2, "chunks retrieved for the RAG systems and chat --rag")
    retriever: str = opt("dense", "how the RAG systems and chat --rag find passages: dense (MiniLM sentence "
                                  "embeddings), bm25 (word overlap) or hybrid (both, rank-fused); "
                                  "bench/retrieval_recall.py")
    judge: str = opt("", "judge model (preset, GGUF path, or a server's http://HOST:PORT/v1; empty: the teacher)")
    judge_model: str = opt("", "model a server judge is asked for (empty: the one model the server lists; the "
                               "teacher's teacher.model when the judge is the teacher)")
    judge_pairs: int = opt(0, "judge at most N questions per comparison (0: all)")
    judge_mode: str = opt("logits", "logits (A vs B log-probabilities, position bias cancelled across both "
                                    "orders) or verdict (the judge's likeliest reply per order)")
    judge_tie_margin: float = opt(0.1, "logits judge: debiased margins (nats) below this are ties")
    systems: str = opt("vanilla,rag,sft,dpo,dpo_rag", "systems to compare (comma-separated; dpo is always in)")
    splits: str = opt("test", "held-out splits to evaluate on: test, or test,valid (training never reads valid)")
    probe: str = opt("", "hand-written probe file(s) (.jsonl, comma-separated) to evaluate on; empty: the shipped "
                         "probe when the document is a shipped one; none: no probe")
    ref_judge_margin: float = opt(0.01, "reference judge: closeness differences below this are ties")
    bootstrap: int = opt(1000, "bootstrap resamples for the metric intervals")
    n_threads: int = opt(0, "llama.cpp decode threads for answers and the judge (0: auto, 1 on a busy machine)")
    n_threads_batch: int = opt(0, "llama.cpp prompt threads (0: auto, 1 on a busy machine)")


@dataclass
class RunConfig:
    teacher: str = opt("smollm2-135m-instruct", "teacher model: catalog preset or path to a GGUF")
    student: str = opt("smollm2-135m-instruct", "student model: catalog preset, GGUF file or HF folder")
    preset: str = opt("default", "quick or default")
    seed: int = opt(0, "random seed")
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # Minutes on a 2-core CPU: a handful of chunks, few questions, short training.
    "quick": {
        "generate.max_chunks": 6,
        "generate.questions_per_chunk": 3,
        "generate.pairs_per_chunk": 1,
        "generate.valid_fraction": 0.17,
        "generate.test_fraction": 0.17,
        "train.sft_epochs": 2.0,
        "train.dpo_epochs": 2.0,
        "train.lora_rank": 8,
        "train.lora_alpha": 16.0,
        "train.max_seq_len": 256,
        "train.batch_tokens": 768,
        "eval.max_questions": 6,
        "eval.max_new_tokens": 64,
    },
}



CHOICES = {
    "eval.retriever": ("dense", "bm25", "hybrid"),
    "generate.answer_style": ("extractive", "free"),
    "generate.negatives": ("contrastive", "negation"),
    "generate.faithful": ("document", "teacher"),
    "train.backend": ("auto", "torch", "mlx"),
    "train.device": ("auto", "cpu", "cuda", "mps"),
    "train.precision": ("auto", "fp32", "bf16"),
    "export.quant": ("f16", "q8_0", "q4_k_m", "q4_0"),
    "eval.judge_mode": ("logits", "verdict"),
    "preset": tuple(PRESETS),
}


ALIASES = {"teacher.model": "generate.teacher_model"}  # what the server-teacher docs say


def _sections() -> dict[str, type]:
    return {"generate": GenerateConfig, "train": TrainConfig, "export": ExportConfig, "eval": EvalConfig}


def _coerce(value: Any, default: Any, key: str) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"config {key}: {value!r} is not a valid {kind.__name__}") from None


def set_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Set ``section.key`` or a top-level key, with type checking and a clear error."""
    sections = _sections()
    key = ALIASES.get(key, key)
    if "." in key:
        section, name = key.split(".", 1)
        if section not in sections:
            raise UserError(f"unknown config section {section!r} (known: {', '.join(sections)})")
        target = getattr(cfg, section)
    else:
        target, name = cfg, key
    names = [f.name for f in dataclasses.fields(target) if f.name not in sections]
    if name not in names:
        raise UserError(f"unknown config key {key!r} (known: {', '.join(names)})")
    current = getattr(target, name)
    value = _coerce(value, current, key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise UserError(f"config {key}: {value} must not be negative")
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"config {key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    setattr(target, name, value)


def apply_preset(cfg: RunConfig, name: str) -> None:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    cfg.preset = name
    for key, value in PRESETS[name].items():
        set_value(cfg, key, value)


def apply_mapping(cfg: RunConfig, data: dict, prefix: str = "") -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            apply_mapping(cfg, value, f"{prefix}{key}.")
        else:
            set_value(cfg, prefix + key, value)


CONFIG_LIMIT = 2**20  # a settings file; anything larger is not one


def load_toml(path: Path) -> dict:
    data = read_regular(Path(path), "config file", CONFIG_LIMIT)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}; fix the line it names") from None


def resolve_config(saved: Path | None = None, preset: str | None = None, config_file: Path | None = None,
            overrides: dict[str, Any] | None = None) -> RunConfig:
    cfg = RunConfig()
    if saved is not None and saved.exists():
        apply_mapping(cfg, load_toml(saved))
    if preset is not None:
        apply_preset(cfg, preset)
    elif saved is None or not saved.exists():
        apply_preset(cfg, cfg.preset)
    if config_file is not None:
        apply_mapping(cfg, load_toml(config_file))
    for key, value in (overrides or {}).items():
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


# section.key -> (least, most, what): the range a value must lie in (None: no bound; POSITIVE: above
# 0). Every key names a setting (tests/test_config.py checks). Every float must also be finite.
POSITIVE = -0.0
LIMITS: dict[str, tuple[float | None, float | None, str]] = {
    "generate.chunk_tokens": (32, 8192, "tokens per chunk"),
    "generate.questions_per_chunk": (1, 50, "questions per chunk"),
    "generate.pairs_per_chunk": (0, 50, "pairs per chunk"),
    "generate.situations_per_norm": (0, 50, "situations per norm"),
    "generate.rephrasings_per_norm": (0, 20, "rewordings per norm"),
    "generate.question_temperature": (0, 2, "a sampling temperature"),
    "generate.answer_max_tokens": (8, 4096, "tokens per answer"),
    "generate.max_retries": (0, 20, "retries"),
    "generate.min_grounding": (0, 1, "a share"),
    "generate.dedup_threshold": (0, 1, "a similarity"),
    "generate.value_threshold": (1, None, "value cues"),
    "generate.passages": (0, 1, "a share of the rows"),
    "generate.valid_fraction": (0, 0.9, "a share of the records"),
    "generate.test_fraction": (0, 0.9, "a share of the records"),
    "generate.n_ctx": (512, None, "a context size in tokens"),
    "generate.concurrency": (1, 64, "requests in flight"),
    "generate.n_threads": (0, 1024, "threads (0: auto)"),
    "generate.n_threads_batch": (0, 1024, "threads (0: auto)"),
    "train.threads": (0, 1024, "threads (0: auto)"),
    "eval.n_threads": (0, 1024, "threads (0: auto)"),
    "eval.n_threads_batch": (0, 1024, "threads (0: auto)"),
    "train.lora_rank": (1, 1024, "a LoRA rank"),
    "train.lora_alpha": (POSITIVE, None, "a LoRA alpha"),
    "train.lora_dropout": (0, 0.9, "a dropout probability"),
    "train.max_seq_len": (32, None, "a sequence length in tokens"),
    "train.batch_tokens": (32, None, "tokens per step"),
    "train.sft_epochs": (POSITIVE, 1000, "a number of passes"),
    "train.dpo_epochs": (POSITIVE, 1000, "a number of passes"),
    "train.sft_lr": (POSITIVE, 1.0, "a learning rate"),
    "train.dpo_lr": (POSITIVE, 1.0, "a learning rate"),
    "train.dpo_beta": (POSITIVE, 100, "a DPO beta"),
    "train.dpo_sft_weight": (0, 100, "a loss weight"),
    "train.checkpoint_every": (1, None, "steps between checkpoints"),
    "train.processes": (1, 1024, "a number of training processes"),
    "export.verify_prompts": (1, 100, "test prompts"),
    "export.verify_tokens": (1, 4096, "tokens per prompt"),
    "eval.max_new_tokens": (1, 8192, "an answer length"),
    "eval.rag_top_k": (1, 50, "retrieved chunks"),
    "eval.bootstrap": (10, 1_000_000, "a number of resamples"),
    "eval.judge_tie_margin": (0, None, "a margin"),
    "eval.ref_judge_margin": (0, None, "a margin"),
}


def validate(cfg: RunConfig) -> None:
    """Refuse settings no stage can work with, in one line, before any is saved in a run."""
    import math

    sections = _sections()
    for section in ("", *sections):
        target = getattr(cfg, section) if section else cfg
        for f in dataclasses.fields(target):
            value = getattr(target, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"config {section + '.' if section else ''}{f.name}: {value} is not a finite number")
    for key, (least, most, what) in LIMITS.items():
        section, name = key.split(".", 1)
        value = getattr(getattr(cfg, section, None), name, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        positive = least is POSITIVE
        low = "above 0" if positive else f"at least {least:g}" if least is not None else ""
        if (positive and value <= 0) or (least is not None and value < least) or (most is not None and value > most):
            bounds = ", ".join(b for b in (low, f"at most {most:g}" if most is not None else "") if b)
            raise UserError(f"config {key}: {value} is out of range for {what} ({bounds})")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise UserError(f"config seed: {cfg.seed} is out of range for a random seed (at least 0, below 2^32)")
    unknown = [s for s in str(cfg.eval.systems).split(",") if s.strip() not in SYSTEMS]
    if unknown:
        raise UserError(f"config eval.systems: {', '.join(map(repr, unknown))} is not a system "
                        f"(known: {', '.join(SYSTEMS)}; comma-separated)")
    gen = cfg.generate
    if gen.valid_fraction + gen.test_fraction >= 0.95:
        raise UserError(f"config generate.valid_fraction + generate.test_fraction = "
                        f"{gen.valid_fraction + gen.test_fraction:g} leaves almost nothing to train on (keep it below 0.95)")
    if gen.chunk_overlap * 2 > gen.chunk_tokens:
        raise UserError(f"config generate.chunk_overlap: {gen.chunk_overlap} is more than half of "
                        f"generate.chunk_tokens ({gen.chunk_tokens})")


def parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects section.key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(cfg: RunConfig) -> str:
    data = cfg.to_dict()
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def describe() -> str:
    """All keys with defaults and help, for ``valign config``."""
    rows = []
    for f in dataclasses.fields(RunConfig):
        if f.name in _sections():
            for sub in dataclasses.fields(_sections()[f.name]):
                rows.append(f"{f.name}.{sub.name} = {_toml_value(sub.default)}  # {sub.metadata['help']}")
        else:
            rows.append(f"{f.name} = {_toml_value(f.default)}  # {f.metadata['help']}")
    return "\n".join(rows)
