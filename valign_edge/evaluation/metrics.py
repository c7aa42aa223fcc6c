"""Text metrics against reference answers, and the interval arithmetic the report uses.

BLEU is sacreBLEU (0-100, its default 13a tokenization), ROUGE-L is Google's
``rouge-score`` F1 with stemming, BERTScore is computed directly on ``transformers`` with
the local all-MiniLM-L6-v2 folder: token embeddings of the last (6th) layer, greedy
cosine matching, no idf, [CLS]/[SEP] excluded, one pair at a time so padding never enters
a score (the ``bert-score`` package's batched mode scores padding as similarity 0).

``bert-score`` gives special tokens weight 0 but still lets the other side's tokens match
them; ``match_special_tokens=True`` reproduces that exactly (checked against bert-score
0.3.13 with ``batch_size=1``); the default leaves them out of the matching too, which moves
F1 by a few thousandths at most.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def sentence_bleu(hyp: str, ref: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hyp, [ref]).score)


def rouge_l(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """ROUGE-L F1 per pair (``rouge-score``, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps, refs)]


class BertScorer:
    """BERTScore (precision, recall, F1) with a local BERT-style encoder folder."""

    def __init__(self, model_dir: str | Path | None = None, num_layers: int = 6, threads: int = 0,
                 match_special_tokens: bool = False):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            from valign_edge.models import resolve

            model_dir = resolve("minilm-l6-v2", "embedder").path
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()
        self.num_layers = num_layers
        self.match_special_tokens = match_special_tokens
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)
        self._cache: dict[str, object] = {}

    def embed(self, text: str):
        """Unit-norm token embeddings (tokens, dim) and a mask of the special tokens."""
        if text in self._cache:
            return self._cache[text]
        import torch

        enc = self.tokenizer(text.strip(), return_tensors="pt", truncation=True, max_length=self.max_length,
                             return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")[0].bool()
        with torch.inference_mode():
            out = self.model(**enc, output_hidden_states=True)
        emb = out.hidden_states[self.num_layers][0]
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self._cache[text] = (emb, special)
        return emb, special

    def score_pair(self, cand: str, ref: str) -> tuple[float, float, float]:
        (c, c_special), (r, r_special) = self.embed(cand), self.embed(ref)
        if bool(c_special.all()) or bool(r_special.all()):  # an empty answer matches nothing
            return 0.0, 0.0, 0.0
        if not self.match_special_tokens:
            c, r = c[~c_special], r[~r_special]
            c_special, r_special = c_special[~c_special], r_special[~r_special]
        sim = c @ r.T
        p = float(sim.max(dim=1).values[~c_special].mean())
        rec = float(sim.max(dim=0).values[~r_special].mean())
        f = 2 * p * rec / (p + rec) if p + rec > 0 else 0.0
        return p, rec, f

    def score(self, cands: Sequence[str], refs: Sequence[str]) -> tuple[list[float], list[float], list[float]]:
        rows = [self.score_pair(c, r) for c, r in zip(cands, refs)]
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


# --- intervals -------------------------------------------------------------------------

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (``successes`` may be fractional: ties count half)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(values: Sequence, stat: Callable[[list], float] | None = None, resamples: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``stat`` (default: the mean) over ``values``, seeded."""
    import numpy as np

    n = len(values)
    if n == 0:
        return None
    if n == 1:
        v = stat(list(values)) if stat else float(values[0])
        return v, v
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    if stat is None:
        arr = np.asarray(values, dtype=float)
        stats = arr[idx].mean(axis=1)
    else:
        items = list(values)
        stats = np.array([stat([items[i] for i in row]) for row in idx])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if len(values) else None


# --- preference pairs ------------------------------------------------------------------------

def preference_margin(row: dict) -> float | None:
    """Mean log-probability per token of the chosen answer minus that of the rejected one (nats/token)."""
    if row.get("chosen_logprob") is None or row.get("rejected_logprob") is None:
        return None
    if not row.get("chosen_tokens") or not row.get("rejected_tokens"):
        return None
    return row["chosen_logprob"] / row["chosen_tokens"] - row["rejected_logprob"] / row["rejected_tokens"]


def preference_summary(rows: Sequence[dict], resamples: int = 1000, seed: int = 0) -> dict:
    """Accuracy (a tie counts half) with its Wilson interval, and the mean length-normalized margin with a
    bootstrap interval, from per-pair ``{chosen,rejected}_{logprob,tokens}`` rows. Pairs whose log-probability
    could not be computed (did not fit the context) are counted as ``skipped``, not scored."""
    margins = [m for m in (preference_margin(r) for r in rows) if m is not None]
    correct = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    summed = [r["chosen_logprob"] - r["rejected_logprob"] for r in rows
              if r.get("chosen_logprob") is not None and r.get("rejected_logprob") is not None]
    n = len(margins)
    return {"accuracy": correct / n if n else None, "ci95": list(wilson(correct, n)) if n else None,
            "correct": correct, "n": n, "skipped": len(rows) - n,
            "mean_margin": mean(margins), "margin_ci95": list(bootstrap_ci(margins, resamples=resamples, seed=seed))
            if n else None, "margins": [round(m, 4) for m in margins],
            # without length normalization, for comparison with DPO's own (summed) reward
            "accuracy_unnormalized": (sum(m > 0 for m in summed) / len(summed)) if summed else None}
