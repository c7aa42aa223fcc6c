"""Files valign writes: atomic replacements, append-only JSONL that survives a kill, strict JSONL reading.

Kept apart from ``workspace`` (the run folder) so that modules the run folder uses, such as ``owned``,
can write files without importing it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable

from valign_edge.errors import UserError

MB = 2**20
JSONL_LIMIT = 1024 * MB  # a run's data files; far above any real run's, short of filling memory


def read_regular(path: Path, what: str, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else one ``UserError``:
    a FIFO is not waited on (opened non-blocking), a device such as /dev/zero is not read, and a file that
    grows past ``limit`` while read (or under /proc, which reports size 0) is cut off with an error."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder; give a file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror.lower()}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UserError(f"{what} {path} is a folder; give a file")
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise UserError(f"{what} {path} is {kind}; give a regular file")
    size = os.fstat(fd).st_size  # checked before reading: a huge file is refused without reading it
    if size > limit:
        os.close(fd)
        raise UserError(f"{what} {path} is {size / MB:.0f} MB; the limit is {limit / MB:.0f} MB")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise UserError(f"cannot read {what} {path}: {exc.strerror.lower()}") from None
    if len(data) > limit:
        raise UserError(f"{what} {path} grew past {limit / MB:.0f} MB while read; the limit is {limit / MB:.0f} MB")
    return data


# What valign writes in a run folder, noted at the moment it writes it: one relative name per line in the
# run's JOURNAL, folded into the manifest's ``files`` list by ``owned`` under the run's lock. Only names
# noted here are ever claimed, so a file a user saves into a run folder while a command runs stays theirs.
JOURNAL = ".valign-written"
_journals: dict[str, set[str]] = {}  # run root (absolute) -> names this process has noted there


def start_journal(root: Path) -> None:
    """Note writes under ``root`` from now on (every run this process opens)."""
    _journals.setdefault(os.path.abspath(root), set())


def note_written(path: Path) -> None:
    """Record ``path`` as written by valign in every open run that holds it (a nested run's writes belong to
    the run around it too). Call it before writing: a kill after the note leaves a name without a file,
    which is harmless; one before it would leave a file nobody lists."""
    full = os.path.abspath(path)
    for root, seen in _journals.items():
        rel = os.path.relpath(full, root)
        if rel in seen or rel == JOURNAL or rel.startswith(("..", "/")):
            continue
        seen.add(rel)
        fd = os.open(os.path.join(root, JOURNAL), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (Path(rel).as_posix() + "\n").encode("utf-8"))
        finally:
            os.close(fd)


def note_tree(folder: Path) -> None:
    """Record every file under ``folder`` (written whole by a library: adapters, a merged model)."""
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            note_written(Path(dirpath) / name)


def read_journal(root: Path) -> list[str]:
    try:
        text = (Path(root) / JOURNAL).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def clear_journal(root: Path) -> None:
    """After the names are in the manifest: the next command starts a fresh journal."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(root) / JOURNAL)
    _journals.get(os.path.abspath(root), set()).clear()


# In the name of every temporary file valign writes (``.train.jsonl.valign~x1y2.tmp``): after a crash only
# names with it are cleaned up, never a user's own ``.notes.md.tmp``.
TEMP_MARK = ".valign~"


def temp_path(path: Path) -> Path:
    """Where to write ``path`` before renaming it into place (one writer per run: the run's lock)."""
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}.tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    note_written(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line (no newline) left by a killed writer: that record was never whole,
    and appending after it would bury it mid-file, where it reads as a damaged line."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if not size:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        keep, pos = 0, size
        while pos > 0 and not keep:
            step = min(pos, 1 << 16)
            pos -= step
            f.seek(pos)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = pos + cut + 1
        f.truncate(keep)


def _append_fd(path: Path) -> int:
    """``path`` opened for appending, created 0600, never through a symbolic link: in a run folder someone
    else could write, a link would carry the document's text to a file of theirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    note_written(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                     0o600)
    except OSError as exc:
        if os.path.islink(path):
            raise UserError(f"{path} is a symbolic link; valign does not write through links (remove it)") from None
        raise UserError(f"cannot write {path}: {exc.strerror.lower()}") from None
    if os.fstat(fd).st_size:
        _drop_torn_tail(path)
    return fd


def append_jsonl(path: Path, record: dict) -> None:
    """Append one record and flush it, so a killed process loses at most the record in flight."""
    with os.fdopen(_append_fd(path), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def open_append(path: Path):
    """A text file to append lines to (logs), after cutting a torn last line a killed writer left."""
    return os.fdopen(_append_fd(path), "a", encoding="utf-8")


def read_jsonl(path: Path, torn_tail: bool = True) -> list[dict]:
    """Read a JSONL file of objects. A half-written last line (no newline: a killed writer of an
    append-only file) is ignored when ``torn_tail``; any other bad line is a one-line error naming
    ``FILE:LINE``, never silently skipped (data files are an interface users edit)."""
    return [row for _, row in read_jsonl_lines(path, torn_tail)]


def read_jsonl_lines(path: Path, torn_tail: bool = True) -> list[tuple[int, dict]]:
    """``read_jsonl`` with each record's line number."""
    if not path.exists():
        return []
    raw = read_regular(path, "data file", JSONL_LIMIT)
    lines = raw.split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        torn = number == len(lines)  # the text after the last newline
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            if torn and torn_tail:
                continue
            raise UserError(f"{path}:{number}: not UTF-8 text; fix or delete that line") from None
        except json.JSONDecodeError as exc:
            if torn and torn_tail:
                continue
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                            "fix or delete that line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, found {_json_type(row)}; "
                            "fix or delete that line")
        records.append((number, row))
    return records


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
