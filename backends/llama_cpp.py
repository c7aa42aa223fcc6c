"""llama.cpp through llama-cpp-python: the teacher, the judge and the chat runtime.

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

from ..errors import UserError

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


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def choice_grammar(options: list[str]) -> str:
    """Exactly one of ``options``, verbatim: the teacher picks, it cannot invent."""
    return "root ::= " + " | ".join(_literal(o) for o in options) + "\n"


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
    from ..models import check_gguf

    path = Path(path)
    check_gguf(path)
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("llama-cpp-python is not installed; run: make setup") from None
    from ..runtime import auto_threads  # every core when free, one while other work runs

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

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, n_threads: int = 0, n_threads_batch: int = 0,
                 seed: int = 0):
        self.path = Path(path)
        self.llm = load_llama(path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch, seed=seed)
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
        with quiet_native():
            out = self.llm.create_chat_completion(**kwargs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        usage = out.get("usage", {})
        self.completion_tokens += usage.get("completion_tokens", 0)
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        return out["choices"][0]["message"]["content"] or ""

    def reset(self) -> None:
        """Forget the KV cache: the next call computes its whole prompt, as in a fresh process."""
        self.llm.reset()

    def stats(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 2)}
