"""The Evaluation screen with a report that has a probe: both tables, cells with their sample sizes,
the notes on what the sample can show, and picking a probe file (a bad one is refused with its rows)."""

from __future__ import annotations

import asyncio
import time

from valign_edge.evaluation.evidence import small_sample_advice
from valign_edge.evaluation.report import COLUMN_LABELS, COLUMNS, PROBE_COLUMNS, metric_section, probe_columns
from valign_edge.files import write_json, write_jsonl
from valign_edge.runs.workspace import Run
from valign_edge.tui.app import create_app

SIZE = (120, 40)


def _pair(correct: bool) -> dict:
    return {"chosen_logprob": -4.0 if correct else -8.0, "chosen_tokens": 4,
            "rejected_logprob": -8.0 if correct else -4.0, "rejected_tokens": 4}


def _report(run: Run) -> dict:
    names = ["vanilla", "dpo"]
    held_out = metric_section(names, COLUMNS, [], {}, {n: [_pair(True)] for n in names}, {}, {}, {}, resamples=50)
    probe = metric_section(names, probe_columns(40, 0), [], {},
                           {"vanilla": [_pair(i < 20) for i in range(40)], "dpo": [_pair(i < 38) for i in range(40)]},
                           {}, {}, {}, resamples=50)
    return {"run": str(run.root), "systems": names, "column_labels": COLUMN_LABELS, **held_out,
            "advice": small_sample_advice(1, 1, True),
            "probes": [{"name": "mine", "path": "mine.jsonl", "sha256": "0" * 64, "pairs": 40, "questions": 0,
                        "shipped": False, "independent": True, **probe}]}


async def _wait(pilot, predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def test_probe_and_held_out_tables_with_sample_sizes(tmp_path):
    from textual.widgets import DataTable, Input, Static

    run = Run.open(tmp_path / "run")
    write_json(run.eval_dir / "report.json", _report(run))
    good = tmp_path / "mine.jsonl"
    write_jsonl(good, [{"prompt": "May I?", "chosen": "No.", "rejected": "Yes."}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "May I?"}\n', encoding="utf-8")

    async def go():
        app = create_app(run.root)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("4")
            await pilot.pause()
            screen = app.screen
            probe_table = screen.query_one("#eval-probe-table", DataTable)
            held_out = screen.query_one("#eval-table", DataTable)
            assert probe_table.display and probe_table.row_count == 2
            assert "probe mine: independent" in str(probe_table.border_title)
            assert "generator-made" in str(held_out.border_title)
            assert [c.label.plain for c in probe_table.columns.values()] == ["system", "pref_acc", "pref_margin"]
            dpo = probe_table.get_row_at(1)
            assert "0.950" in dpo[1].plain and "n=40: clear" in dpo[1].plain
            assert "n=1: too few" in held_out.get_row_at(1)[COLUMNS.index("pref_acc") + 1].plain
            notes = str(screen.query_one("#eval-notes", Static).render())
            assert "probe mine: 2 of 2 comparisons conclusive" in notes and "eval.splits=test,valid" in notes
            # pick a malformed probe: refused with its bad row, the setting unchanged
            await pilot.press("p")
            await _wait(pilot, lambda: type(app.screen).__name__ == "PathPicker", "the picker")
            app.screen.query_one("#picker-path", Input).value = str(bad)
            await pilot.click("#picker-choose")
            await _wait(pilot, lambda: any("bad.jsonl:1:" in str(n.message) for n in app._notifications),
                        "the bad row message")
            assert app.cfg.eval.probe == ""
            await pilot.press("p")
            await _wait(pilot, lambda: type(app.screen).__name__ == "PathPicker", "the picker")
            app.screen.query_one("#picker-path", Input).value = str(good)
            await pilot.click("#picker-choose")
            await _wait(pilot, lambda: app.cfg.eval.probe == str(good.resolve()), "the probe setting")
            await pilot.pause()
            assert "probe: mine" in str(app.screen.query_one("#eval-status", Static).render())

    asyncio.run(go())
