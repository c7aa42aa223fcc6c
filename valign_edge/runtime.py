"""Where evaluation and chat get their llama.cpp runtime: it lives in the llama.cpp backend
(``backends/llama_cpp.py``); the thread policy in ``cpu.py``. These names stay importable here."""

from __future__ import annotations

from .backends.llama_cpp import DECODING, N_CTX, Runtime
from .cpu import auto_threads

__all__ = ["DECODING", "N_CTX", "Runtime", "auto_threads"]
