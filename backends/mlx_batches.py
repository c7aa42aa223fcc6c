"""MLX arrays for one batch of replies, and the log-probabilities of their tokens."""

from __future__ import annotations

PAD_MULTIPLE = 16  # sequence lengths are padded to this, so the compiled step sees few shapes


def _padded_len(n: int) -> int:
    # inputs are ids[:, :-1]: pad so that their length is a multiple of PAD_MULTIPLE
    return 1 + -(-(n - 1) // PAD_MULTIPLE) * PAD_MULTIPLE


def reply_batch(seqs: list[list[int]], starts: list[int], pad_id: int):
    """Padded ids and the reply targets as flat positions into ``ids[:, 1:]``.

    Returns ``ids`` (B, T), ``positions`` (N,), ``weights`` (N,) and ``rows`` (B, N): the
    positions are padded to a multiple of ``PAD_MULTIPLE`` with weight 0 (fewer shapes to
    compile), and ``rows`` sums per-position values into per-sequence ones.
    """
    import numpy as np

    width = _padded_len(max(len(s) for s in seqs))
    ids = np.full((len(seqs), width), pad_id, dtype=np.int32)
    flat: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    for i, (s, start) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = s
        # target j is token j + 1: the reply's tokens are targets start-1 .. len-2
        flat.append(np.arange(start - 1, len(s) - 1) + i * (width - 1))
        owner.append(np.full(len(s) - start, i))
    positions, owners = np.concatenate(flat), np.concatenate(owner)
    n = -(-len(positions) // PAD_MULTIPLE) * PAD_MULTIPLE
    weights = np.zeros(n, dtype=np.float32)
    weights[: len(positions)] = 1.0
    rows = np.zeros((len(seqs), n), dtype=np.float32)
    rows[owners, np.arange(len(positions))] = 1.0
    positions = np.concatenate([positions, np.zeros(n - len(positions), dtype=positions.dtype)])
    return ids, positions.astype(np.int32), weights, rows


def _split_head(model):
    """(body, head) where the logits are just the LM head over the body's output.

    Then the head and the softmax over the vocabulary run on reply positions only; they
    are a large share of a small model's step (49k-token vocabulary, 576-wide hidden).
    """
    if type(model).__module__.rsplit(".", 1)[-1] not in ("llama", "qwen2", "qwen3"):
        return None
    if model.args.tie_word_embeddings:
        return model.model, model.model.embed_tokens.as_linear
    return model.model, model.lm_head


def target_logps(model, ids, positions):
    """log p(target) at the given flat positions of ``ids[:, 1:]``."""
    import mlx.core as mx
    import mlx.nn as nn

    split = _split_head(model)
    if split is None:
        logits = model(ids[:, :-1])
        logits = logits.reshape(-1, logits.shape[-1])[positions]
    else:
        body, head = split
        hidden = body(ids[:, :-1])
        logits = head(hidden.reshape(-1, hidden.shape[-1])[positions])
    return -nn.losses.cross_entropy(logits.astype(mx.float32), ids[:, 1:].reshape(-1)[positions])
