"""Several chunks in flight through a server teacher (``generate.concurrency``), with the records of a
sequential run.

A chunk's teacher calls depend on the chunks before it: questions and situations are checked for
duplicates against everything kept so far, and a rejected one costs a retry. So chunks cannot simply
run side by side. Instead each chunk runs ahead, on a thread, on a copy of the synthesizer as it was
when the chunk was sent off, and every teacher call it makes is remembered (request -> reply). Then
the chunks are written in order exactly as before, by the real synthesizer, through a teacher that
answers a request it has seen from memory and asks the server otherwise (when the chunks committed in
between changed what the chunk needs). The written records are therefore those of a sequential run
wherever the server answers the same request the same way; only the time differs.
"""

from __future__ import annotations

import copy
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from valign_edge.errors import Cancelled


def _key(messages: list[dict], grammar: str | None, temperature: float, max_tokens: int, seed: int | None) -> str:
    return json.dumps([messages, grammar, temperature, max_tokens, seed], sort_keys=True, ensure_ascii=False)


class _Recorder:
    """The teacher for a chunk running ahead: asks the server, remembers each reply."""

    def __init__(self, teacher: Any, stop: threading.Event):
        self.teacher, self.stop, self.replies = teacher, stop, {}

    def generate(self, messages, *, grammar=None, temperature=0.0, max_tokens=256, seed=None) -> str:
        if self.stop.is_set():
            raise Cancelled("generation cancelled")
        text = self.teacher.generate(messages, grammar=grammar, temperature=temperature, max_tokens=max_tokens,
                                     seed=seed)
        self.replies[_key(messages, grammar, temperature, max_tokens, seed)] = text
        return text

    def count_tokens(self, text: str) -> int:
        return self.teacher.count_tokens(text)

    def reset(self) -> None:
        pass


class _Replay:
    """The teacher the chunk is written with: remembered replies first, the server for the rest."""

    def __init__(self, teacher: Any, replies: dict[str, str]):
        self.teacher, self.replies = teacher, replies

    def generate(self, messages, *, grammar=None, temperature=0.0, max_tokens=256, seed=None) -> str:
        key = _key(messages, grammar, temperature, max_tokens, seed)
        if key in self.replies:
            return self.replies[key]
        return self.teacher.generate(messages, grammar=grammar, temperature=temperature, max_tokens=max_tokens,
                                     seed=seed)

    def count_tokens(self, text: str) -> int:
        return self.teacher.count_tokens(text)

    def reset(self) -> None:
        self.teacher.reset()


class Prefetch:
    """Keeps ``n`` chunks of ``todo`` running ahead while the caller writes them in order.

    ``teacher_for(chunk)`` (in ``todo`` order) returns the teacher to write that chunk with: the
    teacher itself when nothing runs ahead (``n`` is 1, or the teacher is not ``parallel``: an
    in-process llama.cpp model is one context and cannot take calls from several threads)."""

    def __init__(self, synth: Any, teacher: Any, n: int, todo: list, needs: dict[str, tuple[bool, bool]]):
        self.synth, self.teacher, self.n, self.todo, self.needs = synth, teacher, n, todo, needs
        self.on = n > 1 and teacher.parallel and len(todo) > 1
        self.running: dict[str, tuple[Future, _Recorder]] = {}
        self.next = 0
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="valign-prefetch") if self.on else None

    def _fill(self) -> None:
        """Send chunks off until ``n`` run ahead, each on a copy of the synthesizer as it is now."""
        while self.next < len(self.todo) and len(self.running) < self.n:
            chunk = self.todo[self.next]
            self.next += 1
            recorder = _Recorder(self.teacher, self.stop)
            ahead = copy.deepcopy(self.synth, {id(self.synth.teacher): recorder})
            sft, dpo = self.needs[chunk.id]
            self.running[chunk.id] = (self.pool.submit(_run_ahead, ahead, chunk, sft, dpo), recorder)

    def teacher_for(self, chunk) -> Any:
        if not self.on:
            return self.teacher
        self._fill()
        future, recorder = self.running.pop(chunk.id, (None, None))
        if future is None:
            return self.teacher
        try:
            future.result()
        except Cancelled:
            raise
        except Exception:  # noqa: BLE001 - the chunk is written live below and meets the error itself
            pass
        return _Replay(self.teacher, recorder.replies)

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop what still runs ahead (its next teacher call ends it) and wait for the threads."""
        if self.pool is not None:
            self.stop.set()
            self.pool.shutdown(wait=True, cancel_futures=True)


def _run_ahead(synth: Any, chunk, sft: bool, dpo: bool) -> None:
    if sft:
        synth.sft_for_chunk(chunk)
    if dpo:
        synth.dpo_for_chunk(chunk)
