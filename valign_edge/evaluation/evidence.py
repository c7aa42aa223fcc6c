"""What a sample can and cannot show: sample sizes, conclusive and inconclusive comparisons.

Every metric cell of a report section gets ``{"n", "conclusive", "note"}``. A comparison with the
baseline (``vanilla``'s value for the metrics, 0.5 for the ``dpo`` win rates) is conclusive when the
sample has at least ``MIN_N`` items and the cell's 95% interval lies clear of the baseline's point
estimate; win rates of a judge model whose two answer orders agree less than half the time are
never conclusive. The baseline's own cells carry their sample size only (``conclusive`` None).
"""

from __future__ import annotations

from valign_edge.evaluation.systems import BASELINE_SYSTEM, REFERENCE_SYSTEM

MIN_N = 10  # fewer pairs or questions than this cannot tell systems apart
WIN_COLUMNS = ("win_judge", "win_ref")
WIN_LABELS = {"win_judge": "preferred by the judge model", "win_ref": "closeness to the reference (not faithfulness)"}


def _fmt(value: float, column: str) -> str:
    return f"{value:.1f}" if column.startswith("bleu") else f"{value:.3f}"


def assess_cell(value: float | None, ci, n: int | None, baseline: float | None, column: str,
                baseline_name: str = BASELINE_SYSTEM, judge_agreement: float | None = None,
                min_n: int = MIN_N) -> dict:
    """``{"n", "conclusive", "note"}`` for one cell; ``baseline`` None marks the baseline's own cell."""
    n = int(n or 0)
    if value is None:
        return {"n": n, "conclusive": None, "note": f"n={n}" if n else ""}
    if baseline is None:  # the baseline's own cell: not a comparison
        return {"n": n, "conclusive": None, "note": f"n={n}: too few to conclude" if n < min_n else f"n={n}"}
    if n < min_n:
        return {"n": n, "conclusive": False, "note": f"n={n}: too few to conclude"}
    if judge_agreement is not None and judge_agreement < 0.5:
        return {"n": n, "conclusive": False,
                "note": f"n={n}: judge unreliable (its two orders agree {judge_agreement:.0%})"}
    where = "0.5" if column in WIN_COLUMNS else f"{baseline_name}'s {_fmt(baseline, column)}"
    if ci is None or ci[0] <= baseline <= ci[1]:
        return {"n": n, "conclusive": False, "note": f"n={n}: interval includes {where}: inconclusive"}
    return {"n": n, "conclusive": True, "note": f"n={n}: {'above' if value > baseline else 'below'} {where}"}


def assess_section(section: dict) -> dict[str, dict[str, dict]]:
    """system -> column -> cell assessment, for a section with ``table``, ``intervals``, ``counts``
    and (for the judge model's agreement) ``win_rate.judge``."""
    rows = {row["system"]: row for row in section.get("table", [])}
    base = rows.get(BASELINE_SYSTEM, {})
    judged = (section.get("win_rate") or {}).get("judge") or {}
    out: dict[str, dict[str, dict]] = {}
    for system, row in rows.items():
        cells = {}
        for col in section.get("columns", []):
            ci = ((section.get("intervals") or {}).get(system) or {}).get(col)
            n = ((section.get("counts") or {}).get(system) or {}).get(col)
            if col in WIN_COLUMNS:
                baseline = 0.5
                agreement = (judged.get(system) or {}).get("order_consistency") if col == "win_judge" else None
            else:
                baseline = None if system == BASELINE_SYSTEM else base.get(col)
                agreement = None
                if baseline is None and system != BASELINE_SYSTEM:  # no baseline value to compare with
                    cells[col] = {"n": int(n or 0), "conclusive": None,
                                  "note": f"n={int(n or 0)}" if row.get(col) is not None else ""}
                    continue
            cells[col] = assess_cell(row.get(col), ci, n, baseline, col, judge_agreement=agreement)
        out[system] = cells
    return out


def conclusions(section: dict, evidence: dict, labels: dict) -> dict[str, list[str]]:
    """Short sentences: which comparisons with the baseline are conclusive, which are not and why."""
    yes, no = [], []
    columns = section.get("columns") or list(dict.fromkeys(c for cells in evidence.values() for c in cells))
    for col in columns:  # in the table's column order: the headline metric first
        for system, cells in evidence.items():
            cell = cells.get(col)
            if cell is None or cell["conclusive"] is None:
                continue
            if col in WIN_COLUMNS:
                what = f"{REFERENCE_SYSTEM} vs {system}, {WIN_LABELS[col]}"
            else:
                what = f"{system} vs {BASELINE_SYSTEM}, {labels.get(col, col)}"
            (yes if cell["conclusive"] else no).append(f"{what} ({cell['note']})")
    return {"conclusive": yes, "inconclusive": no}


def summary_line(title: str, found: dict[str, list[str]], limit: int = 8) -> str:
    """One markdown line for the top of report.md."""
    yes, no = found["conclusive"], found["inconclusive"]
    if not yes and not no:
        return f"- **{title}**: nothing to compare (no baseline or no results)."
    conclusive = "; ".join(yes) if yes else "none"
    shown = no[:limit]
    rest = f"; and {len(no) - len(shown)} more" if len(no) > len(shown) else ""
    inconclusive = ("; ".join(shown) + rest) if no else "none"
    return (f"- **{title}**: {len(yes)} of {len(yes) + len(no)} comparisons conclusive. "
            f"Conclusive: {conclusive}. Not conclusive: {inconclusive}.")


def small_sample_advice(questions: int, pairs: int, has_probe: bool, source_kind: str = "run",
                        splits: list[str] | None = None) -> str | None:
    """How to get a larger test set, when the held-out one is too small to tell systems apart."""
    if questions >= MIN_N and pairs >= MIN_N:
        return None
    ways = []
    if source_kind == "run" and "valid" not in (splits or []):
        ways.append("--set eval.splits=test,valid (add the validation split)")
    ways.append("--doc DOC (a test set generated from another document)")
    if not has_probe:
        ways.append("--probe FILE.jsonl (a hand-written probe set: the independent measure)")
    return (f"The held-out test set is small ({questions} question{'s' * (questions != 1)}, {pairs} preference "
            f"pair{'s' * (pairs != 1)}; at least {MIN_N} "
            f"each are needed to tell systems apart). For a larger one: " + "; ".join(ways) + ".")
