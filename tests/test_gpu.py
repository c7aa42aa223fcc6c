"""CUDA variants of the trainer, export and pipeline tests (marker ``gpu``).

Every other trainer test pins ``cpu``; these run the same checks on ``cuda`` where torch sees a CUDA GPU
(conftest skips them elsewhere, so on a CPU machine they show as skipped). On a GPU machine they run in
the default suite; ``pytest -m gpu`` runs only them.
"""

from __future__ import annotations

import json

import pytest
from conftest import CANARY_DOC, RUN_FLAGS, needs, valign

pytestmark = pytest.mark.gpu
torch = needs("torch")
needs("peft")

from test_training import QA, make_run  # noqa: E402  (the CPU tests' tiny run, reused)


def cuda_trainer(cfg):
    from valign_edge.backends.torch_trainer import TorchTrainer

    return TorchTrainer(cfg, "cuda")


def test_auto_picks_torch_on_the_gpu():
    from valign_edge.backends import choose_backend

    choice = choose_backend("auto")
    assert (choice.name, choice.device) == ("torch", "cuda")
    assert torch.cuda.get_device_name(0) in choice.reason


def test_sft_and_dpo_train_on_cuda(tmp_path, tiny_student):
    run, cfg = make_run(tmp_path, tiny_student, sft_lr=3e-2, dpo_lr=2e-2, max_steps=12, dpo_beta=0.5,
                        dpo_sft_weight=0.0)
    trainer = cuda_trainer(cfg)
    sft = trainer.sft(run, lambda e: None)
    losses = [h["loss"] for h in sft["history"]]
    assert sft["device"] == "cuda" and len(losses) == 12
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.15, losses
    dpo = cuda_trainer(cfg).dpo(run, lambda e: None)
    assert dpo["device"] == "cuda"
    assert dpo["history"][0]["loss"] == pytest.approx(0.6931, abs=0.02)  # policy == reference at step 0
    assert dpo["history"][-1]["loss"] < 0.6
    from safetensors.torch import load_file  # the adapters load on a machine without a GPU

    weights = load_file(str(run.adapter_dir("dpo") / "adapter_model.safetensors"), device="cpu")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_interrupted_cuda_training_resumes_from_the_checkpoint(tmp_path, tiny_student):
    from valign_edge.errors import Cancelled

    run, cfg = make_run(tmp_path, tiny_student, sft_lr=5e-3, max_steps=6, checkpoint_every=2)
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        cuda_trainer(cfg).sft(run, lambda e: None, stop_after_three)
    state = json.loads((run.adapter_dir("sft") / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3
    result = cuda_trainer(cfg).sft(run, lambda e: None)
    assert result["resumed_from"] == 3 and len(result["history"]) == 3 and result["steps"] == 6


def test_cuda_merge_converts_and_llama_cpp_reproduces_the_model(tmp_path, tiny_student):
    from valign_edge.backends.llama_cpp import greedy_tokens as gguf_greedy
    from valign_edge.export import agreement, run_converter
    from valign_edge.training.batching import prompt_ids

    run, cfg = make_run(tmp_path, tiny_student, sft_lr=5e-3, max_steps=4)
    trainer = cuda_trainer(cfg)
    trainer.sft(run, lambda e: None)
    merged = trainer.merge(run, "sft", tmp_path / "merged", lambda e: None)
    gguf = tmp_path / "m.gguf"
    run_converter("convert_hf_to_gguf.py", [str(merged), "--outfile", str(gguf), "--outtype", "f16"],
                  tmp_path / "convert.log")
    tok = trainer.load_tokenizer(merged)
    prompts = [prompt_ids(tok, q) for q, _ in QA[:2]]
    reference = trainer.greedy(merged, prompts, 12)
    assert all(reference), "the merged model gave an empty answer"
    assert agreement(reference, gguf_greedy(gguf, prompts, 12))["exact"] == 2


def test_quick_run_trains_on_the_gpu_and_its_gguf_verifies(tmp_path, tiny_student):
    """``valign run`` on a CUDA machine: auto picks the GPU, and the export verifies."""
    doc = tmp_path / "code.md"
    doc.write_text(CANARY_DOC, encoding="utf-8")
    out = tmp_path / "run"
    proc = valign("run", doc, "--out", out, *RUN_FLAGS, "--student", tiny_student, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("sft", "dpo"):
        assert json.loads((out / "adapters" / stage / "training.json").read_text())["device"] == "cuda"
    verify = json.loads((out / "export" / "verify.json").read_text())
    assert verify["passed"] is True and verify["f16"]["empty"] == 0
