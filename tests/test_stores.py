"""GGUF models already on the machine: Ollama's store, LM Studio's folder, the Hugging Face hub cache and
VALIGN_MODELS_PATH, built in tmp_path around the real SmolLM2 GGUF, listed from their headers and used
as the teacher by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import assert_one_line_error, cli_env, valign

DIGEST = "sha256:" + "ab" * 32
LMSTUDIO_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
HF_REPO = "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF"


def link(target: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    return path


def build_stores(home: Path, gguf: Path) -> dict[str, Path]:
    """Each store's own layout, the real GGUF as its model file (linked, as the stores keep one blob)."""
    ollama = home / ".ollama" / "models"
    blob = link(gguf, ollama / "blobs" / DIGEST.replace(":", "-"))
    manifest = {"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": DIGEST, "size": gguf.stat().st_size},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32, "size": 10}]}
    for rel in ("registry.ollama.ai/library/smollm2/135m", "registry.ollama.ai/someone/tiny-teacher/latest"):
        path = ollama / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))
    lm = link(gguf, home / ".lmstudio" / "models" / LMSTUDIO_REPO / "smollm2-135m-instruct-q4_1.gguf")
    link(gguf, lm.parent / "mmproj-smollm2-f16.gguf")  # a vision projector: never listed
    snapshot = home / ".cache" / "huggingface" / "hub" / HF_REPO / "snapshots" / "0123abc"
    hf = link(gguf, snapshot / "smollm2-135m-instruct-q4_1.gguf")
    extra = home / "models"
    own = link(gguf, extra / "mine" / "teacher.gguf")
    broken = extra / "broken.gguf"
    broken.write_bytes(gguf.read_bytes()[:4096])  # a download cut short
    return {"ollama": blob, "lmstudio": lm, "hf": hf, "path": own, "broken": broken, "extra": extra}


def store_env(home: Path, extra: Path) -> dict:
    env = cli_env(HOME=home, VALIGN_MODELS_PATH=extra)
    for key in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE"):
        env.pop(key, None)
    return env


@pytest.fixture
def stores(tmp_path, teacher_gguf):
    home = tmp_path / "home"
    paths = build_stores(home, teacher_gguf)
    return home, paths, store_env(home, paths["extra"])


def test_local_models_read_from_headers(stores, monkeypatch, teacher_gguf):
    from valign_edge import stores as st

    home, paths, env = stores
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("VALIGN_MODELS_PATH", str(paths["extra"]))
    for key in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    found = {m.name: m for m in st.local_models()}
    assert set(found) == {"ollama:smollm2:135m", "ollama:someone/tiny-teacher:latest",
                          f"lmstudio:{LMSTUDIO_REPO}/smollm2-135m-instruct-q4_1.gguf",
                          f"hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2-135m-instruct-q4_1.gguf",
                          str(paths["path"]), str(paths["broken"])}
    good = found["ollama:smollm2:135m"]
    assert good.path == paths["ollama"] and good.size == teacher_gguf.stat().st_size
    assert (good.architecture, good.quantization, good.chat_template) == ("llama", "Q4_1", True)
    assert 130e6 < good.parameters < 140e6  # SmolLM2-135M
    assert found[str(paths["broken"])].error
    # OLLAMA_MODELS replaces the default store
    monkeypatch.setenv("OLLAMA_MODELS", str(home / "elsewhere"))
    assert not [m for m in st.local_models() if m.store == "ollama"]


def test_models_list_shows_the_stores(stores):
    home, paths, env = stores
    proc = valign("models", "list", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ollama:smollm2:135m" in out and f"lmstudio:{LMSTUDIO_REPO}/" in out and "hf:HuggingFaceTB/" in out
    block = out[out.index("ollama:smollm2:135m"):].splitlines()[:3]
    assert "98 MB" in block[1] and "llama" in block[1] and "135M" in block[1] and "Q4_1" in block[1]
    assert "chat template" in block[1] and str(paths["ollama"]) in block[2]
    assert "mmproj" not in out
    assert f"{paths['broken']}  unreadable" in out


def test_store_names_work_as_teacher(stores, tmp_path, teacher_gguf):
    home, paths, env = stores
    doc = tmp_path / "doc.md"
    doc.write_text("# Crew code\n\n## Respect\nCrew members must treat every passenger with respect and patience. "
                   "Never shout at passengers and never mock their questions.\n", encoding="utf-8")
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in home.rglob("*") if p.is_file()}
    run = tmp_path / "run"
    flags = ["--preset", "quick", "--set", "generate.max_chunks=1", "--set", "generate.n_threads=1"]
    proc = valign("generate", doc, "--out", run, "--teacher", "ollama:smollm2:135m", *flags, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'teacher = "ollama:smollm2:135m"' in (run / "config.toml").read_text()
    assert (run / "synth" / "sft.jsonl").stat().st_size > 0
    # read in place: nothing in the stores changed, nothing was copied into the home folder
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in home.rglob("*") if p.is_file()}
    assert after == before
    assert os.path.realpath(paths["ollama"]) == str(teacher_gguf.resolve())

    # the same model through LM Studio's folder (a repo folder holding one model) is another teacher
    # name but the same file: the finished stage stays finished
    again = valign("generate", doc, "--out", run, "--teacher", f"lmstudio:{LMSTUDIO_REPO}", *flags, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "up to date" in again.stdout + again.stderr

    missing = valign("generate", doc, "--out", run, "--teacher", "ollama:llama3", *flags, env=env)
    assert_one_line_error(missing, 2, "ollama:smollm2:135m")  # says what the store has
    # the up-to-date command saved its teacher; the refused one saved nothing
    saved = (run / "config.toml").read_text()
    assert f'teacher = "lmstudio:{LMSTUDIO_REPO}"' in saved and "llama3" not in saved
