"""valign touches only what it wrote (issue 16): ``--out`` on a user's folder, purge and the lock's
clean-up of temp files, a different document into a finished run, JSONL lines that are bad."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import CANARY, CANARY_DOC, ROOT, assert_one_line_error, cli_env, copy_run, snapshot, valign

USER_FILES = {".git/HEAD": "ref: refs/heads/main\n", ".gitignore": "*.pyc\n", ".env": "TOKEN=mine\n",
              "data/survey.csv": "a,b\n1,2\n", "draft.tmp": "my draft", ".notes.md.tmp": "hidden draft",
              "logs/mylog.txt": "my log", "eval/summary.md": "my summary", "document.txt": "my own document"}


def _put(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _holds_canary(root) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and CANARY.encode() in p.read_bytes()]


def test_out_on_a_folder_that_is_not_a_run_is_refused_untouched(tmp_path):
    proj = tmp_path / "proj"
    _put(proj, USER_FILES)
    doc = tmp_path / "policy.md"
    doc.write_text(CANARY_DOC)
    mode, before = proj.stat().st_mode, snapshot(proj, ignore=())
    for verb in ("generate", "run"):
        line = assert_one_line_error(valign(verb, doc, "--out", proj, "--preset", "quick"), 2, "not a valign run")
        assert "new folder" in line
    assert snapshot(proj, ignore=()) == before and proj.stat().st_mode == mode
    assert not (proj / "manifest.json").exists()


def test_the_run_lists_every_file_it_wrote(finished_run):
    """The list purge trusts: every file of a finished run is in it (a new output name must join it)."""
    manifest = json.loads((finished_run.path / "manifest.json").read_text())
    assert not (finished_run.path / ".valign-session").exists(), "a finished command left its session open"
    on_disk = {p.relative_to(finished_run.path).as_posix() for p in finished_run.path.rglob("*") if p.is_file()}
    assert on_disk - {".lock"} <= set(manifest["files"]), on_disk - set(manifest["files"])


def test_purge_deletes_only_what_valign_wrote(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    _put(run, {k: v for k, v in USER_FILES.items() if k != "document.txt"} | {"data/sft/mine.jsonl": "{}\n",
                                                                            "synth/.x.jsonl.abc.tmp": "mine"})
    mine = {rel: (run / rel).read_bytes() for rel in snapshot(run, ignore=()) if not _listed(run, rel)}
    assert valign("purge", run).returncode == 0
    assert {rel: (run / rel).read_bytes() for rel in mine} == mine
    assert _holds_canary(run) == []
    assert list((run / "export").glob("model-*.gguf"))
    assert valign("purge", run, "--all").returncode == 0
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == sorted(mine)
    assert {rel: (run / rel).read_bytes() for rel in mine} == mine


def test_purge_never_reaches_outside_the_run(finished_run, tmp_path):
    """A manifest someone else wrote (a run folder sent to you): absolute and escaping names, and names
    through a symlinked folder inside the run, are skipped and reported, the files they name kept."""
    run = copy_run(finished_run.path, tmp_path / "run")
    outside = tmp_path / "outside"
    _put(outside, {"victim.txt": "keep me", "deep/victim2.txt": "keep me too"})
    (run / "linked").symlink_to(outside, target_is_directory=True)
    (run / "data" / "link.txt").symlink_to(outside / "victim.txt")
    manifest = json.loads((run / "manifest.json").read_text())
    evil = [str(outside / "victim.txt"), "../outside/victim.txt", "linked/victim.txt", "linked/deep/victim2.txt",
            "linked/deep/", "data/../../outside/victim.txt", "data/link.txt"]
    manifest["files"] += evil
    (run / "manifest.json").write_text(json.dumps(manifest))
    for args in (("purge", run), ("purge", run, "--all")):
        proc = valign(*args)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert (outside / "victim.txt").read_text() == "keep me"
        assert (outside / "deep" / "victim2.txt").read_text() == "keep me too"
    assert "linked/victim.txt" in proc.stderr and "skipped" in proc.stderr
    assert not (run / "data" / "link.txt").is_symlink()  # the listed link itself goes, never its target


def _listed(run, rel: str) -> bool:
    return rel in json.loads((run / "manifest.json").read_text())["files"] or rel == ".lock"


KILLED_WRITER = r"""
import os, signal, sys, tempfile
from pathlib import Path
from valign_edge.files import append_jsonl
from valign_edge.runs.workspace import Run

run = Run.open(Path(sys.argv[1]), create=False)
with run.lock():
    # what atomic_write_bytes leaves when killed before its rename, and a half-written new file
    fd, tmp = tempfile.mkstemp(dir=run.root / "data" / "sft", prefix=".train.jsonl.valign~", suffix=".tmp")
    os.write(fd, b'{"messages": ')
    (run.root / "data" / "sft" / ".during.md.tmp").write_text("user")  # the user's, saved while it ran
    (run.root / "data" / "survey.csv").write_text("user")  # theirs too: never noted, so never claimed
    append_jsonl(run.root / "synth" / "extra.jsonl", {"written": "by valign"})
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_temp_files_go_a_users_stay(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    _put(run, {"data/sft/.mine.tmp": "user", ".draft.tmp": "user", "export/notes.tmp": "user"})
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    left = list((run / "data" / "sft").glob(".train.jsonl.valign~*.tmp"))
    assert len(left) == 1
    # The next command that takes the lock cleans up after the killed one, and only after it.
    proc = valign("train", run)  # up to date: trains nothing
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not left[0].exists()
    assert all((run / rel).read_text() == "user" for rel in ("data/sft/.mine.tmp", ".draft.tmp", "export/notes.tmp",
                                                             "data/sft/.during.md.tmp"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert "synth/extra.jsonl" in manifest["files"] and not (run / ".valign-written").exists()
    assert "data/survey.csv" not in manifest["files"] and "data/sft/.during.md.tmp" not in manifest["files"]
    assert valign("purge", run).returncode == 0
    assert not (run / "synth" / "extra.jsonl").exists() and (run / "data" / "sft" / ".mine.tmp").exists()
    assert (run / "data" / "survey.csv").read_text() == (run / "data" / "sft" / ".during.md.tmp").read_text() == "user"


def test_new_document_replaces_the_runs_document_and_marks_later_stages_stale(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    other = tmp_path / "other.md"
    other.write_text(CANARY_DOC.replace("Volunteers", "Helpers").replace("Privacy", "Discretion"))
    bad_teacher = tmp_path / "cut.gguf"
    with open(_teacher(), "rb") as f:
        bad_teacher.write_bytes(f.read(3 * 2**20))  # loads no further than the document check
    before = (run / "document.txt").read_text()
    refused = valign("generate", other, "--out", run, "--teacher", bad_teacher)
    assert_one_line_error(refused, 2, "different document")
    assert (run / "document.txt").read_text() == before
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert all(info["status"] == "done" for info in stages.values())
    proc = valign("generate", other, "--out", run, "--teacher", bad_teacher, "--new-document")
    assert_one_line_error(proc, 2, "cannot load")  # the teacher fails after the document was accepted
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert {name: info["status"] for name, info in stages.items()} == {name: "stale" for name in stages}


def _teacher():
    from conftest import teacher_path

    path = teacher_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed")
    return path


# --- JSONL: only a torn last line of an append-only file is forgiven ------------------------------------
def test_read_jsonl_names_the_bad_line(tmp_path):
    from valign_edge.errors import UserError
    from valign_edge.files import append_jsonl, read_jsonl

    path = tmp_path / "records.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')  # a killed writer's half line
    assert read_jsonl(path) == [{"a": 1}]
    with pytest.raises(UserError, match=r"records.jsonl:2: not valid JSON"):
        read_jsonl(path, torn_tail=False)
    append_jsonl(path, {"a": 3})  # the half line is cut, not buried mid-file
    assert read_jsonl(path, torn_tail=False) == [{"a": 1}, {"a": 3}]
    for bad, what in (("this is not json", "not valid JSON"), ('{"a": ', "not valid JSON"), ("42", "found a number"),
                      ("[1]", "found an array")):
        path.write_text(f'{{"a": 1}}\n{bad}\n{{"a": 2}}\n')
        with pytest.raises(UserError, match=rf"records.jsonl:2: .*{what}"):
            read_jsonl(path)


def test_a_torn_event_line_is_cut_before_the_next_process_appends(tmp_path):
    from valign_edge.events import Event, JsonlSink
    from valign_edge.files import read_jsonl

    path = tmp_path / "events.jsonl"
    path.write_text('{"kind": "log"}\n{"kind": "prog')
    sink = JsonlSink(path)
    sink(Event("log", "generate", "hello"))
    sink.close()
    assert [e["kind"] for e in read_jsonl(path, torn_tail=False)] == ["log", "log"]


def test_private_mode_untouched_when_refused(tmp_path):
    """A refused --out never chmods the user's folder (it was made 0700 before the fix)."""
    proj = tmp_path / "shared"
    proj.mkdir()
    (proj / "notes.txt").write_text("x")
    proj.chmod(0o755)
    doc = tmp_path / "d.md"
    doc.write_text(CANARY_DOC)
    assert valign("generate", doc, "--out", proj).returncode == 2
    assert stat.S_IMODE(proj.stat().st_mode) == 0o755
    assert os.listdir(proj) == ["notes.txt"]


def test_a_run_folder_writable_by_others_or_not_ours_is_refused(tmp_path, monkeypatch):
    """Issue 32.2: another user's 0777 "run" whose synth file linked to their own file received the document's
    questions and answers. Refused now in one line, the folder left as it was."""
    from valign_edge.errors import UserError
    from valign_edge.runs.workspace import Run

    run = Run.open(tmp_path / "run")
    run.root.chmod(0o777)
    doc = tmp_path / "d.md"
    doc.write_text(CANARY_DOC)
    before = snapshot(run.root, ignore=())
    assert_one_line_error(valign("generate", doc, "--out", run.root, "--preset", "quick"), 2, "chmod 700")
    assert snapshot(run.root, ignore=()) == before and stat.S_IMODE(run.root.stat().st_mode) == 0o777
    run.root.chmod(0o700)
    assert Run.open(run.root).root == run.root
    monkeypatch.setattr(os, "geteuid", lambda: run.root.stat().st_uid + 1)  # as seen by another user
    with pytest.raises(UserError, match="belongs to another user"):
        Run.open(run.root)
    with pytest.raises(UserError, match="belongs to another user"):
        Run.open(tmp_path)  # an existing folder of theirs, even with nothing in it yet


def test_a_run_whose_folder_is_a_symbolic_link_is_refused(tmp_path):
    """A symlinked subfolder (synth -> elsewhere) would carry the document's questions and answers out of the
    run through appends that refuse only a link in the last name: refused in one line, nothing written there."""
    from valign_edge.runs.workspace import Run

    run = Run.open(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run.root / "synth").symlink_to(elsewhere, target_is_directory=True)
    doc = tmp_path / "d.md"
    doc.write_text(CANARY_DOC)
    assert_one_line_error(valign("generate", doc, "--out", run.root, "--preset", "quick"), 2, "is a symbolic link")
    assert list(elsewhere.iterdir()) == [] and not (run.root / "document.txt").exists()


def test_appends_never_follow_a_symbolic_link(tmp_path):
    from valign_edge.errors import UserError
    from valign_edge.files import append_jsonl, read_jsonl

    theirs = tmp_path / "theirs.txt"
    theirs.write_text("their own file\n")
    (tmp_path / "sft.jsonl").symlink_to(theirs)
    with pytest.raises(UserError, match="symbolic link"):
        append_jsonl(tmp_path / "sft.jsonl", {"question": CANARY})
    assert theirs.read_text() == "their own file\n"
    mine = tmp_path / "mine.jsonl"
    append_jsonl(mine, {"a": 1})
    assert read_jsonl(mine) == [{"a": 1}] and stat.S_IMODE(mine.stat().st_mode) == 0o600
