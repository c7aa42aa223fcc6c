"""One training stage's plan, shared by both trainers and by ``valign train``: rows -> encoded items ->
step batches -> key.

The key hashes only what changes the stage's result: its training data, the student, the seed, the
settings ``TrainConfig`` marks for the stage, the backend and precision as resolved, and for DPO the
SFT adapter it continues (by content). Thread counts, micro-batch sizes, the checkpoint interval and
another stage's settings are not in it, so changing them neither retrains a finished stage nor throws
away a checkpoint. The same key marks the stage done in the manifest and its checkpoints resumable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from valign_edge.errors import UserError
from valign_edge.generation import datasets
from valign_edge.runs.workspace import Run, hash_file, hash_obj
from valign_edge.training import batching

TRAINING_STAGES = ("sft", "dpo")  # the training stages, in order (run folder stages: train_sft, train_dpo)


def adapter_hash(folder: Path) -> str:
    """The adapter's weights by content (either backend's format; not DPO's reference log-probs)."""
    files = sorted(p for p in Path(folder).glob("*.safetensors") if p.name != "reference_logps.safetensors")
    if not files:
        raise UserError(f"{folder} holds no trained adapter")
    return hash_obj([(p.name, hash_file(p)) for p in files])


def data_hash(run: Run, stage: str) -> str:
    path = run.split_path(stage, "train")
    if not path.exists():
        raise UserError(f"{run.root} has no {stage.upper()} data; run: valign generate DOC --out {run.root}")
    return hash_file(path)


def stage_key(run: Run, cfg, stage: str, backend: str, precision: str) -> str:
    """The key of training ``stage`` ("sft" or "dpo"); DPO's needs the finished SFT adapter."""
    parts: list[Any] = [stage, data_hash(run, stage), cfg.student, cfg.seed, cfg.train.settings_for(stage),
                        backend, precision]
    if stage == "dpo":
        parts.append(adapter_hash(run.adapter_dir("sft")))
    from valign_edge.models import catalog

    if catalog().get(cfg.student, {}).get("chat_format") == "none":
        # a base student is trained under the fallback prompt format: a new format retrains it
        parts.append(hash_obj(batching.FALLBACK_CHAT_TEMPLATE))
    return hash_obj(parts)


@dataclass
class StagePlan:
    stage: str
    rows: list[dict]
    items: list  # batching.Example (SFT) or batching.Pair (DPO)
    lengths: list[int]  # padded tokens per item (a DPO pair counts both replies)
    batches: list[list[int]]  # item indices of every optimizer step, in order (resume skips ahead)
    lr: float
    key: str

    @property
    def steps(self) -> int:
        return len(self.batches)

    def padding_share(self) -> float:
        real = sum(self.lengths[i] for b in self.batches for i in b)
        padded = sum(max(self.lengths[i] for i in b) * len(b) for b in self.batches)
        return round(1 - real / max(1, padded), 4)


def plan(run: Run, cfg, stage: str, tokenizer, backend: str, precision: str) -> StagePlan:
    """Load the stage's training rows, encode them with the student's tokenizer, lay out its steps."""
    tc = cfg.train
    rows = datasets.load(run, stage, "train")
    if not rows:
        raise UserError(f"{run.root} has no SFT training data; run: valign generate DOC --out {run.root}"
                        if stage == "sft" else
                        f"{run.root} has no DPO training data (no value-bearing chunks produced pairs)")
    if stage == "sft":
        items = batching.encode_sft(tokenizer, rows, tc.max_seq_len)
        lengths = [len(e) for e in items]
        epochs, lr, seed = tc.sft_epochs, tc.sft_lr, cfg.seed
    else:
        items = batching.encode_dpo(tokenizer, rows, tc.max_seq_len)
        lengths = [2 * len(p) for p in items]
        epochs, lr, seed = tc.dpo_epochs, tc.dpo_lr, cfg.seed + 1
    per_epoch = len(batching.bucket_batches(lengths, tc.batch_tokens, cfg.seed, 0))
    total = batching.plan_steps(per_epoch, epochs, tc.max_steps)
    batches = batching.step_batches(lengths, tc.batch_tokens, seed, total)
    return StagePlan(stage, rows, items, lengths, batches, lr, stage_key(run, cfg, stage, backend, precision))
