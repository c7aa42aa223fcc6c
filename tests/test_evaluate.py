"""The evaluation stage: win-rate arithmetic, test sets, reports, bad input, and one real run.

The end-to-end test evaluates a real ``--preset quick`` run of the default SmolLM2 student
(made once per session; set VALIGN_EVAL_TEST_RUN=DIR to copy an existing finished run instead).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, cli_env, copy_run, needs, valign

from valign_edge.config import RunConfig
from valign_edge.errors import UserError
from valign_edge.evaluation import judge as judging
from valign_edge.events import null_callback
from valign_edge.files import write_jsonl
from valign_edge.runs.workspace import Run

SYSTEMS = ["vanilla", "rag", "sft", "dpo", "dpo_rag"]


# --- win-rate arithmetic --------------------------------------------------------------------------

def test_both_orders_cancel_position_bias():
    # the system is answer A in the first judgment, answer B in the second
    assert judging.combine("A", "B") == 1.0  # won in both orders
    assert judging.combine("B", "A") == 0.0  # lost in both orders
    assert judging.combine("A", "A") == 0.5  # the judge always picks the first answer: a tie
    assert judging.combine("B", "B") == 0.5  # ... or always the second
    assert judging.combine("tie", "tie") == 0.5
    assert judging.combine("A", "tie") == 0.75
    assert judging.combine("tie", "A") == 0.25


def test_win_rate_counts_ties_and_interval():
    scores = [judging.combine(*v) for v in [("A", "B"), ("A", "B"), ("A", "A"), ("B", "A")]]
    s = judging.summarize(scores, [("A", "B"), ("A", "B"), ("A", "A"), ("B", "A")])
    assert s["win_rate"] == pytest.approx(2.5 / 4)
    assert (s["wins"], s["ties"], s["losses"], s["n"]) == (2, 1, 1, 4)
    lo, hi = s["ci95"]
    assert lo < s["win_rate"] < hi and 0 <= lo and hi <= 1
    assert s["first_position_rate"] == pytest.approx(5 / 8)
    assert s["order_consistency"] == pytest.approx(3 / 4)
    # a judge that always picks the first answer: every pair a tie, win rate exactly 0.5
    biased = judging.summarize([judging.combine("A", "A")] * 10, [("A", "A")] * 10)
    assert biased["win_rate"] == 0.5 and biased["ties"] == 10 and biased["ci95"][0] < 0.5 < biased["ci95"][1]
    assert biased["first_position_rate"] == 1.0 and biased["order_consistency"] == 0.0
    # clear wins on 20 of 20 questions: the interval sits above 0.5
    assert judging.summarize([1.0] * 20)["ci95"][0] > 0.8
    assert judging.summarize([])["win_rate"] is None


def test_debiased_logit_judge():
    # log P(reply) with the system shown first, then second
    bias_only_first = {"A": -0.1, "B": -3.0, "tie": -6.0}
    bias_only_second = {"A": -0.1, "B": -3.0, "tie": -6.0}
    assert judging.debiased_margin(bias_only_first, bias_only_second) == pytest.approx(0.0)
    assert judging.debiased_score(bias_only_first, bias_only_second, 0.1) == 0.5
    # the same position bias plus a preference for the system's answer of 0.5 nats either way
    first = {"A": -0.1, "B": -3.5, "tie": -6.0}  # system is A: 3.4
    second = {"A": -0.6, "B": -3.0, "tie": -6.0}  # system is B: margin for B = -2.4
    assert judging.debiased_margin(first, second) == pytest.approx(0.5)
    assert judging.debiased_score(first, second, 0.1) == 1.0
    assert judging.debiased_score(second, first, 0.1) == 0.0  # the other system's view
    assert judging.likeliest(first) == "A" and judging.likeliest({"A": -5, "B": -4, "tie": -1}) == "tie"


def test_reference_judge_verdicts():
    assert judging.reference_verdict(0.60, 0.50, 0.01) == "A"
    assert judging.reference_verdict(0.50, 0.60, 0.01) == "B"
    assert judging.reference_verdict(0.505, 0.50, 0.01) == "tie"


# --- test sets, reports, comparison -------------------------------------------------------------

def _sft(q, a, i):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "meta": {"id": f"s{i}", "chunk_id": "c1"}}


def _dpo(q, c, r, i):
    return {"prompt": q, "chosen": c, "rejected": r, "meta": {"id": f"d{i}", "chunk_id": "c1"}}


def test_cached_jsonl_test_set_interleaves_and_limits(tmp_path):
    from valign_edge.evaluation.testset import load_test_set

    run = Run.open(tmp_path / "run")
    rows = [_sft(f"Question {i}?", f"Answer {i}.", i) for i in range(3)] + \
           [_dpo(f"Situation {i}?", "Good.", "Bad.", i) for i in range(2)]
    write_jsonl(tmp_path / "tests.jsonl", rows)
    cfg = RunConfig()
    tests = load_test_set(run, cfg, null_callback, tmp_path / "tests.jsonl")
    assert [q["kind"] for q in tests.questions] == ["sft", "dpo", "sft", "dpo", "sft"]
    assert [q["reference"] for q in tests.questions][:2] == ["Answer 0.", "Good."]
    assert len(tests.pairs) == 2 and tests.source["kind"] == "jsonl"
    cfg.eval.max_questions = 2
    tests = load_test_set(run, cfg, null_callback, tmp_path / "tests.jsonl")
    assert len(tests.questions) == 2
    (tmp_path / "junk.jsonl").write_text('{"text": "no questions here"}\n')
    with pytest.raises(UserError, match="no SFT rows"):
        load_test_set(run, cfg, null_callback, tmp_path / "junk.jsonl")
    cfg.eval.max_questions = 0  # questions the run trained on are not test questions
    write_jsonl(run.split_path("sft", "train"), [_sft("question 1", "Answer 1.", 9)])
    write_jsonl(run.split_path("dpo", "train"), [_dpo("Situation 0 ?", "Good.", "Bad.", 9)])
    tests = load_test_set(run, cfg, null_callback, tmp_path / "tests.jsonl")
    assert [q["question"] for q in tests.questions] == ["Question 0?", "Situation 1?", "Question 2?"]
    assert len(tests.pairs) == 1 and tests.source["dropped_trained"] == 2
    with pytest.raises(UserError, match="no such file"):
        load_test_set(run, cfg, null_callback, tmp_path / "missing.txt")


def _fake_report(run_dir: str, shift: float = 0.0) -> dict:
    from valign_edge.evaluation.report import COLUMN_LABELS, COLUMNS

    table, intervals = [], {}
    for i, name in enumerate(SYSTEMS):
        row = {"system": name, "bleu": 10.0 + i + shift, "bleu_sentence": 9.0 + i, "rouge_l": 0.2 + i / 20,
               "bertscore_f1": 0.5 + i / 50, "pref_acc": 0.5 + i / 10,
               "win_judge": None if name == "dpo" else 0.6, "win_ref": None if name == "dpo" else 0.7}
        table.append(row)
        intervals[name] = {c: None if row[c] is None else [row[c] * 0.9, row[c] * 1.1] for c in COLUMNS}
    summary = {"win_rate": 0.6, "n": 10, "wins": 5, "ties": 2, "losses": 3, "ci95": [0.3, 0.8]}
    return {"run": run_dir, "systems": SYSTEMS, "columns": list(COLUMNS), "column_labels": COLUMN_LABELS,
            "table": table, "intervals": intervals,
            "win_rate": {"system": "dpo", "judge": {s: summary for s in SYSTEMS if s != "dpo"},
                         "reference": {s: summary for s in SYSTEMS if s != "dpo"}, "reference_margin": 0.01},
            "judge": {"model": "tiny", "mode": "logits", "tie_margin": 0.1, "first_position_rate": 0.9,
                      "order_consistency": 0.2},
            "test_set": {"kind": "run", "path": run_dir, "questions": 10, "pairs": 4, "sft_questions": 6,
                         "dpo_questions": 4},
            "decoding": {"repeat_penalty": 1.1, "max_tokens": 64, "rag_top_k": 2},
            "machine": {"cpu": "test cpu", "cores": 2}, "timings": {"total": 12.0}, "examples": []}


def test_markdown_plots_and_compare(tmp_path):
    from valign_edge.evaluation.markdown import compare, render_markdown
    from valign_edge.evaluation.plots import write_plots

    report = _fake_report("runs/a")
    md = render_markdown(report)
    assert "| system | BLEU (corpus)" in md
    for name in SYSTEMS:
        assert f"| {name} |" in md
    assert "0.700 [0.630, 0.770]" in md  # pref_acc of sft with its interval
    paths = write_plots(report, tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{c}.png" for c in report["columns"])
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)

    for name, shift in (("a", 0.0), ("b", 2.0)):
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "report.json").write_text(json.dumps(_fake_report(name, shift)))
    text = compare([tmp_path / "a", tmp_path / "b"])
    assert "**BLEU (corpus)**" in text and "| system | a | b | difference |" in text
    assert "| vanilla | 10.0 | 12.0 | 2.0 |" in text
    with pytest.raises(UserError, match="no evaluation report"):
        compare([tmp_path / "a", tmp_path / "missing"])


# --- bad input: one line naming the missing stage ------------------------------------------------

def test_run_without_test_split_names_generate(tmp_path):
    Run.open(tmp_path / "fresh")
    proc = valign("eval", tmp_path / "fresh", timeout=300)
    line = assert_one_line_error(proc, 2, "test split")
    assert "generate" in line


def test_run_without_exports_names_export(tmp_path):
    run = Run.open(tmp_path / "data-only")
    write_jsonl(run.split_path("sft", "test"), [_sft("Question?", "Answer.", 0)])
    write_jsonl(run.split_path("dpo", "test"), [])
    proc = valign("eval", run.root, timeout=300)
    line = assert_one_line_error(proc, 2, "exported models")
    assert "valign export" in line


def test_compare_without_report(tmp_path):
    Run.open(tmp_path / "r")
    assert_one_line_error(valign("eval", "--compare", tmp_path / "r", timeout=300), 2, "no evaluation report")


# --- the llama.cpp runtime's log-likelihoods --------------------------------------------------------

def test_reply_logprobs_with_prefix_reuse(teacher_gguf):
    from valign_edge.backends.llama_cpp import Runtime

    def msgs(answer: str) -> list[dict]:
        return [{"role": "user", "content": f"Question: What is the capital of France?\n\nAnswer A: {answer}"}]

    replies = ["The capital of France is Paris.", "Zebra quantum lettuce sings purple."]
    warm = Runtime(teacher_gguf, logits=True, threads=(1, 1))
    (good, n_good), (bad, n_bad) = warm.reply_logprobs(msgs("Paris"), replies, split_at="\n\nAnswer A:")
    assert good / n_good > bad / n_bad + 1.0  # per token, the sensible answer is far likelier
    assert n_good >= 8  # the reply's tokens plus the end-of-turn marker
    second = warm.reply_logprobs(msgs("Lyon"), replies, split_at="\n\nAnswer A:")
    assert warm.reused_tokens > 0  # the shared head stayed in the KV cache
    again = warm.reply_logprobs(msgs("Paris"), replies, split_at="\n\nAnswer A:")
    assert again == [(good, n_good), (bad, n_bad)]
    warm.close()
    # The same numbers from a cold context: results never depend on what was evaluated before.
    cold = Runtime(teacher_gguf, logits=True, threads=(1, 1))
    assert cold.reply_logprobs(msgs("Lyon"), replies, split_at="\n\nAnswer A:") == second
    assert cold.reused_tokens == 0
    # Answers too: the same answer after another question as from a fresh model.
    q1, q2 = [{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "Name a fruit."}]
    cold.answer(q1, 12)
    after = cold.answer(q2, 12)
    cold.close()
    fresh = Runtime(teacher_gguf, threads=(1, 1))
    assert fresh.answer(q2, 12) == after and after[1] > 0
    fresh.close()


# --- end to end with the real model ------------------------------------------------------------------

@pytest.fixture(scope="session")
def quick_real_run(tmp_path_factory, teacher_gguf) -> Path:
    """A finished ``valign run --preset quick`` of the real SmolLM2 student (no evaluation yet)."""
    out = tmp_path_factory.mktemp("eval-e2e") / "run"
    reuse = os.environ.get("VALIGN_EVAL_TEST_RUN")
    if reuse:
        return copy_run(Path(reuse), out, before="eval")
    needs("torch")
    proc = valign("run", ROOT / "valign_edge" / "data" / "code_of_conduct.md", "--out", out, "--preset", "quick",
                  "--set", "generate.n_threads=1", timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_eval_end_to_end_real_model(quick_real_run):
    from valign_edge.evaluation.report import COLUMNS

    run = quick_real_run
    # The run's document is the shipped sample: without eval.probe=none its shipped probe would be evaluated
    # too (tests/test_probes.py covers that on the shared run).
    flags = ["--set", "eval.max_questions=4", "--set", "eval.judge_pairs=3", "--set", "eval.bootstrap=200",
             "--set", "eval.probe=none"]
    proc = valign("eval", run, *flags, env=cli_env(), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["systems"] == SYSTEMS
    assert report["columns"] == list(COLUMNS) and report["probes"] == []
    assert report["counts"]["dpo"]["rouge_l"] == report["test_set"]["questions"]
    assert all(cell["note"].startswith(f"n={cell['n']}") for cells in report["evidence"].values()
               for cell in cells.values() if cell["note"])
    assert [row["system"] for row in report["table"]] == SYSTEMS
    n_pairs = report["test_set"]["pairs"]
    for row in report["table"]:
        assert set(row) == {"system", *COLUMNS}
        for col in ("bleu", "bleu_sentence", "rouge_l", "bertscore_f1") + (("pref_acc",) if n_pairs else ()):
            value, (lo, hi) = row[col], report["intervals"][row["system"]][col]
            assert value is not None and lo - 1e-6 <= value <= hi + 1e-6, (row["system"], col, value, lo, hi)
        for col in ("win_judge", "win_ref"):
            assert (row[col] is None) == (row["system"] == "dpo")
    assert 1 <= report["test_set"]["questions"] <= 4
    assert report["machine"]["cores"] and report["judge"]["model"] == "smollm2-135m-instruct"
    for col in COLUMNS:
        assert (run / "eval" / f"{col}.png").read_bytes()[:4] == b"\x89PNG"
    md = (run / "eval" / "report.md").read_text()
    assert all(f"| {name} |" in md for name in SYSTEMS)
    assert "| system |" in proc.stdout  # the CLI prints the table
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["eval"]["status"] == "done" and manifest["stages"]["eval"]["wall_s"] > 0

    # Resumable: with the report gone and the stage stale, cached answers are reused, not regenerated.
    answers = {p.name: p.read_text() for p in (run / "eval" / "answers").glob("*.jsonl")}
    assert sorted(answers) == sorted(f"{s}.jsonl" for s in SYSTEMS)
    (run / "eval" / "report.json").unlink()
    Run(run).invalidate("eval")
    proc = valign("eval", run, *flags, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name: p.read_text() for p in (run / "eval" / "answers").glob("*.jsonl")} == answers
    again = json.loads((run / "eval" / "report.json").read_text())
    assert again["table"] == report["table"]

    # Two runs side by side.
    other = run.parent / "copy"
    shutil.copytree(run, other)
    proc = valign("eval", "--compare", run, other, timeout=300)
    assert proc.returncode == 0 and "| system | run | copy | difference |" in proc.stdout


@pytest.mark.slow
def test_eval_on_another_document(quick_real_run, tmp_path):
    """--doc DOC: a test set generated from another document (cached), here for two systems."""
    doc = tmp_path / "library.md"
    doc.write_text("# Library rules\n\n## Quiet\nVisitors must keep quiet in the reading room and must never "
                   "disturb other readers. Phones must be silent.\n\n## Books\nEveryone has the right to borrow "
                   "five books. Borrowers must return books within three weeks and must not write in them.\n",
                   encoding="utf-8")
    flags = ["--doc", doc, "--set", "eval.systems=vanilla,dpo", "--set", "eval.max_questions=2",
             "--set", "eval.judge_pairs=1", "--set", "eval.bootstrap=100", "--set", "generate.n_threads=1",
             "--set", "eval.probe=none"]
    proc = valign("eval", quick_real_run, *flags, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((quick_real_run / "eval" / "report.json").read_text())
    assert report["systems"] == ["vanilla", "dpo"]
    assert report["test_set"]["kind"] == "document" and report["test_set"]["path"] == str(doc)
    cache = Path(report["test_set"]["cache"])
    assert (cache / "data" / "sft" / "test.jsonl").exists() and cache.is_relative_to(quick_real_run / "eval")


def test_run_test_set_splits(tmp_path):
    from valign_edge.evaluation.testset import load_test_set

    run = Run.open(tmp_path / "run")
    for split, n in (("test", 2), ("valid", 1), ("train", 5)):
        write_jsonl(run.split_path("sft", split), [_sft(f"{split} question {i}?", "Answer.", f"{split}{i}")
                                                   for i in range(n)])
        write_jsonl(run.split_path("dpo", split), [_dpo(f"{split} situation {i}?", "Good.", "Bad.", f"{split}{i}")
                                                   for i in range(n)])
    cfg = RunConfig()
    tests = load_test_set(run, cfg, null_callback)
    assert len(tests.questions) == 4 and len(tests.pairs) == 2
    assert all(q["question"].startswith("test") for q in tests.questions)
    cfg.eval.splits = "test,valid"
    tests = load_test_set(run, cfg, null_callback)
    assert len(tests.questions) == 6 and len(tests.pairs) == 3 and tests.source["splits"] == ["test", "valid"]
    cfg.eval.splits = "test,train"
    with pytest.raises(UserError, match="eval.splits"):
        load_test_set(run, cfg, null_callback)
