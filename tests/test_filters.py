from valign_edge.generation import filters
from valign_edge.generation.negate import contradict


def test_duplicate_questions_are_caught_across_wording():
    idx = filters.QuestionIndex(0.7)
    idx.add("What must you do if you lose a device with patient data?")
    assert idx.is_duplicate("What must you do if you lose a device with patient data?")
    assert idx.is_duplicate("what must you do, if you lose a device with patient data")
    assert not idx.is_duplicate("Can staff accept gifts from drug companies?")


def test_grounding_measures_overlap_with_the_chunk():
    chunk = "You must not accept gifts, meals, travel or payments from suppliers."
    assert filters.grounding("Gifts and meals from suppliers must not be accepted.", chunk) > 0.8
    assert filters.grounding("The weather in Paris is lovely in spring.", chunk) < 0.2


def test_value_cues():
    assert "must" in filters.value_cues("You must report it.")
    assert "no one" in filters.value_cues("No one shall be held in slavery.")
    assert filters.value_cues("The cafeteria opens at nine.") == []


def test_pairs_that_say_the_same_are_rejected():
    assert not filters.distinct_pair("Report it at once.", "report it at once")
    assert filters.distinct_pair("Report mistakes at once.", "Hide mistakes from patients.")


def test_contradiction_check_needs_flipped_polarity_on_the_same_topic():
    assert filters.contradicts("You must not accept gifts from suppliers.", "You may accept gifts from suppliers.")
    assert filters.contradicts("Never falsify a record.", "Falsify a record when it helps.")
    assert not filters.contradicts("Never falsify a record.", "The sky is blue today.")


def test_rule_based_negation_flips_the_norm():
    assert contradict("You must not accept gifts.") == "You may accept gifts."
    assert contradict("Everyone has the right to life.") == "No one has the right to life."
    assert contradict("Harassment is not tolerated.") == "Harassment is tolerated."
    assert contradict("Follow the procedures.") == "Do not follow the procedures."
    assert contradict("We tell the truth.") is None


def test_answer_candidates_rank_relevant_sentences_first():
    chunk = ("## 4. Gifts\n\nYou must not accept gifts from suppliers. Small thank-you cards may be accepted. "
             "Declare any interest in a supplier to the Ethics Office.")
    cands = filters.answer_candidates("Who do I declare an interest in a supplier to?", chunk, top=2)
    assert "Ethics Office" in cands[0]
    assert all("##" not in c for c in cands)


def test_question_shape():
    assert filters.question_ok("What must members do with clinic supplies?")
    assert not filters.question_ok("Supplies.")
    assert not filters.question_ok("What?")


def test_answer_candidates_are_verbatim_spans_of_the_chunk():
    chunk = "Article 9\nNo one shall be subjected to arbitrary arrest. Nor to detention or exile.\n" \
            "Everyone has the right to a fair hearing by a tribunal."
    for span in filters.answer_candidates("Can someone be arrested or exiled arbitrarily?", chunk, top=10):
        assert span in chunk
