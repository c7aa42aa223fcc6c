"""The real thing end to end: SmolLM2 GGUF through llama.cpp, PEFT training, llama.cpp's converter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHORT_DOC = """# Riverside Library Volunteer Code

## Respect
Treat every visitor with respect and patience, whatever their age, background or reading level.
Never shout at visitors or make fun of their questions.

## Privacy
What people borrow is private. You must not tell anyone what a visitor has borrowed or searched for.

## Honesty
Record your volunteer hours truthfully. Report lost or damaged books the same day.
"""


def valign(*args, cwd=None, timeout=3600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "valign_edge.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    doc = root / "code.md"
    doc.write_text(SHORT_DOC)
    out = root / "run"
    proc = valign("run", doc, "--out", out, "--preset", "quick", "--set", "generate.questions_per_chunk=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_generate_with_the_real_teacher(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(SHORT_DOC)
    proc = valign("generate", doc, "--out", tmp_path / "run", "--preset", "quick")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    rows = [json.loads(line) for s in ("train", "valid", "test")
            for line in (run / "data" / "sft" / f"{s}.jsonl").read_text().splitlines()]
    assert len(rows) >= 4
    document = (run / "document.txt").read_text()
    chunks = {json.loads(line)["id"]: json.loads(line) for line in (run / "chunks.jsonl").read_text().splitlines()}
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(set(questions)) == len(questions)
    for r in rows:
        assert r["messages"][0]["content"].endswith("?")
        chunk = chunks[r["meta"]["chunk_id"]]
        assert document[chunk["start"]:chunk["end"]] == chunk["text"]
        assert r["messages"][1]["content"] in chunk["text"]  # grounded: a span of its chunk
    dpo = [json.loads(line) for line in (run / "data" / "dpo" / "train.jsonl").read_text().splitlines()]
    assert all(p["chosen"] != p["rejected"] for p in dpo)
    # a second run is a no-op
    again = valign("generate", doc, "--out", run, "--preset", "quick")
    assert again.returncode == 0 and "up to date" in again.stderr


def test_run_writes_exactly_the_contracted_files(quick_run):
    out, _ = quick_run
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    expected = {"manifest.json", "config.toml", "document.txt", "chunks.jsonl", ".lock",
                "synth/sft.jsonl", "synth/dpo.jsonl", "logs/events.jsonl", "logs/export.log",
                "export/model-q8_0.gguf", "export/base-q8_0.gguf", "export/adapter.gguf", "export/adapter-sft.gguf",
                "export/Modelfile", "export/verify.json"}
    expected |= {f"data/{k}/{s}.jsonl" for k in ("sft", "dpo") for s in ("train", "valid", "test")}
    for stage in ("sft", "dpo"):
        expected |= {f"adapters/{stage}/adapter_model.safetensors", f"adapters/{stage}/adapter_config.json",
                     f"adapters/{stage}/training.json", f"adapters/{stage}/README.md"}
    expected.add("adapters/dpo/reference_logps.safetensors")
    assert files - {f for f in files if f.startswith("adapters/") and "/checkpoint/" in f} == expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s: v["status"] for s, v in manifest["stages"].items()} == {
        "generate": "done", "train_sft": "done", "train_dpo": "done", "export": "done"}
    assert oct(out.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o077) == "0o0" for p in out.rglob("*") if p.is_file())


def test_exported_gguf_is_verified(quick_run):
    out, _ = quick_run
    verify = json.loads((out / "export" / "verify.json").read_text())
    assert verify["passed"] is True
    assert verify["f16"]["exact"] == verify["f16"]["prompts"] >= 1
    assert "q8_0" in verify and "adapter_over_base" in verify


def test_chat_answers_with_the_aligned_model(quick_run):
    out, _ = quick_run
    proc = valign("chat", out, "--prompt", "May I tell my friend what a visitor borrowed?", "--max-tokens", "32")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) > 0
    rag = valign("chat", out, "--rag", "--prompt", "Is borrowing private?", "--max-tokens", "16")
    assert rag.returncode == 0 and rag.stdout.strip()


def test_rerun_skips_every_stage(quick_run):
    out, _ = quick_run
    proc = valign("run", out / "document.txt", "--out", out, "--preset", "quick",
                  "--set", "generate.questions_per_chunk=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("up to date") == 4
