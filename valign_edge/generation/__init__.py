"""``valign generate``: the teacher turns chunks into training data.

generate (the stage) -> teacher_io (prompts, parsing) -> synth (questions and grounded answers per chunk,
several in flight through prefetch) and stances (yes/no situations per norm: norms finds the rules,
situations words the cases, negate the rule-based opposite) -> filters (duplicates, grounding, value
cues) -> datasets (the train/valid/test splits in ``data/``, the contract training and export read).

Imports documents, runs, the teacher backends and the foundation modules.
"""
