"""Shared fixtures and helpers.

- ``valign(...)``: the real CLI in a subprocess (optionally network-guarded, see ``GUARD_SITE``).
- ``tiny_student``: a 2-layer llama with SmolLM2's real tokenizer, for fast training and export.
- ``finished_run``: one complete ``valign run --preset quick`` (real teacher, tiny student) per
  session, made with every socket connect trapped; reliability tests copy it instead of re-running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A small value document with a word that appears nowhere else, so tests can tell where its text went.
CANARY = "Quillmere"
CANARY_DOC = f"""# {CANARY} Harbour Volunteer Code

## Respect
Volunteers at {CANARY} Harbour must treat every visitor with respect and patience, whatever their age,
language or background. Never shout at visitors and never mock their questions.

## Privacy
What visitors tell a volunteer is private. You must not share a visitor's name, address or story with
anyone outside the {CANARY} Harbour team, and you must lock paper records away at the end of each shift.
"""

# The settings every reliability test shares with ``finished_run``: quick preset, two chunks, the tiny
# student, enough steps to checkpoint several times, one decode thread (steadier on a busy machine).
RUN_FLAGS = ["--preset", "quick", "--set", "generate.max_chunks=2", "--set", "generate.n_threads=1",
             "--set", "generate.valid_fraction=0.1", "--set", "generate.test_fraction=0.1",
             "--set", "train.sft_epochs=40", "--set", "train.dpo_epochs=40", "--set", "train.max_steps=12",
             "--set", "train.checkpoint_every=2", "--set", "train.threads=1", "--set", "eval.max_questions=2",
             "--set", "export.verify_prompts=1"]

# Written as ``sitecustomize.py`` into a folder put first on PYTHONPATH: every Python process of the
# run (the CLI and llama.cpp's converter subprocesses) records any network attempt and any pickle
# load through torch into $VALIGN_GUARD_LOG, and fails the attempt.
GUARD_SITE = r'''
import os, socket, sys, traceback

_LOG = os.environ.get("VALIGN_GUARD_LOG")


def _record(kind, detail):
    stack = "".join(traceback.format_stack(limit=8)[:-2]).replace("\n", " | ")
    with open(_LOG, "a") as f:
        f.write(f"{kind}\t{os.getpid()}\t{detail!r}\t{' '.join(sys.argv)[:200]}\t{stack[-1500:]}\n")


def _refuse(kind):
    def refuse(*args, **kwargs):
        _record(kind, args[1:] if kind.startswith("socket.") and args and isinstance(args[0], socket.socket) else args)
        raise OSError(101, "network access blocked by the valign test guard")
    return refuse


if _LOG:
    _record("process", "guarded")
    for name in ("connect", "connect_ex", "sendto", "sendmsg"):
        setattr(socket.socket, name, _refuse("socket." + name))
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, _refuse(name))

    import importlib.abc, importlib.util

    class _TorchLoadHook(importlib.abc.MetaPathFinder):
        """Wrap torch.load (the pickle path) as soon as torch.serialization is imported."""

        def find_spec(self, name, path=None, target=None):
            if name != "torch.serialization":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            original = spec.loader.exec_module

            def exec_module(module):
                original(module)
                load = module.load

                def guarded_load(f, *args, **kwargs):
                    _record("torch.load", str(f))
                    return load(f, *args, **kwargs)

                module.load = guarded_load

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _TorchLoadHook())
'''


@dataclasses.dataclass
class Guard:
    """A network/pickle guard for subprocesses; ``events()`` lists what it caught."""

    site_dir: Path
    log: Path

    def env(self, env: dict) -> dict:
        path = os.pathsep.join(p for p in (str(self.site_dir), env.get("PYTHONPATH", "")) if p)
        return dict(env, PYTHONPATH=path, VALIGN_GUARD_LOG=str(self.log))

    def lines(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split("\t") for line in self.log.read_text().splitlines() if line]

    def processes(self) -> int:
        return sum(1 for row in self.lines() if row[0] == "process")

    def violations(self) -> list[str]:
        return ["\t".join(row) for row in self.lines() if row[0] != "process"]


def make_guard(folder: Path) -> Guard:
    site = folder / "guard-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(GUARD_SITE)
    return Guard(site, folder / "guard.log")


def unshare_net_works() -> bool:
    """True where ``unshare -n`` can give a process an empty network namespace (root or user ns)."""
    if not shutil.which("unshare"):
        return False
    for cmd in (["unshare", "-n", "true"], ["unshare", "-rn", "true"]):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
    return False


def unshare_prefix() -> list[str]:
    return ["unshare", "-n", "--"] if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0 \
        else ["unshare", "-rn", "--"]


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a valign a test will Ctrl-C: SIGINT back to its default. A suite started as a
    background job (``make test &``) inherits SIGINT ignored, and so would every valign it starts: the
    Ctrl-C tests would then watch an uninterruptible process run to the end. SIGTERM and SIGHUP too (a
    suite under nohup ignores SIGHUP)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "valign_edge.cli", *map(str, args)]


def cli_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    env.pop("VALIGN_GUARD_LOG", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def valign(*args, env: dict | None = None, timeout: float = 1800, prefix: list[str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``valign ARGS`` to completion; text output captured."""
    return subprocess.run([*(prefix or []), *cli_command(*args)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=cwd or ROOT)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("valign:")]


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 2, contains: str = "") -> str:
    """Exit ``code``, no traceback, and exactly one ``valign:`` line, the last thing on stderr."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}\n{out[-3000:]}"
    lines = error_lines(proc)
    assert len(lines) == 1, out[-3000:]
    tail = [line for line in proc.stderr.splitlines() if line.strip()]
    assert tail and tail[-1] == lines[0], proc.stderr[-2000:]
    assert contains.lower() in lines[0].lower(), lines[0]
    return lines[0]


# --- markers ---------------------------------------------------------------------------------------
_CUDA: list[bool] = []


def cuda_available() -> bool:
    """torch sees a CUDA GPU (imported only when a ``gpu`` test is about to run)."""
    if not _CUDA:
        try:
            import torch
        except ImportError:
            _CUDA.append(False)
        else:
            _CUDA.append(bool(torch.cuda.is_available()))
    return _CUDA[0]


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not cuda_available():
        pytest.skip("needs a CUDA GPU (torch sees none here)")


# --- models ---------------------------------------------------------------------------------------
def teacher_path() -> Path | None:
    from valign_edge.models import catalog, preset_path

    entry = catalog().get("smollm2-135m-instruct")
    return preset_path("smollm2-135m-instruct", entry) if entry else None


def needs(module: str):
    """Import a module that ``make setup`` installs. Its absence fails the test, naming it: a skip would
    let a machine without it pass the suite without running the user's path."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} is missing ({exc}); run: make setup", pytrace=False)


@pytest.fixture(scope="session")
def teacher_gguf() -> Path:
    path = teacher_path()
    if path is None:
        pytest.fail("the SmolLM2 GGUF (smollm2-135m-instruct) is not installed; run: make setup", pytrace=False)
    return path


def make_tiny_llama(out: Path, **config) -> Path:
    """Save a randomly initialised (seed 0) 2-layer llama with SmolLM2's real tokenizer to ``out``;
    ``config`` adds or overrides LlamaConfig fields."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from valign_edge.backends.hf import student_hf_dir
    from valign_edge.models import resolve

    tok = AutoTokenizer.from_pretrained(str(student_hf_dir(resolve("smollm2-135m-instruct"))))
    cfg = LlamaConfig(**{**dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                tie_word_embeddings=True), **config})
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, teacher_gguf) -> Path:
    """An HF folder (safetensors): a randomly initialised 2-layer llama with SmolLM2's tokenizer."""
    needs("torch")
    needs("peft")
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-student"))


# --- the shared finished run ------------------------------------------------------------------------
@dataclasses.dataclass
class FinishedRun:
    doc: Path
    path: Path
    flags: list[str]
    proc: subprocess.CompletedProcess
    guard: Guard
    isolated: bool  # ran inside ``unshare -n`` (no network interface at all)
    started: float
    seconds: float
    tmpdir: Path  # TMPDIR the run was given
    eval_proc: subprocess.CompletedProcess | None  # ``valign eval RUN`` after the run (None: the run failed)

    def command(self, out: Path | None = None) -> list[str]:
        """The ``valign run`` arguments that made this run (for another folder: ``out``)."""
        return ["run", self.doc, "--out", out or self.path, *self.flags]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_student, teacher_gguf) -> FinishedRun:
    """``valign run --preset quick`` once, guarded: every socket connect or pickle load is recorded."""
    root = tmp_path_factory.mktemp("reference")
    doc = root / "harbour-code.md"
    doc.write_text(CANARY_DOC, encoding="utf-8")
    tmpdir = root / "tmp"
    tmpdir.mkdir()
    guard = make_guard(root)
    flags = [*RUN_FLAGS, "--student", str(tiny_student)]
    isolated = unshare_net_works()
    env = guard.env(cli_env(TMPDIR=tmpdir))
    out = root / "run"

    def guarded(*args):
        return subprocess.run([*(unshare_prefix() if isolated else []), *cli_command(*args)], capture_output=True,
                              text=True, env=env, timeout=3600, cwd=ROOT,
                              preexec_fn=lambda: os.umask(0o022))  # a permissive umask: the CLI must tighten it

    started = time.time()
    proc = guarded("run", doc, "--out", out, *flags)
    seconds = time.time() - started
    # Evaluation runs as its own command, so a failing evaluation fails only the tests that need it.
    eval_proc = guarded("eval", out) if proc.returncode == 0 else None
    return FinishedRun(doc, out, flags, proc, guard, isolated, started, seconds, tmpdir, eval_proc)


@pytest.fixture(scope="session")
def finished_run(reference_run) -> FinishedRun:
    proc = reference_run.proc
    if proc.returncode != 0:
        pytest.fail(f"the reference `valign run` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return reference_run


@pytest.fixture(scope="session")
def evaluated_run(finished_run) -> FinishedRun:
    """The finished run after ``valign eval``; a failed evaluation (an import error included) fails the test."""
    proc = finished_run.eval_proc
    if proc.returncode != 0:
        pytest.fail(f"`valign eval` on the reference run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return finished_run


# --- run folder helpers -------------------------------------------------------------------------------
# What each stage writes, so a copy of a finished run can be rolled back to just before a stage.
STAGE_OUTPUTS = {
    "generate": ["chunks.jsonl", "synth", "data"],
    "train_sft": ["adapters/sft"],
    "train_dpo": ["adapters/dpo"],
    "export": ["export", "work"],
    "eval": ["eval"],
}
STAGE_ORDER = list(STAGE_OUTPUTS)


def copy_run(src: Path, dst: Path, before: str | None = None) -> Path:
    """Copy a run folder (mtimes kept); with ``before``, undo that stage and every later one."""
    shutil.copytree(src, dst, symlinks=True)
    (dst / ".lock").unlink(missing_ok=True)
    if before is not None:
        manifest = json.loads((dst / "manifest.json").read_text())
        for stage in STAGE_ORDER[STAGE_ORDER.index(before):]:
            manifest["stages"].pop(stage, None)
            for rel in STAGE_OUTPUTS[stage]:
                target = dst / rel
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def snapshot(root: Path, ignore: tuple[str, ...] = (".lock", "logs")) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (for "nothing was damaged" checks)."""
    import hashlib

    out = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(rel == i or rel.startswith(i + "/") for i in ignore):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
