"""``valign eval``: the systems side by side on hand-written probes and held-out questions.

evaluate (the stage) -> systems (what is compared, retrieval for the RAG ones), testset and probes (on
what), answers (answers, pair scores, closeness), verdicts (which side the answers take), judge and
judging (pairwise judgments), grading (blind human marks), report, evidence, markdown and plots (what is
written), metrics (text metrics and intervals), demo (the end of ``make demo``).

The only package that reads a probe. Imports documents, generation (its filters, and generate for
``--doc``), runs, the llama.cpp runtime and the foundation modules.
"""
