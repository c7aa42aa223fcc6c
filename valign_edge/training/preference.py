"""The preference loss both trainers minimize, written once over any array library (torch, MLX).

DPO: ``-log sigmoid(beta * margin)``, where the margin is how much more the policy than the reference
prefers the chosen reply to the rejected one (per-sequence reply log-probabilities, one pair a row:
column 0 chosen, column 1 rejected). With ``sft_weight`` (RPO) the chosen reply's mean per-token
log-probability is also kept high, so the chosen answers stay likely and not only likelier.

The reference log-probabilities (the SFT model's, the policy's starting point) are computed once per
stage key and cached in the adapter folder, so no second model is held in memory: the file contract
and the cache check are here, the forward passes in each trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from valign_edge.files import atomic_write_text, note_written


def dpo_loss(policy: Any, reference: Any, beta: float, log_sigmoid: Callable[[Any], Any],
             sft_weight: float = 0.0, chosen_lengths: Any = None) -> tuple[Any, Any]:
    """(loss, margin) for a batch of pairs; ``policy``/``reference``: (pairs, 2) arrays of log-probs."""
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    loss = -log_sigmoid(beta * margin).mean()
    if sft_weight:
        loss = loss - sft_weight * (policy[:, 0] / chosen_lengths).mean()
    return loss, margin


# --- the reference log-probabilities, computed once per stage key and kept beside the adapter ----------
REFERENCE_FILE = "reference_logps.safetensors"  # {"logps": (pairs, 2)}: chosen, rejected
REFERENCE_META = "reference.json"  # {"key": the DPO stage key they were computed for}
REFERENCE_CHUNK = 8  # pairs per forward pass when computing them


def reference_chunks(pairs: int) -> list[list[int]]:
    """The pair indices in passes of ``REFERENCE_CHUNK``."""
    return [list(range(s, min(pairs, s + REFERENCE_CHUNK))) for s in range(0, pairs, REFERENCE_CHUNK)]


def cached_reference(out: Path, key: str) -> Path | None:
    """The saved reference log-probs of ``out`` when they were computed for ``key``; None: compute them."""
    path = out / REFERENCE_FILE
    try:
        if path.exists() and json.loads((out / REFERENCE_META).read_text()).get("key") == key:
            return path
    except (OSError, ValueError, AttributeError):  # no, unreadable or not-an-object metadata: recompute
        pass
    return None


def save_reference(out: Path, save: Callable[[Path], None], key: str | None = None) -> None:
    """Write the reference log-probs with the trainer's own ``save(path)``; with ``key``, also what they
    were computed for (without it: kept beside the finished adapter, which replaced the folder)."""
    path = out / REFERENCE_FILE
    note_written(path)
    save(path)
    if key is not None:
        atomic_write_text(out / REFERENCE_META, json.dumps({"key": key}))
