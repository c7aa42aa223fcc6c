"""The real thing end to end: SmolLM2 GGUF through llama.cpp, PEFT training, llama.cpp's converter.

One ``valign run --preset quick`` per module (real teacher, real SmolLM2 student); every test reads it.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs

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
FLAGS = ["--preset", "quick", "--set", "generate.questions_per_chunk=4"]


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
    proc = valign("run", doc, "--out", out, *FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _shares_a_sentence(answer: str, text: str) -> bool:
    """Some sentence of ``answer`` is a sentence of ``text`` (up to its first letter's case and end mark)."""
    for sentence in re.split(r"(?<=[.!?])\s+", answer.strip()):
        core = sentence.rstrip(".!?;:, ")
        if len(core) >= 15 and (core in text or core[0].lower() + core[1:] in text):
            return True
    return False


def test_generated_data_is_grounded_in_the_document(quick_run):
    """Generation with the real teacher: extractive answers are spans of their chunk, every preference
    pair's chosen side quotes the document, the document's norms gave DPO pairs, and generating again
    is a no-op."""
    run, _ = quick_run
    rows = [r for s in ("train", "valid", "test") for r in _rows(run / "data" / "sft" / f"{s}.jsonl")]
    dpo = [r for s in ("train", "valid", "test") for r in _rows(run / "data" / "dpo" / f"{s}.jsonl")]
    document = (run / "document.txt").read_text()
    chunks = {c["id"]: c for c in _rows(run / "chunks.jsonl")}
    extractive = {item["question"] for rec in _rows(run / "synth" / "sft.jsonl") for item in rec["items"]}
    chosen = {p["prompt"]: p["chosen"] for p in dpo}
    assert len(extractive) >= 4 and dpo, (len(extractive), len(dpo))  # "Never ...", "must not ...": pairs
    questions = [r["messages"][0]["content"] for r in rows]
    assert len(set(questions)) == len(questions)
    for r in rows:
        question, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        chunk = chunks[r["meta"]["chunk_id"]]
        assert document[chunk["start"]:chunk["end"]] == chunk["text"]
        assert question.endswith("?") and answer.strip(), r
        if question in extractive:
            assert answer in chunk["text"], r  # grounded: a span of its chunk
        else:  # the faithful side of a preference pair, also learned by SFT
            assert chosen.get(question) == answer, r
    for p in dpo:
        assert p["chosen"] != p["rejected"] and p["rejected"].strip()
        assert _shares_a_sentence(p["chosen"], chunks[p["meta"]["chunk_id"]]["text"]), p
    again = valign("generate", run / "document.txt", "--out", run, *FLAGS)
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr[-2000:]


def test_run_writes_exactly_the_contracted_files(quick_run):
    out, _ = quick_run
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    expected = {"manifest.json", "config.toml", "document.txt", "chunks.jsonl", ".lock",
                "synth/sft.jsonl", "synth/dpo.jsonl", "logs/events.jsonl", "logs/export.log",
                "export/model-q8_0.gguf", "export/base-q8_0.gguf", "export/adapter.gguf", "export/adapter-sft.gguf",
                "export/Modelfile", "export/verify.json", "export/retrieval.json"}
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


def test_exported_gguf_answers_like_the_merged_model(quick_run):
    """Checked here, not read from the product's verify.json: the test merges the base student and the
    DPO adapter itself (PEFT), decodes greedily in fp32 with transformers, and the shipped q8_0 GGUF,
    fed the same tokens in llama.cpp, must rank each of those tokens first or within a quantization
    margin of first (0.5), and nine in ten first or within a near tie (0.1). An empty answer from either
    side is a failure, not a match."""
    torch = needs("torch")
    from llama_cpp import Llama
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valign_edge import config
    from valign_edge.backends.hf import student_hf_dir
    from valign_edge.models import resolve
    from valign_edge.training.batching import ensure_chat_template, prompt_ids

    out, _ = quick_run
    cfg = config.resolve_config(saved=out / "config.toml")
    base = student_hf_dir(resolve(cfg.student, "student"))
    tok = AutoTokenizer.from_pretrained(str(base))
    ensure_chat_template(tok)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, use_safetensors=True)
    model = PeftModel.from_pretrained(model, str(out / "adapters" / "dpo")).merge_and_unload().eval()
    questions = [r["messages"][0]["content"] for r in _rows(out / "data" / "sft" / "test.jsonl")][:2]
    assert questions
    llm = Llama(model_path=str(out / "export" / "model-q8_0.gguf"), n_ctx=1024, logits_all=True, verbose=False)
    n = 24
    verify = json.loads((out / "export" / "verify.json").read_text())
    assert verify["passed"] is True  # and the product's own check agrees
    for question in questions:
        prompt = prompt_ids(tok, question)  # the same ids go to both sides
        with torch.no_grad():
            gen = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)[0, len(prompt):]
        merged = gen.tolist()
        merged = merged[: merged.index(tok.eos_token_id)] if tok.eos_token_id in merged else merged
        assert tok.decode(merged).strip(), f"the merged model gave an empty answer to {question!r}"
        llm.reset()
        llm.eval(prompt + merged)
        scores = llm._scores  # row i: next-token logits after token i
        ranks_first = 0
        for i, token in enumerate(merged):
            row = scores[len(prompt) + i - 1]
            gap = float(row.max() - row[token])
            assert gap <= 0.5, f"{question!r}: token {i} ({tok.decode([token])!r}) is {gap:.2f} below the GGUF's top"
            # First, or a near tie: Q8_0 rounding moves logits by a few hundredths (measured 0.02 and
            # 0.04 on the two tokens of an 11-token answer that ranked second after the fp32 default).
            ranks_first += gap <= 0.1
        assert ranks_first >= 0.9 * len(merged), (ranks_first, len(merged))
        greedy = []
        for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token == llm.token_eos() or len(greedy) >= n:
                break
            greedy.append(token)
        assert tok.decode(greedy).strip(), f"the GGUF gave an empty answer to {question!r}"


def test_verification_counts_no_empty_answer_as_a_match():
    """export.agreement: two empty outputs are no evidence that a GGUF reproduces the model."""
    from valign_edge.export import agreement

    assert agreement([[], [5, 6]], [[], [5, 6]]) == {"exact": 1, "prompts": 2, "token_agreement": 0.5, "empty": 1}
    assert agreement([[5, 6]], [[5, 7]])["exact"] == 0 and agreement([[5, 6]], [[5, 7]])["token_agreement"] == 0.5


def test_chat_answers_with_the_aligned_model(quick_run):
    out, _ = quick_run
    proc = valign("chat", out, "--prompt", "May I tell my friend what a visitor borrowed?", "--max-tokens", "32")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) > 0
    rag = valign("chat", out, "--rag", "--prompt", "Is borrowing private?", "--max-tokens", "16")
    assert rag.returncode == 0 and rag.stdout.strip()
    # the answer names where its passages come from: sections that exist in the document
    headings = {json.loads(line)["heading"] for line in (out / "chunks.jsonl").read_text().splitlines()}
    sources = [line.split("source: ", 1)[1] for line in rag.stdout.splitlines() if line.startswith("  source: ")]
    assert sources and all(any(src.startswith(f'{h}: "') for h in headings) for src in sources), rag.stdout


def test_the_export_folder_alone_serves_chat_with_retrieval(quick_run, tmp_path):
    """Issue 31.5: export/ holds what retrieval needs (chunks, retriever, embedder id); copied anywhere,
    without the run, it serves chat --rag. purge deletes that index unless asked to keep it."""
    import shutil

    from conftest import assert_one_line_error, copy_run

    out, _ = quick_run
    saved = json.loads((out / "export" / "retrieval.json").read_text())
    assert saved["chunks"] and saved["retriever"] == "dense" and saved["embedder"]["id"]
    alone = shutil.copytree(out / "export", tmp_path / "model")
    rag = valign("chat", alone, "--rag", "--prompt", "Is borrowing private?", "--max-tokens", "16")
    assert rag.returncode == 0 and rag.stdout.strip(), rag.stderr[-2000:]
    headings = {c["heading"] for c in saved["chunks"]}
    sources = [line.split("source: ", 1)[1] for line in rag.stdout.splitlines() if line.startswith("  source: ")]
    assert sources and all(any(src.startswith(f'{h}: "') for h in headings) for src in sources), rag.stdout
    run = copy_run(out, tmp_path / "run")
    assert valign("purge", run, "--keep-index").returncode == 0
    assert (run / "export" / "retrieval.json").exists()
    assert valign("purge", run).returncode == 0
    assert not (run / "export" / "retrieval.json").exists() and list((run / "export").glob("model-*.gguf"))
    (alone / "retrieval.json").unlink()
    assert_one_line_error(valign("chat", alone, "--rag", "--prompt", "Hi?"), 2, "retrieval.json")


def test_rerun_skips_every_stage(quick_run):
    out, _ = quick_run
    proc = valign("run", out / "document.txt", "--out", out, *FLAGS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("up to date") == 4
