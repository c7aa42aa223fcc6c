"""Render progress events in the terminal with rich: a bar per stage with rate and ETA."""

from __future__ import annotations

import sys

from valign_edge.events import Event, format_eta


class ConsoleSink:
    """An events callback for the CLI. Progress goes to stderr, so stdout stays for results."""

    def __init__(self, quiet: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=self.console,
                                 transient=False, disable=not sys.stderr.isatty())
        self.tasks: dict[str, int] = {}
        self.progress.start()

    def __call__(self, event: Event) -> None:
        if event.kind == "progress":
            rate = f"{event.rate:.2f} {event.unit}/s" if event.rate else ""
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in event.data.items())
            fields = dict(rate=rate, eta=format_eta(event.eta_s), info=info)
            if event.stage not in self.tasks:
                self.tasks[event.stage] = self.progress.add_task(event.stage, total=event.total or None,
                                                                 completed=event.done or 0, **fields)
            self.progress.update(self.tasks[event.stage], completed=event.done, total=event.total or None, **fields)
            if not sys.stderr.isatty() and event.total and not self.quiet:
                # No live bar in logs and CI: print a line every ~10% instead.
                step = max(1, event.total // 10)
                if event.done and (event.done % step == 0 or event.done == event.total):
                    self.console.print(f"{event.stage}: {event.done}/{event.total} {rate} ETA "
                                       f"{format_eta(event.eta_s)} {info}", highlight=False)
        elif event.kind in ("log", "stage") and not self.quiet and event.message:
            self.console.print(f"[dim]{event.stage}:[/dim] {event.message}", highlight=False)

    def close(self) -> None:
        self.progress.stop()
