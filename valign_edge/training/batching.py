"""Backend-neutral training data preparation: chat-template encoding, prompt masks, buckets.

Both trainers (torch and MLX) use these, so the same rows give the same token sequences,
masks and batches on either backend.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# Students without a chat template (base models) get this one, in training and in both GGUFs (aligned and
# baseline). It starts with the BOS token: chat templates are rendered without adding one, and
# gemma3-270m without <bos> answers "Question: ...\nAnswer:" with "\nAnswer:" or "\n?" to the token
# limit (measured), with it " Paris" or " Yes, you can.". An untrained base model then goes on with
# another "Question:" line: generation stops there (FALLBACK_STOP).
_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"
FALLBACK_CHAT_TEMPLATE = _BOS + (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Answer: ' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Answer:' }}{% endif %}"
)

FALLBACK_STOP = ["\nQuestion:"]


def is_fallback_template(template: str | None) -> bool:
    """``template`` is the fallback one, as written now or (without the BOS) by earlier versions."""
    return bool(template) and template.removeprefix(_BOS) == FALLBACK_CHAT_TEMPLATE.removeprefix(_BOS)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def prompt_ids(tokenizer, user: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def reply_ids(tokenizer, user: str, reply: str, prompt: list[int]) -> list[int]:
    """Token ids of the assistant turn, end-of-turn marker included, as the template renders it."""
    full = list(tokenizer.apply_chat_template([{"role": "user", "content": user},
                                               {"role": "assistant", "content": reply}], tokenize=True,
                                              return_dict=False))
    if full[: len(prompt)] == prompt:
        return full[len(prompt):]
    # Templates whose prompt is not a prefix of the full chat: encode the reply on its own.
    return tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id]


@dataclass
class Example:
    ids: list[int]
    prompt_len: int  # tokens before the reply: masked out of the loss

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Pair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


def _fit(prompt: list[int], reply: list[int], max_len: int) -> tuple[list[int], list[int]]:
    prompt = prompt[-(max_len // 2):] if len(prompt) > max_len // 2 and len(prompt) + len(reply) > max_len else prompt
    return prompt, reply[: max_len - len(prompt)]


def encode_sft(tokenizer, rows: list[dict], max_len: int) -> list[Example]:
    out = []
    for row in rows:
        user, reply = row["messages"][0]["content"], row["messages"][-1]["content"]
        p = prompt_ids(tokenizer, user)
        p, r = _fit(p, reply_ids(tokenizer, user, reply, p), max_len)
        if r:
            out.append(Example(p + r, len(p)))
    return out


def encode_dpo(tokenizer, rows: list[dict], max_len: int) -> list[Pair]:
    out = []
    for row in rows:
        p = prompt_ids(tokenizer, row["prompt"])
        c = reply_ids(tokenizer, row["prompt"], row["chosen"], p)
        r = reply_ids(tokenizer, row["prompt"], row["rejected"], p)
        pc, c = _fit(p, c, max_len)
        pr, r = _fit(p, r, max_len)
        if c and r and pc == pr:
            out.append(Pair(pc, c, r))
    return out


def bucket_batches(lengths: list[int], batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Group items of similar length so a padded batch holds at most ``batch_tokens`` tokens.

    Sorting by length keeps padding near zero; the order of batches is shuffled per epoch.
    """
    rng = random.Random(seed * 1000 + epoch)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = pack(order, lengths, batch_tokens)
    rng.shuffle(batches)
    return batches


def pack(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of ``order`` whose padded size (longest x count) stays within ``budget``;
    a sequence longer than the budget goes alone."""
    out: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        grown = max(longest, lengths[i])
        if current and grown * (len(current) + 1) > budget:
            out.append(current)
            current, grown = [], lengths[i]
        current.append(i)
        longest = grown
    if current:
        out.append(current)
    return out


def plan_steps(n_batches_per_epoch: int, epochs: float, max_steps: int) -> int:
    steps = max(1, math.ceil(n_batches_per_epoch * epochs))
    return min(steps, max_steps) if max_steps else steps


def lr_at(step: int, total: int, warmup: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate. The warm-up never takes more than
    a tenth of the steps: a short DPO stage (a handful of steps) must still train at its rate."""
    warmup = min(warmup, total // 10)
    if step < warmup:
        return base_lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def micro_batches(batch: list[int], lengths: list[int], micro_tokens: int) -> list[list[int]]:
    """Split one optimizer step's batch into forward/backward passes of at most ``micro_tokens``
    padded tokens (at least one sequence each), so a large step needs a fraction of the memory.
    An empty batch (a process's shard of a step with fewer items than processes) has no pass."""
    if micro_tokens <= 0:
        return [batch] if batch else []
    return pack(batch, lengths, micro_tokens)


def step_batches(lengths: list[int], batch_tokens: int, seed: int, total_steps: int) -> list[list[int]]:
    """The full, deterministic sequence of batches for ``total_steps`` (so resume can skip ahead)."""
    out: list[list[int]] = []
    epoch = 0
    while len(out) < total_steps:
        out.extend(bucket_batches(lengths, batch_tokens, seed, epoch))
        epoch += 1
    return out[:total_steps]
