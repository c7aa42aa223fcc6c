"""Issue 15: every cell carries its sample size and says when it is too small to conclude.

Pure functions on constructed inputs: preference rows with known log-probabilities go through the
same section builder, assessment and markdown as a real evaluation.
"""

from __future__ import annotations

import pytest

from valign_edge.evaluation import judge as judging
from valign_edge.evaluation.evidence import MIN_N, assess_cell, small_sample_advice
from valign_edge.evaluation.markdown import render_markdown
from valign_edge.evaluation.report import COLUMN_LABELS, COLUMNS, metric_section


def _pair(correct: bool) -> dict:
    """One scored pair: the chosen answer 1 nat/token likelier (correct) or 1 nat/token less likely."""
    good, bad = -4.0, -8.0  # 4 tokens each: -1 and -2 nats/token
    return {"chosen_logprob": good if correct else bad, "chosen_tokens": 4,
            "rejected_logprob": bad if correct else good, "rejected_tokens": 4}


def _section(prefs: dict, n_questions: int = 0, win_judge: dict | None = None) -> dict:
    names = list(prefs)
    questions = [{"id": f"q{i}", "question": f"Question {i}?", "reference": "Be kind to everyone."}
                 for i in range(n_questions)]
    answers = {name: [{"answer": "Be kind to everyone."} for _ in questions] for name in names}
    scores = {name: {"bleu_sentence": [100.0] * n_questions, "rouge_l": [1.0] * n_questions,
                     "bertscore_f1": [1.0] * n_questions} for name in names}
    return metric_section(names, COLUMNS, questions, answers, prefs, scores, win_judge or {}, {}, resamples=200)


def _report(section: dict) -> dict:
    return {"run": "runs/x", "systems": [r["system"] for r in section["table"]], "column_labels": COLUMN_LABELS,
            **{k: v for k, v in section.items() if k != "win_rate"}, "win_rate": section["win_rate"],
            "judge": {}, "test_set": {"kind": "run", "path": "runs/x", "questions": 1, "pairs": 1},
            "advice": small_sample_advice(1, 1, False), "examples": []}


def test_one_held_out_pair_is_inconclusive():
    section = _section({"vanilla": [_pair(True)], "dpo": [_pair(True)]}, n_questions=1)
    row = {r["system"]: r for r in section["table"]}
    assert row["dpo"]["pref_acc"] == 1.0 and section["counts"]["dpo"]["pref_acc"] == 1
    cell = section["evidence"]["dpo"]["pref_acc"]
    assert cell == {"n": 1, "conclusive": False, "note": "n=1: too few to conclude"}
    assert section["evidence"]["vanilla"]["pref_acc"]["note"] == "n=1: too few to conclude"
    assert section["conclusions"]["conclusive"] == []
    md = render_markdown(_report(section))
    assert "1.000 [0.206, 1.000] n=1: too few to conclude" in md
    summary = next(line for line in md.splitlines() if line.startswith("- **Held-out set"))
    assert "0 of" in summary and "Conclusive: none" in summary and "n=1: too few to conclude" in summary
    assert "--set eval.splits=test,valid" in md and "--probe FILE.jsonl" in md and "--doc DOC" in md


def test_forty_pairs_with_a_clear_gap_are_conclusive():
    prefs = {"vanilla": [_pair(i < 20) for i in range(40)],  # 20/40
             "sft": [_pair(i < 24) for i in range(40)],  # 24/40: within vanilla's noise
             "dpo": [_pair(i < 38) for i in range(40)]}  # 38/40
    section = _section(prefs, n_questions=12)
    ev = section["evidence"]
    assert ev["dpo"]["pref_acc"]["conclusive"] is True
    assert ev["dpo"]["pref_acc"]["note"] == "n=40: above vanilla's 0.500"
    assert ev["sft"]["pref_acc"]["conclusive"] is False and "interval includes vanilla's 0.500" in \
        ev["sft"]["pref_acc"]["note"]
    assert ev["vanilla"]["pref_acc"] == {"n": 40, "conclusive": None, "note": "n=40"}  # the baseline itself
    lo, hi = section["intervals"]["dpo"]["pref_acc"]
    assert lo > 0.5 and section["table"][2]["pref_acc"] == pytest.approx(0.95)
    assert any(s.startswith("dpo vs vanilla, Preference accuracy (n=40: above") for s in
               section["conclusions"]["conclusive"])
    # identical answers on 12 questions: the text metrics cannot tell the systems apart
    assert ev["dpo"]["rouge_l"]["conclusive"] is False
    assert small_sample_advice(12, 40, False) is None


def test_judge_with_little_order_agreement_is_unreliable():
    verdicts = [("A", "A")] * 8 + [("A", "B")] * 4  # mostly position bias: orders agree on 4/12
    summary = judging.summarize([1.0] * 12, verdicts)
    assert summary["order_consistency"] == pytest.approx(4 / 12)
    section = _section({"vanilla": [_pair(True)] * 12, "dpo": [_pair(True)] * 12}, n_questions=12,
                       win_judge={"vanilla": summary})
    cell = section["evidence"]["vanilla"]["win_judge"]
    assert cell["conclusive"] is False and cell["note"] == "n=12: judge unreliable (its two orders agree 33%)"
    report = _report(section)
    report["judge"] = {"model": "tiny", "mode": "logits", "tie_margin": 0.1, "first_position_rate": 0.83,
                       "order_consistency": 4 / 12}
    md = render_markdown(report)
    assert f"| {summary['first_position_rate']:.0%} | 33% | NO (orders agree < 50%) |" in md
    assert "its win rates are unreliable" in md
    assert judging.reliable(0.5) is True and judging.reliable(0.49) is False and judging.reliable(None) is None


def test_assess_cell_rules():
    assert assess_cell(None, None, 0, 0.5, "pref_acc")["conclusive"] is None
    assert assess_cell(0.9, [0.8, 0.95], MIN_N - 1, 0.5, "pref_acc")["note"] == f"n={MIN_N - 1}: too few to conclude"
    assert assess_cell(0.9, [0.8, 0.95], MIN_N, 0.5, "win_ref")["note"] == f"n={MIN_N}: above 0.5"
    below = assess_cell(12.0, [10.0, 14.0], 30, 20.0, "bleu")
    assert below == {"n": 30, "conclusive": True, "note": "n=30: below vanilla's 20.0"}
