"""The preference loss both trainers minimize, written once over any array library (torch, MLX).

DPO: ``-log sigmoid(beta * margin)``, where the margin is how much more the policy than the reference
prefers the chosen reply to the rejected one (per-sequence reply log-probabilities, one pair a row:
column 0 chosen, column 1 rejected). With ``sft_weight`` (RPO) the chosen reply's mean per-token
log-probability is also kept high, so the chosen answers stay likely and not only likelier.
"""

from __future__ import annotations

from typing import Any, Callable


def dpo_loss(policy: Any, reference: Any, beta: float, log_sigmoid: Callable[[Any], Any],
             sft_weight: float = 0.0, chosen_lengths: Any = None) -> tuple[Any, Any]:
    """(loss, margin) for a batch of pairs; ``policy``/``reference``: (pairs, 2) arrays of log-probs."""
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    loss = -log_sigmoid(beta * margin).mean()
    if sft_weight:
        loss = loss - sft_weight * (policy[:, 0] / chosen_lengths).mean()
    return loss, margin
