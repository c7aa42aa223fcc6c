"""Run one benchmark configuration in its own process, so its peak RSS is its own.

The child is the same script called with ``--one KIND STAGE``; it prints ``RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def report(result: dict) -> None:
    """The child's side: hand the figures to the parent."""
    print("RESULT " + json.dumps(result), flush=True)


def measure(script: str, kind: str, stage: str, run: Path, steps: int) -> dict:
    """The parent's side: run ``script --one kind stage`` and return its figures (exit on failure)."""
    proc = subprocess.run([sys.executable, script, "--one", kind, stage, "--run", str(run), "--steps", str(steps)],
                          capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{kind} {stage} failed")
    return json.loads(line[0][len("RESULT "):])
