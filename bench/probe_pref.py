"""Preference accuracy and verdict accuracy of a run's systems on hand-written probes.

    python bench/probe_pref.py RUN PROBE.jsonl [PROBE2.jsonl ...] [--systems vanilla,sft,dpo] [--free]

The same code and cache as ``valign eval --probe`` (no held-out set, no judge, no text metrics): a
quick check while tuning generation and training. Prints, per system, preference accuracy with its
95% interval, n and mean margin, and on the answer rows with a verdict the forced Yes/No balanced
accuracy (and with ``--free`` the free greedy answers' balanced accuracy: answers are generated).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from valign_edge.config import resolve_config  # noqa: E402
from valign_edge.cpu import auto_threads  # noqa: E402
from valign_edge.evaluation import metrics  # noqa: E402
from valign_edge.evaluation.answers import generate_answers, preference_scores  # noqa: E402
from valign_edge.evaluation.probes import load_probe  # noqa: E402
from valign_edge.evaluation.systems import Context, Retriever, find_systems, system_keys  # noqa: E402
from valign_edge.evaluation.verdicts import forced_verdicts, verdict_section  # noqa: E402
from valign_edge.events import null_callback  # noqa: E402
from valign_edge.files import read_jsonl  # noqa: E402
from valign_edge.runs.workspace import Run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("probes", nargs="+")
    ap.add_argument("--systems", default="vanilla,sft,dpo")
    ap.add_argument("--json", help="also write the summaries here")
    ap.add_argument("--free", action="store_true", help="also generate free answers and read their verdicts")
    ap.add_argument("--no-pref", action="store_true", help="skip the preference rows")
    args = ap.parse_args()
    run = Run(Path(args.run))
    cfg = copy.deepcopy(resolve_config(run.config_path))
    cfg.eval.systems = args.systems
    systems = find_systems(run, cfg, null_callback)
    ctx = Context(run, cfg, null_callback, systems, threads=auto_threads(0, 0))
    retriever = Retriever(read_jsonl(run.chunks_path), cfg.eval.rag_top_k, cfg.eval.retriever)
    keys = system_keys(systems, cfg, retriever, {})
    out = {}
    for path in args.probes:
        probe = load_probe(path)
        prefs = {} if args.no_pref else preference_scores(ctx, keys, probe.pairs, retriever, probe.name)
        rows = [q for q in probe.questions if q.get("verdict")]
        if rows:
            forced = forced_verdicts(ctx, keys, rows, retriever, probe.name)
            free = generate_answers(ctx, keys, rows, retriever, probe.name) if args.free else None
            for name, entry in verdict_section([s.name for s in systems], rows, forced, free, cfg.eval.bootstrap,
                                               cfg.seed).items():
                out[f"{probe.name}/{name}/verdicts"] = entry
                for kind, v in entry.items():
                    ci = v["ci95"] or [float("nan")] * 2
                    print(f"{probe.name:>28} {name:>8}: {kind:>6} verdict {v['balanced']:.3f} [{ci[0]:.3f}, "
                          f"{ci[1]:.3f}] yes {v['yes_correct']}/{v['yes_n']} no {v['no_correct']}/{v['no_n']}"
                          f" unclear {v['unclear']}", flush=True)
        for s in systems if prefs else []:
            summary = metrics.preference_summary(prefs[s.name], cfg.eval.bootstrap, cfg.seed)
            out[f"{probe.name}/{s.name}"] = summary
            ci = summary["ci95"] or [float("nan")] * 2
            print(f"{probe.name:>28} {s.name:>8}: acc {summary['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
                  f"n={summary['n']} margin {summary['mean_margin']:+.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
