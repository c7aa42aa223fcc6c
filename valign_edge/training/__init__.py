"""``valign train``: LoRA SFT, then DPO, through a trainer backend.

train (the stage: backend choice, memory, one process or several) -> plan (one stage's rows, encoded
sequences, batches and key, the same for every backend) -> batching (chat-template encoding, prompt
masks, length buckets). The trainers themselves live in ``backends/`` and take their plan from here.

Imports generation's datasets (what it trains on), runs, the backends registry and the foundation modules.
"""
