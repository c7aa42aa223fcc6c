"""Experiment (issue 10, part 3): on-policy negatives, measured on the probes (bench/RESULTS-eval.md).

    cp -a RUN COPY && rm -rf COPY/export
    python bench/onpolicy.py COPY replace|add && valign train COPY && valign export COPY
    python bench/probe_pref.py COPY PROBE.jsonl

The run's SFT student answers each DPO situation greedily, without the document; where its verdict
(first word Yes/No) opposes the document's, its first two sentences become the pair's rejected side
(replace) or an extra pair (add). Rewrites COPY/data/dpo/{train,valid}.jsonl in place; ``valign train``
then reruns DPO only. Not part of the pipeline: it did not move the probe (see RESULTS-eval.md).
"""
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from valign_edge.backends.hf import load_tokenizer, student_hf_dir  # noqa: E402
from valign_edge.config import load_toml  # noqa: E402
from valign_edge.models import resolve  # noqa: E402

run, mode = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
base = student_hf_dir(resolve(load_toml(Path(run) / "config.toml").get("student", "smollm2-135m-instruct"), "student"))
tok = load_tokenizer(base)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
model = PeftModel.from_pretrained(model, f"{run}/adapters/sft").eval()


def verdict(text):
    w = re.match(r"\W*(\w+)", text)
    w = w.group(1).lower() if w else ""
    return "yes" if w == "yes" else "no" if w == "no" else None

def first_sentences(text, n=2):
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:n]).strip()

stats = {"yes_no": 0, "opposed": 0, "agreed": 0, "other": 0}
for split in ("train", "valid"):
    path = f"{run}/data/dpo/{split}.jsonl"
    rows = [json.loads(l) for l in open(path)]
    answers = []
    for i in range(0, len(rows), 16):
        chunk = rows[i:i + 16]
        texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                         add_generation_prompt=True) for r in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=56, do_sample=False, pad_token_id=tok.pad_token_id)
        answers += [tok.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True) for o in out]
    new = []
    for r, a in zip(rows, answers):
        a = first_sentences(a)
        doc, mine = verdict(r["chosen"]), verdict(a)
        if mine is None:
            stats["other"] += 1; new.append(r); continue
        stats["yes_no"] += 1
        if mine == doc or not a.endswith((".", "!")):
            stats["agreed" if mine == doc else "other"] += 1; new.append(r); continue
        stats["opposed"] += 1
        on = dict(r, rejected=a, meta=dict(r["meta"], id=r["meta"]["id"] + ("" if mode == "replace" else "p")))
        new += [on] if mode == "replace" else [r, on]
        if stats["opposed"] <= 4:
            print(repr(r["prompt"][:80]), "->", repr(a), flush=True)
    open(path, "w").write("".join(json.dumps(r) + "\n" for r in new))
    print(split, len(rows), "->", len(new), flush=True)
print(stats)
