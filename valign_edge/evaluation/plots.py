"""One bar chart per metric and test set, with the 95% intervals as error bars and n under each bar."""

from __future__ import annotations

from pathlib import Path

from valign_edge.evaluation.systems import REFERENCE_SYSTEM
from valign_edge.files import note_written


def _bars(section: dict, col: str) -> tuple[list[str], list[float], list[float], list[float]]:
    names, values, lows, highs = [], [], [], []
    evidence = section.get("evidence") or {}
    for row in section.get("table", []):
        if row.get(col) is None:
            continue
        system = row["system"]
        ci = ((section.get("intervals") or {}).get(system) or {}).get(col) or [row[col], row[col]]
        label = f"dpo vs {system}" if col.startswith("win") else system
        n = ((section.get("counts") or {}).get(system) or {}).get(col)
        if n is not None:
            label += f"\nn={n}"
            if (evidence.get(system) or {}).get(col, {}).get("conclusive") is False:
                label += "*"  # explained in the footnote
        names.append(label)
        values.append(row[col])
        lows.append(max(0.0, row[col] - ci[0]))
        highs.append(max(0.0, ci[1] - row[col]))
    return names, values, lows, highs


def _plot(section: dict, col: str, title: str, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values, lows, highs = _bars(section, col)
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    colors = ["#d95f02" if n.split("\n")[0] == REFERENCE_SYSTEM else "#7570b3" for n in names]
    ax.bar(names, values, yerr=[lows, highs], capsize=4, color=colors)
    ax.tick_params(axis="x", labelsize=7)
    if col.startswith("win"):
        ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_title(title, fontsize=9)
    if col == "pref_margin":
        span = max(abs(v) + max(lo, hi) for v, lo, hi in zip(values, lows, highs)) * 1.2 or 1.0
        ax.set_ylim(-span, span)
        ax.axhline(0.0, color="grey", linewidth=0.8)
    elif col.startswith("bleu"):
        ax.set_ylim(0, min(100.0, max(v + h for v, h in zip(values, highs)) * 1.2 + 1))
    else:
        ax.set_ylim(0, 1.0)
    if any(n.endswith("*") for n in names):
        fig.text(0.01, 0.01, "* inconclusive: n < 10, or the interval includes the baseline", fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    note_written(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(report: dict, folder: Path) -> list[Path]:
    """``<metric>.png`` for the held-out set, ``probe-<name>-<metric>.png`` for each probe."""
    labels = report.get("column_labels", {})
    paths = []
    for col in report.get("columns", []):
        path = _plot(report, col, f"{labels.get(col, col)}: held-out (generator-made)", folder / f"{col}.png")
        if path:
            paths.append(path)
    for probe in report.get("probes") or []:
        for col in probe.get("columns", []):
            path = _plot(probe, col, f"{labels.get(col, col)}: probe {probe.get('name')} (independent)",
                         folder / f"probe-{probe.get('name')}-{col}.png")
            if path:
                paths.append(path)
    return paths
