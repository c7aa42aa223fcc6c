"""How many threads to compute with.

Both llama.cpp and torch's OpenMP pool spin while waiting for each other's threads. On an idle
machine using every core is fastest; when other work keeps the cores busy, spinning threads
collapse (measured on 2 shared cores: llama.cpp decode from ~59 to a few tok/s, LoRA training
from ~80 to ~5 tok/s), while one thread degrades gracefully.
"""

from __future__ import annotations

import os


def cores() -> int:
    return min(os.cpu_count() or 1, 8)


def machine_busy() -> bool:
    try:
        return os.getloadavg()[0] > max(0.75, cores() - 1.25)
    except OSError:
        return False


def compute_threads() -> int:
    """All cores when they are free, else one."""
    return 1 if machine_busy() else cores()
