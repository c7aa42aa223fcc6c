"""How many threads to compute with.

Both llama.cpp and torch's OpenMP pool spin while waiting for each other's threads. On an idle
machine using every core is fastest; when other work keeps the cores busy, spinning threads
collapse (measured on 2 shared cores: llama.cpp decode from ~59 to a few tok/s, LoRA training
from ~80 to ~5 tok/s), while one thread degrades gracefully.

"Other work" must not count our own: the 1-minute load average right after generation finishes
still holds the teacher's threads, and training would then pick one thread on an idle machine. On
Linux the runnable-task count is sampled instead, minus this process's running threads.
"""

from __future__ import annotations

import os
import time


def cores() -> int:
    return min(os.cpu_count() or 1, 8)


def _own_running_threads() -> int:
    running = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as f:
                running += f.read().rsplit(")", 1)[1].split()[0] == "R"
    except OSError:
        return 1
    return max(1, running)


def other_load(samples: int = 8, interval: float = 0.05) -> float:
    """Tasks of other processes wanting a CPU right now (averaged over a short window)."""
    try:
        total = 0.0
        for i in range(samples):
            with open("/proc/loadavg") as f:
                runnable = int(f.read().split()[3].split("/")[0])
            total += max(0, runnable - _own_running_threads())
            if i + 1 < samples:
                time.sleep(interval)
        return total / samples
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0


def machine_busy() -> bool:
    return other_load() > max(0.75, cores() - 1.25)


def compute_threads() -> int:
    """All cores when they are free, else one."""
    return 1 if machine_busy() else cores()


def auto_threads(n_threads: int = 0, n_threads_batch: int = 0) -> tuple[int, int]:
    """(decode, prompt) threads for llama.cpp: given ones, else ``compute_threads()``. OpenMP's
    spinning threads collapse when they must share cores (measured on 2 busy cores, 32 tokens of
    SmolLM2: 1 thread 7.5 s, 1+2 threads 52 s, 2 threads 278 s; on idle cores 2 threads are ~1.5x
    faster than 1)."""
    if n_threads and n_threads_batch:  # nothing to choose: skip sampling the machine's load
        return n_threads, n_threads_batch
    auto = compute_threads()
    return n_threads or auto, n_threads_batch or auto
