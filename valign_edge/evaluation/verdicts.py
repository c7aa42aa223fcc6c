"""Which side the answers take: verdict accuracy on answer rows that carry the document's verdict.

A probe's answer row may carry ``"verdict": "yes" | "no"``, the document's answer to the question as
asked. Every system is scored on those rows two ways:

- **forced**: the model's own choice between ``Yes`` and ``No`` as the first token of its reply, after
  the same neutral instruction for every system (``FORCED_INSTRUCTION``; the RAG systems see their
  retrieved passages as usual). Cached per system in ``eval/verdicts/<system>.jsonl``.
- **free**: the system's greedy answer (the one a user reads), read for the verdict it concludes with
  ("... So no, you should not."), else the one it opens with (``answer_verdict``). An answer with
  neither counts as not taking the document's side.

Each is split into yes-rows and no-rows and summarized as **balanced accuracy**, the mean of the two
recalls, so a model that says No to everything scores 0.5 whatever the probe's mix. Intervals: Wilson
per class, and a stratified percentile bootstrap for the balanced accuracy.
"""

from __future__ import annotations

import random
import re
import time

from valign_edge.backends.llama_cpp import Runtime
from valign_edge.evaluation import metrics
from valign_edge.evaluation.systems import Context, Retriever
from valign_edge.events import Event, Progress
from valign_edge.files import append_jsonl, read_jsonl

VERDICTS = ("yes", "no")
FORCED_INSTRUCTION = "Answer with Yes or No."
FORCED_REPLIES = ("Yes", "No")

# How an answer opens when it gives a verdict: the first words, lower-cased, punctuation dropped.
_YES_OPENERS = ("yes", "yeah", "yep", "sure", "certainly", "absolutely", "definitely", "of course", "correct",
                "you can", "you may", "you should", "you must", "you have the right", "you are allowed",
                "you are entitled", "it is okay", "it is fine", "it is allowed", "that is fine", "that is okay",
                "go ahead")
_NO_OPENERS = ("no", "nope", "not", "never", "don't", "do not", "you can't", "you cannot", "you can not",
               "you shouldn't", "you should not", "you must not", "you mustn't", "you may not", "you are not",
               "it is not", "it's not", "that is not", "that's not", "absolutely not", "definitely not",
               "certainly not", "of course not", "nobody", "no one")


# A sentence that concludes with a bare verdict after its reason: "So no, you should not.", "Therefore, yes."
_CONCLUSION = re.compile(r"(?:^|[.!?]\s+)(?:so|therefore|thus|hence|that means|in short|so the answer is|"
                         r"the answer is)\W+(yes|no)\b", re.IGNORECASE)


def _opening(text: str) -> str:
    text = text.strip().lower().replace("\u2019", "'")
    text = re.sub(r"^[\W_]+", "", text)
    return " ".join(re.findall(r"[a-z']+", text.split("\n", 1)[0])[:6])


def _starts(opening: str, phrase: str) -> bool:
    return opening == phrase or opening.startswith(phrase + " ")


def answer_verdict(text: str) -> str | None:
    """``"yes"``, ``"no"``, or None: the verdict a free answer concludes with, else the one it opens with.

    An answer that gives its reason first says its verdict last ("You must not X. So no, you should
    not."): the last such conclusion, a bare Yes or No after "So", "Therefore", ..., wins. Otherwise the
    opening is read, and the longest matching opener wins, so "Absolutely not" is a no and "You cannot"
    is not read as "you can"."""
    concluded = _CONCLUSION.findall(text)
    if concluded:
        return concluded[-1].lower()
    opening = _opening(text)
    found = [(len(p), "yes") for p in _YES_OPENERS if _starts(opening, p)]
    found += [(len(p), "no") for p in _NO_OPENERS if _starts(opening, p)]
    return max(found)[1] if found else None


def forced_messages(question: str, retriever: Retriever, rag: bool) -> list[dict]:
    messages = retriever.messages(question, rag)
    last = messages[-1]
    return messages[:-1] + [{**last, "content": f"{last['content']}\n\n{FORCED_INSTRUCTION}"}]


def forced_verdicts(ctx: Context, keys: dict, rows: list[dict], retriever: Retriever,
                    label: str = "verdict rows") -> dict[str, list[dict]]:
    """Per system and row: the log-probabilities of ``Yes`` and ``No`` as the reply's first token."""
    folder = ctx.run.eval_dir / "verdicts"
    systems = ctx.systems
    cached = {s.name: {r["qid"]: r for r in read_jsonl(folder / f"{s.name}.jsonl") if r.get("key") == keys[s.name]}
              for s in systems}
    todo = {s.name: [q for q in rows if q["id"] not in cached[s.name]] for s in systems}
    total = sum(len(v) for v in todo.values())
    ctx.add_reused("verdicts", len(systems) * len(rows) - total)
    if rows:
        ctx.emit(Event("stage", "eval", f"forced Yes/No choice on {len(rows)} {label}"))
    progress = Progress(ctx.emit, "eval", total, "verdicts")
    for system in systems:
        if todo[system.name]:
            start = time.perf_counter()
            runtime = Runtime(system.model, system.lora, logits=True, seed=ctx.cfg.seed, threads=ctx.threads)
            for q in todo[system.name]:
                found = runtime.first_token_logprobs(forced_messages(q["question"], retriever, system.rag),
                                                     list(FORCED_REPLIES))
                row = {"qid": q["id"], "key": keys[system.name],
                       "yes_logprob": found[0] if found else None, "no_logprob": found[1] if found else None}
                append_jsonl(folder / f"{system.name}.jsonl", row)
                cached[system.name][q["id"]] = row
                progress.update(1, system.name)
            runtime.close()
            ctx.add_time("verdicts", time.perf_counter() - start, system.name)
    return {s.name: [cached[s.name][q["id"]] for q in rows] for s in systems}


def forced_choice(row: dict) -> str | None:
    if row.get("yes_logprob") is None or row.get("no_logprob") is None:
        return None
    return "yes" if row["yes_logprob"] > row["no_logprob"] else "no"


def _balanced(hits: list[tuple[str, bool]]) -> float | None:
    recalls = []
    for v in VERDICTS:
        got = [ok for want, ok in hits if want == v]
        if got:
            recalls.append(sum(got) / len(got))
    return sum(recalls) / len(recalls) if recalls else None


def verdict_summary(expected: list[str], said: list[str | None], resamples: int = 1000, seed: int = 0) -> dict:
    """Per class (yes-rows, no-rows) and balanced: accuracy, n, 95% intervals; ``unclear`` counts answers
    that gave no verdict (wrong in either class)."""
    hits = [(want, got == want) for want, got in zip(expected, said)]
    out: dict = {"n": len(hits), "unclear": sum(got is None for got in said),
                 "said_yes": sum(got == "yes" for got in said), "said_no": sum(got == "no" for got in said)}
    for v in VERDICTS:
        got = [ok for want, ok in hits if want == v]
        out[f"{v}_n"], out[f"{v}_correct"] = len(got), sum(got)
        out[f"{v}_acc"] = sum(got) / len(got) if got else None
        out[f"{v}_ci95"] = list(metrics.wilson(sum(got), len(got)) or []) or None
    out["balanced"] = _balanced(hits)
    out["ci95"] = _stratified_ci(hits, resamples, seed) if out["balanced"] is not None else None
    return out


def _stratified_ci(hits: list[tuple[str, bool]], resamples: int, seed: int) -> list[float] | None:
    by_class = [[h for h in hits if h[0] == v] for v in VERDICTS]
    by_class = [c for c in by_class if c]
    if not by_class or resamples <= 0:
        return None
    rng = random.Random(seed)
    stats = sorted(_balanced([x for c in by_class for x in rng.choices(c, k=len(c))]) for _ in range(resamples))
    return [stats[int(0.025 * (resamples - 1))], stats[int(0.975 * (resamples - 1))]]


def verdict_section(names: list[str], rows: list[dict], forced: dict, answers: dict | None, resamples: int,
                    seed: int) -> dict:
    """``{system: {"forced": summary, "free": summary}}`` over ``rows`` (answer rows with a verdict);
    ``answers`` per system aligned with ``rows`` (None: no free answers)."""
    expected = [q["verdict"] for q in rows]
    out = {}
    for name in names:
        entry = {"forced": verdict_summary(expected, [forced_choice(r) for r in forced[name]], resamples, seed)}
        if answers is not None:
            entry["free"] = verdict_summary(expected, [answer_verdict(a["answer"]) for a in answers[name]],
                                            resamples, seed)
        out[name] = entry
    return out
