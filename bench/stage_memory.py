"""Memory of one training stage, step by step: the process's current and peak RSS after every step.

    python bench/stage_memory.py RUN COPY sft|dpo [--steps N] [--set train.precision=fp32 ...]

Trains ``sft`` (or ``dpo``, from RUN's SFT adapter) on COPY, a copy of RUN with that stage undone, in
this fresh process, sampling the resident set (``VmRSS``) every 50 ms. A peak that plateaus is the
stage's working set; one that grows step after step is memory kept (or fragmented) per step.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import copy_run  # noqa: E402

from valign_edge.backends import choose_backend, load_trainer  # noqa: E402
from valign_edge.config import parse_set, resolve_config, set_value  # noqa: E402
from valign_edge.runs.workspace import Run  # noqa: E402


def rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


class Stop(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("copy", type=Path)
    ap.add_argument("stage", choices=["sft", "dpo"])
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: the whole stage)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    if not args.copy.exists():
        copy_run(args.run, args.copy, before=f"train_{args.stage}")
    cfg = resolve_config(args.copy / "config.toml")
    for key, value in parse_set(args.set).items():
        set_value(cfg, key, value)
    trainer = load_trainer(choose_backend(cfg.train.backend, cfg.train.device), cfg)
    highest = [0]

    def sample() -> None:
        while True:
            highest[0] = max(highest[0], rss_mb())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    rows = []

    def emit(event) -> None:
        if event.kind == "metric":
            rows.append((event.data["step"], rss_mb(), highest[0], event.data["peak_rss_mb"]))
            highest[0] = 0
            if args.steps and event.data["step"] >= args.steps:
                raise Stop

    run, start = Run(args.copy), time.monotonic()
    try:
        (trainer.sft if args.stage == "sft" else trainer.dpo)(run, emit)
    except Stop:
        pass
    print(f"{args.stage} {trainer.precision}: {len(rows)} steps in {time.monotonic() - start:.0f} s, "
          f"peak {max((r[3] for r in rows), default=0)} MB")
    print("step  rss_mb  highest_in_step_mb  peak_mb")
    for row in rows:
        print("  ".join(str(x) for x in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
