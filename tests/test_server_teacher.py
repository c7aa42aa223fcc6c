"""A teacher behind an OpenAI-compatible server: the privacy gate (no server needed) and a real
llama.cpp ``llama-server`` (built from the pinned source on first use, cached) with the SmolLM2 GGUF,
4 parallel slots, bound to 127.0.0.1, that ``valign generate`` talks to with 4 chunks in flight."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import CANARY_DOC, ROOT, assert_one_line_error, cli_command, cli_env, make_guard, valign

from valign_edge.backends.llama_server import cached_binary
from valign_edge.backends.openai_teacher import is_loopback
from valign_edge.files import read_jsonl

# Building llama-server takes 32 minutes on a loaded 2-core machine (once; cached in ~/.cache/valign-edge/bin),
# and `valign generate` through it several minutes there: the generate tests run in `make test-all`
# (which builds the server when missing); the quick one joins the default suite once the binary is cached.
slow = pytest.mark.slow
quick_once_built = pytest.mark.slow if cached_binary() is None else (lambda test: test)


def _guarded(tmp_path: Path, *args):
    guard = make_guard(tmp_path / "guard")
    proc = subprocess.run(cli_command(*args), capture_output=True, text=True, env=guard.env(cli_env()),
                          timeout=600, cwd=ROOT)
    return proc, guard


def test_loopback_is_decided_from_the_text_alone():
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "0.0.0.0", "192.168.1.2", "example.com", "localhost.example.com",
                 "127.0.0.1.nip.io", "::ffff:10.0.0.1", "2130706433", "fe80::1"):
        assert not is_loopback(host), host


@pytest.mark.parametrize("verb", ["generate", "run"])
@pytest.mark.parametrize("url", ["http://192.0.2.7:8080/v1", "https://teacher.example.org/v1"])
def test_remote_teacher_is_refused_before_any_connection(tmp_path, verb, url):
    doc = tmp_path / "code.md"
    doc.write_text(CANARY_DOC)
    out = tmp_path / "run"
    proc, guard = _guarded(tmp_path, verb, doc, "--out", out, "--teacher", url)
    host = url.split("//")[1].split(":")[0].split("/")[0]
    line = assert_one_line_error(proc, 2, contains=host)
    assert "leave the machine" in line and "--allow-remote" in line
    assert guard.processes() >= 1, "the guard did not load"
    assert guard.violations() == [], "a refused server must not be contacted, nor its name looked up"
    assert not out.exists(), "nothing is written for a refused teacher"


def test_allow_remote_says_where_the_text_goes(tmp_path):
    doc = tmp_path / "code.md"
    doc.write_text(CANARY_DOC)
    proc, guard = _guarded(tmp_path, "generate", doc, "--out", tmp_path / "run", "--teacher",
                           "http://192.0.2.7:8080/v1", "--allow-remote")
    assert "the document's text and the prompts built from it go to 192.0.2.7" in proc.stderr
    assert "UNENCRYPTED" in proc.stderr
    # With the user's consent the teacher tries the server (the guard refuses the socket): one line, exit 2.
    assert_one_line_error(proc, 2, contains="does not answer")
    assert any("192.0.2.7" in v for v in guard.violations())


# --- a real llama-server ----------------------------------------------------------------------------
def _server(teacher_gguf, tmp_path_factory, parallel: int):
    from valign_edge.backends.llama_server import LlamaServer

    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    return LlamaServer(teacher_gguf, parallel=parallel, threads=2, log=log)


@pytest.fixture(scope="module")
def server(teacher_gguf, tmp_path_factory):
    """llama-server with 4 parallel slots on a free 127.0.0.1 port (the binary is built once when missing)."""
    with _server(teacher_gguf, tmp_path_factory, 4) as srv:
        yield srv


def _records(run: Path) -> dict[str, list[dict]]:
    return {kind: read_jsonl(run / "synth" / f"{kind}.jsonl") for kind in ("sft", "dpo")}


def _generate(tmp_path: Path, name: str, url: str, *extra: str):
    doc = tmp_path / "code.md"
    doc.write_text(CANARY_DOC)
    out = tmp_path / name
    proc = valign("generate", doc, "--out", out, "--teacher", url, "--preset", "quick",
                  "--set", "generate.max_chunks=2", *extra, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


@slow
def test_generate_through_llama_server_with_four_chunks_in_flight(server, tmp_path):
    run, proc = _generate(tmp_path, "par", server.url, "--set", "generate.concurrency=4")
    recs = _records(run)
    chunks = [c["id"] for c in read_jsonl(run / "chunks.jsonl")][:2]
    assert [r["chunk_id"] for r in recs["sft"]] == chunks, "records are appended in chunk order"
    assert [r["chunk_id"] for r in recs["dpo"]] == chunks
    items = [i for r in recs["sft"] for i in r["items"]]
    assert items, proc.stdout[-2000:]
    text = " ".join((run / "document.txt").read_text().split())
    for item in items:  # extractive answers: the teacher picked a span of the chunk under the grammar
        assert item["question"].endswith("?")
        assert " ".join(item["answer"].split()) in text, item
    teacher = json.loads((run / "manifest.json").read_text())["stages"]["generate"]["teacher"]
    assert teacher["server"] == server.url and teacher["engine"] == "llama.cpp"
    assert teacher["structured"] == "grammar" and teacher["calls"] > 0
    assert (run / "data" / "sft").exists()

    # Resume per chunk: drop the last chunk's DPO record; only that one is made again (another
    # concurrency reruns the stage but keeps every record: it is not part of the records' key).
    dpo = run / "synth" / "dpo.jsonl"
    lines = dpo.read_text().splitlines(keepends=True)
    dpo.write_text("".join(lines[:-1]))
    sft_before = (run / "synth" / "sft.jsonl").read_text()
    _, again_proc = _generate(tmp_path, "par", server.url, "--set", "generate.concurrency=3")
    assert "resuming: 1 of 2 chunks already generated" in again_proc.stdout + again_proc.stderr
    assert (run / "synth" / "sft.jsonl").read_text() == sft_before
    again = dpo.read_text().splitlines(keepends=True)
    assert again[:-1] == lines[:-1] and json.loads(again[-1])["chunk_id"] == chunks[-1]


@slow
def test_four_in_flight_make_a_sequential_runs_records(teacher_gguf, tmp_path_factory, tmp_path):
    """One slot answers each request alone (deterministic): 4 chunks in flight give exactly the records
    of one chunk at a time, through the real server. (With 4 slots, requests batched together can
    differ in their last logit bits, so records may differ slightly; see bench/RESULTS.md.)"""
    with _server(teacher_gguf, tmp_path_factory, 1) as srv:
        par, _ = _generate(tmp_path, "par", srv.url, "--set", "generate.concurrency=4")
        seq, _ = _generate(tmp_path, "seq", srv.url, "--set", "generate.concurrency=1")
    assert _records(par) == _records(seq)
    assert any(r["items"] for r in _records(seq)["sft"])


@quick_once_built
def test_server_token_counts_and_json_schema_route(server, teacher_gguf):
    """Chunk budgets count the same tokens as in-process; a server without grammars gets the schema."""
    from valign_edge.backends.llama_cpp import LlamaTeacher, choice_grammar, questions_grammar
    from valign_edge.backends.openai_teacher import OpenAITeacher
    from valign_edge.generation.teacher_io import messages, parse_list

    remote = OpenAITeacher(server.url)
    local = LlamaTeacher(teacher_gguf, n_ctx=512)
    for text in ("Volunteers must treat every visitor with respect.", CANARY_DOC, "<|im_start|> [INST] x"):
        assert remote.count_tokens(text) == local.count_tokens(text)

    remote.structured = "schema"  # as for Ollama or LM Studio: response_format with a JSON schema
    chunk = CANARY_DOC.split("## Privacy")[1]
    out = remote.generate(messages("questions", chunk, k=3), grammar=questions_grammar(3), temperature=0.9,
                          max_tokens=200, seed=1)
    questions = parse_list(out, "questions", 3)
    assert questions is not None and len(questions) == 3 and all(q.endswith("?") for q in questions), out
    options = ["What visitors tell a volunteer is private.", "Volunteers must lock paper records away."]
    pick = remote.generate(messages("answer", chunk, question="What must happen to paper records?"),
                           grammar=choice_grammar(options), max_tokens=40)
    assert pick in options
    assert remote.structured == "schema"


# --- chunks in flight: the records of a sequential run (no server needed) ---------------------------
class _Serialized:
    """The real in-process teacher taking calls from several threads one at a time, each from an empty
    KV cache (so a reply depends on its request only, as with a deterministic server)."""

    def __init__(self, teacher, parallel: bool):
        import threading

        self.teacher, self.parallel, self.lock, self.calls = teacher, parallel, threading.Lock(), 0

    def generate(self, messages, **kw):
        with self.lock:
            self.calls += 1
            self.teacher.reset()
            return self.teacher.generate(messages, **kw)

    def count_tokens(self, text):
        with self.lock:
            return self.teacher.count_tokens(text)

    def reset(self):
        pass  # every call starts from an empty cache already


def test_chunks_run_ahead_yet_records_are_a_sequential_runs(teacher_gguf, tmp_path):
    """generate.concurrency=3 runs chunks ahead on copies of the synthesizer and writes them in order
    through the remembered replies: the same records as one chunk at a time, and most calls are not
    repeated (a duplicate question found only once earlier chunks are written costs a live call)."""
    from dataclasses import replace

    from valign_edge.backends.llama_cpp import LlamaTeacher
    from valign_edge.config import GenerateConfig
    from valign_edge.documents.chunking import chunk_text
    from valign_edge.generation.synth import synthesize
    from valign_edge.runs.workspace import Run

    llama = LlamaTeacher(teacher_gguf, n_ctx=2048, n_threads=1, n_threads_batch=1)
    cfg = GenerateConfig(questions_per_chunk=2, pairs_per_chunk=1, situations_per_norm=1, rephrasings_per_norm=0)
    doc = CANARY_DOC + "\n## Safety\nVolunteers must never leave a child alone on the pier, and must report " \
                       "every accident to the harbour master the same day.\n"
    chunks = chunk_text(doc, 80, 8, llama.count_tokens)[:3]
    assert len(chunks) == 3
    out = {}
    for name, parallel, n in (("seq", False, 1), ("ahead", True, 3)):
        run = Run.open(tmp_path / name)
        teacher = _Serialized(llama, parallel)
        synthesize(run, chunks, teacher, replace(cfg, concurrency=n), 0, "t", lambda e: None)
        out[name] = (_records(run.root), teacher.calls)
    assert out["ahead"][0] == out["seq"][0]
    assert any(r["items"] for r in out["seq"][0]["sft"])
    assert out["ahead"][1] <= out["seq"][1] * 1.5, "replies made ahead are reused, not asked again"
