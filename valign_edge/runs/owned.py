"""What valign wrote in a run folder, known by name: the manifest's ``files`` list.

Only valign's own writes are listed, so ``valign purge`` and the clean-up after a crash never touch a
file a user keeps in (or adds to) a run folder, even one saved there while a command runs.

Every write of valign's notes its name at the moment it writes (``files.note_written``: the atomic
writer, the JSONL and log appenders, and the call sites where a library writes a file or a folder), in
the run's journal ``.valign-written``. Whoever next holds the run's lock folds the journal into
``files``: the command itself when it releases the lock, or, after a ``kill -9``, the next command when
it takes it. That next command also deletes the temporary files a killed one left, recognised by a name
only valign makes (``files.TEMP_MARK``); nothing else is ever taken for one.

Runs made by a valign-edge that kept no list (no ``files`` in the manifest) are left alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Top-level names of the run layout: nothing outside them is ever listed.
LAYOUT = ("manifest.json", "config.toml", "document.txt", "document.pages.json", "chunks.jsonl", "synth", "data",
          "logs", "eval", "work", "review", "adapters", "export")
LOCK = ".lock"
SESSION = ".valign-session"  # written by earlier versions (a scan of the run); removed when met


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
    from valign_edge.files import TEMP_MARK

    name = rel.rsplit("/", 1)[-1]
    return not rel.endswith("/") and name.startswith(".") and TEMP_MARK in name and name.endswith(".tmp")


def _fold(run) -> None:
    """Move the names in the run's journal (and their folders) into the manifest's ``files`` list."""
    from valign_edge.files import clear_journal, read_journal

    noted = read_journal(run.root)
    manifest = run.manifest()
    if "files" in manifest and noted:
        files = set(manifest["files"])
        for rel in noted:
            files.add(rel)
            parts = rel.split("/")[:-1]
            files.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
        if files != set(manifest["files"]):
            manifest["files"] = sorted(files)
            run.write_manifest(manifest)
    clear_journal(run.root)


def _drop_temporaries(run) -> None:
    """Delete the temporary files a killed valign left (names only valign makes, see ``is_temporary``)."""
    for rel in scan(run.root):
        if is_temporary(rel):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (run.root / rel).unlink()


def open_session(run) -> None:
    """Start noting what this process writes in ``run`` (``files.note_written``)."""
    from valign_edge.files import start_journal

    start_journal(run.root)


def close_session(run) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run.root / SESSION).unlink()  # left by a valign-edge that listed files by a scan


def begin(run) -> None:
    """Called with the lock just taken: list what an earlier process noted (a killed one's too), drop
    the temporary files a killed one left (no other process can be writing: we hold the lock)."""
    for leftover in run.root.glob(f"{SESSION}.*.tmp"):
        leftover.unlink(missing_ok=True)
    if "files" not in run.manifest():
        return  # made by an older valign-edge: no list to keep
    _fold(run)
    _drop_temporaries(run)
    close_session(run)
    open_session(run)


def end(run) -> None:
    """Called before the lock is released: list what this process wrote."""
    if run.manifest_path.exists():
        _fold(run)


def listed(run) -> list[str] | None:
    """The files and folders (``path/``) valign wrote in ``run``; None for a run that kept no list."""
    files = run.manifest().get("files")
    return None if files is None else [f for f in files if isinstance(f, str) and ".." not in f.split("/")]
