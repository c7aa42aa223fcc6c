"""Synthetic records -> train/valid/test splits in the chat ``messages`` and TRL preference formats.

Splits are by record with a seeded shuffle, so held-out questions are new questions about
a document the model has studied (the paper's setting). User edits from the data review
(``data/edits.jsonl``: reject or rewrite a record) are applied on every rebuild.
"""

from __future__ import annotations

import re
from typing import Any

from valign_edge.errors import UserError
from valign_edge.files import read_jsonl, read_jsonl_lines, write_jsonl
from valign_edge.runs.workspace import Run, hash_obj

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


def sft_rows_from_pairs(synth: list[dict]) -> list[dict]:
    """The faithful side of every preference pair, as an SFT example: SFT then learns the stances
    that DPO sharpens. A pair's SFT row shares its id, so both land in the same split. Where the teacher
    wrote the pair's reason, SFT gets the grounded answer (the verdict, then the document's sentence)."""
    rows = sft_rows([{**rec, "items": [{"question": i["prompt"], "answer": i.get("grounded", i["chosen"])}
                                       for i in rec["items"]]}
                     for rec in synth])
    return _with_verdicts(rows, synth)


def _with_verdicts(rows: list[dict], synth: list[dict]) -> list[dict]:
    """The document's verdict of each stance pair (``document_says``) in its rows' meta."""
    says = [i.get("document_says") for rec in synth for i in rec["items"]]
    for row, verdict in zip(rows, says):
        if verdict in ("yes", "no"):
            row["meta"]["verdict"] = verdict
    return rows


def dpo_rows(synth: list[dict]) -> list[dict]:
    rows = []
    for rec in synth:
        for item in rec["items"]:
            rows.append({"prompt": item["prompt"], "chosen": item["chosen"], "rejected": item["rejected"],
                         "meta": {"id": record_id(rec["chunk_id"], item["prompt"]), "chunk_id": rec["chunk_id"],
                                  "span": rec["span"]}})
    return _with_verdicts(rows, synth)


def _first_sentence(text: str) -> str:
    head = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return head if head.endswith((".", "!", "?")) else ""


def verdict_rows(rows: list[dict]) -> list[dict]:
    """A short pair per stance pair: the verdict sentence alone on each side ("No, it is not okay." vs "Yes,
    that is okay."), so the preference loss falls on the verdict, not on the reason's wording."""
    out = []
    for row in rows:
        if "verdict" not in row["meta"]:
            continue
        chosen, rejected = _first_sentence(row["chosen"]), _first_sentence(row["rejected"])
        if chosen and rejected and chosen.split()[0].lower() != rejected.split()[0].lower():
            out.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected,
                        "meta": {**row["meta"], "id": row["meta"]["id"] + "-verdict", "kind": "verdict"}})
    return out


def _verdict_and_reason(answer: str) -> tuple[str, str]:
    """``"No, you should not. You must not X."`` -> ``("No, you should not.", "You must not X.")``"""
    verdict = _first_sentence(answer)
    return verdict, answer.strip()[len(verdict):].strip()


def _reason_then_verdict(answer: str, fallback_reason: str = "") -> str:
    """``"No, you should not. You must not X."`` -> ``"You must not X. So no, you should not."``"""
    verdict, reason = _verdict_and_reason(answer)
    reason = reason or fallback_reason
    if not verdict or not reason:
        return answer
    return f"{reason} So {verdict[0].lower()}{verdict[1:]}"


def reason_first(kind: str, rows: list[dict]) -> list[dict]:
    """Stance rows with the reason before the verdict, so the verdict a model says is conditioned on the rule
    it has just written, not on the question's form alone. SFT answers are reordered; every preference pair
    is reordered on both sides and gets a twin whose sides share the faithful reason and differ only in the
    verdict after it, so the preference loss falls on the verdict the rule implies."""
    out = []
    for row in rows:
        if "verdict" not in row["meta"]:
            out.append(row)
        elif kind == "sft":
            user, answer = row["messages"][0], row["messages"][-1]["content"]
            out.append({**row, "messages": [user, {"role": "assistant", "content": _reason_then_verdict(answer)}]})
        else:
            reason = _verdict_and_reason(row["chosen"])[1]
            chosen = _reason_then_verdict(row["chosen"])
            out.append({**row, "chosen": chosen, "rejected": _reason_then_verdict(row["rejected"], reason)})
            flipped = _reason_then_verdict(_verdict_and_reason(row["rejected"])[0], reason)
            if reason and flipped != chosen:
                out.append({"prompt": row["prompt"], "chosen": chosen, "rejected": flipped,
                            "meta": {**row["meta"], "id": row["meta"]["id"] + "-after-reason", "kind": "verdict"}})
    return out


def balance_verdicts(rows: list[dict]) -> list[dict]:
    """Repeat rows of the rarer verdict until yes- and no-rows are as many: most rules forbid, and a model
    trained on more "No" rows learns to say No whatever it is asked."""
    by = {v: [r for r in rows if r["meta"].get("verdict") == v] for v in ("yes", "no")}
    few, many = sorted(by.values(), key=len)
    if not few:
        return rows
    return rows + [dict(few[i % len(few)], meta={**few[i % len(few)]["meta"], "repeat": 1 + i // len(few)})
                   for i in range(len(many) - len(few))]


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
          key: str | None = None, balance: bool = False, verdict_pairs: bool = False,
          passages: float = 0.0, reason_before_verdict: bool = False) -> dict[str, Any]:
    """Write ``data/{sft,dpo}/{train,valid,test}.jsonl`` from the synth records of ``chunk_ids``. A share
    ``passages`` of the training and validation rows carries passages of the document in the prompt
    (documents/passages.py); the test split stays plain, for the systems to retrieve on their own."""
    wanted = set(chunk_ids)
    order = {cid: i for i, cid in enumerate(chunk_ids)}
    edits = load_edits(run)
    counts: dict[str, Any] = {}
    texts = {c["id"]: c["text"] for c in read_jsonl(run.chunks_path) if c.get("id") in wanted} if passages else {}
    def records(kind: str) -> list[dict]:
        synth = {r["chunk_id"]: r for r in read_jsonl(run.synth_dir / f"{kind}.jsonl")
                 if r["chunk_id"] in wanted and (key is None or r.get("key") == key)}
        return sorted(synth.values(), key=lambda r: order[r["chunk_id"]])

    for kind in ("sft", "dpo"):
        made = sft_rows(records("sft")) + sft_rows_from_pairs(records("dpo")) if kind == "sft" else \
            dpo_rows(records("dpo"))
        rows = apply_edits(made, edits)
        parts = split(rows, valid_fraction, test_fraction, seed)
        if reason_before_verdict:  # after the split: a pair's twin stays in its pair's split
            parts = {name: reason_first(kind, part) for name, part in parts.items()}
        if kind == "dpo" and verdict_pairs:
            parts["train"] = parts["train"] + verdict_rows(parts["train"])
        if balance:  # the training split only: held-out rows are never repeated
            parts["train"] = balance_verdicts(parts["train"])
        if passages:
            from valign_edge.documents.passages import add_passages

            for name in ("train", "valid"):
                parts[name] = add_passages(parts[name], texts, passages, seed)
        for name in SPLITS:
            write_jsonl(run.split_path(kind, name), parts[name])
        counts[kind] = {name: len(parts[name]) for name in SPLITS}
    return counts


def load_edits(run: Run) -> list[dict]:
    """The review decisions, each checked (``FILE:LINE`` for a bad one; a torn last line is ignored)."""
    path = run.data_dir / "edits.jsonl"
    edits = []
    for number, edit in read_jsonl_lines(path):
        if not isinstance(edit.get("id"), str) or edit.get("action") not in ("reject", "edit", "restore") \
                or not isinstance(edit.get("fields", {}), dict):
            raise UserError(f'{path}:{number}: an edit needs a string "id", an "action" (reject, edit or restore) '
                            'and "fields" as an object; fix or delete that line')
        edits.append(edit)
    return edits


def load(run: Run, kind: str, split_name: str) -> list[dict]:
    """One split, every row checked: a bad line is ``FILE:LINE: what is wrong`` (exit 2), never skipped.
    The files are written whole (never appended), so even a cut-off last line is an error."""
    path = run.split_path(kind, split_name)
    rows = []
    for number, row in read_jsonl_lines(path, torn_tail=False):
        problem = row_problem(kind, row)
        if problem:
            raise UserError(f"{path}:{number}: {problem}; fix or delete that line")
        rows.append(row)
    return rows


def validate(run: Run) -> None:
    """Check every split file of the run (before a stage that reads them starts)."""
    for kind in ("sft", "dpo"):
        for name in SPLITS:
            load(run, kind, name)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def row_problem(kind: str, row: dict) -> str | None:
    """What is wrong with a row of ``kind`` ("sft" or "dpo"), or None."""
    meta = row.get("meta", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("id", ""), str):
        return '"meta" must be an object whose "id" is a string'
    if kind == "dpo":
        missing = [k for k in ("prompt", "chosen", "rejected") if not _text(row.get(k))]
        return f'a DPO row needs non-empty text in "prompt", "chosen" and "rejected" ({", ".join(missing)} ' \
               "missing or not text)" if missing else None
    messages = row.get("messages")
    shape = 'an SFT row needs "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]'
    if not isinstance(messages, list) or len(messages) < 2:
        return shape
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not _text(m.get("content")):
            return shape + " (each message an object with a role and non-empty content)"
    if messages[0]["role"] != "user" or messages[-1]["role"] != "assistant":
        return shape + " (first the user's question, last the assistant's answer)"
    return None
