"""Thread choice: other processes' work counts as load; this process's own running threads do not
(they are subtracted); a sampling window, not a stale average."""

import hashlib
import subprocess
import sys
import threading
import time

import pytest

from valign_edge import cpu

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def eventually(predicate, timeout: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (a busy machine schedules new work late)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@linux_only
def test_other_processes_spinning_count_as_load():
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpu.cores())]
    try:
        assert eventually(lambda: cpu.other_load() >= cpu.cores() - 0.5), cpu.other_load()
        assert cpu.machine_busy() and cpu.compute_threads() == 1
    finally:
        for p in spinners:
            p.kill()
            p.wait()


@linux_only
def test_own_running_threads_are_counted():
    """Threads of this process that compute (hashing releases the GIL) are seen as running, so
    ``other_load`` can subtract them: the teacher's own threads must not make training pick one thread."""
    stop = threading.Event()
    data = bytes(16 * 2**20)

    def spin():
        while not stop.is_set():
            hashlib.sha256(data).digest()

    workers = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        # this thread (reading /proc) and both hashing threads, runnable even while waiting for a core
        assert eventually(lambda: cpu._own_running_threads() >= 3), cpu._own_running_threads()
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert eventually(lambda: cpu._own_running_threads() == 1)
