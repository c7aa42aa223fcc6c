"""A GGUF model (plus an optional LoRA) in llama.cpp for evaluation: greedy answers through the
chat API users chat with, and log-likelihoods of given replies under the same chat template."""

from __future__ import annotations

from pathlib import Path

DECODING = {"temperature": 0.0, "top_k": 1, "repeat_penalty": 1.1}  # the same as `valign chat`
N_CTX = 2048


def auto_threads(n_threads: int = 0, n_threads_batch: int = 0) -> tuple[int, int]:
    """(decode, prompt) threads: given ones, else every core on an idle machine and one when other
    work is running (valign_edge.cpu). OpenMP's spinning threads collapse when they must share cores
    (measured on 2 busy cores, 32 tokens of SmolLM2: 1 thread 7.5 s, 1+2 threads 52 s, 2 threads
    278 s; on idle cores 2 threads are ~1.5x faster than 1)."""
    if n_threads and n_threads_batch:  # nothing to choose: skip sampling the machine's load
        return n_threads, n_threads_batch
    from .cpu import compute_threads

    auto = compute_threads()
    return n_threads or auto, n_threads_batch or auto


class Runtime:
    def __init__(self, model: str | Path, lora: str | Path | None = None, *, logits: bool = False, seed: int = 0,
                 threads: tuple[int, int] = (0, 0), n_ctx: int = N_CTX):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from .backends.llama_cpp import load_llama

        self.n_ctx = n_ctx
        self.reused_tokens = self.evaluated_tokens = 0
        self.llm = load_llama(model, n_ctx=n_ctx, lora_path=lora, seed=seed, logits_all=logits,
                              n_threads=threads[0], n_threads_batch=threads[1])
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:  # base students: the template training used (llama.cpp would guess another)
            from .batching import FALLBACK_CHAT_TEMPLATE

            template = FALLBACK_CHAT_TEMPLATE
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        self.eos = self.llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id >= 0 else ""
        bos = self.llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
        self._prompt_fmt = Jinja2ChatFormatter(template, self.eos, bos, add_generation_prompt=True)
        self._full_fmt = Jinja2ChatFormatter(template, self.eos, bos, add_generation_prompt=False)

    def answer(self, messages: list[dict], max_tokens: int) -> tuple[str, int]:
        """Greedy answer and its token count, through ``create_chat_completion`` like ``valign chat``.

        The context starts empty for every answer, so an answer never depends on which questions
        came before it (a resumed evaluation reproduces an uninterrupted one)."""
        from .backends.llama_cpp import quiet_native

        self.llm.reset()
        with quiet_native():
            out = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens,
                                                  temperature=DECODING["temperature"], top_k=DECODING["top_k"],
                                                  repeat_penalty=DECODING["repeat_penalty"])
        text = (out["choices"][0]["message"]["content"] or "").strip()
        return text, int(out.get("usage", {}).get("completion_tokens", 0))

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _cached(self, tokens: list[int]) -> bool:
        n = len(tokens)
        return self.llm.n_tokens >= n and self.llm.input_ids[:n].tolist() == tokens

    def reply_logprobs(self, messages: list[dict], replies: list[str],
                       split_at: str | None = None) -> list[tuple[float, int] | None]:
        """(summed log-probability, tokens) of each reply as the assistant's turn after ``messages``.

        The prompt is tokenized as the chat API does and evaluated once; the replies share its KV
        cache. With ``split_at``, the rendered prompt is cut before the first occurrence of that
        text: the head is kept in the KV cache for the next call with the same head, the tail is
        evaluated anew. Both halves are always evaluated the same way, so the numbers do not
        depend on what was evaluated before. A reply's end-of-turn marker counts as one of its
        tokens. Needs ``logits=True``."""
        import numpy as np

        from .backends.llama_cpp import quiet_native

        prompt_text = self._prompt_fmt(messages=messages).prompt
        cut = prompt_text.find(split_at) if split_at else -1
        head = self._tokens(prompt_text[:cut]) if cut > 0 else []
        prompt = head + self._tokens(prompt_text[cut:] if cut > 0 else prompt_text)
        if len(prompt) >= self.n_ctx - 8:
            return [None] * len(replies)
        out: list[tuple[float, int] | None] = []
        with quiet_native():
            if head and self._cached(head):
                self.llm.n_tokens = len(head)  # eval() drops the KV cache past this point
                self.reused_tokens += len(head)
            else:
                self.llm.reset()
                if head:
                    self.llm.eval(head)
            self.evaluated_tokens += len(prompt) - self.llm.n_tokens
            self.llm.eval(prompt[self.llm.n_tokens:])
            base = self.llm.n_tokens
            for reply in replies:
                full = self._full_fmt(messages=messages + [{"role": "assistant", "content": reply}]).prompt
                cont = full[len(prompt_text):] if full.startswith(prompt_text) else reply + self.eos
                if self.eos and self.eos in cont:
                    cont = cont[: cont.index(self.eos) + len(self.eos)]
                ids = self._tokens(cont)[: self.n_ctx - base]
                if not ids:
                    out.append(None)
                    continue
                self.llm.n_tokens = base  # drop the previous reply; the prompt's cache stays
                self.llm.eval(ids)
                logits = np.asarray(self.llm.scores[base - 1: base - 1 + len(ids)], dtype=np.float64)
                top = logits.max(axis=1, keepdims=True)
                logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
                out.append((float((logits[np.arange(len(ids)), ids] - logz).sum()), len(ids)))
        return out

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close is not None:
            close()
