"""Thread choice: other processes' work counts as load; a sampling window, not a stale average."""

import subprocess
import sys

import pytest

from valign_edge import cpu


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_other_processes_spinning_count_as_load():
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cpu.cores())]
    try:
        import time

        time.sleep(0.3)
        assert cpu.other_load() >= cpu.cores() - 0.5
        assert cpu.machine_busy() and cpu.compute_threads() == 1
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def test_own_running_threads_counts_this_thread():
    assert cpu._own_running_threads() >= 1
