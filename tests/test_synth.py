"""Parsing, filtering, resume and splits of synthetic data, with a scripted fake teacher.

The fake stands in for llama.cpp only here, to test the pipeline's own logic; the real
teacher (SmolLM2 through llama.cpp) generates in test_e2e.py and in conftest's shared run, which
the privacy, crash-resume and bad-input tests use.
"""

import json
import re

from valign_edge.config import GenerateConfig
from valign_edge.documents.chunking import Chunk
from valign_edge.files import read_jsonl
from valign_edge.generation import datasets, filters
from valign_edge.generation.synth import Synthesizer, synthesize
from valign_edge.generation.teacher_io import parse_list
from valign_edge.runs.workspace import Run

CHUNK_TEXT = ("## 4. Gifts\n\nYou must not accept gifts, meals or payments from suppliers. "
              "Declare any interest in a supplier to the Ethics Office before a decision.")


class FakeTeacher:
    parallel = False

    def __init__(self, questions, opposite="You may accept gifts, meals or payments from suppliers."):
        self.questions = list(questions)  # successive outputs of question calls
        self.opposite = opposite
        self.calls = []

    def count_tokens(self, text):
        return len(text.split())

    def reset(self):
        pass

    def generate(self, messages, *, grammar=None, temperature=0.0, max_tokens=256, seed=None):
        prompt = messages[-1]["content"]
        self.calls.append(prompt)
        if "Write" in prompt and "questions" in prompt:
            return self.questions.pop(0) if self.questions else '{"questions": []}'
        if prompt.rstrip().endswith("values of the document."):  # opposite.txt
            return self.opposite
        m = re.search(r'root ::= "((?:[^"\\]|\\.)*)"', grammar or "")
        return m.group(1).replace('\\"', '"') if m else ""


def chunk():
    return Chunk("c0000-abc", 0, len(CHUNK_TEXT), "4. Gifts", CHUNK_TEXT)


def qjson(*qs):
    return json.dumps({"questions": list(qs)})


def test_parse_list_validates_shape():
    assert parse_list('{"questions": ["a?", "b?"]}', "questions", 2) == ["a?", "b?"]
    assert parse_list('{"questions": ["a?"]}', "questions", 2) is None
    assert parse_list('{"questions": ["a?", "b', "questions", 2) is None  # truncated output
    assert parse_list("[1, 2]", "questions", 2) is None


def test_invalid_output_is_retried_and_counted():
    teacher = FakeTeacher(['{"questions": ["Can I accept', qjson("Can I accept gifts from suppliers?",
                                                                   "Who must I declare a supplier interest to?")])
    cfg = GenerateConfig(questions_per_chunk=2, max_retries=2)
    rec = Synthesizer(teacher, cfg).sft_for_chunk(chunk())
    assert rec["rejected"]["invalid_json"] == 1
    assert [i["question"] for i in rec["items"]] == ["Can I accept gifts from suppliers?",
                                                     "Who must I declare a supplier interest to?"]
    for item in rec["items"]:  # extractive answers are spans of the chunk
        assert item["answer"] in CHUNK_TEXT
    assert "Ethics Office" in rec["items"][1]["answer"]


def test_duplicates_and_off_topic_questions_are_filtered():
    teacher = FakeTeacher([qjson("Can I accept gifts from suppliers?", "Can I accept gifts from suppliers?",
                                 "What is the capital of France today?")])
    cfg = GenerateConfig(questions_per_chunk=3, max_retries=0)
    rec = Synthesizer(teacher, cfg).sft_for_chunk(chunk())
    assert len(rec["items"]) == 1
    assert rec["rejected"] == {"duplicate": 1, "off_topic": 1}


def test_dpo_pair_uses_teacher_opposite_or_negation_and_never_identical():
    cfg = GenerateConfig(pairs_per_chunk=1, max_retries=0, situations_per_norm=0)  # the teacher-situation path
    good = FakeTeacher([qjson("Should I accept a dinner paid by a supplier?")])
    rec = Synthesizer(good, cfg).dpo_for_chunk(chunk())
    item = rec["items"][0]
    assert item["rejected_by"] == "teacher" and item["chosen"] != item["rejected"]
    lazy = FakeTeacher([qjson("Should I accept a dinner paid by a supplier?")], opposite="Gifts are nice.")
    rec = Synthesizer(lazy, cfg).dpo_for_chunk(chunk())
    item = rec["items"][0]
    assert item["rejected_by"] == "negation"
    assert filters.contradicts(item["chosen"], item["rejected"])


def test_chunk_without_values_gets_no_pairs():
    plain = Chunk("c1", 0, 40, "", "The cafeteria opens at nine and closes at five.")
    rec = Synthesizer(FakeTeacher([]), GenerateConfig()).dpo_for_chunk(plain)
    assert rec["items"] == [] and rec["skipped"]


def test_resume_generates_only_missing_chunks_without_duplicates(tmp_path):
    run = Run.open(tmp_path / "run")
    chunks = [Chunk(f"c{i}", 0, len(CHUNK_TEXT), "Gifts", CHUNK_TEXT) for i in range(3)]
    cfg = GenerateConfig(questions_per_chunk=1, pairs_per_chunk=0, max_retries=0)
    qs = [qjson("Can I accept gifts from suppliers?"), qjson("Who must I declare a supplier interest to?"),
          qjson("Must I refuse payments from suppliers?")]
    synthesize(run, chunks[:2], FakeTeacher(qs[:2]), cfg, 0, "t", lambda e: None)
    # a killed writer leaves a torn last line: it is ignored and that chunk regenerated
    with open(run.synth_dir / "sft.jsonl", "a") as f:
        f.write('{"chunk_id": "c2", "items": [{"quest')
    teacher = FakeTeacher(qs[2:])
    counts = synthesize(run, chunks, teacher, cfg, 0, "t", lambda e: None)
    assert len([c for c in teacher.calls if "questions" in c]) == 1  # only the missing chunk
    records = [r for r in read_jsonl(run.synth_dir / "sft.jsonl")]
    assert [r["chunk_id"] for r in records] == ["c0", "c1", "c2"]
    questions = [i["question"] for r in records for i in r["items"]]
    assert len(questions) == len(set(questions)) == 3
    assert counts["sft_records"] == 3


def test_splits_are_deterministic_disjoint_and_apply_edits(tmp_path):
    run = Run.open(tmp_path / "run")
    from valign_edge.files import append_jsonl

    items = [{"question": f"Question number {i} about gifts?", "answer": f"Answer {i}."} for i in range(20)]
    append_jsonl(run.synth_dir / "sft.jsonl", {"chunk_id": "c0", "span": [0, 5], "items": items, "key": "k"})
    append_jsonl(run.synth_dir / "dpo.jsonl", {"chunk_id": "c0", "span": [0, 5], "items": [], "key": "k"})
    counts = datasets.build(run, ["c0"], 0.1, 0.2, seed=1, key="k")
    assert sum(counts["sft"].values()) == 20 and counts["sft"]["train"] >= 10
    assert counts["sft"]["test"] >= 1 and counts["sft"]["valid"] >= 1
    splits = {s: datasets.load(run, "sft", s) for s in datasets.SPLITS}
    ids = [r["meta"]["id"] for s in splits.values() for r in s]
    assert len(ids) == len(set(ids)) == 20
    row = splits["train"][0]
    assert row["messages"][0]["role"] == "user" and row["messages"][1]["role"] == "assistant"
    datasets.build(run, ["c0"], 0.1, 0.2, seed=1, key="k")
    assert datasets.load(run, "sft", "train") == splits["train"]
    from valign_edge.generation.generate import add_edit

    victim, edited = splits["train"][0]["meta"]["id"], splits["train"][1]["meta"]["id"]
    add_edit(run, victim, "reject")
    add_edit(run, edited, "edit", {"answer": "A better answer."})
    datasets.build(run, ["c0"], 0.1, 0.2, seed=1, key="k")
    rows = {r["meta"]["id"]: r for s in datasets.SPLITS for r in datasets.load(run, "sft", s)}
    assert victim not in rows and rows[edited]["messages"][1]["content"] == "A better answer."
    for name in ("valid", "test"):  # a review decision moves no other record between splits
        assert [r["meta"]["id"] for r in datasets.load(run, "sft", name)] == \
            [r["meta"]["id"] for r in splits[name]]
    add_edit(run, victim, "restore")
    datasets.build(run, ["c0"], 0.1, 0.2, seed=1, key="k")
    assert victim in {r["meta"]["id"] for s in datasets.SPLITS for r in datasets.load(run, "sft", s)}


def test_a_handful_of_rows_never_leaves_train_empty():
    rows = [{"meta": {"id": f"r{i}"}} for i in range(2)]
    for seed in range(40):  # with fractions this large, some seeds hash both rows out of train
        parts = datasets.split(rows, 0.45, 0.45, seed)
        assert parts["train"] and sum(len(p) for p in parts.values()) == 2
