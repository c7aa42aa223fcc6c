"""Privacy promises: no network in any stage, chat or evaluation; a private run folder; no document
text outside it; ``valign purge``; only safe weight formats; sandboxed chat templates."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import (CANARY, ROOT, assert_one_line_error, cli_command, cli_env, copy_run, make_guard,
                      needs, unshare_net_works, unshare_prefix, valign)

QUESTION = "May I tell my friends what a visitor told me?"


def _guarded(tmp_path, *args, isolate=True, timeout=1800):
    guard = make_guard(tmp_path)
    prefix = unshare_prefix() if isolate and unshare_net_works() else []
    proc = subprocess.run([*prefix, *cli_command(*args)], capture_output=True, text=True,
                          env=guard.env(cli_env()), timeout=timeout, cwd=ROOT)
    return proc, guard


# --- no network ------------------------------------------------------------------------------------
def _programs(guard) -> dict[str, str]:
    """pid -> what each guarded process ran: the valign verb, or the converter script's name."""
    out = {}
    for row in guard.lines():
        if row[0] == "process":
            argv = row[3].split()
            out[row[1]] = argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else Path(argv[0]).name if argv else ""
    return out


def test_quick_run_makes_no_network_attempt(finished_run):
    """Every process of the shared run was guarded (the CLI and llama.cpp's converters) and none opened a
    connection or loaded a pickle through torch. Where ``unshare -n`` works the run also had no network
    interface at all; ``finished_run`` fails if the run did not succeed there."""
    guard = finished_run.guard
    programs = set(_programs(guard).values())
    assert {"run", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py"} <= programs, programs
    assert guard.violations() == [], "\n".join(guard.violations())


def test_offline_switches_are_set_at_import():
    code = "import os, valign_edge; print(' '.join(f'{k}={os.environ.get(k)}' for k in %r))" % (
        ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK"],)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "DO_NOT"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1", "HF_DATASETS_OFFLINE=1",
                           "HF_HUB_DISABLE_TELEMETRY=1", "DO_NOT_TRACK=1"]


def test_chat_and_rag_chat_make_no_network_attempt(finished_run, tmp_path):
    for extra in ([], ["--rag"]):
        proc, guard = _guarded(tmp_path / ("rag" if extra else "plain"), "chat", finished_run.path, "--prompt",
                               QUESTION, "--max-tokens", "8", *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert guard.processes() >= 1 and guard.violations() == [], guard.violations()


def test_evaluation_makes_no_network_attempt(evaluated_run):
    """``valign eval`` ran under the same guard as the run (see conftest.reference_run): the guard loaded in
    it, and nothing it did (answers, judge, BERTScore model) tried the network."""
    guard = evaluated_run.guard
    eval_pids = {pid for pid, program in _programs(guard).items() if program == "eval"}
    assert eval_pids, "the guard did not load in `valign eval`"
    assert [v for v in guard.violations() if v.split("\t")[1] in eval_pids] == []


# --- private run folder, no text outside it ------------------------------------------------------------
def test_run_folder_is_private_to_the_user(finished_run):
    """The run was started under umask 022; the CLI must still make everything 0700/0600."""
    loose = []
    for path in [finished_run.path, *finished_run.path.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            loose.append(f"{oct(mode)} {path.relative_to(finished_run.path)}")
    assert loose == [], loose


def _files_containing(root: Path, needle: bytes, since: float | None = None, skip: Path | None = None) -> list[str]:
    found = []
    for path in root.rglob("*"):
        try:
            if not path.is_file() or path.is_symlink() or (skip and skip in path.parents):
                continue
            st = path.stat()
            if since is not None and st.st_mtime < since - 1:
                continue
            if st.st_size > 256 * 2**20:
                continue
            if needle in path.read_bytes():
                found.append(str(path))
        except OSError:
            continue
    return found


def test_document_text_stays_inside_the_run_folder(finished_run):
    needle = CANARY.encode()
    assert _files_containing(finished_run.path, needle), "the canary should be in the run's own data"
    # The run's temporary folder, every cache under HOME written during the run, and the working copy.
    leaks = _files_containing(finished_run.tmpdir, needle)
    leaks += _files_containing(Path.home() / ".cache", needle, since=finished_run.started)
    leaks += [p for p in _files_containing(ROOT, needle, since=finished_run.started) if "/tests/" not in p]
    assert leaks == [], leaks


# --- purge -----------------------------------------------------------------------------------------------
def test_purge_deletes_document_data_and_keeps_the_model(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    models = {p.name: p.read_bytes() for p in (run / "export").glob("*.gguf")}
    assert any(name.startswith("model-") for name in models)
    proc = valign("purge", run)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"removed \d+ items", proc.stdout)
    left = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert _files_containing(run, CANARY.encode()) == [], left
    for gone in ("document.txt", "chunks.jsonl", "synth", "data", "logs", "eval", "export/verify.json"):
        assert not (run / gone).exists(), gone
    assert {p.name: p.read_bytes() for p in (run / "export").glob("*.gguf")} == models
    assert (run / "adapters" / "dpo" / "adapter_model.safetensors").exists()
    # The kept model still answers.
    chat = valign("chat", run, "--prompt", QUESTION, "--max-tokens", "4")
    assert chat.returncode == 0, chat.stderr[-2000:]
    # Purging again is harmless; training on a purged run says what is missing in one line.
    assert valign("purge", run).returncode == 0
    assert_one_line_error(valign("train", run), 2, "no SFT data")


def test_purge_all_deletes_the_run(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    proc = valign("purge", run, "--all")
    assert proc.returncode == 0, proc.stderr
    assert not run.exists()


def test_purge_spares_files_that_are_not_the_runs(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    (run / "my-notes.txt").write_text("mine")
    assert valign("purge", run, "--all").returncode == 0
    assert (run / "my-notes.txt").read_text() == "mine"


def test_purge_refuses_a_run_in_use(finished_run, tmp_path):
    import fcntl

    run = copy_run(finished_run.path, tmp_path / "run")
    with open(run / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert_one_line_error(valign("purge", run), 2, "another valign process")
    assert (run / "document.txt").exists()


def test_purge_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "document.txt").write_text("keep me")
    assert_one_line_error(valign("purge", tmp_path), 2, "not a valign run folder")
    assert (tmp_path / "document.txt").exists()


# --- safe formats --------------------------------------------------------------------------------------
UNSAFE = re.compile(r"\bpickle\b|torch\.load\(|joblib|allow_pickle\s*=\s*True|trust_remote_code\s*=\s*True"
                    r"|weights_only\s*=\s*False|use_safetensors\s*=\s*False")


def test_no_code_path_loads_pickles_or_remote_code():
    hits = []
    for folder in ("valign_edge", "backends", "tui"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if UNSAFE.search(line.split("#")[0]):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == [], hits


MALICIOUS_TEMPLATE = ("{{ cycler.__init__.__globals__.os.system('touch MARKER') }}"
                      "{% for m in messages %}{{ m['content'] }}{% endfor %}")


@pytest.fixture(scope="module")
def evil_gguf(finished_run, tmp_path_factory):
    """The run's exported model with a chat template that tries to run a shell command (creating MARKER)."""
    needs("gguf")
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "escaped"
    src = sorted((finished_run.path / "export").glob("model-*.gguf"))[0]
    dst = folder / "evil.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(src), str(dst), "--force",
                    "--chat-template", MALICIOUS_TEMPLATE.replace("MARKER", str(marker))],
                   check=True, capture_output=True, input="")  # gguf-py's own metadata editor
    return dst, marker


def test_chat_with_a_malicious_template_is_refused_in_one_line(evil_gguf):
    evil, marker = evil_gguf
    assert_one_line_error(valign("chat", evil, "--prompt", "hi", "--max-tokens", "4"), 2, "template")
    assert not marker.exists()


def test_a_teacher_with_a_malicious_template_is_refused_in_one_line(evil_gguf, finished_run, tmp_path):
    """The teacher's template renders every generation prompt: the same refusal, before any record."""
    evil, marker = evil_gguf
    out = tmp_path / "run"
    proc = valign("generate", finished_run.doc, "--out", out, "--teacher", evil, "--preset", "quick")
    assert_one_line_error(proc, 2, "template")
    assert not marker.exists()
    assert not (out / "synth").exists() and not (out / "data").exists()
