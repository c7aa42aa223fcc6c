"""Stop a generation that has fallen into a loop ("Answer:\\nAnswer:\\n...", "?\\n?\\n?...").

Base students (no chat template of their own: they answer under ``batching.FALLBACK_CHAT_TEMPLATE``)
easily repeat one line until the token limit, and llama.cpp's repeat penalty (1.1 over the last 64
tokens) does not stop them. Their answers in chat and evaluation stop at the third copy of a repeated
tail and keep the text up to the end of its first copy.
"""

from __future__ import annotations

MIN_REPEATS = 3  # copies of the same unit at the end of the text
MIN_SPAN = 16  # characters the repeated copies cover at least (so "...!!!" is not a loop)
MAX_UNIT = 160  # longest repeated unit looked for, in characters


def loop_end(text: str, min_repeats: int = MIN_REPEATS, min_span: int = MIN_SPAN, max_unit: int = MAX_UNIT) -> int | None:
    """Where the text should end if its tail is one unit repeated ``min_repeats`` times or more
    (the end of the unit's first copy), else None."""
    n = len(text)
    for unit in range(1, min(max_unit, n // min_repeats) + 1):
        tail = text[n - unit:]
        copies = 1
        while copies * unit + unit <= n and text[n - (copies + 1) * unit: n - copies * unit] == tail:
            copies += 1
        if copies >= min_repeats and copies * unit >= min_span:
            return n - (copies - 1) * unit
    return None


def cut_loop(text: str) -> str:
    """``text`` without a loop at its end (one copy of the repeated unit is kept)."""
    end = loop_end(text)
    return text if end is None else text[:end]
