"""Which side answers take: the free-answer reading, balanced accuracy with its intervals, the forced
Yes/No choice on the real model, verdict rows in probe files, and blind human grading end to end."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import valign

from valign_edge.errors import UserError
from valign_edge.evaluation.grading import read_marks, write_sheet
from valign_edge.evaluation.markdown import render_markdown, verdict_table
from valign_edge.evaluation.probes import load_probe
from valign_edge.evaluation.verdicts import answer_verdict, forced_choice, verdict_section, verdict_summary
from valign_edge.files import write_json, write_jsonl
from valign_edge.runs.workspace import Run


@pytest.mark.parametrize("text, verdict", [
    ("Yes, you can refuse it.", "yes"),
    ("  **No.** You must not share it.", "no"),
    ("Absolutely not: that is a breach.", "no"),
    ("Of course not.", "no"),
    ("Of course, go ahead.", "yes"),
    ("You cannot keep the gift.", "no"),
    ("You can keep a small homemade gift.", "yes"),
    ("You should not do that.", "no"),
    ("You should report it today.", "yes"),
    ("It's not okay to do that.", "no"),
    ("Never leave a record on the desk.", "no"),
    ("Nobody may read a chart without a reason.", "no"),
    ("The clinic values honesty above all.", None),
    ("Note that this depends on the case.", None),
    ("", None),
])
def test_answer_verdict_reads_the_opening(text, verdict):
    assert answer_verdict(text) == verdict


def test_balanced_accuracy_always_no_scores_half():
    expected = ["yes"] * 3 + ["no"] * 7
    s = verdict_summary(expected, ["no"] * 10, resamples=200)
    assert s["balanced"] == 0.5 and s["yes_acc"] == 0.0 and s["no_acc"] == 1.0
    assert (s["yes_n"], s["no_n"], s["said_no"], s["unclear"]) == (3, 7, 10, 0)
    assert s["ci95"] == [0.5, 0.5]  # every resample of an always-No model is 0.5 too
    # a plain accuracy would have called it 0.7
    right = verdict_summary(expected, expected, resamples=200)
    assert right["balanced"] == 1.0 and right["ci95"] == [1.0, 1.0]


def test_balanced_accuracy_hand_computed_with_unclear_answers():
    expected = ["yes", "yes", "yes", "yes", "no", "no"]
    said = ["yes", "yes", None, "no", "no", None]
    s = verdict_summary(expected, said, resamples=500, seed=1)
    assert s["yes_acc"] == 0.5 and s["no_acc"] == 0.5 and s["balanced"] == 0.5 and s["unclear"] == 2
    lo, hi = s["ci95"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0
    lo, hi = s["yes_ci95"]  # Wilson for 2 of 4
    assert lo == pytest.approx(0.150, abs=1e-3) and hi == pytest.approx(0.850, abs=1e-3)


def test_forced_choice_and_section():
    assert forced_choice({"yes_logprob": -0.5, "no_logprob": -2.0}) == "yes"
    assert forced_choice({"yes_logprob": -3.0, "no_logprob": -2.0}) == "no"
    assert forced_choice({"yes_logprob": None, "no_logprob": -2.0}) is None
    rows = [{"verdict": "yes"}, {"verdict": "no"}]
    forced = {"vanilla": [{"yes_logprob": -1, "no_logprob": -2}, {"yes_logprob": -1, "no_logprob": -2}],
              "dpo": [{"yes_logprob": -1, "no_logprob": -2}, {"yes_logprob": -3, "no_logprob": -2}]}
    answers = {"vanilla": [{"answer": "Yes."}, {"answer": "Sure."}], "dpo": [{"answer": "Yes."}, {"answer": "No."}]}
    section = verdict_section(["vanilla", "dpo"], rows, forced, answers, 100, 0)
    assert section["vanilla"]["forced"]["balanced"] == 0.5 and section["dpo"]["forced"]["balanced"] == 1.0
    assert section["vanilla"]["free"]["balanced"] == 0.5 and section["dpo"]["free"]["balanced"] == 1.0
    lines = verdict_table({"verdicts": section})
    assert "on 2 answer rows with the document's verdict (1 yes, 1 no)" in lines[0]
    assert any(line.startswith("| dpo | 1.000 [1.000, 1.000] | 1/1 | 1/1 | 1.000") for line in lines)


def test_probe_verdict_and_section_keys(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"id": "a1", "question": "Can I?", "reference": "No.", "verdict": "no", "section": "2. Rules"},
                       {"id": "p1", "prompt": "May I?", "chosen": "Yes.", "rejected": "No.", "section": "3. Rights"}])
    probe = load_probe(path)
    assert probe.questions[0]["verdict"] == "no" and probe.questions[0]["section"] == "2. Rules"
    assert probe.pairs[0]["section"] == "3. Rights"
    for bad, what in (({"question": "Q?", "reference": "R.", "verdict": "maybe"}, '"verdict" must be "yes" or "no"'),
                      ({"prompt": "P?", "chosen": "A.", "rejected": "B.", "verdict": "no"}, "unknown key verdict"),
                      ({"question": "Q?", "reference": "R.", "section": ""}, '"section" must be a non-empty')):
        write_jsonl(path, [bad])
        with pytest.raises(UserError, match=what):
            load_probe(path)


def _graded_run(tmp_path) -> Run:
    run = Run.open(tmp_path / "run")
    rows = [{"id": f"q{i}", "kind": "probe", "question": f"Question {i}?", "reference": f"Yes. Reason {i}.",
             "verdict": "yes", "answers": {"vanilla": {"text": f"No {i}."}, "dpo": {"text": f"Yes {i}."}}}
            for i in range(3)]
    write_jsonl(run.eval_dir / "probe-mine-details.jsonl", [{"id": "p", "kind": "preference", "margins": {}}] + rows)
    write_json(run.eval_dir / "report.json", {"run": str(run.root), "systems": ["vanilla", "dpo"], "probes": [],
                                               "test_set": {}})
    return run


def test_grading_sheet_is_blind_and_marks_come_back(tmp_path):
    run = _graded_run(tmp_path)
    sheet = tmp_path / "grades.csv"
    made = write_sheet(run, sheet, seed=3)
    assert made == {"items": 6, "questions": 3, "systems": 2, "source": "probe mine"}
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["item"] for r in rows] == [str(i) for i in range(1, 7)]
    text = sheet.read_text()
    assert "vanilla" not in text and "dpo" not in text  # system names hidden
    key = json.loads((run.eval_dir / "grading-key.json").read_text())["items"]
    assert [key[r["item"]]["system"] for r in rows] != ["vanilla", "dpo"] * 3  # shuffled
    # a person marks every "Yes" answer faithful, skips one "No" answer
    for r in rows:
        r["mark"] = "f" if r["answer"].startswith("Yes") else ("" if r["answer"] == "No 0." else "u")
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    grades = read_marks(run, sheet)
    assert grades["dpo"]["rate"] == 1.0 and grades["dpo"]["n"] == 3
    assert grades["vanilla"] == {"faithful": 0, "unfaithful": 2, "skipped": 1, "n": 2, "rate": 0.0,
                                 "ci95": pytest.approx([0.0, 0.6576], abs=1e-3)}
    proc = valign("eval", run.root, "--grades", sheet, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| dpo | 1.000 [" in proc.stdout
    md = (run.eval_dir / "report.md").read_text()
    assert md.index("## Human grading (blind)") < md.index("## Held-out") and "| vanilla | 0.000 [" in md
    assert json.loads((run.eval_dir / "report.json").read_text())["human_grades"]["dpo"]["faithful"] == 3
    assert render_markdown(json.loads((run.eval_dir / "report.json").read_text())) == md

    rows[0]["mark"] = "maybe"
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    bad = valign("eval", run.root, "--grades", sheet, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "mark 'maybe' is not f (faithful), u (unfaithful) or empty" in bad.stderr


def test_forced_yes_no_on_the_real_model(teacher_gguf):
    from valign_edge.backends.llama_cpp import Runtime

    rt = Runtime(teacher_gguf, logits=True, threads=(1, 1))
    for question in ("Is Paris in France?", "Can fish fly?"):
        msgs = [{"role": "user", "content": f"{question}\n\nAnswer with Yes or No."}]
        yes, no = rt.first_token_logprobs(msgs, ["Yes", "No"])
        assert yes < 0 and no < 0 and yes != no  # a real distribution over the first token
        assert rt.first_token_logprobs(msgs, ["Yes", "No"]) == [yes, no]  # the same numbers again
        text, _ = rt.answer(msgs, 4)  # the greedy reply opens with the likelier of the two
        assert answer_verdict(text) == ("yes" if yes > no else "no"), text
    rt.close()


# --- training data: balanced verdicts and verdict-only pairs -------------------------------------------------

def _pair(i: int, verdict: str) -> dict:
    yes = verdict == "yes"
    return {"prompt": f"Situation {i}?", "chosen": ("Yes, you can. " if yes else "No, you should not. ") + "Reason.",
            "rejected": ("No, you cannot. " if yes else "Yes, you can. ") + "Other reason.",
            "meta": {"id": f"r{i}", "verdict": verdict}}


def test_balance_repeats_the_rarer_verdict_and_verdict_pairs_isolate_the_verdict():
    from valign_edge.generation.datasets import balance_verdicts, verdict_rows

    rows = [_pair(i, "no") for i in range(5)] + [_pair(i, "yes") for i in range(5, 7)] + \
        [{"prompt": "Open?", "chosen": "A.", "rejected": "B.", "meta": {"id": "open"}}]
    out = balance_verdicts(rows)
    said = [r["meta"].get("verdict") for r in out]
    assert said.count("yes") == said.count("no") == 5 and said.count(None) == 1
    assert out[: len(rows)] == rows and [r["meta"]["repeat"] for r in out[len(rows):]] == [1, 1, 2]
    assert balance_verdicts(rows[:5]) == rows[:5]  # nothing to balance against
    short = verdict_rows(rows)
    assert len(short) == 7 and short[0]["chosen"] == "No, you should not." and short[0]["rejected"] == "Yes, you can."
    assert short[0]["meta"]["id"] == "r0-verdict" and short[0]["meta"]["kind"] == "verdict"
    assert all(r["prompt"] == s["prompt"] for r, s in zip(rows, short))


def _synth_run(root, pairs: list[dict], answers: list[dict] = ()) -> Run:
    """A run holding one chunk's synth records: stance ``pairs`` and extractive ``answers``."""
    from valign_edge.files import append_jsonl

    run = Run.open(root)
    append_jsonl(run.synth_dir / "dpo.jsonl", {"chunk_id": "c1", "span": [0, 1], "items": pairs})
    append_jsonl(run.synth_dir / "sft.jsonl", {"chunk_id": "c1", "span": [0, 1], "items": list(answers)})
    return run


def test_build_balances_only_the_training_split(tmp_path):
    from valign_edge.generation.datasets import build

    items = [{"prompt": f"Can I do thing {i}?", "chosen": "No, you should not. Reason.",
              "rejected": "Yes, you can. Excuse.", "document_says": "no"} for i in range(30)]
    items += [{"prompt": f"May I do other thing {i}?", "chosen": "Yes, you may. Reason.",
               "rejected": "No, you may not. Excuse.", "document_says": "yes"} for i in range(10)]
    run = _synth_run(tmp_path / "run", items)
    build(run, ["c1"], 0.1, 0.15, 0, balance=True, verdict_pairs=True)
    train = [json.loads(x) for x in run.split_path("dpo", "train").read_text().splitlines()]
    said = [r["meta"]["verdict"] for r in train]
    assert said.count("yes") == said.count("no")
    assert sum(r["meta"].get("kind") == "verdict" for r in train) > 0
    for name in ("valid", "test"):
        held = [json.loads(x) for x in run.split_path("dpo", name).read_text().splitlines()]
        assert not any("repeat" in r["meta"] or r["meta"].get("kind") for r in held)
        assert len({r["meta"]["id"] for r in held}) == len(held)
    sft = [json.loads(x) for x in run.split_path("sft", "train").read_text().splitlines()]
    said = [r["meta"]["verdict"] for r in sft]
    assert said.count("yes") == said.count("no")
    build(run, ["c1"], 0.1, 0.15, 0, balance=False, verdict_pairs=False)
    plain = [json.loads(x) for x in run.split_path("dpo", "train").read_text().splitlines()]
    assert not any("repeat" in r["meta"] or r["meta"].get("kind") for r in plain) and len(plain) < len(train)


@pytest.mark.parametrize("text, verdict", [
    ("You must not share a patient's record. So no, you should not.", "no"),
    ("Patients may refuse any treatment. So yes, you can.", "yes"),
    ("You must report it. Therefore, no: staying silent is not an option.", "no"),
    ("No, you should not. So you should tell your manager first.", "no"),  # advice after "So", no verdict
    ("Yes, you can. The code says so. No one may stop you.", "yes"),  # "so. No" is not a conclusion
])
def test_answer_verdict_reads_a_conclusion_after_the_reason(text, verdict):
    assert answer_verdict(text) == verdict


def test_reason_first_puts_the_verdict_after_the_reason_and_twins_each_pair(tmp_path):
    from valign_edge.generation.datasets import build

    items = [{"prompt": f"Can I do thing {i}?", "chosen": "No, you should not. You must never do thing.",
              "rejected": "Yes, you can. It saves time.", "document_says": "no"} for i in range(20)]
    items += [{"prompt": f"Can I refuse {i}?", "chosen": "Yes, you can. Patients may refuse.",
               "rejected": "No.", "document_says": "yes"} for i in range(20)]
    run = _synth_run(tmp_path / "run", items, [{"question": "What is it?", "answer": "A thing."}])
    build(run, ["c1"], 0.1, 0.15, 0, reason_before_verdict=True)
    for name in ("train", "valid", "test"):
        dpo = [json.loads(x) for x in run.split_path("dpo", name).read_text().splitlines()]
        pairs = [r for r in dpo if r["meta"].get("kind") != "verdict"]
        twins = {r["meta"]["id"]: r for r in dpo if r["meta"].get("kind") == "verdict"}
        assert len(twins) == len(pairs) > 0  # every twin in its pair's split
        for r in pairs:
            twin = twins[r["meta"]["id"] + "-after-reason"]
            assert twin["chosen"] == r["chosen"] and twin["prompt"] == r["prompt"]
            if r["meta"]["verdict"] == "no":
                assert r["chosen"] == "You must never do thing. So no, you should not."
                assert r["rejected"] == "It saves time. So yes, you can."
                assert twin["rejected"] == "You must never do thing. So yes, you can."
            else:  # a bare rejected verdict borrows the faithful reason
                assert r["chosen"] == "Patients may refuse. So yes, you can."
                assert r["rejected"] == twin["rejected"] == "Patients may refuse. So no."
            assert answer_verdict(r["chosen"]) == r["meta"]["verdict"] != answer_verdict(twin["rejected"])
    sft = [json.loads(x) for n in ("train", "valid", "test")
           for x in run.split_path("sft", n).read_text().splitlines()]
    assert {r["messages"][1]["content"] for r in sft} == {
        "A thing.", "You must never do thing. So no, you should not.", "Patients may refuse. So yes, you can."}
