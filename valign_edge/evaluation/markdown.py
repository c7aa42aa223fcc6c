"""``eval/report.md`` from ``eval/report.json``, and several runs' reports side by side (``--compare``)."""

from __future__ import annotations

import json
from pathlib import Path

from valign_edge.errors import UserError
from valign_edge.evaluation.evidence import assess_section, conclusions, summary_line
from valign_edge.evaluation.judge import reliable


def fmt(value: float | None, column: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if column.startswith("bleu") else f"{value:.3f}"


def cell_text(section: dict, system: str, column: str, evidence: dict | None) -> str:
    """``value [low, high] n=N...``: the interval, then the sample size and what it can show."""
    row = next((r for r in section.get("table", []) if r.get("system") == system), {})
    value = row.get(column)
    cell = fmt(value, column)
    ci = ((section.get("intervals") or {}).get(system) or {}).get(column)
    if ci and value is not None:
        cell += f" [{fmt(ci[0], column)}, {fmt(ci[1], column)}]"
    note = ((evidence or {}).get(system) or {}).get(column, {}).get("note")
    if note:
        cell += f" {note}"
    return cell


def _evidence(section: dict) -> dict | None:
    if section.get("evidence"):
        return section["evidence"]
    return assess_section(section) if section.get("counts") else None


def section_table(section: dict, labels: dict) -> list[str]:
    cols = section.get("columns", [])
    evidence = _evidence(section)
    lines = ["| system | " + " | ".join(labels.get(c, c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for row in section.get("table", []):
        lines.append(f"| {row['system']} | " + " | ".join(cell_text(section, row["system"], c, evidence)
                                                          for c in cols) + " |")
    return lines


def _share(s: dict, v: str) -> str:
    return f"{s[f'{v}_correct']}/{s[f'{v}_n']}" if s.get(f"{v}_n") else "-"


def verdict_table(section: dict) -> list[str]:
    """Which side each system's answers take, on the answer rows with the document's verdict."""
    verdicts = section.get("verdicts") or {}
    if not verdicts:
        return []
    any_row = next(iter(verdicts.values()))["forced"]
    lines = [f"Which side the answers take, on {any_row['n']} answer rows with the document's verdict "
             f"({any_row['yes_n']} yes, {any_row['no_n']} no). Forced: the first token Yes vs No after "
             "\"Answer with Yes or No.\"; free: the greedy answer a user reads, by the verdict it opens with "
             "(no verdict counts as wrong). Balanced accuracy is the mean of the yes-row and no-row accuracy: "
             "always answering No scores 0.5.", "",
             "| system | forced, balanced [95% CI] | forced yes-rows | forced no-rows | free, balanced [95% CI] "
             "| free yes-rows | free no-rows | free: no verdict |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in verdicts.items():
        cells = []
        for kind in ("forced", "free"):
            s = entry.get(kind)
            if not s:
                cells += ["-", "-", "-"]
                continue
            ci = s.get("ci95") or [None, None]
            cells += [f"{fmt(s['balanced'], 'v')} [{fmt(ci[0], 'v')}, {fmt(ci[1], 'v')}]", _share(s, "yes"),
                      _share(s, "no")]
        free = entry.get("free")
        cells.append(str(free["unclear"]) if free else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def win_tables(win: dict, judge: dict) -> list[str]:
    lines = []
    mode = ("log-probabilities of A vs B, position bias cancelled across the two orders, ties within "
            f"{judge.get('tie_margin')} nats" if judge.get("mode") == "logits" else "its likeliest reply per order")
    for kind, title in (("judge", f"judge model `{judge.get('model', '?')}` ({mode})"),
                        ("reference", "closeness to the reference answer (mean of ROUGE-L and BERTScore F1, "
                                      f"margin {win.get('reference_margin')}): wording overlap, not which side "
                                      "the answer takes")):
        rows = win.get(kind) or {}
        if not rows:
            continue
        bias = kind == "judge"
        what = "Preferred by the" if bias else "Closer by the"
        lines += [f"{what} {title}: `{win.get('system', 'dpo')}` against each system" +
                  (", both answer orders:" if bias else ":"), "",
                  f"| vs | {'preferred' if bias else 'closer'} rate | 95% CI | wins | ties | losses | n |" +
                  (" first answer picked | orders agree | reliable |" if bias else ""),
                  "|---|---|---|---|---|---|---|" + ("---|---|---|" if bias else "")]
        for other, s in rows.items():
            ci = s.get("ci95") or [None, None]
            line = (f"| {other} | {fmt(s.get('win_rate'), 'w')} | [{fmt(ci[0], 'w')}, {fmt(ci[1], 'w')}] "
                    f"| {s['wins']} | {s['ties']} | {s['losses']} | {s['n']} |")
            if bias:
                first, agree = s.get("first_position_rate"), s.get("order_consistency")
                ok = reliable(agree)
                line += (f" {'-' if first is None else f'{first:.0%}'} | {'-' if agree is None else f'{agree:.0%}'} "
                         f"| {'-' if ok is None else 'yes' if ok else 'NO (orders agree < 50%)'} |")
            lines.append(line)
        lines.append("")
    if judge.get("first_position_rate") is not None:
        ok = reliable(judge.get("order_consistency"))
        lines += [f"The judge model picked the first answer shown in {judge['first_position_rate']:.0%} of its "
                  f"decided verdicts; its two orders agreed on {judge['order_consistency']:.0%} of the pairs"
                  + (": its win rates are unreliable (below one half)." if ok is False else "."), ""]
    return lines


def _summary(report: dict, labels: dict) -> list[str]:
    lines = ["## What these numbers can show", "",
             f"A comparison with `vanilla` (or, for win rates, with 0.5) is conclusive when it rests on at least 10 "
             f"items and its 95% interval lies clear of the baseline.", ""]
    for probe in report.get("probes") or []:
        found = probe.get("conclusions") or conclusions(probe, _evidence(probe) or {}, labels)
        lines.append(summary_line(f"Probe `{probe.get('name')}` (independent, written by a person)", found))
    if report.get("counts"):
        found = report.get("conclusions") or conclusions(report, _evidence(report) or {}, labels)
        lines.append(summary_line("Held-out set (generator-made sanity check)", found))
    if report.get("advice"):
        lines += ["", report["advice"]]
    return lines + [""]


def grades_markdown(grades: dict) -> list[str]:
    if not grades:
        return []
    lines = ["## Human grading (blind)", "", "Faithful rate: the share of graded answers a person marked as taking "
             "the document's side, without knowing which system wrote them (Wilson 95% interval).", "",
             "| system | faithful rate [95% CI] | faithful | unfaithful | skipped |", "|---|---|---|---|---|"]
    for system, s in grades.items():
        ci = s.get("ci95") or [None, None]
        rate = "-" if s["rate"] is None else f"{s['rate']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        lines.append(f"| {system} | {rate} | {s['faithful']} | {s['unfaithful']} | {s['skipped']} |")
    return lines + [""]


def render_markdown(report: dict) -> str:
    labels = report.get("column_labels", {})
    lines = [f"# Evaluation: {report['run']}", ""]
    if report.get("human_grades"):
        lines += grades_markdown(report["human_grades"])
    if report.get("counts") or report.get("probes"):
        lines += _summary(report, labels)
    for probe in report.get("probes") or []:
        shipped = "; shipped with valign-edge" if probe.get("shipped") else ""
        lines += [f"## Probe `{probe.get('name')}`: the independent measure", "",
                  f"`{probe.get('path')}` (sha256 {str(probe.get('sha256', ''))[:12]}, {probe.get('pairs')} preference "
                  f"rows, {probe.get('questions')} answer rows{shipped}): written by a person; generation and "
                  "training never read it. Preference margin: the chosen answer's mean log-probability per token "
                  "minus the rejected one's.", ""]
        lines += verdict_table(probe)
        lines += section_table(probe, labels) + [""]
        lines += win_tables({**(probe.get("win_rate") or {}),
                             "reference_margin": (report.get("win_rate") or {}).get("reference_margin")},
                            probe.get("judge") or {})
    ts = report.get("test_set", {})
    splits = f" ({'+'.join(ts['splits'])} split)" if ts.get("splits") else ""
    lines += ["## Held-out test set: a generator-made sanity check", "",
              f"Test set: {ts.get('questions')} held-out questions ({ts.get('sft_questions')} SFT questions, "
              f"{ts.get('dpo_questions')} DPO prompts; reference = the grounded answer) and {ts.get('pairs')} "
              f"preference pairs, from {ts.get('kind')} `{ts.get('path')}`{splits}. The teacher wrote them the same "
              "way as the training data: they check that training took, not that it generalizes."]
    dec = report.get("decoding", {})
    lines.append(f"Every system answers through {dec.get('runtime', 'llama.cpp')}, greedy, repeat penalty "
                 f"{dec.get('repeat_penalty')}, at most {dec.get('max_tokens')} tokens; RAG retrieves "
                 f"{dec.get('rag_top_k')} chunks (BM25).")
    lines += [""] + section_table(report, labels)
    lines += ["", "Values with 95% intervals and sample sizes: bootstrap over questions for BLEU, ROUGE-L and "
              "BERTScore; Wilson for preference accuracy and win rates. BLEU is sacreBLEU (0-100); BERTScore uses "
              "all-MiniLM-L6-v2 (layer 6, no idf, no baseline rescaling). Preference accuracy: share of pairs "
              "where the system's model gives the faithful answer the higher mean log-probability per token.", ""]
    lines += win_tables(report.get("win_rate", {}), report.get("judge", {}))
    m = report.get("machine", {})
    lines += [f"Machine: {m.get('cpu')} ({m.get('cores')} cores, {m.get('memory_gb')} GiB, {m.get('os')}), "
              f"load average at the end {m.get('load_avg')}.", ""]
    timings = report.get("timings", {})
    if timings.get("total") is not None:
        reused = timings.get("reused") or {}
        note = (f" (reused from the cache: {reused.get('answers', 0)} answers, {reused.get('pairs', 0)} pair "
                f"scores, {reused.get('judgments', 0)} judgments)") if any(reused.values()) else ""
        lines += [f"Evaluation wall time: {timings['total']:.0f} s{note}.", ""]
    for ex in report.get("examples", [])[:2]:
        lines += [f"Example: **{ex['question']}**", "", f"- reference: {ex['reference']}"]
        lines += [f"- {name}: {ex.get(name, '')}" for name in report["systems"]]
        lines.append("")
    return "\n".join(lines)


def _comparable(report: dict) -> dict[str, dict]:
    """Section title -> section: the held-out set and every probe, by name."""
    out = {"": report}
    for probe in report.get("probes") or []:
        out[f"probe {probe.get('name')}: "] = probe
    return out


def compare(run_dirs: list[Path]) -> str:
    """The reports of several runs side by side, one small table per metric (markdown)."""
    reports = []
    for d in run_dirs:
        path = Path(d) / "eval" / "report.json"
        if not path.exists():
            raise UserError(f"{d} has no evaluation report (eval/report.json); run: valign eval {d}")
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None
    names = [Path(d).name or str(d) for d in run_dirs]
    lines = ["# Evaluation reports side by side", ""]
    for name, rep in zip(names, reports):
        ts = rep.get("test_set", {})
        probes = ", ".join(f"probe {p.get('name')}" for p in rep.get("probes") or [])
        lines.append(f"- **{name}**: `{rep.get('run')}`, {ts.get('questions')} questions, {ts.get('pairs')} pairs "
                     f"from `{ts.get('path')}`" + (f"; {probes}" if probes else ""))
    labels = {k: v for rep in reports for k, v in rep.get("column_labels", {}).items()}
    titles = list(dict.fromkeys(t for rep in reports for t in _comparable(rep)))
    for title in titles:
        sections = [_comparable(rep).get(title) or {} for rep in reports]
        columns = list(dict.fromkeys(c for sec in sections for c in sec.get("columns", [])))
        systems = list(dict.fromkeys(row.get("system") for sec in sections for row in sec.get("table", [])))
        for col in columns:
            header = " | ".join(names) + (" | difference" if len(reports) == 2 else "")
            lines += ["", f"**{title}{labels.get(col, col)}**", "", f"| system | {header} |",
                      "|---|" + "---|" * (len(reports) + (len(reports) == 2))]
            for system in systems:
                values = []
                for sec in sections:
                    row = next((r for r in sec.get("table", []) if r.get("system") == system), None)
                    values.append(row.get(col) if row else None)
                cells = [fmt(v, col) for v in values]
                if len(reports) == 2:
                    cells.append(fmt(values[1] - values[0], col) if None not in values else "-")
                lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
