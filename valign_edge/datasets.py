"""Synthetic records -> train/valid/test splits in the chat ``messages`` and TRL preference formats.

Splits are by record with a seeded shuffle, so held-out questions are new questions about
a document the model has studied (the paper's setting). User edits from the data review
(``data/edits.jsonl``: reject or rewrite a record) are applied on every rebuild.
"""

from __future__ import annotations

from typing import Any

from .workspace import Run, hash_obj, read_jsonl, write_jsonl

SPLITS = ("train", "valid", "test")


def record_id(chunk_id: str, prompt: str) -> str:
    return hash_obj([chunk_id, prompt])[:12]


def sft_rows(synth: list[dict]) -> list[dict]:
    rows = []
    for rec in synth:
        for item in rec["items"]:
            rows.append({"messages": [{"role": "user", "content": item["question"]},
                                      {"role": "assistant", "content": item["answer"]}],
                         "meta": {"id": record_id(rec["chunk_id"], item["question"]), "chunk_id": rec["chunk_id"],
                                  "span": rec["span"]}})
    return rows


def dpo_rows(synth: list[dict]) -> list[dict]:
    rows = []
    for rec in synth:
        for item in rec["items"]:
            rows.append({"prompt": item["prompt"], "chosen": item["chosen"], "rejected": item["rejected"],
                         "meta": {"id": record_id(rec["chunk_id"], item["prompt"]), "chunk_id": rec["chunk_id"],
                                  "span": rec["span"]}})
    return rows


def apply_edits(rows: list[dict], edits: list[dict]) -> list[dict]:
    """Later edits win. ``reject`` drops a row; ``edit`` sets fields (``answer``, ``chosen``, ...)."""
    latest: dict[str, dict] = {}
    for edit in edits:
        if edit.get("action") == "restore":
            latest[edit["id"]] = edit
        else:
            merged = latest.get(edit["id"], {}) if latest.get(edit["id"], {}).get("action") != "restore" else {}
            fields = {**merged.get("fields", {}), **edit.get("fields", {})}
            latest[edit["id"]] = {**merged, **edit, "fields": fields}
    out = []
    for row in rows:
        edit = latest.get(row["meta"]["id"])
        if edit is None or edit.get("action") == "restore":
            out.append(row)
            continue
        if edit.get("action") == "reject":
            continue
        row = dict(row)
        for field, value in edit.get("fields", {}).items():
            if field in ("question", "answer") and "messages" in row:
                idx = 0 if field == "question" else 1
                row["messages"] = [dict(m) for m in row["messages"]]
                row["messages"][idx]["content"] = value
            elif field in ("prompt", "chosen", "rejected"):
                row[field] = value
        row["meta"] = dict(row["meta"], edited=True)
        out.append(row)
    return out


def split(rows: list[dict], valid_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Assign each row to a split by a seeded hash of its id, so rejecting or editing one record
    never moves the others between train, valid and test."""
    def position(row: dict) -> float:
        return int(hash_obj([seed, row["meta"]["id"]]), 16) / 16**16

    ranked = sorted(rows, key=position)
    parts: dict[str, list[dict]] = {"test": [], "valid": [], "train": []}
    for row in ranked:
        p = position(row)
        name = "test" if p < test_fraction else "valid" if p < test_fraction + valid_fraction else "train"
        parts[name].append(row)
    if len(rows) >= 5:  # keep every split usable once there is data to spare
        for name in ("test", "valid"):
            if not parts[name] and len(parts["train"]) > 1:
                parts[name].append(parts["train"].pop(0))
    for name in ("valid", "test"):  # training comes first: never leave it empty while others hold rows
        if not parts["train"] and parts[name]:
            parts["train"].append(parts[name].pop())
    return parts


def build(run: Run, chunk_ids: list[str], valid_fraction: float, test_fraction: float, seed: int,
          key: str | None = None) -> dict[str, Any]:
    """Write ``data/{sft,dpo}/{train,valid,test}.jsonl`` from the synth records of ``chunk_ids``."""
    wanted = set(chunk_ids)
    order = {cid: i for i, cid in enumerate(chunk_ids)}
    edits = read_jsonl(run.data_dir / "edits.jsonl")
    counts: dict[str, Any] = {}
    for kind, to_rows in (("sft", sft_rows), ("dpo", dpo_rows)):
        synth = {r["chunk_id"]: r for r in read_jsonl(run.synth_dir / f"{kind}.jsonl")
                 if r["chunk_id"] in wanted and (key is None or r.get("key") == key)}
        rows = apply_edits(to_rows(sorted(synth.values(), key=lambda r: order[r["chunk_id"]])), edits)
        parts = split(rows, valid_fraction, test_fraction, seed)
        for name in SPLITS:
            write_jsonl(run.split_path(kind, name), parts[name])
        counts[kind] = {name: len(parts[name]) for name in SPLITS}
    return counts


def load(run: Run, kind: str, split_name: str) -> list[dict]:
    return read_jsonl(run.split_path(kind, split_name))
