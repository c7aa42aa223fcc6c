"""What the app knows about a run and its running job, kept apart from the widgets.

Events from the library's stages (the same ones the CLI renders) are folded into a
``JobState``; screens draw from it, so a screen opened mid-run shows the whole story.
Nothing here runs a stage: the app calls the library for that.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valign_edge.events import Event, format_eta
from valign_edge.files import read_jsonl
from valign_edge.runs.workspace import STAGES, Run

STAGE_TITLES = {"generate": "Generate data", "train_sft": "Train SFT", "train_dpo": "Train DPO",
                "export": "Export GGUF", "eval": "Evaluate"}
LOSS_STAGES = ("train_sft", "train_dpo")


def display_path(path: Path | str | None) -> str:
    """A path relative to the working folder when it is inside it, else with ``~`` for home."""
    if path is None:
        return ""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        pass
    try:
        return "~/" + str(path.resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return str(path)


@dataclass
class StageView:
    status: str = "pending"  # pending, running, done, partial, stale, skipped, cancelled, failed
    message: str = ""
    done: int | None = None
    total: int | None = None
    rate: float | None = None
    eta_s: float | None = None
    unit: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None

    def stats(self) -> str:
        parts = []
        if self.total:
            parts.append(f"{self.done or 0}/{self.total} {self.unit}")
        if self.rate:
            parts.append(f"{self.rate:.2f} {self.unit}/s" if self.rate < 10 else f"{self.rate:.0f} {self.unit}/s")
        if self.status == "running" and self.total:
            parts.append(f"ETA {format_eta(self.eta_s)}")
        for key in ("loss", "tok_s"):
            if key in self.data:
                value = self.data[key]
                parts.append(f"{key.replace('_', '/')} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return " · ".join(parts)


class JobState:
    """Stage statuses, the running stage's progress, loss curves and the log of one run."""

    def __init__(self, max_log: int = 1000):
        self.stages: dict[str, StageView] = {s: StageView() for s in STAGES}
        self.current: str | None = None
        self.losses: dict[str, list[tuple[int, float]]] = {s: [] for s in LOSS_STAGES}
        self.log: deque[str] = deque(maxlen=max_log)
        self.job: str | None = None  # "pipeline" or "eval" while a job runs
        self.outcome: str = ""  # how the last job ended, in words

    # --- loading a run from disk ----------------------------------------------------------
    def load_run(self, run: Run) -> None:
        """Statuses from the manifest; loss curves and the log tail from the run's events.jsonl."""
        self.__init__(self.log.maxlen or 1000)
        self.refresh_statuses(run)
        for event in read_events(run.events_path):
            if event.kind == "metric":
                self._add_metric(event)
            elif event.kind in ("log", "stage") and event.message:
                self.log.append(format_log(event))

    def refresh_statuses(self, run: Run | None) -> None:
        if run is None:
            return
        try:
            stages = run.manifest().get("stages", {})
        except Exception:  # noqa: BLE001 - an unreadable manifest is reported where the run is opened
            return
        for name, view in self.stages.items():
            info = stages.get(name)
            if view.status in ("running", "cancelled", "failed") and name == self.current:
                continue
            if not info:
                view.status = "pending" if view.status != "skipped" else view.status
                continue
            view.status = info.get("status", "pending")
            view.wall_s = info.get("wall_s")
            if view.status == "done":
                view.eta_s = None

    # --- live events ----------------------------------------------------------------------------
    def begin(self, job: str) -> None:
        self.job = job
        self.outcome = ""
        self.current = None

    def apply(self, event: Event) -> None:
        stage = event.stage if event.stage in self.stages else None
        if event.kind == "metric" and event.stage in self.losses:
            self._add_metric(event)
        elif event.kind == "progress" and stage:
            self._set_running(stage)
            view = self.stages[stage]
            view.done, view.total, view.rate, view.eta_s, view.unit = (event.done, event.total, event.rate,
                                                                        event.eta_s, event.unit)
            view.data = dict(event.data)
            if event.message:
                view.message = event.message
        elif event.kind == "progress" and self.current and event.total:
            # a sub-step with its own name (reference log-probs, model conversion): show it on the stage
            self.stages[self.current].message = f"{event.stage} {event.done or 0}/{event.total} {event.unit}"
        elif event.kind == "stage" and stage:
            self._set_running(stage)
            self.stages[stage].message = event.message
        if event.kind == "log" and stage and event.message.endswith("up to date, skipped"):
            self.stages[stage].status = "skipped"
        if event.kind in ("log", "stage") and event.message:
            self.log.append(format_log(event))

    def finish(self, status: str, message: str, run: Run | None) -> None:
        """The job ended: ``status`` is done, cancelled or failed."""
        if self.current and status in ("cancelled", "failed"):
            self.stages[self.current].status = status
            self.stages[self.current].message = message
        elif self.current and status == "done":
            self.stages[self.current].status = "done"
        self.job = None
        self.outcome = {"done": "finished", "cancelled": "cancelled", "failed": "failed"}[status]
        if message:
            self.log.append(f"{status}: {message}")
        finished_current = self.current
        self.current = None if status == "done" else finished_current
        self.refresh_statuses(run)

    def _set_running(self, stage: str) -> None:
        if self.current and self.current != stage and self.stages[self.current].status == "running":
            self.stages[self.current].status = "done"
        self.current = stage
        self.stages[stage].status = "running"

    def _add_metric(self, event: Event) -> None:
        step, loss = event.data.get("step"), event.data.get("loss")
        if step is None or loss is None:
            return
        points = self.losses[event.stage]
        if points and step <= points[-1][0]:  # a restart or a resume from a checkpoint
            points[:] = [p for p in points if p[0] < step]
        points.append((int(step), float(loss)))


def read_events(path: Path) -> list[Event]:
    events = []
    for row in read_jsonl(path):
        try:
            events.append(Event(**row))
        except TypeError:
            continue
    return events


def format_log(event: Event) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    return f"{stamp} {event.stage}: {event.message}"


# --- data review ------------------------------------------------------------------------------------
REVIEW_SPLITS = ("train", "valid", "test", "rejected")


def latest_decisions(run: Run) -> dict[str, str]:
    """The latest review action per record id (reject, edit or restore)."""
    decisions: dict[str, str] = {}
    for edit in read_jsonl(run.data_dir / "edits.jsonl"):
        if "id" in edit:
            decisions[edit["id"]] = edit.get("action", "")
    return decisions


def review_rows(run: Run, kind: str, split: str) -> list[dict]:
    """Records to review: a split as training will see it, or the rejected records of ``kind``."""
    from valign_edge.generation import datasets

    if split != "rejected":
        return datasets.load(run, kind, split)
    rejected = {rid for rid, action in latest_decisions(run).items() if action == "reject"}
    if not rejected:
        return []
    to_rows = datasets.sft_rows if kind == "sft" else datasets.dpo_rows
    rows, seen = [], set()
    for row in to_rows(read_jsonl(run.synth_dir / f"{kind}.jsonl")):
        rid = row["meta"]["id"]
        if rid in rejected and rid not in seen:
            seen.add(rid)
            rows.append(row)
    return rows


def record_fields(row: dict) -> dict[str, str]:
    """The readable fields of an SFT or DPO row."""
    if "messages" in row:
        return {"question": row["messages"][0]["content"], "answer": row["messages"][1]["content"]}
    return {"prompt": row.get("prompt", ""), "chosen": row.get("chosen", ""), "rejected": row.get("rejected", "")}


def load_chunks(run: Run) -> list[dict]:
    return read_jsonl(run.chunks_path)


def load_report(run: Run) -> dict | None:
    path = run.eval_dir / "report.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) else None
