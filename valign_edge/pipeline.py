"""``valign run``: every stage in order, each skipped when done, so a killed run resumes."""

from __future__ import annotations

from pathlib import Path

from valign_edge.config import RunConfig
from valign_edge.events import Callback


def run_all(run, cfg: RunConfig, emit: Callback, doc: str | Path | None = None, evaluate: bool = False,
            should_stop=lambda: False, allow_remote: bool = False) -> dict:
    from valign_edge.export import export
    from valign_edge.generation.generate import generate
    from valign_edge.training.train import train

    generate(run, cfg, emit, doc=doc, should_stop=should_stop, allow_remote=allow_remote)
    train(run, cfg, emit, should_stop=should_stop)
    info = export(run, cfg, emit)
    if evaluate:
        from valign_edge.evaluation.evaluate import evaluate as run_eval

        run_eval(run, cfg, emit, allow_remote=allow_remote)
    return info
