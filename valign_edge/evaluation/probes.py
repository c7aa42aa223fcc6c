"""Probe sets: test data a person wrote, independent of the generator (``valign eval --probe FILE.jsonl``).

A probe file is JSONL, one row per line, each row one of:

- a preference row ``{"prompt", "chosen", "rejected"}``: which answer each system's model finds
  likelier (mean log-probability per token), as the held-out preference accuracy;
- an answer row ``{"question", "reference"}``: answered by each system. With ``"verdict": "yes" | "no"``
  (the document's answer to the question as asked) it is scored for which side the answer takes
  (verdicts.py); every answer is also compared with the reference for closeness (ROUGE-L,
  BERTScore, BLEU) and by the judge model.

Optional keys: ``id`` (a string or integer, unique in the file), ``section`` (the heading of the
document section that decides the row) and ``meta`` (an object). The file
is read here and only here: generation and training never open it (a test checks that), and it is
never copied; only its results are written, under ``eval/``. Shipped probes sit in
``valign_edge/data/probes/NAME.jsonl`` beside the document they probe, ``valign_edge/data/NAME.md``
(or ``.txt``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from valign_edge.errors import UserError
from valign_edge.files import read_regular
from valign_edge.runs.workspace import Run, hash_obj

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
ANSWER_KEYS = ("question", "reference")
OPTIONAL_KEYS = ("id", "section", "meta")
ANSWER_OPTIONAL_KEYS = OPTIONAL_KEYS + ("verdict",)
MAX_LISTED = 40  # bad rows listed in the error; the rest are counted
PROBE_LIMIT = 64 * 2**20  # hand-written probes are kilobytes


@dataclass
class Probe:
    name: str
    path: Path
    sha256: str  # of the file's bytes: in the eval stage key, so a changed probe recomputes
    pairs: list[dict]  # {"id", "probe_id", "prompt", "chosen", "rejected", "chunk_id"}
    questions: list[dict]  # {"id", "probe_id", "question", "reference", "chunk_id", "kind"}
    shipped: bool = False

    def source(self) -> dict:
        return {"kind": "probe", "name": self.name, "path": str(self.path), "sha256": self.sha256,
                "shipped": self.shipped, "pairs": len(self.pairs), "questions": len(self.questions)}


# --- validation ---------------------------------------------------------------------------------------

def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def row_problem(row) -> str | None:
    """What is wrong with one parsed row, or None."""
    if not isinstance(row, dict):
        return f"not a JSON object ({_type_name(row)})"
    keys = set(row)
    if keys & set(PREFERENCE_KEYS):
        kind, required = "a preference row", PREFERENCE_KEYS
    elif keys & set(ANSWER_KEYS):
        kind, required = "an answer row", ANSWER_KEYS
    else:
        return ('neither a preference row {"prompt", "chosen", "rejected"} nor an answer row '
                '{"question", "reference"} (keys: ' + (", ".join(sorted(keys)) or "none") + ")")
    missing = [k for k in required if k not in row]
    if missing:
        return f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)} ({kind} needs " \
               f"{', '.join(required)})"
    optional = ANSWER_OPTIONAL_KEYS if required == ANSWER_KEYS else OPTIONAL_KEYS
    extra = sorted(keys - set(required) - set(optional))
    if extra:
        return f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(extra)} ({kind} takes " \
               f"{', '.join(required)} and optionally {', '.join(optional)})"
    if "verdict" in row and row["verdict"] not in ("yes", "no"):
        return f'"verdict" must be "yes" or "no", not {json.dumps(row["verdict"])}'
    if "section" in row and (not isinstance(row["section"], str) or not row["section"].strip()):
        return f'"section" must be a non-empty string, not {_type_name(row["section"])}'
    for key in required:
        if not isinstance(row[key], str):
            return f'"{key}" must be a string, not {_type_name(row[key])}'
        if not row[key].strip():
            return f'"{key}" is empty'
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], (str, int))
                        or not str(row["id"]).strip()):
        return f'"id" must be a non-empty string or an integer, not {_type_name(row["id"])}'
    if "meta" in row and not isinstance(row["meta"], dict):
        return f'"meta" must be an object, not {_type_name(row["meta"])}'
    same = " ".join(row.get("chosen", "").lower().split()) == " ".join(row.get("rejected", "").lower().split())
    if required == PREFERENCE_KEYS and same:
        return '"chosen" and "rejected" are the same answer'
    return None


def parse_rows(text: str, label: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, row) for every good row, and one ``label:line: problem`` per bad row."""
    rows, problems, seen = [], [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{label}:{number}: not JSON ({exc.msg} at column {exc.colno})")
            continue
        problem = row_problem(row)
        if problem is None and "id" in row:
            rid = str(row["id"]).strip()
            if rid in seen:
                problem = f'duplicate id "{rid}" (first on line {seen[rid]})'
            seen.setdefault(rid, number)
        if problem:
            problems.append(f"{label}:{number}: {problem}")
        else:
            rows.append((number, row))
    return rows, problems


def load_probe(path: str | Path, shipped: bool = False) -> Probe:
    """Read and check a probe file; every problem is a ``UserError`` (one line per bad row)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"probe {path} is a folder; give a JSONL file")
    data = read_regular(path, "probe file", PROBE_LIMIT)  # a FIFO or a device is refused, not read
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"probe file {path} is not UTF-8 text (byte {exc.start})") from None
    rows, problems = parse_rows(text, path.name)
    if problems:
        listed = problems[:MAX_LISTED]
        more = len(problems) - len(listed)
        raise UserError(f"probe file {path} has {len(problems)} bad row{'s' if len(problems) > 1 else ''} "
                        "(nothing was evaluated):\n  " + "\n  ".join(listed) +
                        (f"\n  ... and {more} more" if more else ""))
    if not rows:
        raise UserError(f"probe file {path} is empty: it needs rows of {{\"prompt\", \"chosen\", \"rejected\"}} "
                        "or {\"question\", \"reference\"}, one JSON object per line")
    pairs, questions = [], []
    for number, row in rows:
        probe_id = str(row.get("id", f"line{number}")).strip()
        if "prompt" in row:
            # The cache id changes with the text, so an edited row is scored again.
            cache_id = f"{probe_id}#{hash_obj([row[k] for k in PREFERENCE_KEYS])[:10]}"
            pairs.append({"id": cache_id, "probe_id": probe_id, "prompt": row["prompt"], "chosen": row["chosen"],
                          "rejected": row["rejected"], "chunk_id": None, "section": row.get("section")})
        else:
            cache_id = f"{probe_id}#{hash_obj([row[k] for k in ANSWER_KEYS])[:10]}"
            questions.append({"id": cache_id, "probe_id": probe_id, "question": row["question"],
                              "reference": row["reference"], "chunk_id": None, "kind": "probe",
                              "verdict": row.get("verdict"), "section": row.get("section")})
    return Probe(path.stem, path, hashlib.sha256(data).hexdigest(), pairs, questions, shipped)


# --- shipped probes ------------------------------------------------------------------------------------

def _data_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("valign_edge").joinpath("data")))


def shipped_probes() -> dict[str, Path]:
    """name -> path of every probe set shipped with valign-edge (``valign_edge/data/probes/*.jsonl``)."""
    folder = _data_dir() / "probes"
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}


def shipped_document(name: str) -> Path | None:
    """The shipped document a shipped probe is about (``valign_edge/data/NAME.md`` or ``.txt``)."""
    for suffix in (".md", ".txt"):
        path = _data_dir() / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def shipped_probe_for(text: str) -> Path | None:
    """The shipped probe for a normalized document text, when that text is a shipped document's."""
    from valign_edge.documents.ingest import read_document

    digest = hashlib.sha256(text.encode()).hexdigest()
    for name, probe in shipped_probes().items():
        doc = shipped_document(name)
        if doc is not None and read_document(doc).sha256 == digest:
            return probe
    return None


def shipped_probe_for_run(run: Run) -> Path | None:
    """The shipped probe for the run's document (None when it is not a shipped document, or was purged)."""
    if not run.document_path.exists():
        return None
    return shipped_probe_for(run.document_path.read_text(encoding="utf-8"))


def probe_paths(cfg_value: str, given: list[Path] | None, run: Run) -> tuple[list[Path], bool]:
    """The probe files to evaluate: ``--probe`` flags, else ``eval.probe`` (comma-separated, ``none`` for
    none), else the shipped probe when the run's document is a shipped one. Second: whether shipped."""
    if given:
        return [Path(p) for p in given], False
    value = (cfg_value or "").strip()
    if value.lower() == "none":
        return [], False
    if value:
        return [Path(p.strip()) for p in value.split(",") if p.strip()], False
    found = shipped_probe_for_run(run)
    return ([found], True) if found is not None else ([], False)
