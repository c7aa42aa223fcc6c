"""What valign wrote in a run folder, known by name: the manifest's ``files`` list.

Only valign's own writes are listed, so ``valign purge`` and the lock's clean-up of temporary files
never touch a file a user keeps in (or adds to) a run folder.

While a valign process holds a run's lock, ``.valign-session`` keeps the size and mtime of every
entry under the run layout's names at the start. When the lock is released, every entry that is new
or changed since then was written by that process and joins ``files``. A process killed with its lock
(``kill -9``, a power cut) leaves ``.valign-session`` behind: the next process to take the lock lists
what the killed one wrote, and deletes the temporary files among it (writes never renamed into place).
A run folder is created with a session already open, so what a command writes before it takes the
lock (its log file) is listed too.

Runs made by a valign-edge that kept no list (no ``files`` in the manifest) are left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

# Top-level names of the run layout: nothing outside them is ever listed.
LAYOUT = ("manifest.json", "config.toml", "document.txt", "document.pages.json", "chunks.jsonl", "synth", "data",
          "logs", "eval", "work", "review", "adapters", "export")
LOCK = ".lock"
SESSION = ".valign-session"


def _top_level_ok(name: str) -> bool:
    """A layout name, or the temporary file of an atomic write of one (``.manifest.json.x1y2.tmp``)."""
    if name in LAYOUT:
        return True
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in LAYOUT)


def scan(root: Path) -> dict[str, list[int]]:
    """relative path -> [mtime_ns, size] of every file, link and folder (``path/``) under layout names."""
    out: dict[str, list[int]] = {}
    try:
        top = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return out
    stack = [e for e in top if _top_level_ok(e.name)]
    while stack:
        entry = stack.pop()
        rel = Path(entry.path).relative_to(root).as_posix()
        try:
            st = entry.stat(follow_symlinks=False)
            if entry.is_dir(follow_symlinks=False):
                out[rel + "/"] = [0, 0]  # a folder counts once, when it appears
                stack.extend(os.scandir(entry.path))
            else:
                out[rel] = [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            continue
    return out


def is_temporary(rel: str) -> bool:
    """A write of valign's never renamed into place: a name only valign makes (``files.TEMP_MARK``), so a
    user's own ``.notes.md.tmp`` is never taken for one."""
    from .files import TEMP_MARK

    name = rel.rsplit("/", 1)[-1]
    return not rel.endswith("/") and name.startswith(".") and TEMP_MARK in name and name.endswith(".tmp")


def _written_since(root: Path, before: dict) -> list[str]:
    now = scan(root)
    return sorted(rel for rel, stamp in now.items() if before.get(rel) != stamp)


def _read_session(run) -> dict | None:
    try:
        session = json.loads((run.root / SESSION).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return session if isinstance(session, dict) else None


def open_session(run, before: dict) -> None:
    from .files import write_json

    write_json(run.root / SESSION, before)


def close_session(run) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run.root / SESSION).unlink()


def begin(run) -> None:
    """Called with the lock just taken: list what a killed holder wrote, drop its temp files, open a session."""
    for leftover in run.root.glob(f"{SESSION}.*.tmp"):  # our own session file's atomic write, cut short
        leftover.unlink(missing_ok=True)
    manifest = run.manifest()
    if "files" not in manifest:
        return  # made by an older valign-edge: no list to keep
    stale = _read_session(run)
    if stale is not None:
        files = set(manifest["files"])
        for rel in _written_since(run.root, stale):
            if is_temporary(rel):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (run.root / rel).unlink()
            else:
                files.add(rel)
        if files != set(manifest["files"]):
            manifest["files"] = sorted(files)
            run.write_manifest(manifest)
    open_session(run, scan(run.root))


def end(run) -> None:
    """Called before the lock is released: list what this process wrote, close the session."""
    before = _read_session(run)
    if before is None or not run.manifest_path.exists():
        close_session(run)
        return
    manifest = run.manifest()
    if "files" in manifest:
        files = set(manifest["files"]) | set(_written_since(run.root, before))
        if files != set(manifest["files"]):
            manifest["files"] = sorted(files)
            run.write_manifest(manifest)
    close_session(run)


def listed(run) -> list[str] | None:
    """The files and folders (``path/``) valign wrote in ``run``; None for a run that kept no list."""
    files = run.manifest().get("files")
    return None if files is None else [f for f in files if isinstance(f, str) and ".." not in f.split("/")]
