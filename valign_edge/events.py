"""Progress events and the one callback protocol every stage reports through.

Stages never print. They call ``emit(Event(...))``; the CLI renders events with rich,
the TUI turns them into messages, the run folder keeps them as JSONL.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

Callback = Callable[["Event"], None]


@dataclass
class Event:
    kind: str  # "stage" (start/end), "progress", "log", "metric"
    stage: str
    message: str = ""
    done: int | None = None
    total: int | None = None
    rate: float | None = None  # units per second
    eta_s: float | None = None
    unit: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def null_callback(event: Event) -> None:
    pass


class Progress:
    """Counts work done in a stage and emits progress events with rate and ETA.

    The rate is measured over work done in this process only, so a resumed stage
    reports an honest ETA rather than one inflated by records loaded from disk.
    """

    def __init__(self, emit: Callback, stage: str, total: int, unit: str = "items", done: int = 0):
        self.emit, self.stage, self.total, self.unit = emit, stage, total, unit
        self.done = done
        self._start_done = done
        self._start = time.monotonic()
        self.update(0)

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self._start
        worked = self.done - self._start_done
        return worked / elapsed if elapsed > 0 and worked > 0 else None

    def update(self, advance: int = 1, message: str = "", **data: Any) -> None:
        self.done += advance
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate and self.total else None
        self.emit(Event("progress", self.stage, message, self.done, self.total, rate, eta, self.unit, data))


def log(emit: Callback, stage: str, message: str, **data: Any) -> None:
    emit(Event("log", stage, message, data=data))


class JsonlSink:
    """Appends every event to a JSONL file (kept inside the private run folder)."""

    def __init__(self, path: Path):
        from valign_edge.files import open_append

        self._file = open_append(path)  # a line a killed writer left half-written is cut, not buried
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._file.write(event.to_json() + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def fanout(*callbacks: Callback) -> Callback:
    def emit(event: Event) -> None:
        for cb in callbacks:
            cb(event)

    return emit


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
