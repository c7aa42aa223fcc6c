"""Export verification: a GGUF that parts from the merged model only at a near tie still reproduces it
(F16 rounding moves logits by ~0.2), a real parting does not, and an empty answer never passes."""

from __future__ import annotations

from valign_edge.export import NEAR_TIE, near_ties


def test_partings_are_found_at_the_first_differing_token_with_the_reference_models_gap():
    seen = []

    def gap(ids, a, b):
        seen.append((ids, a, b))
        return 0.05

    reference, out, prompts = [[1, 2, 3], [4, 5, 6], [7, 8]], [[1, 2, 3], [4, 9, 9], [7]], [[0], [10, 11], [12]]
    found = near_ties(reference, out, prompts, eos=99, gap=gap)
    assert found == [{"prompt": 1, "position": 1, "gap": 0.05}, {"prompt": 2, "position": 1, "gap": 0.05}]
    # the gap is asked after the prompt and the shared prefix; a GGUF that stopped early chose end-of-text
    assert seen == [([10, 11, 4], 5, 9), ([12, 7], 8, 99)]
    assert 0.05 <= NEAR_TIE < 1.0


def test_the_gap_is_read_from_the_real_model(tiny_student):
    from valign_edge.backends.hf import logit_gap

    ids = [1, 5, 9, 13]
    assert logit_gap(tiny_student, ids, 7, 7) == 0.0
    forward, backward = logit_gap(tiny_student, ids, 7, 11), logit_gap(tiny_student, ids, 11, 7)
    assert forward != 0.0 and abs(forward + backward) < 1e-5
