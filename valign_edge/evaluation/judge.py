"""Pairwise judgments: a local judge model and a reference-based judge, and their win rates.

The judge model sees the grounding passage, the question and two answers, and is asked to
reply ``A``, ``B`` or ``tie``; we read its log-probability of each of those replies. Every
pair is judged in both orders (the system as A, then as B). Two ways to turn that into a
score for the system on the question:

- ``verdict``: the likeliest reply per order; win 1, tie 0.5, loss 0, averaged over the
  two orders. A judge that always says A scores every pair 0.5: position bias becomes ties.
- ``logits`` (default): the system's margin ``log P(A) - log P(B)`` when it is A, minus the
  same margin when it is B, halved. The judge's preference for a position adds to one
  margin and subtracts from the other, so it cancels; what remains is its preference for
  the answer. Margins within ``tie_margin`` nats are ties. This gets a usable signal from
  a tiny judge that nearly always prefers the first position.

The win rate is the mean score over questions, with a Wilson 95% interval over the
questions (ties count half).

The judge's position bias (how often it picks the first answer shown) and order agreement (how
often its two orders agree) are reported beside its win rates; below half agreement its win rates
are marked unreliable.

The reference judge asks which answer is closer to the grounded reference answer (the
mean of ROUGE-L F1 and BERTScore F1), with differences under a margin counted as ties; it
gives a meaningful comparison even when the judge model is tiny.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from valign_edge.evaluation.metrics import wilson

VERDICTS = ("A", "B", "tie")
REPLIES = VERDICTS  # the replies whose log-probabilities the judge model is asked for
ANSWERS_START = "\n\nAnswer A:"  # where the judge prompts of one question start to differ
MAX_ANSWER_CHARS = 700
MAX_PASSAGE_CHARS = 1600


def order_score(verdict: str, system_is_a: bool) -> float:
    """The system's score in one judgment: 1 if it won, 0.5 for a tie, 0 if it lost."""
    if verdict == "tie":
        return 0.5
    return 1.0 if (verdict == "A") == system_is_a else 0.0


def combine(verdict_system_first: str, verdict_system_second: str) -> float:
    """The system's score over both orders (it was answer A in the first, answer B in the second)."""
    return (order_score(verdict_system_first, True) + order_score(verdict_system_second, False)) / 2


def summarize(scores: list[float], verdicts: list[tuple[str, str]] | None = None) -> dict:
    """Win rate with counts and a 95% interval from per-question scores in [0, 1]."""
    n = len(scores)
    wins = sum(1 for s in scores if s > 0.5)
    losses = sum(1 for s in scores if s < 0.5)
    total = sum(scores)
    out = {"win_rate": total / n if n else None, "n": n, "wins": wins, "ties": n - wins - losses,
           "losses": losses, "ci95": list(wilson(total, n)) if n else None}
    if verdicts:
        decided = [v for pair in verdicts for v in pair if v != "tie"]
        # How often the judge picked the first answer shown, and how often the two orders agreed.
        out["first_position_rate"] = (sum(v == "A" for v in decided) / len(decided)) if decided else None
        consistent = sum(1 for a, b in verdicts if (a, b) in (("A", "B"), ("B", "A"), ("tie", "tie")))
        out["order_consistency"] = consistent / len(verdicts)
    return out


MIN_ORDER_AGREEMENT = 0.5  # below this the judge model's win rates are marked unreliable


def reliable(order_consistency: float | None) -> bool | None:
    """Whether a judge whose two answer orders agreed this often can be trusted (None: not measured).
    A judge that mostly keeps its verdict when the answers swap places is judging the answers; one
    that mostly flips it is judging the positions."""
    return None if order_consistency is None else order_consistency >= MIN_ORDER_AGREEMENT


def likeliest(logprobs: dict) -> str:
    """The judge's likeliest reply (summed log-probability of the whole reply)."""
    return max(VERDICTS, key=lambda v: (logprobs.get(v, float("-inf")), v == "tie"))


def ab_verdict(logprobs: dict) -> str:
    return "A" if logprobs["A"] >= logprobs["B"] else "B"


def debiased_margin(system_first: dict, system_second: dict) -> float:
    """Half the sum of the system's margins over the other answer in both orders (in nats): a
    constant preference of the judge for one position adds to one margin and cancels in the sum."""
    return ((system_first["A"] - system_first["B"]) + (system_second["B"] - system_second["A"])) / 2


def debiased_score(system_first: dict, system_second: dict, tie_margin: float) -> float:
    margin = debiased_margin(system_first, system_second)
    return 1.0 if margin > tie_margin else 0.0 if margin < -tie_margin else 0.5


def reference_verdict(closeness_a: float, closeness_b: float, margin: float) -> str:
    if closeness_a - closeness_b > margin:
        return "A"
    if closeness_b - closeness_a > margin:
        return "B"
    return "tie"


@lru_cache(maxsize=None)
def _template(name: str) -> str:
    return resources.files("valign_edge").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8").strip()


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def judge_messages(question: str, passage: str, answer_a: str, answer_b: str) -> list[dict]:
    name = "judge" if passage.strip() else "judge_nodoc"
    user = _template(name).format(passage=_clip(passage, MAX_PASSAGE_CHARS), question=_clip(question, 400),
                                  answer_a=_clip(answer_a, MAX_ANSWER_CHARS) or "(no answer)",
                                  answer_b=_clip(answer_b, MAX_ANSWER_CHARS) or "(no answer)")
    return [{"role": "system", "content": _template("judge_system")}, {"role": "user", "content": user}]


class ModelJudge:
    """A GGUF chat model (through llama.cpp) that compares two answers."""

    def __init__(self, path: str | Path, seed: int = 0, threads: tuple[int, int] = (0, 0)):
        from valign_edge.backends.llama_cpp import Runtime

        self.runtime = Runtime(path, logits=True, seed=seed, threads=threads)
        self.path = Path(path)

    def __call__(self, question: str, passage: str, answer_a: str, answer_b: str) -> dict | None:
        """Log-probabilities of the replies A, B and tie (None when the prompt does not fit)."""
        # The passage and question are shared by consecutive judgments: keep them in the KV cache.
        scored = self.runtime.reply_logprobs(judge_messages(question, passage, answer_a, answer_b), list(REPLIES),
                                             split_at=ANSWERS_START)
        if any(s is None for s in scored):
            return None
        return {reply: round(s[0], 5) for reply, s in zip(REPLIES, scored)}

    def close(self) -> None:
        self.runtime.close()


class ServerJudge:
    """The judge behind an OpenAI-compatible server (``eval.judge = http://HOST:PORT/v1``), through the
    server teacher's client: the same loopback-only rule, the same log-probabilities of A, B and tie."""

    def __init__(self, url: str, model: str = "", allow_remote: bool = False):
        from valign_edge.backends.openai_teacher import OpenAITeacher

        self.client = OpenAITeacher(url, model=model, role="judge", allow_remote=allow_remote)

    def __call__(self, question: str, passage: str, answer_a: str, answer_b: str) -> dict | None:
        return self.client.reply_logprobs(judge_messages(question, passage, answer_a, answer_b), list(REPLIES))

    def close(self) -> None:
        self.client.close()
