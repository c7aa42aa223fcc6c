"""The evaluation judge behind an OpenAI-compatible server (``eval.judge = http://HOST:PORT/v1``): the
teacher's privacy gate (refused before any connection unless --allow-remote, which says where the
judge's prompts go) and one judged comparison through a real llama.cpp ``llama-server`` with the
SmolLM2 GGUF, against the in-process judge on the same file."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CANARY_DOC, ROOT, assert_one_line_error, cli_command, cli_env, make_guard

from valign_edge.backends.llama_server import cached_binary

# As in test_server_teacher: in the default suite once the llama-server binary is cached, else in test-all.
quick_once_built = pytest.mark.slow if cached_binary() is None else (lambda test: test)
REMOTE = "http://192.0.2.7:8080/v1"


def _guarded(tmp_path: Path, *args):
    guard = make_guard(tmp_path / "guard")
    proc = subprocess.run(cli_command(*args), capture_output=True, text=True, env=guard.env(cli_env()),
                          timeout=600, cwd=ROOT)
    return proc, guard


def _empty_run(path: Path) -> Path:
    from valign_edge.runs.workspace import Run

    return Run.open(path).root


@pytest.mark.parametrize("how", ["judge", "teacher as judge"])
def test_remote_judge_is_refused_before_any_connection(tmp_path, how):
    run = _empty_run(tmp_path / "run")
    manifest = (run / "manifest.json").read_bytes()
    setting = f"eval.judge={REMOTE}" if how == "judge" else f"teacher={REMOTE}"
    proc, guard = _guarded(tmp_path, "eval", run, "--set", setting)
    line = assert_one_line_error(proc, 2, contains="192.0.2.7")
    assert "judge server" in line and "leave the machine" in line and "--allow-remote" in line
    assert guard.processes() >= 1, "the guard did not load"
    assert guard.violations() == [], "a refused judge server must not be contacted, nor its name looked up"
    assert (run / "manifest.json").read_bytes() == manifest and not (run / "eval").exists()


def test_run_with_eval_refuses_a_remote_judge_before_training(tmp_path):
    doc = tmp_path / "code.md"
    doc.write_text(CANARY_DOC)
    proc, guard = _guarded(tmp_path, "run", doc, "--out", tmp_path / "out", "--eval", "--set",
                           f"eval.judge={REMOTE}")
    assert_one_line_error(proc, 2, contains="judge server 192.0.2.7")
    assert guard.violations() == []
    assert not (tmp_path / "out").exists(), "nothing is written for a refused judge"


def test_allow_remote_says_where_the_judges_prompts_go(tmp_path):
    run = _empty_run(tmp_path / "run")
    proc, guard = _guarded(tmp_path, "eval", run, "--set", f"eval.judge={REMOTE}", "--allow-remote")
    assert ("--allow-remote: the judge's prompts (passages of the document, questions and answers) go to "
            f"192.0.2.7 ({REMOTE}) UNENCRYPTED (http)") in proc.stderr
    # The empty run has nothing to evaluate: one more line, exit 2, and the server was never needed.
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert guard.violations() == []


# --- one judged comparison through a real llama-server ---------------------------------------------
QUESTION = "What must happen to paper records at the end of a shift?"
PASSAGE = "Volunteers must lock paper records away at the end of each shift and never take them home."
GOOD, BAD = "They must be locked away.", "They can be taken home to finish the work."


def _judge(run_dir: Path, judge: str):
    from valign_edge.config import RunConfig
    from valign_edge.evaluation.judging import judge_answers
    from valign_edge.evaluation.systems import Context
    from valign_edge.runs.workspace import Run

    cfg = RunConfig()
    cfg.eval.judge = judge
    events: list = []
    ctx = Context(Run.open(run_dir), cfg, events.append, [SimpleNamespace(name="dpo"), SimpleNamespace(name="vanilla")],
                  threads=(1, 1))
    answers = {"dpo": [{"answer": GOOD}], "vanilla": [{"answer": BAD}]}
    results, stats = judge_answers(ctx, answers, [{"question": QUESTION, "chunk_id": "c1"}],
                                   [{"id": "c1", "text": PASSAGE}])
    rows = [json.loads(line) for line in (run_dir / "eval" / "judgments.jsonl").read_text().splitlines()]
    return results, stats, rows, ctx


@quick_once_built
def test_judged_comparison_through_llama_server(teacher_gguf, tmp_path):
    """Both answer orders judged through the server: each reply forced in the tokenizer's own tokens, its
    log-probability (end of turn included) within 0.5 nats of the in-process judge's on the same GGUF
    (measured 0.09 to 0.36: the server and the wheel run different CPU kernels); the judgments are
    cached, so judging again needs no server."""
    from valign_edge.backends.llama_server import LlamaServer

    local, _, local_rows, _ = _judge(tmp_path / "local", str(teacher_gguf))
    with LlamaServer(teacher_gguf, parallel=1, threads=2, log=tmp_path / "server.log") as server:
        results, stats, rows, _ = _judge(tmp_path / "served", server.url)
    assert stats["path"] == server.url and stats["server"]["engine"] == "llama.cpp"
    assert stats["server"]["calls"] == 6, "2 orders x 3 replies"
    assert len(rows) == len(local_rows) == 2
    for served, inproc in zip(rows, local_rows):  # the same order: dpo's answer first, then second
        assert set(served["logprobs"]) == {"A", "B", "tie"}
        for reply, value in served["logprobs"].items():
            assert math.isfinite(value) and value < 0
            assert abs(value - inproc["logprobs"][reply]) < 0.5, (reply, served, inproc)
    assert results["vanilla"]["n"] == 1 and results["vanilla"]["win_rate"] in (0.0, 0.5, 1.0)
    assert local["vanilla"]["n"] == 1

    again, stats_again, rows_again, ctx = _judge(tmp_path / "served", server.url)  # the server is gone now
    assert rows_again == rows and again == results and "server" not in stats_again
    assert ctx.timings["reused"]["judgments"] == 2
