"""``valign purge RUN``: delete what a run holds of the document, keeping the exported model.

Only files valign wrote are deleted, known by name from the run's own list (the manifest's ``files``,
see ``owned``): never by pattern, never a whole folder. A folder is removed only once it is empty, so
a file a user put in a run folder, even inside ``data/`` or ``logs/``, is never touched.

Deleted: the normalized document, chunks, teacher outputs, datasets and review edits, logs
(progress lines name chunk headings), evaluation answers and reports, the export's
``verify.json`` (it quotes test questions and answers), temporary work files and checkpoints.
Kept by default: the exported model files (``export/*.gguf``, ``Modelfile``), the final LoRA
adapters, ``config.toml`` and ``manifest.json`` (marked purged). ``keep_model=False`` deletes
everything valign wrote, and the folder itself when nothing else is left in it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from pathlib import Path

from valign_edge.errors import UserError
from valign_edge.files import JOURNAL
from valign_edge.runs import owned
from valign_edge.runs.workspace import Run

RUN_FILES = ("manifest.json", "config.toml", owned.LOCK)


def _kept(rel: str, keep_index: bool = False) -> bool:
    """What a default purge keeps: the run's settings and records, the exported model, final adapters (and
    the export's retrieval index, which holds the document's text, only when asked)."""
    if rel in RUN_FILES:
        return True
    parts = rel.rstrip("/").split("/")
    if parts[0] == "export":
        return rel == "export/" or (len(parts) == 2 and not rel.endswith("/")
                                    and (parts[1].endswith(".gguf") or parts[1] == "Modelfile"
                                         or (keep_index and parts[1] == "retrieval.json")))
    if parts[0] == "adapters":
        return not any(p == "checkpoint" or p.startswith(".") for p in parts)
    return False


def _parent_fd(root_fd: int, parts: list[str]) -> int:
    """A descriptor of the folder ``parts`` inside the run, walked one name at a time without following a
    symlink (OSError when a part is a link, missing or not a folder)."""
    fd = os.dup(root_fd)
    for part in parts:
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nxt
    return fd


def _parts(rel: str) -> list[str] | None:
    """The names of a manifest entry, or None when it is not a plain relative path inside the run."""
    parts = rel.rstrip("/").split("/")
    if rel.startswith("/") or "\\" in rel or "\0" in rel or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def _delete(run: Run, listed: list[str], removed: list[Path], skipped: list[str]) -> None:
    """Unlink the listed files, then remove the listed folders that are left empty (deepest first). Every
    name is resolved inside the run folder through its descriptor, never through a symlink: an absolute or
    escaping name, or one below a link, is skipped and reported, never followed."""
    root_fd = os.open(run.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        files = sorted(r for r in listed if not r.endswith("/"))
        folders = sorted((r for r in listed if r.endswith("/")), key=lambda r: -r.count("/"))
        for rel in files + folders:
            parts = _parts(rel)
            if parts is None:
                skipped.append(rel)
                continue
            try:
                parent = _parent_fd(root_fd, parts[:-1])
            except FileNotFoundError:
                continue
            except OSError:
                skipped.append(rel)  # a symlink or a file where valign wrote a folder
                continue
            try:
                if rel.endswith("/"):
                    os.rmdir(parts[-1], dir_fd=parent)  # only when empty: a folder holding anything else stays
                else:
                    st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        continue  # listed as a file, now a folder: not what valign wrote
                    os.unlink(parts[-1], dir_fd=parent)  # a link itself, never its target
                removed.append(run.root / rel.rstrip("/"))
            except OSError:
                pass
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)


def purge(run: Run, keep_model: bool = True, keep_index: bool = False, keep_folder: bool = False) -> list[Path]:
    """Delete the run's document-derived data; return the paths removed (files or folders). Without
    ``keep_model``, everything valign wrote, and the folder when nothing else is left (unless ``keep_folder``)."""
    removed: list[Path] = []
    skipped: list[str] = []
    with run.lock():
        listed = owned.listed(run)
        if listed is None:
            raise UserError(f"{run.root} was made by an older valign-edge that kept no list of the files it wrote; "
                            "nothing was deleted (delete the run folder yourself)")
        if not keep_model:
            _delete(run, [r for r in listed if r != "manifest.json"], removed, skipped)
            _report(skipped)
            run.manifest_path.unlink()
            removed.append(run.manifest_path)
            for name in (owned.LOCK, owned.SESSION, JOURNAL):  # valign's own names (the lock is held open by us)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(run.root / name)
            if not keep_folder:
                with contextlib.suppress(OSError):
                    run.root.rmdir()  # only when nothing else is left
            return removed
        _delete(run, [r for r in listed if not _kept(r, keep_index)], removed, skipped)
        _report(skipped)
        manifest = run.manifest()
        gone = {p.relative_to(run.root).as_posix() for p in removed}
        manifest["files"] = [r for r in manifest.get("files", []) if r.rstrip("/") not in gone]
        for stage, info in manifest.get("stages", {}).items():
            if stage in ("generate", "eval"):
                info["status"] = "purged"
        manifest["purged"] = time.time()
        run.write_manifest(manifest)
    return removed


def _report(skipped: list[str]) -> None:
    for rel in skipped:
        print(f"purge: skipped {rel!r}: not a plain name inside the run folder (absolute, escaping or through a "
              "symlink); nothing outside the run is deleted", file=sys.stderr)
