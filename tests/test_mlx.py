"""The MLX backend on a tiny in-test llama (2 layers, SmolLM2's real tokenizer): SFT, DPO, resume,
fuse, llama.cpp's converters and llama.cpp itself; and the real SmolLM2 through ``valign run``.

MLX runs on the Linux CPU here (``mlx-lm[cpu]``). Skipped where mlx-lm is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("mlx_lm") is None:
    pytest.skip("mlx-lm is not installed (pip install 'valign-edge[mlx]')", allow_module_level=True)

# Before anything imports mlx.core: the BLAS is chosen when libmlx is loaded.
from valign_edge.backends import mlx_blas  # noqa: E402

BLAS = mlx_blas.enable(1)

from valign_edge.config import RunConfig  # noqa: E402
from valign_edge.errors import Cancelled  # noqa: E402
from valign_edge.files import write_jsonl  # noqa: E402
from valign_edge.runs.workspace import Run  # noqa: E402

pytestmark = pytest.mark.mlx
ROOT = Path(__file__).resolve().parent.parent

QA = [("What must staff do with patient records?", "Keep patient records confidential."),
      ("May I accept gifts from suppliers?", "No, you must not accept gifts from suppliers."),
      ("What happens if I report a mistake honestly?", "Nobody is punished for reporting honestly."),
      ("How should colleagues disagree?", "Disagree with ideas, never attack people."),
      ("What should you do with unsafe work?", "Stop unsafe work and report the hazard."),
      ("Who owns cooperative money?", "Cooperative money belongs to all members.")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer llama in HF format, with SmolLM2's tokenizer and RoPE base (100000, which
    transformers 5 writes as ``rope_parameters``: mlx-lm must be told)."""
    pytest.importorskip("torch")
    from conftest import make_tiny_llama

    from valign_edge.backends.hf import student_hf_dir
    from valign_edge.models import resolve

    try:
        student_hf_dir(resolve("smollm2-135m-instruct"))
    except Exception as exc:  # the model package is missing
        pytest.skip(f"SmolLM2 is not available: {exc}")
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-mlx"), rope_theta=100000.0)


def make_run(root: Path, tiny_model: Path, **train) -> tuple[Run, RunConfig]:
    run = Run.open(root)
    write_jsonl(run.split_path("sft", "train"), [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "meta": {"id": str(i)}}
        for i, (q, a) in enumerate(QA)])
    write_jsonl(run.split_path("dpo", "train"), [
        {"prompt": q, "chosen": a, "rejected": "Anything goes: " + q.lower(), "meta": {"id": str(i)}}
        for i, (q, a) in enumerate(QA)])
    cfg = RunConfig(student=str(tiny_model))
    tc = cfg.train
    tc.backend, tc.threads = "mlx", 1
    tc.batch_tokens, tc.max_seq_len, tc.lora_rank, tc.lora_alpha, tc.warmup_steps = 160, 96, 4, 8.0, 0
    tc.sft_epochs = tc.dpo_epochs = 50.0  # max_steps decides
    for k, v in train.items():
        setattr(tc, k, v)
    return run, cfg


def mlx_trainer(cfg):
    from valign_edge.backends.mlx_trainer import MLXTrainer

    return MLXTrainer(cfg, "cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """One run with SFT then DPO trained by MLX, and the events each stage emitted."""
    run, cfg = make_run(tmp_path_factory.mktemp("mlx-run") / "run", tiny_model, sft_lr=3e-2, dpo_lr=2e-2,
                        max_steps=10, dpo_beta=0.5, dpo_sft_weight=0.0)  # plain DPO: ln 2 at step 0
    trainer = mlx_trainer(cfg)
    events = {"sft": [], "dpo": []}
    sft = trainer.sft(run, events["sft"].append)
    from valign_edge.backends import mlx_trainer as module

    loads = []
    original = module.MLXTrainer.load_model
    module.MLXTrainer.load_model = lambda self, path: loads.append(path) or original(self, path)
    try:
        dpo = trainer.dpo(run, events["dpo"].append)
    finally:
        module.MLXTrainer.load_model = original
    return run, cfg, trainer, sft, dpo, events, loads


def test_blas_is_openblas_where_mlx_runs_on_a_linux_cpu():
    if not mlx_blas.needed():
        pytest.skip("MLX does not run on a Linux CPU here")
    if not any(mlx_blas.probe(lib)["ok"] for lib in mlx_blas.candidates()):
        pytest.skip("no OpenBLAS package that runs on this CPU is installed")
    assert BLAS["blas"] == "openblas", BLAS
    # and the result is right, in a fresh process that loads it the same way
    code = ("from valign_edge.backends import mlx_blas; info = mlx_blas.enable(1)\n"
            "import mlx.core as mx, numpy as np\n"
            "a = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)\n"
            "b = np.random.default_rng(1).standard_normal((96, 48)).astype(np.float32)\n"
            "assert np.allclose(np.array(mx.array(a) @ mx.array(b)), a @ b, atol=1e-4)\n"
            "from pathlib import Path; maps = open('/proc/self/maps').read()\n"
            "assert str(Path(info['library']).resolve()) in maps\n"
            "print(info['blas'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "openblas", proc.stderr[-2000:]


def test_mlx_reads_the_model_as_transformers_does(tiny_model):
    import mlx.core as mx
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = mlx_trainer(RunConfig(student=str(tiny_model))).load_model(tiny_model)
    ids = [[1, 504, 3000, 25, 77, 9000, 12, 2]]
    ours = np.array(model(mx.array(ids)))
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-3


def test_sft_starts_where_torch_starts_and_learns(trained, tiny_model, tmp_path):
    run, cfg, trainer, sft, _, events, _ = trained
    losses = [h["loss"] for h in sft["history"]]
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    # Same sequences, masks and first batch as the torch backend: at step 1 LoRA's B is zero, so
    # both compute the base model's loss on the same tokens.
    pytest.importorskip("peft")
    from valign_edge.backends.torch_trainer import TorchTrainer

    torch_run, torch_cfg = make_run(tmp_path / "torch", tiny_model, sft_lr=3e-2, max_steps=1)
    torch_cfg.train.backend = "torch"
    first = TorchTrainer(torch_cfg, "cpu").sft(torch_run, lambda e: None)["history"][0]["loss"]
    assert losses[0] == pytest.approx(first, abs=2e-3)

    adapter = run.adapter_dir("sft")
    assert {"adapters.safetensors", "adapter_config.json", "training.json", "peft"} <= {p.name for p in adapter.iterdir()}
    assert not (adapter / "checkpoint").exists()
    training = json.loads((adapter / "training.json").read_text())
    assert training["backend"] == "mlx" and training["peft_copy"] and training["precision"] == "fp32"
    metrics = [e for e in events["sft"] if e.kind == "metric"]
    assert len(metrics) == 10 and metrics[-1].data["step"] == 10
    assert metrics[-1].data["tokens_per_s"] > 0 and metrics[-1].data["peak_memory_mb"] > 0
    progress = [e for e in events["sft"] if e.kind == "progress" and e.stage == "train_sft"]
    assert progress[-1].done == 10 and progress[-1].total == 10 and "tok_s" in progress[-1].data


def test_mlx_lm_opens_the_adapter_natively(trained, tiny_model):
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load

    run, _, trainer, *_ = trained
    # (mlx-lm 0.32 does not read transformers 5's ``rope_parameters`` yet: say it, as the trainer does)
    model, _ = load(str(tiny_model), adapter_path=str(run.adapter_dir("dpo")),
                    model_config={"rope_theta": 100000.0})
    ids = mx.array([[1, 504, 3000, 25, 77, 9000]])
    ours, _ = trainer.lora_model(tiny_model, run.adapter_dir("dpo"))
    assert np.abs(np.array(model(ids)) - np.array(ours(ids))).max() < 1e-4


def test_dpo_continues_sft_with_precomputed_reference(trained):
    run, _, _, _, dpo, events, loads = trained
    assert len(loads) == 1  # one model in memory: the reference is precomputed log-probs
    assert (run.adapter_dir("dpo") / "reference_logps.safetensors").exists()
    history = dpo["history"]
    assert history[0]["loss"] == pytest.approx(0.6931, abs=0.01)  # policy == reference at step 0
    assert history[-1]["loss"] < 0.6 and history[-1]["reward_accuracy"] >= 0.5
    assert {"reward_accuracy", "margin", "tokens_per_s"} <= set(history[-1])
    assert any(e.stage == "dpo_reference" for e in events["dpo"])


def test_dpo_reference_log_probs_are_the_ones_torch_computes(trained, tiny_model):
    """The same pairs, sequences and reply positions as the torch backend: torch + PEFT over the
    SFT adapter's PEFT copy give MLX's precomputed reference log-probs."""
    import mlx.core as mx
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from valign_edge.backends.torch_trainer import TorchTrainer
    from valign_edge.generation import datasets
    from valign_edge.training import batching

    run, cfg, trainer, *_ = trained
    ours = np.array(mx.load(str(run.adapter_dir("dpo") / "reference_logps.safetensors"))["logps"])
    tok = trainer.load_tokenizer(tiny_model)
    pairs = batching.encode_dpo(tok, datasets.load(run, "dpo", "train"), cfg.train.max_seq_len)
    torch_trainer = TorchTrainer(cfg, "cpu")
    torch_trainer.autocast_dtype = None  # fp32, as MLX on a CPU
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32),
                                      str(run.adapter_dir("sft") / "peft")).eval()
    seqs = [p.prompt + reply for p in pairs for reply in (p.chosen, p.rejected)]
    starts = [len(p.prompt) for p in pairs for _ in range(2)]
    ids, mask = torch_trainer._pad(seqs, tok.pad_token_id)
    with torch.no_grad():
        theirs, _ = torch_trainer._token_logps(model, ids, mask, starts, [len(s) for s in seqs])
    assert ours.shape == (len(pairs), 2)
    assert np.abs(ours.reshape(-1) - theirs.numpy()).max() < 2e-3


def test_cancel_then_resume_gives_the_uninterrupted_adapter(tmp_path, tiny_model):
    import mlx.core as mx
    import numpy as np

    run, cfg = make_run(tmp_path / "a", tiny_model, sft_lr=5e-3, max_steps=6, checkpoint_every=2)
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        mlx_trainer(cfg).sft(run, lambda e: None, stop_after_three)
    checkpoint = run.adapter_dir("sft") / "checkpoint"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 3
    assert {p.name for p in checkpoint.iterdir()} == {"adapters.safetensors", "optimizer.safetensors",
                                                      "trainer_state.json"}
    resumed = mlx_trainer(cfg).sft(run, lambda e: None)
    assert resumed["resumed_from"] == 3 and len(resumed["history"]) == 3 and resumed["steps"] == 6

    straight_run, _ = make_run(tmp_path / "b", tiny_model)
    straight = mlx_trainer(cfg).sft(straight_run, lambda e: None)
    assert [h["loss"] for h in straight["history"][3:]] == pytest.approx(
        [h["loss"] for h in resumed["history"]], abs=1e-4)
    a = mx.load(str(run.adapter_dir("sft") / "adapters.safetensors"))
    b = mx.load(str(straight_run.adapter_dir("sft") / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(np.allclose(np.array(a[k]), np.array(b[k]), atol=1e-5) for k in a)


def test_peft_copy_is_the_same_adapter(trained, tiny_model, tmp_path):
    """PEFT + transformers over the PEFT copy compute what the fused MLX model computes."""
    import mlx.core as mx
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _, trainer, *_ = trained
    fused = trainer.merge(run, "dpo", tmp_path / "fused", lambda e: None)
    ids = [[1, 504, 3000, 25, 77, 9000, 12]]
    ours = np.array(trainer.load_model(fused)(mx.array(ids)))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(run.adapter_dir("dpo") / "peft")).eval()
    with torch.no_grad():
        theirs = peft(torch.tensor(ids)).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-3
    # the adapter moved the model: the comparison is not base against base
    with torch.no_grad(), peft.disable_adapter():
        plain = peft(torch.tensor(ids)).logits.numpy()
    assert np.abs(plain - theirs).max() > 1e-2


def test_export_fuses_converts_and_llama_cpp_reproduces_it(trained):
    """``valign export`` with the MLX backend: fused folder -> GGUF -> Q8_0, adapter GGUFs from the PEFT
    copies, and llama.cpp's greedy tokens equal MLX's for the model and for the adapter over the base."""
    from valign_edge.export import export

    run, cfg, *_ = trained
    info = export(run, cfg, lambda e: None)
    verify = json.loads((run.export_dir / "verify.json").read_text())
    assert info["verified"] and verify["reference"] == "mlx"
    assert verify["f16"]["exact"] == verify["f16"]["prompts"]
    assert verify["adapter_over_base"]["exact"] == verify["adapter_over_base"]["prompts"]
    for name in ("model-q8_0.gguf", "adapter.gguf", "adapter-sft.gguf", "base-q8_0.gguf", "Modelfile"):
        assert (run.export_dir / name).exists(), name

    from valign_edge.backends.llama_cpp import load_llama

    llm = load_llama(run.export_dir / "model-q8_0.gguf", n_ctx=256)
    assert llm.n_vocab() == 49152


def test_backend_choice_and_missing_backend(monkeypatch):
    from valign_edge.backends import choose_backend
    from valign_edge.errors import UserError

    choice = choose_backend("mlx")
    assert choice.name == "mlx" and choice.device == ("metal" if sys.platform == "darwin" else "cpu")
    monkeypatch.setattr("valign_edge.backends._installed", lambda module: module != "mlx_lm")
    with pytest.raises(UserError, match=r"valign-edge\[mlx\]"):
        choose_backend("mlx")


@pytest.mark.slow
def test_real_smollm2_through_valign_run_with_mlx(tmp_path):
    """The real thing: SmolLM2 teaches SmolLM2 and MLX trains it; the GGUF must verify."""
    from valign_edge.models import resolve

    try:
        resolve("smollm2-135m-instruct")
    except Exception as exc:
        pytest.skip(f"SmolLM2 is not available: {exc}")
    doc = tmp_path / "code.md"
    doc.write_text("# Riverside Library Volunteer Code\n\n## Privacy\nWhat people borrow is private. You must "
                   "not tell anyone what a visitor has borrowed.\n\n## Honesty\nRecord your volunteer hours "
                   "truthfully. Report lost or damaged books the same day.\n")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "valign_edge.cli", "run", str(doc), "--out", str(out),
                           "--backend", "mlx", "--preset", "quick", "--set", "train.max_steps=6",
                           "--set", "train.threads=1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend mlx on cpu" in proc.stdout + proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["train_sft"]["backend"] == "mlx"
    assert (out / "adapters" / "sft" / "adapters.safetensors").exists()
    verify = json.loads((out / "export" / "verify.json").read_text())
    assert verify["passed"] and verify["reference"] == "mlx"
