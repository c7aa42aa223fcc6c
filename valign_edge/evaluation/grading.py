"""Blind human grading: a sheet of every system's answers, shuffled, system names hidden, and its marks
read back as a faithful rate per system.

``valign eval RUN --grading-sheet FILE.csv`` writes the answers of the last evaluation (a probe's
answer rows, else the held-out questions) to a CSV a person edits in any spreadsheet or text editor;
which system wrote which item is kept apart in ``RUN/eval/grading-key.json``. The person fills the
``mark`` column: ``f`` when the answer takes the document's side, ``u`` when it does not, nothing (or
``?``) to skip. ``valign eval RUN --grades FILE.csv`` reads the marks back into ``eval/grades.json``
and the top of ``eval/report.md``: per system the faithful rate with a Wilson 95% interval.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from valign_edge.errors import UserError
from valign_edge.evaluation import metrics
from valign_edge.evaluation.markdown import render_markdown
from valign_edge.files import atomic_write_text, read_jsonl, write_json
from valign_edge.runs.workspace import Run

COLUMNS = ("item", "question", "reference", "answer", "mark")
MARKS = {"f": True, "faithful": True, "y": True, "u": False, "unfaithful": False, "n": False}
KEY_FILE = "grading-key.json"
GRADES_FILE = "grades.json"


def _answered(run: Run) -> tuple[str, list[dict]]:
    """(source, rows) of the last evaluation's answers: the probes' answer rows, else the held-out set."""
    rows, names = [], []
    for path in sorted(run.eval_dir.glob("probe-*-details.jsonl")):
        found = [r for r in read_jsonl(path) if r.get("answers")]
        if found:
            rows += found
            names.append(path.name[len("probe-"):-len("-details.jsonl")])
    if rows:
        return "probe " + ", ".join(names), rows
    rows = [r for r in read_jsonl(run.eval_dir / "details.jsonl") if r.get("answers")]
    if not rows:
        raise UserError(f"{run.root} has no evaluated answers to grade; run: valign eval {run.root}")
    return "held-out questions", rows


def write_sheet(run: Run, path: Path, seed: int = 0) -> dict:
    """Write the blind sheet to ``path`` and its key into the run; returns counts."""
    source, rows = _answered(run)
    items = [(row, system, a["text"]) for row in rows for system, a in row["answers"].items()]
    random.Random(seed).shuffle(items)
    key, out = {}, io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for n, (row, system, text) in enumerate(items, 1):
        key[str(n)] = {"system": system, "id": row["id"], "verdict": row.get("verdict")}
        writer.writerow([n, row["question"], row.get("reference", ""), " ".join(text.split()), ""])
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"--grading-sheet {path} is a folder; give a file name such as grades.csv")
    atomic_write_text(path, out.getvalue())
    write_json(run.eval_dir / KEY_FILE, {"source": source, "sheet": str(path), "items": key})
    return {"items": len(items), "questions": len(rows), "systems": len({s for _, s, _ in items}), "source": source}


def read_marks(run: Run, path: Path) -> dict:
    """Join the person's marks with the key: per system faithful, unfaithful, skipped, rate, interval."""
    key_path = run.eval_dir / KEY_FILE
    if not key_path.exists():
        raise UserError(f"{run.root} has no grading key; write a sheet first: valign eval {run.root} "
                        "--grading-sheet FILE.csv")
    key = json.loads(key_path.read_text(encoding="utf-8"))["items"]
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read grades {path}: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"item", "mark"} <= set(reader.fieldnames):
        raise UserError(f"{path} is not a grading sheet (it needs the columns item and mark)")
    per: dict[str, dict] = {}
    for line, row in enumerate(reader, 2):
        item = (row.get("item") or "").strip()
        if item not in key:
            raise UserError(f"{path}:{line}: item {item!r} is not in this run's grading key")
        mark = (row.get("mark") or "").strip().lower()
        if mark not in MARKS and mark not in ("", "?"):
            raise UserError(f"{path}:{line}: mark {mark!r} is not f (faithful), u (unfaithful) or empty")
        s = per.setdefault(key[item]["system"], {"faithful": 0, "unfaithful": 0, "skipped": 0})
        s["skipped" if mark in ("", "?") else "faithful" if MARKS[mark] else "unfaithful"] += 1
    for s in per.values():
        n = s["faithful"] + s["unfaithful"]
        s["n"], s["rate"] = n, (s["faithful"] / n if n else None)
        s["ci95"] = list(metrics.wilson(s["faithful"], n) or []) or None
    return per


def record_grades(run: Run, path: Path) -> dict:
    """Read the marks, save them in ``eval/grades.json`` and in the report (json and markdown)."""
    grades = read_marks(run, path)
    write_json(run.eval_dir / GRADES_FILE, grades)
    report_path = run.eval_dir / "report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        report["human_grades"] = grades
        write_json(report_path, report)
        atomic_write_text(run.eval_dir / "report.md", render_markdown(report))
    return grades
