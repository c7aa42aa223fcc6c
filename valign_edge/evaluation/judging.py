"""Who answered better: the judge model (both orders, cached) and the reference judge, ``dpo`` vs the rest."""

from __future__ import annotations

import time

from valign_edge import models
from valign_edge.config import RunConfig
from valign_edge.errors import UserError
from valign_edge.evaluation import judge as judging
from valign_edge.evaluation.systems import EVAL_VERSION, REFERENCE_SYSTEM, Context
from valign_edge.events import Event, Progress
from valign_edge.files import append_jsonl, read_jsonl
from valign_edge.models import model_id
from valign_edge.runs.workspace import hash_obj


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def judge_model_ref(cfg: RunConfig, allow_remote: bool = False) -> models.ModelRef:
    """The judge: eval.judge, else the teacher; a GGUF run by llama.cpp or an OpenAI-compatible server
    (loopback only unless --allow-remote: refused here, before anything is contacted)."""
    ref = models.resolve(cfg.eval.judge or cfg.teacher, "judge", allow_remote)
    if ref.kind not in ("gguf", "server"):
        raise UserError(f"judge {ref.name!r} must be a GGUF chat model run by llama.cpp or a server's URL")
    return ref


def server_model(cfg: RunConfig) -> str:
    """The model a server judge is asked for (empty: the one the server lists)."""
    return cfg.eval.judge_model or ("" if cfg.eval.judge else cfg.generate.teacher_model)


def judge_key(cfg: RunConfig, ref: models.ModelRef) -> str:
    """What identifies the judge in cache and report keys: the model file, or the server and its model."""
    return model_id(ref) if ref.kind != "server" else hash_obj([model_id(ref), server_model(cfg)])


def judge_answers(ctx: Context, answers: dict[str, list[dict]], questions: list[dict],
                  chunks: list[dict]) -> tuple[dict, dict]:
    """The judge model on ``dpo`` against every other system, both answer orders (cached).

    Per judgment the judge's log-probabilities of replying A, B and tie are kept; ``verdict`` mode
    takes the likeliest reply per order, ``logits`` mode compares A with B across both orders so
    the judge's position bias cancels in the margin (see judge.py). The passage shown to the judge
    is the question's ``chunk_id`` among ``chunks`` (none when it has none)."""
    cfg = ctx.cfg
    ref = judge_model_ref(cfg, ctx.allow_remote)
    judge_id = hash_obj([EVAL_VERSION, judge_key(cfg, ref), judging.judge_messages("{q}", "{p}", "{a}", "{b}"),
                         judging.REPLIES, judging.ANSWERS_START])
    path = ctx.run.eval_dir / "judgments.jsonl"
    cache = {r["key"]: r["logprobs"] for r in read_jsonl(path) if "logprobs" in r}
    others = [s.name for s in ctx.systems if s.name != REFERENCE_SYSTEM]
    n = min(len(questions), cfg.eval.judge_pairs or len(questions))
    passages = {c["id"]: c["text"] for c in chunks}

    def key_of(i: int, a: str, b: str) -> str:
        q = questions[i]
        return hash_obj([judge_id, q["question"], passages.get(q["chunk_id"], ""), a, b])

    # Question-major, dpo's answer first in a run of calls: consecutive prompts share the passage,
    # the question and often answer A, which the runtime keeps in its KV cache.
    needed = {}
    for i in range(n):
        mine = answers[REFERENCE_SYSTEM][i]["answer"]
        theirs = [answers[o][i]["answer"] for o in others if not _same(mine, answers[o][i]["answer"])]
        for a, b in [(mine, t) for t in theirs] + [(t, mine) for t in theirs]:
            needed[key_of(i, a, b)] = (i, a, b)
    jobs = {key: job for key, job in needed.items() if key not in cache}
    ctx.add_reused("judgments", len(needed) - len(jobs))
    ctx.emit(Event("stage", "eval", f"judge {ref.name}: {n} questions x {len(others)} comparisons x 2 orders "
                                    f"({len(jobs)} judgments to make)"))
    server = ref.kind == "server"
    stats = {"model": ref.name, "path": ref.preset["url"] if server else str(ref.path), "questions": n,
             "mode": cfg.eval.judge_mode,
             "tie_margin": cfg.eval.judge_tie_margin if cfg.eval.judge_mode == "logits" else None}
    if jobs:
        start = time.perf_counter()
        judge = (judging.ServerJudge(ref.preset["url"], server_model(cfg), ctx.allow_remote) if server else
                 judging.ModelJudge(ref.path, seed=cfg.seed, threads=ctx.threads))
        progress = Progress(ctx.emit, "eval", len(jobs), "judgments")
        for key, (i, a, b) in jobs.items():
            q = questions[i]
            logprobs = judge(q["question"], passages.get(q["chunk_id"], ""), a, b)
            append_jsonl(path, {"key": key, "logprobs": logprobs})
            cache[key] = logprobs
            progress.update(1)
        if server:
            stats["server"] = judge.client.stats()
        else:
            stats["prompt_tokens"] = {"evaluated": judge.runtime.evaluated_tokens, "reused": judge.runtime.reused_tokens}
        judge.close()
        ctx.add_time("judge", time.perf_counter() - start)
    results = {}
    for other in others:
        scores, verdicts = [], []
        for i in range(n):
            mine, theirs = answers[REFERENCE_SYSTEM][i]["answer"], answers[other][i]["answer"]
            if _same(mine, theirs):
                verdicts.append(("tie", "tie"))
                scores.append(0.5)
                continue
            first, second = cache[key_of(i, mine, theirs)], cache[key_of(i, theirs, mine)]
            if first is None or second is None:  # the prompt did not fit the judge's context
                verdicts.append(("tie", "tie"))
                scores.append(0.5)
                continue
            if cfg.eval.judge_mode == "logits":
                verdicts.append((judging.ab_verdict(first), judging.ab_verdict(second)))
                scores.append(judging.debiased_score(first, second, cfg.eval.judge_tie_margin))
            else:
                pair = (judging.likeliest(first), judging.likeliest(second))
                verdicts.append(pair)
                scores.append(judging.combine(*pair))
        results[other] = judging.summarize(scores, verdicts) | {"verdicts": [list(v) for v in verdicts]}
    all_verdicts = [tuple(v) for r in results.values() for v in r["verdicts"]]
    if all_verdicts:
        overall = judging.summarize([0.5] * len(all_verdicts), all_verdicts)
        stats["first_position_rate"] = overall.get("first_position_rate")
        stats["order_consistency"] = overall.get("order_consistency")
    stats["reliable"] = judging.reliable(stats.get("order_consistency"))
    return results, stats


def reference_judge(systems: list[str], scores: dict, n_questions: int, margin: float) -> dict:
    """Which answer is closer to the reference (mean of ROUGE-L F1 and BERTScore F1), ``dpo`` vs the rest."""
    def closeness(name: str, i: int) -> float:
        return (scores[name]["rouge_l"][i] + scores[name]["bertscore_f1"][i]) / 2

    out = {}
    for other in (s for s in systems if s != REFERENCE_SYSTEM):
        verdicts = [judging.reference_verdict(closeness(REFERENCE_SYSTEM, i), closeness(other, i), margin)
                    for i in range(n_questions)]
        out[other] = judging.summarize([judging.order_score(v, True) for v in verdicts]) | {"verdicts": verdicts}
    return out
