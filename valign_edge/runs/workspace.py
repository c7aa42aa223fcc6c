"""The run folder: paths, manifest, atomic writes, stage status, resume and locking.

Every stage reads its inputs from the run folder and writes its outputs there. A stage
is skipped when it finished with the same input and config hashes; otherwise it runs
again and, where it can, only does what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import stat
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from valign_edge import RUN_FORMAT_VERSION, __version__
from valign_edge.errors import UserError
from valign_edge.files import start_journal, write_json

STAGES = ("generate", "train_sft", "train_dpo", "export", "eval")


# The folders valign writes in a run: a symbolic link in their place would carry the document elsewhere.
RUN_FOLDERS = ("synth", "data", "adapters", "export", "eval", "logs", "work")


def _refuse_unsafe(root: Path, is_run: bool) -> None:
    """A run folder holds the document: it must be the user's own, a run must not be writable by others
    (anyone who can write it can swap a file for a symlink to theirs and receive the document's text),
    and the folders valign writes in it must be folders, not links to somewhere else."""
    st = root.stat()
    if st.st_uid != os.geteuid():
        raise UserError(f"{root} belongs to another user (uid {st.st_uid}); valign only uses run folders you own: "
                        "copy it to a folder of yours (cp -r) and use the copy")
    if is_run and st.st_mode & 0o022:
        raise UserError(f"run folder {root} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); make it "
                        f"private: chmod 700 {root}")
    for name in RUN_FOLDERS if is_run else ():
        if (root / name).is_symlink():
            raise UserError(f"{root / name} is a symbolic link: valign writes only inside the run folder; "
                            f"replace the link with a folder (or copy the run: cp -rL)")


def private_umask() -> None:
    """Files and folders this process creates are readable by the user only."""
    os.umask(0o077)


def hash_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def hash_obj(obj: Any) -> str:
    return hash_bytes(json.dumps(obj, sort_keys=True, default=str).encode())


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024


def require_free_disk(path: Path, need_bytes: float, what: str) -> None:
    """Refuse, before writing, when the disk holding ``path`` has less than ``need_bytes`` free."""
    import shutil

    path = Path(path)
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UserError(f"not enough disk space for {what}: need about {need_bytes / 1e6:,.0f} MB in {probe}, "
                        f"{free / 1e6:,.0f} MB free")


def available_memory_bytes() -> int | None:
    """Memory this process can still use (Linux: MemAvailable, capped by a cgroup limit); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()[1:]}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


class Run:
    """A run folder. ``Run.open(path)`` creates it (mode 0700) or opens an existing one."""

    def __init__(self, root: Path):
        self.root = root

    # --- paths -----------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def document_path(self) -> Path:
        return self.root / "document.txt"

    @property
    def chunks_path(self) -> Path:
        return self.root / "chunks.jsonl"

    @property
    def synth_dir(self) -> Path:
        return self.root / "synth"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split_path(self, kind: str, split: str) -> Path:
        return self.data_dir / kind / f"{split}.jsonl"

    def adapter_dir(self, stage: str) -> Path:
        return self.root / "adapters" / stage

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def events_path(self) -> Path:
        return self.root / "logs" / "events.jsonl"

    # --- lifecycle ---------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> "Run":
        root = Path(path).expanduser()
        if root.exists() and not root.is_dir():
            raise UserError(f"run folder {root} exists and is not a folder")
        run = cls(root)
        if root.exists():
            _refuse_unsafe(root, run.manifest_path.exists())
        if root.exists() and run.manifest_path.exists():
            start_journal(root)  # what this process writes here is noted (owned.py)
            manifest = run.manifest()
            fmt = manifest.get("format")
            if fmt != RUN_FORMAT_VERSION:
                raise UserError(
                    f"{root} was written by an incompatible valign-edge (run format {fmt!r}, "
                    f"this version reads {RUN_FORMAT_VERSION}); start a new run folder"
                )
            return run
        if not create:
            raise UserError(f"{root} is not a valign run folder (no manifest.json)")
        if root.is_dir() and any(not _ours(p.name) for p in _entries(root)):
            raise UserError(f"{root} holds other files and is not a valign run folder; valign only writes into "
                            "a new or empty folder: give --out a new folder name")
        private_umask()
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(root, 0o700)
            write_json(run.manifest_path, {"format": RUN_FORMAT_VERSION, "valign_version": __version__,
                                           "created": time.time(), "stages": {}, "files": ["manifest.json"]})
            from valign_edge.runs import owned

            owned.open_session(run)  # what is written before the first lock is listed as ours
        except PermissionError:
            raise UserError(f"cannot write to {root}: permission denied") from None
        except OSError as exc:
            raise UserError(f"cannot create run folder {root}: {exc.strerror}") from None
        return run

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Refuse to let two valign processes write the same run folder at once. While held, what this
        process writes is listed in the manifest (see ``owned``), and only that is ever cleaned up."""
        import fcntl

        from valign_edge.runs import owned

        fd = os.open(self.root / owned.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another valign process is working on {self.root}; wait for it or stop it") from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            owned.begin(self)
            try:
                yield
            except BaseException:
                # Listing what was written must not hide why the command stopped (a full disk, Ctrl-C):
                # if it fails, the session stays open and the next lock lists it.
                with contextlib.suppress(Exception):
                    owned.end(self)
                raise
            owned.end(self)
        finally:
            os.close(fd)

    # --- manifest -----------------------------------------------------------------
    def manifest(self) -> dict:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.manifest_path} is unreadable ({exc}); restore it from a backup, or start a new "
                            "run folder (valign never rewrites a manifest it cannot read)") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict) \
                or not all(isinstance(v, dict) for v in manifest.get("stages", {}).values()):
            raise UserError(f"{self.manifest_path} is not a valign manifest (a JSON object with a \"stages\" "
                            "object was expected); restore it or start a new run folder")
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        write_json(self.manifest_path, manifest)

    def stage_info(self, stage: str) -> dict:
        return self.manifest().get("stages", {}).get(stage, {})

    def is_done(self, stage: str, key: str) -> bool:
        """Finished with this key. A stage marked stale whose key still matches (an earlier stage ran
        again and produced the same inputs for it) is done again."""
        info = self.stage_info(stage)
        if info.get("key") != key or info.get("status") not in ("done", "stale"):
            return False
        if info["status"] == "stale":
            self._update_stage(stage, status="done")
        return True

    def _update_stage(self, stage: str, **fields: Any) -> None:
        manifest = self.manifest()
        manifest.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        self.write_manifest(manifest)

    @contextlib.contextmanager
    def stage(self, stage: str, key: str, inputs: dict | None = None) -> Iterator[dict]:
        """Mark ``stage`` running; on success done with the counts the body put in the dict.

        ``key`` hashes the stage's inputs and config: a later run with the same key skips it.
        An interrupted stage stays "partial" and its outputs are resumed, not trusted. A stage that
        runs again with other inputs marks the finished stages after it "stale".
        """
        started = time.time()
        previous = self.stage_info(stage)
        if previous.get("key") not in (None, key):
            self.invalidate(*STAGES[STAGES.index(stage) + 1:] if stage in STAGES else ())
        self._update_stage(stage, status="partial", key=key, started=started, finished=None,
                           inputs=inputs or {})
        result: dict = {}
        yield result
        self._update_stage(stage, **{**result, "status": "done", "finished": time.time(),
                                     "wall_s": round(time.time() - started, 2),
                                     "peak_rss_mb": round(peak_rss_mb(), 1)})

    def invalidate(self, *stages: str) -> None:
        """Mark finished ``stages`` stale: their inputs changed (a later command redoes them)."""
        manifest = self.manifest()
        for stage in stages:
            if manifest.get("stages", {}).get(stage, {}).get("status") == "done":
                manifest["stages"][stage]["status"] = "stale"
        self.write_manifest(manifest)


def _entries(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


def _ours(name: str) -> bool:
    """Names a valign process may leave in a folder before its manifest exists (an interrupted creation)."""
    return name in (".lock", ".valign-session", ".valign-written") or (
        name.startswith((".manifest.json.", ".valign-session.")) and name.endswith(".tmp"))
