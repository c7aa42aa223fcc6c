"""llama.cpp through llama-cpp-python, the one module that talks to it: the teacher (``LlamaTeacher``),
the runtime evaluation, the judge and ``valign chat`` answer with (``Runtime``), the grammars, GGUF
metadata, quantization and the greedy tokens export verifies.

Output the pipeline parses is constrained by hand-written GBNF grammars with single-line
strings: the JSON-schema route lets strings hold raw newlines, which small teachers fill
with junk.
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from valign_edge.cpu import auto_threads
from valign_edge.errors import UserError
from valign_edge.models import check_gguf
from valign_edge.repetition import cut_loop, loop_end

DECODING = {"temperature": 0.0, "top_k": 1, "repeat_penalty": 1.1}  # evaluation and `valign chat`
N_CTX = 2048
QUANT_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "f16": "LLAMA_FTYPE_MOSTLY_F16"}

QUESTION = r"""
q ::= "\"" ("What" | "Why" | "How" | "Who" | "When" | "Which" | "Can" | "Should" | "May" | "Must" | "Is" | "Are" | "Does" | "Do" | "If") " " qc{8,160} "?\""
qc ::= [^"\\?\x00-\x1f]
ws ::= " "?
"""

# Free text on one line; answers that hit the token limit are caught as truncated later.
FREE_TEXT = r'root ::= [A-Z0-9"(] [^\n\x00-\x1f]+'


def questions_grammar(n: int) -> str:
    """``{"questions": [q, ... n]}``: exactly n single-line questions of bounded length."""
    items = ' ws "," ws '.join(["q"] * n)
    return f'root ::= "{{" ws "\\"questions\\"" ws ":" ws "[" ws {items} ws "]" ws "}}"\n' + QUESTION


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal (one line)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


class Choice(str):
    """A grammar admitting exactly one of ``options`` (as text: any teacher takes it as a grammar). The
    in-process teacher stops decoding once one option is left: the grammar forces the rest."""

    options: tuple[str, ...]


def choice_grammar(options: list[str]) -> str:
    """Exactly one of ``options``, verbatim: the teacher picks, it cannot invent."""
    grammar = Choice("root ::= " + " | ".join(gbnf_literal(o) for o in options) + "\n")
    grammar.options = tuple(o.replace("\n", " ") for o in options)  # what gbnf_literal makes of them
    return grammar


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """llama.cpp logs to fds 1 and 2 from C; keep the terminal for our own output."""
    if os.environ.get("VALIGN_LLAMA_VERBOSE"):
        yield
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def load_llama(path: str | Path, *, n_ctx: int = 2048, n_threads: int = 0, n_threads_batch: int = 0,
               seed: int = 0, lora_path: str | Path | None = None, vocab_only: bool = False,
               logits_all: bool = False):
    """Open a GGUF with llama.cpp; any failure becomes a one-line UserError."""
    path = Path(path)
    check_gguf(path)
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("llama-cpp-python is not installed; run: make setup") from None
    decode, batch = auto_threads(n_threads, n_threads_batch)
    kwargs = dict(model_path=str(path), n_ctx=n_ctx, n_threads=decode, n_threads_batch=batch, seed=seed, verbose=False,
                  vocab_only=vocab_only, logits_all=logits_all)
    if lora_path:
        kwargs["lora_path"] = str(lora_path)
    try:
        with quiet_native():
            llm = Llama(**kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"llama.cpp cannot load {path.name}: {str(exc).splitlines()[0]} "
                        "(truncated file or unsupported architecture?)") from None
    check_chat_template(llm.metadata.get("tokenizer.chat_template"), path)
    return llm


def check_chat_template(template: str | None, path: Path) -> None:
    """Render the GGUF's chat template once, in the same Jinja sandbox llama-cpp-python uses for every
    chat call, so a template that tries to escape it (or is broken) is refused in one line at load time."""
    if not template:
        return
    from jinja2 import TemplateError
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    try:
        Jinja2ChatFormatter(template=template, eos_token="", bos_token="")(messages=[{"role": "user", "content": "hi"}])
    except TemplateError as exc:
        raise UserError(f"{path.name}: its chat template was refused ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'cannot render'})") from None


@lru_cache(maxsize=32)
def _grammar(text: str):
    from llama_cpp import LlamaGrammar

    with quiet_native():
        return LlamaGrammar.from_string(text, verbose=False)


class LlamaTeacher:
    """A GGUF chat model as the ``Teacher``: grammar-constrained generation, token counting."""

    parallel = False  # one llama.cpp context: calls from one thread at a time

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, n_threads: int = 0, n_threads_batch: int = 0,
                 seed: int = 0):
        self.path = Path(path)
        self.llm = load_llama(path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch, seed=seed)
        from valign_edge.backends import llama_grammar

        llama_grammar.install(self.llm)  # the same picks, the grammar asked about the likeliest tokens first
        self.n_ctx = n_ctx
        self.calls = 0
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.seconds = 0.0
        if not self.llm.metadata.get("tokenizer.chat_template"):
            raise UserError(f"{self.path.name} has no chat template; the teacher must be an instruction-tuned chat model")

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def generate(self, messages: list[dict], *, grammar: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 256, seed: int | None = None) -> str:
        kwargs = dict(messages=messages, temperature=temperature, max_tokens=max_tokens,
                      top_p=0.95 if temperature > 0 else 1.0, top_k=40 if temperature > 0 else 1,
                      repeat_penalty=1.1)
        if grammar:
            kwargs["grammar"] = _grammar(grammar)
        if seed is not None:
            kwargs["seed"] = seed
        start = time.perf_counter()
        if isinstance(grammar, Choice):
            text, completion, prompt = self._choose(kwargs, grammar.options)
        else:
            with quiet_native():
                out = self.llm.create_chat_completion(**kwargs)
            usage = out.get("usage", {})
            text = out["choices"][0]["message"]["content"] or ""
            completion, prompt = usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.completion_tokens += completion
        self.prompt_tokens += prompt
        return text

    def _choose(self, kwargs: dict, options: tuple[str, ...]) -> tuple[str, int, int]:
        """The constrained decoding ``generate`` runs, stopped as soon as a single option still fits what
        was decoded: the same pick, without decoding the tokens the grammar forces (most of a sentence).
        Returns the pick, the tokens decoded and the prompt's length (the stream reports no usage: the
        context's length less what was decoded, within a token)."""
        text, tokens = "", 0
        with quiet_native():
            stream = self.llm.create_chat_completion(stream=True, **kwargs)
            for chunk in stream:
                piece = chunk["choices"][0]["delta"].get("content")
                if not piece:
                    continue
                text, tokens = text + piece, tokens + 1
                left = [o for o in options if o.startswith(text)]
                if len(left) == 1:
                    text = left[0]
                    break
            stream.close()
        return text, tokens, max(0, self.llm.n_tokens - tokens)

    def reset(self) -> None:
        """Forget the KV cache: the next call computes its whole prompt, as in a fresh process."""
        self.llm.reset()

    def stats(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 2)}


def gguf_metadata(path: Path) -> dict:
    """The GGUF's key/value metadata (vocab only: fast)."""
    return dict(load_llama(path, vocab_only=True).metadata)


def quantize_gguf(src: Path, dst: Path, quant: str) -> None:
    """``src`` (F16 GGUF) quantized to ``quant`` (a key of ``QUANT_FTYPES``) into ``dst``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.nthread = 0
    with quiet_native():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise UserError(f"quantizing {src.name} to {quant} failed")


def greedy_tokens(path: Path, prompts: list[list[int]], n_tokens: int, lora: Path | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts (what export checks against the merged model)."""
    llm = load_llama(path, n_ctx=1024, lora_path=lora)
    eos = llm.token_eos()
    outs = []
    for ids in prompts:
        llm.reset()
        out: list[int] = []
        for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if tok == eos or len(out) >= n_tokens:
                break
            out.append(tok)
        outs.append(out)
    return outs


class Runtime:
    """A GGUF model (plus an optional LoRA) for evaluation and chat: greedy answers through the chat API
    users chat with, and log-likelihoods of given replies under the same chat template."""

    def __init__(self, model: str | Path, lora: str | Path | None = None, *, logits: bool = False, seed: int = 0,
                 threads: tuple[int, int] = (0, 0), n_ctx: int = N_CTX):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.n_ctx = n_ctx
        self.reused_tokens = self.evaluated_tokens = 0
        self.llm = load_llama(model, n_ctx=n_ctx, lora_path=lora, seed=seed, logits_all=logits,
                              n_threads=threads[0], n_threads_batch=threads[1])
        from valign_edge.training.batching import FALLBACK_CHAT_TEMPLATE, FALLBACK_STOP, is_fallback_template

        # base students: the template training used (llama.cpp would guess another)
        template = self.llm.metadata.get("tokenizer.chat_template") or FALLBACK_CHAT_TEMPLATE
        # A base student goes on with the next "Question:" or repeats a line to the token limit: stop there.
        self.stop_loops = is_fallback_template(template)
        self._decoding = {**DECODING, "stop": FALLBACK_STOP} if self.stop_loops else DECODING
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        self.eos = self.llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id >= 0 else ""
        bos = self.llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else ""
        self._prompt_fmt = Jinja2ChatFormatter(template, self.eos, bos, add_generation_prompt=True,
                                               stop_token_ids=[eos_id] if eos_id >= 0 else None)
        self._full_fmt = Jinja2ChatFormatter(template, self.eos, bos, add_generation_prompt=False)
        if not self.llm.metadata.get("tokenizer.chat_template"):
            # Answers too (chat, evaluation): without this llama-cpp-python formats a GGUF that has no
            # template as Llama-2 ("[INST] ...") and a base student answers nothing.
            self.llm.chat_handler = self._prompt_fmt.to_chat_handler()

    def answer(self, messages: list[dict], max_tokens: int) -> tuple[str, int]:
        """Greedy answer and its token count, through ``create_chat_completion`` like ``valign chat``.

        The context starts empty for every answer, so an answer never depends on which questions
        came before it (a resumed evaluation reproduces an uninterrupted one)."""
        self.llm.reset()
        if self.stop_loops:
            pieces = list(self.stream(messages, max_tokens))  # one piece per generated token
            return cut_loop("".join(pieces)).strip(), len(pieces)
        with quiet_native():
            out = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, **self._decoding)
        text = (out["choices"][0]["message"]["content"] or "").strip()
        return text, int(out.get("usage", {}).get("completion_tokens", 0))

    def stream(self, messages: list[dict], max_tokens: int) -> Iterator[str]:
        """The greedy answer's text pieces as llama.cpp writes them (``valign chat``); the KV cache of a
        conversation's earlier turns is reused. A base student's answer stops at the piece that completes
        a loop (``repetition.loop_end``); ``repetition.cut_loop`` trims the copies off the whole text."""
        stream = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, stream=True,
                                                 **self._decoding)
        text = ""
        while True:
            # Silence llama.cpp only while it computes: a piece yielded inside the redirect would be
            # written by the caller to /dev/null.
            with quiet_native():
                part = next(stream, None)
            if part is None:
                return
            piece = part["choices"][0]["delta"].get("content") or ""
            if piece:
                yield piece
                text += piece
                if self.stop_loops and loop_end(text) is not None:
                    stream.close()
                    return

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

    def first_token_logprobs(self, messages: list[dict], replies: list[str]) -> list[float] | None:
        """Log-probability of each reply's first token as the assistant's first token after ``messages``
        (a forced choice such as Yes vs No); None when the prompt does not fit. Needs ``logits=True``."""
        import numpy as np

        prompt_text = self._prompt_fmt(messages=messages).prompt
        prompt = self._tokens(prompt_text)
        if len(prompt) >= self.n_ctx - 8:
            return None
        firsts = []
        for reply in replies:
            full = self._full_fmt(messages=messages + [{"role": "assistant", "content": reply}]).prompt
            cont = full[len(prompt_text):] if full.startswith(prompt_text) else reply
            firsts.append(self._tokens(cont)[0])
        with quiet_native():
            self.llm.reset()
            self.llm.eval(prompt)
            logits = np.asarray(self.llm.scores[len(prompt) - 1], dtype=np.float64)
        top = logits.max()
        logz = top + np.log(np.exp(logits - top).sum())
        return [float(logits[t] - logz) for t in firsts]

    def close(self) -> None:
        close = getattr(self.llm, "close", None)
        if close is not None:
            close()
