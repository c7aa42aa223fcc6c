"""Held-out test sets: the run's own test split (a generator-made sanity check), or one from ``--doc``."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from valign_edge.config import RunConfig
from valign_edge.errors import UserError
from valign_edge.events import Callback, log
from valign_edge.files import read_jsonl
from valign_edge.generation.filters import normalized
from valign_edge.runs.workspace import Run, hash_file, hash_obj


@dataclass
class TestSet:
    __test__ = False  # not a pytest class

    questions: list[dict]  # {"id", "question", "reference", "chunk_id", "kind"}
    pairs: list[dict]  # {"id", "prompt", "chosen", "rejected", "chunk_id"}
    chunks: list[dict]
    source: dict


def _question_rows(sft_rows: list[dict], dpo_rows: list[dict]) -> list[dict]:
    """SFT questions (reference: the grounded answer) interleaved with DPO prompts (reference: chosen)."""
    sft = [{"id": r.get("meta", {}).get("id") or hash_obj(r["messages"][0]["content"])[:12],
            "question": r["messages"][0]["content"], "reference": r["messages"][-1]["content"],
            "chunk_id": r.get("meta", {}).get("chunk_id"), "kind": "sft"} for r in sft_rows]
    dpo = [{"id": r.get("meta", {}).get("id") or hash_obj(r["prompt"])[:12], "question": r["prompt"],
            "reference": r["chosen"], "chunk_id": r.get("meta", {}).get("chunk_id"), "kind": "dpo"}
           for r in dpo_rows]
    out, seen = [], set()
    for i in range(max(len(sft), len(dpo))):
        for group in (sft, dpo):
            if i < len(group) and group[i]["question"] not in seen:
                seen.add(group[i]["question"])
                out.append(group[i])
    return out


def _pair_rows(dpo_rows: list[dict]) -> list[dict]:
    return [{"id": r.get("meta", {}).get("id") or hash_obj(r["prompt"])[:12], "prompt": r["prompt"],
             "chosen": r["chosen"], "rejected": r["rejected"], "chunk_id": r.get("meta", {}).get("chunk_id")}
            for r in dpo_rows]


def _trained_prompts(run: Run) -> set[str]:
    """Normalized questions and DPO prompts of the run's train split."""
    return ({normalized(r["messages"][0]["content"]) for r in read_jsonl(run.split_path("sft", "train"))} |
            {normalized(r["prompt"]) for r in read_jsonl(run.split_path("dpo", "train"))})


def check_test_split(run: Run) -> None:
    if not run.split_path("sft", "test").exists():
        raise UserError(f"{run.root} has no test split (data/sft/test.jsonl: the generate stage has not run); "
                        f"run: valign generate DOC --out {run.root}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "doc"


def load_test_set(run: Run, cfg: RunConfig, emit: Callback, doc: Path | None = None,
                  allow_remote: bool = False) -> TestSet:
    """The run's test split, or one from ``doc``: a document (a test set is generated from it by
    the teacher and cached), a JSONL file of SFT and/or DPO rows, or another run folder."""
    chunks = read_jsonl(run.chunks_path)
    if doc is None:
        splits = [s.strip() for s in cfg.eval.splits.split(",") if s.strip()] or ["test"]
        if any(s not in ("test", "valid") for s in splits):
            raise UserError(f"config eval.splits: {cfg.eval.splits!r} may name only test and valid (train is "
                            "what the models learned from)")
        sft = [r for s in splits for r in read_jsonl(run.split_path("sft", s))]
        dpo = [r for s in splits for r in read_jsonl(run.split_path("dpo", s))]
        source = {"kind": "run", "path": str(run.root), "splits": splits}
    else:
        doc = Path(doc).expanduser()
        if not doc.exists():
            raise UserError(f"--doc {doc}: no such file or folder")
        if doc.is_dir():
            other = Run(doc)
            if not other.split_path("sft", "test").exists():
                raise UserError(f"--doc {doc} is a folder without a test split (data/sft/test.jsonl)")
            sft, dpo = read_jsonl(other.split_path("sft", "test")), read_jsonl(other.split_path("dpo", "test"))
            chunks = read_jsonl(other.chunks_path)
            source = {"kind": "run", "path": str(doc)}
        elif doc.suffix == ".jsonl":
            rows = read_jsonl(doc)
            sft = [r for r in rows if isinstance(r.get("messages"), list) and len(r["messages"]) >= 2]
            dpo = [r for r in rows if all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected"))]
            if not sft and not dpo:
                raise UserError(f"--doc {doc} holds no SFT rows ({{\"messages\": [...]}}) or DPO rows "
                                "({\"prompt\", \"chosen\", \"rejected\"})")
            source = {"kind": "jsonl", "path": str(doc)}
        else:
            sub = Run.open(run.eval_dir / "docs" / f"{_slug(doc.stem)}-{hash_file(doc)[:8]}", create=True)
            sub_cfg = copy.deepcopy(cfg)
            sub_cfg.generate.valid_fraction, sub_cfg.generate.test_fraction = 0.0, 1.0
            from valign_edge.generation.generate import generate

            log(emit, "eval", f"generating a test set from {doc.name} (cached in {sub.root})")
            generate(sub, sub_cfg, emit, doc=doc, allow_remote=allow_remote)
            sft, dpo = read_jsonl(sub.split_path("sft", "test")), read_jsonl(sub.split_path("dpo", "test"))
            chunks = read_jsonl(sub.chunks_path)
            source = {"kind": "document", "path": str(doc), "cache": str(sub.root)}
    if doc is not None:  # a test set from elsewhere must not ask what the models were trained on
        seen = _trained_prompts(run)
        kept_sft = [r for r in sft if normalized(r["messages"][0]["content"]) not in seen]
        kept_dpo = [r for r in dpo if normalized(r["prompt"]) not in seen]
        dropped = len(sft) - len(kept_sft) + len(dpo) - len(kept_dpo)
        if dropped:
            log(emit, "eval", f"{dropped} test questions dropped: the run trained on them")
        sft, dpo = kept_sft, kept_dpo
        source["dropped_trained"] = dropped
    questions, pairs = _question_rows(sft, dpo), _pair_rows(dpo)
    limit = cfg.eval.max_questions
    if limit:
        questions, pairs = questions[:limit], pairs[:limit]
    if not questions:
        where = source["path"]
        raise UserError(f"the test split of {where} is empty (too little generated data); "
                        "generate more (a longer document or --set generate.questions_per_chunk=...)")
    return TestSet(questions, pairs, chunks, source)
