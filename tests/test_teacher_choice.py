"""The in-process teacher's pick among a chunk's sentences (``choice_grammar``): decoding stops once one
option is left, and the pick is the one full constrained decoding makes, on the real model."""

from __future__ import annotations

from valign_edge.backends.llama_cpp import Choice, LlamaTeacher, choice_grammar
from valign_edge.generation.teacher_io import messages

CHUNK = ("## Visitors\n\nVolunteers must treat every visitor with respect. What visitors tell a volunteer is "
         "private and must not be repeated outside the centre. Paper records are locked away every evening. "
         "Volunteers may invite visitors to the weekly open day.")
OPTIONS = ["Volunteers must treat every visitor with respect.",
           "What visitors tell a volunteer is private and must not be repeated outside the centre.",
           "Paper records are locked away every evening.",
           "Volunteers may invite visitors to the weekly open day."]
QUESTIONS = ["Can I tell my friends what a visitor told me?", "What happens to paper records at night?",
             "How should I treat visitors?", "May I invite a visitor to the open day?"]


def test_choice_stops_early_with_the_same_pick(teacher_gguf):
    teacher = LlamaTeacher(teacher_gguf, n_ctx=1024)
    grammar = choice_grammar(OPTIONS)
    assert isinstance(grammar, Choice) and grammar.options == tuple(OPTIONS)
    full_tokens = early_tokens = 0
    for q in QUESTIONS:
        msgs = messages("answer", CHUNK, question=q)
        before = teacher.completion_tokens
        full = teacher.generate(msgs, grammar=str(grammar), temperature=0.0, max_tokens=200)  # plain text
        full_tokens += teacher.completion_tokens - before
        before = teacher.completion_tokens
        early = teacher.generate(msgs, grammar=grammar, temperature=0.0, max_tokens=200)
        early_tokens += teacher.completion_tokens - before
        assert full in OPTIONS, full
        assert early == full, q
    assert early_tokens * 2 < full_tokens, (early_tokens, full_tokens)
    # A newline in an option is a space in the grammar's literal: the pick is that literal.
    wrapped = choice_grammar(["Paper records are locked\naway every evening.", OPTIONS[0]])
    pick = teacher.generate(messages("answer", CHUNK, question=QUESTIONS[1]), grammar=wrapped, max_tokens=60)
    assert pick in wrapped.options and "\n" not in pick


def test_likeliest_first_grammar_sampling_makes_the_same_text(teacher_gguf):
    """backends/llama_grammar: the same replies as llama-cpp-python's own chain (grammar over the whole
    vocabulary), sampled and greedy, for the three kinds of grammar generation uses."""
    from valign_edge.backends import llama_grammar
    from valign_edge.backends.llama_cpp import FREE_TEXT, gbnf_literal, questions_grammar
    from valign_edge.generation.stances import SENTENCE

    teacher = LlamaTeacher(teacher_gguf, n_ctx=1024)
    against = gbnf_literal("Yes, you can. ")
    calls = [(messages("questions", CHUNK, k=3), questions_grammar(3), 0.9),
             (messages("answer", CHUNK, question=QUESTIONS[0]), FREE_TEXT, 0.0),
             ([{"role": "user", "content": QUESTIONS[0]}], f"root ::= {against} sent\n{SENTENCE}\n", 0.7)]

    def replies() -> list[str]:
        return [teacher.generate(m, grammar=g, temperature=temp, max_tokens=60, seed=seed)
                for m, g, temp in calls for seed in (1, 2)]

    before = llama_grammar.LikeliestFirst.cut
    ours = replies()
    assert llama_grammar.LikeliestFirst.cut - before > 50  # the short list was used, not only the fallback
    del teacher.llm._init_sampler  # llama-cpp-python's own chain
    theirs = replies()
    assert ours == theirs
    assert all(ours)
