"""``valign purge RUN``: delete what a run holds of the document, keeping the exported model.

Deleted: the normalized document, chunks, teacher outputs, datasets and review edits, logs
(progress lines name chunk headings), evaluation answers and reports, the export's
``verify.json`` (it quotes test questions and answers), temporary work files and checkpoints.
Kept by default: the exported model files (``export/*.gguf``, ``Modelfile``), the final LoRA
adapters, ``config.toml`` and ``manifest.json`` (marked purged). ``keep_model=False`` deletes
the whole run folder.

Only names the run layout defines are deleted, so a run folder made inside a folder that
holds other files never loses those files.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .workspace import Run, write_json

# Top-level entries that hold the document or text derived from it.
DOCUMENT_DATA = ("document.txt", "chunks.jsonl", "synth", "data", "logs", "eval", "work", "review")
# Inside export/ and adapters/: what is the model, everything else there is text or scratch.
MODEL_SUFFIXES = (".gguf",)
MODEL_NAMES = ("Modelfile",)
RUN_FILES = ("manifest.json", "config.toml", ".lock")


def _remove(path: Path, removed: list[Path]) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return
    removed.append(path)


def _is_temp(path: Path) -> bool:
    """Leftovers of atomic writes and interrupted stages (``.name.xyz.tmp``, ``.sft.final``, ...)."""
    return path.name.startswith(".") and path.name != ".lock" or path.suffix == ".tmp"


def purge(run: Run, keep_model: bool = True) -> list[Path]:
    """Delete the run's document-derived data; return the paths removed (files or folders)."""
    removed: list[Path] = []
    with run.lock():
        for name in DOCUMENT_DATA:
            _remove(run.root / name, removed)
        for path in sorted(run.root.iterdir()):
            if _is_temp(path):
                _remove(path, removed)
        if not keep_model:
            for name in ("adapters", "export", *RUN_FILES):
                _remove(run.root / name, removed)
            try:
                run.root.rmdir()
            except OSError:
                pass  # other files the user keeps there
            return removed
        export = run.export_dir
        if export.is_dir():
            for path in sorted(export.iterdir()):
                if not (path.is_file() and (path.suffix in MODEL_SUFFIXES or path.name in MODEL_NAMES)) \
                        or _is_temp(path):
                    _remove(path, removed)
        adapters = run.root / "adapters"
        if adapters.is_dir():
            for path in sorted(adapters.rglob("*")):
                if path.exists() and (_is_temp(path) or path.name == "checkpoint"):
                    _remove(path, removed)
        manifest = run.manifest()
        for stage, info in manifest.get("stages", {}).items():
            if stage in ("generate", "eval"):
                info["status"] = "purged"
        manifest["purged"] = time.time()
        write_json(run.manifest_path, manifest)
    return removed
