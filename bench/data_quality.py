"""The generated data of a run against issue 10's targets.

    python bench/data_quality.py RUN [RUN ...]

Prints training records (SFT, DPO), how many value-bearing sentences have at least two distinct
situations, the share of near-duplicate questions (word-set Jaccard >= 0.7, the generator's own
measure), the share of the teacher's candidates thrown away, who wrote each side of the pairs, and
valid records per minute of generation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from valign_edge.files import read_jsonl  # noqa: E402
from valign_edge.generation import filters  # noqa: E402


def report(root: Path) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    gen = manifest.get("stages", manifest)["generate"]
    sft = read_jsonl(root / "data/sft/train.jsonl")
    dpo = read_jsonl(root / "data/dpo/train.jsonl")
    synth_dpo = read_jsonl(root / "synth/dpo.jsonl")
    pairs = [i for r in synth_dpo for i in r["items"]]
    questions = [r["messages"][0]["content"] for r in read_jsonl(root / "data/sft/train.jsonl")
                 + read_jsonl(root / "data/sft/valid.jsonl") + read_jsonl(root / "data/sft/test.jsonl")]
    questions = list(dict.fromkeys(questions))
    sets = [filters.content_words(q) for q in questions]
    near = sum(any(filters.jaccard(sets[i], sets[j]) >= 0.7 for j in range(i)) for i in range(len(sets)))
    # value-bearing sentences: those with a value cue; covered when >= 2 distinct situations quote them
    chunks = read_jsonl(root / "chunks.jsonl")
    value_sents = [s for c in chunks for s in filters.sentences(c["text"]) if filters.value_cues(s)]
    quoted = {s: {p["prompt"] for p in pairs
                  if s.rstrip(";:,").lstrip("(0123456789) ")[1:] in p.get("grounded", p["chosen"])}
              for s in value_sents}
    covered = sum(len(v) >= 2 for v in quoted.values())
    rejected = sum(gen.get("rejected", {}).values())
    kept = gen["sft_records"] + gen["dpo_records"]
    authors: dict[str, int] = {}
    chosen_by: dict[str, int] = {}
    for p in pairs:
        authors[p.get("rejected_by", "?")] = authors.get(p.get("rejected_by", "?"), 0) + 1
        writer = "teacher" if "grounded" in p else "document"  # a teacher-worded reason keeps the quote aside
        chosen_by[writer] = chosen_by.get(writer, 0) + 1
    return {"run": str(root), "sft_train": len(sft), "dpo_train": len(dpo),
            "records": kept, "value_sentences": len(value_sents), "covered_by_2": covered,
            "near_duplicate_share": round(near / max(1, len(questions)), 3),
            "thrown_away_share": round(rejected / max(1, rejected + kept), 3), "rejected": gen.get("rejected"),
            "rejected_by": authors, "chosen_by": chosen_by, "generate_s": gen.get("wall_s"),
            "records_per_min": round(kept / (gen["wall_s"] / 60), 1) if gen.get("wall_s") else None,
            "uncovered": [s for s, v in quoted.items() if len(v) < 2]}


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(report(Path(arg)), indent=1))
