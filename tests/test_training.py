"""LoRA SFT/DPO, resume, merge and GGUF export on a tiny in-test llama (2 layers, real tokenizer)."""

import json

import pytest
from conftest import needs

torch = needs("torch")
needs("peft")

from valign_edge.config import RunConfig  # noqa: E402
from valign_edge.errors import Cancelled  # noqa: E402
from valign_edge.files import write_jsonl  # noqa: E402
from valign_edge.runs.workspace import Run  # noqa: E402

QA = [("What must staff do with patient records?", "Keep patient records confidential."),
      ("May I accept gifts from suppliers?", "No, you must not accept gifts from suppliers."),
      ("What happens if I report a mistake honestly?", "Nobody is punished for reporting honestly."),
      ("How should colleagues disagree?", "Disagree with ideas, never attack people."),
      ("What should you do with unsafe work?", "Stop unsafe work and report the hazard."),
      ("Who owns cooperative money?", "Cooperative money belongs to all members.")]


@pytest.fixture(scope="module")
def tiny_model(tiny_student):
    return tiny_student  # conftest: a 2-layer llama with SmolLM2's real tokenizer


def make_run(tmp_path, tiny_model, **train):
    run = Run.open(tmp_path / "run")
    write_jsonl(run.split_path("sft", "train"), [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "meta": {"id": str(i)}}
        for i, (q, a) in enumerate(QA)])
    write_jsonl(run.split_path("dpo", "train"), [
        {"prompt": q, "chosen": a, "rejected": "Anything goes: " + q.lower(), "meta": {"id": str(i)}}
        for i, (q, a) in enumerate(QA)])
    cfg = RunConfig(student=str(tiny_model))
    cfg.train.batch_tokens = 160
    cfg.train.max_seq_len = 96
    cfg.train.lora_rank = 4
    cfg.train.warmup_steps = 0
    cfg.train.sft_epochs = cfg.train.dpo_epochs = 50.0  # max_steps decides
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return run, cfg


def trainer(cfg):
    from valign_edge.backends.torch_trainer import TorchTrainer

    return TorchTrainer(cfg, "cpu")


def test_sft_lowers_loss_and_trains_the_adapter(tmp_path, tiny_model):
    run, cfg = make_run(tmp_path, tiny_model, sft_lr=3e-2, max_steps=12)
    result = trainer(cfg).sft(run, lambda e: None)
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 12 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.15
    from safetensors.torch import load_file

    weights = load_file(str(run.adapter_dir("sft") / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())
    assert json.loads((run.adapter_dir("sft") / "adapter_config.json").read_text())["r"] == 4
    assert result["padding_share"] < 0.3


def test_dpo_learns_preferences_without_a_second_model(tmp_path, tiny_model, monkeypatch):
    run, cfg = make_run(tmp_path, tiny_model, sft_lr=3e-2, dpo_lr=2e-2, max_steps=8, dpo_beta=0.5,
                        dpo_sft_weight=0.0)  # plain DPO: its loss is ln 2 at step 0
    trainer(cfg).sft(run, lambda e: None)
    from valign_edge.backends.torch_trainer import TorchTrainer

    loads = []
    original = TorchTrainer.load_base
    monkeypatch.setattr(TorchTrainer, "load_base", lambda self, base: loads.append(base) or original(self, base))
    result = trainer(cfg).dpo(run, lambda e: None)
    assert len(loads) == 1  # the reference is precomputed log-probs, not a second model
    assert (run.adapter_dir("dpo") / "reference_logps.safetensors").exists()
    history = result["history"]
    assert history[0]["loss"] == pytest.approx(0.6931, abs=0.01)  # policy == reference at step 0
    assert history[-1]["loss"] < 0.6 and history[-1]["reward_accuracy"] >= 0.5


def test_interrupted_training_resumes_from_the_checkpoint(tmp_path, tiny_model):
    run, cfg = make_run(tmp_path, tiny_model, sft_lr=5e-3, max_steps=6, checkpoint_every=2)
    calls = {"n": 0}

    def stop_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        trainer(cfg).sft(run, lambda e: None, stop_after_three)
    state = json.loads((run.adapter_dir("sft") / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3
    result = trainer(cfg).sft(run, lambda e: None)
    assert result["resumed_from"] == 3 and len(result["history"]) == 3 and result["steps"] == 6


def test_merge_convert_and_llama_cpp_reproduce_the_model(tmp_path, tiny_model):
    from valign_edge.backends.llama_cpp import greedy_tokens as gguf_greedy
    from valign_edge.export import agreement, run_converter
    from valign_edge.training.batching import prompt_ids

    run, cfg = make_run(tmp_path, tiny_model, sft_lr=5e-3, max_steps=4)
    t = trainer(cfg)
    t.sft(run, lambda e: None)
    merged = t.merge(run, "sft", tmp_path / "merged", lambda e: None)
    gguf = tmp_path / "m.gguf"
    run_converter("convert_hf_to_gguf.py", [str(merged), "--outfile", str(gguf), "--outtype", "f16"],
                  tmp_path / "convert.log")
    tok = t.load_tokenizer(merged)
    prompts = [prompt_ids(tok, q) for q, _ in QA[:2]]
    reference = t.greedy(merged, prompts, 12)
    assert agreement(reference, gguf_greedy(gguf, prompts, 12))["exact"] == 2


def test_warmup_is_at_most_a_tenth_of_a_short_stage():
    from valign_edge.training.batching import lr_at

    assert lr_at(0, 6, 5, 1.0) == 1.0  # 6 DPO steps: no warm-up eating most of them
    assert lr_at(0, 100, 5, 1.0) == pytest.approx(1 / 6)
    assert lr_at(5, 100, 5, 1.0) == 1.0 and lr_at(99, 100, 5, 1.0) < 0.11


def test_micro_batches_split_a_step_by_padded_tokens():
    from valign_edge.training.batching import micro_batches

    lengths = [30, 40, 50, 100, 10]
    assert micro_batches([0, 1, 2], lengths, 0) == [[0, 1, 2]]
    assert micro_batches([], lengths, 0) == [] == micro_batches([], lengths, 100)  # an empty shard: no pass
    assert micro_batches([0, 1, 2], lengths, 100) == [[0, 1], [2]]  # 2 x 40 fits, 3 x 50 does not
    assert micro_batches([3, 4], lengths, 50) == [[3], [4]]  # a sequence longer than the budget goes alone


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_micro_batched_steps_match_one_pass(tmp_path, tiny_model, stage):
    """Gradient accumulation over micro-batches is the same update as one pass over the step's batch."""
    from safetensors.torch import load_file

    weights, losses = {}, {}
    for micro in (0, 40):
        # One thread in both: with two, reduction order differs between runs and Adam magnifies it.
        # fp32: on a CPU with AMX, precision auto means bf16 autocast, whose rounding depends on the split.
        run, cfg = make_run(tmp_path / str(micro), tiny_model, sft_lr=3e-2, dpo_lr=2e-2, max_steps=3,
                            micro_batch_tokens=micro, threads=1, precision="fp32")
        t = trainer(cfg)
        result = t.sft(run, lambda e: None)
        if stage == "dpo":
            result = t.dpo(run, lambda e: None)
        weights[micro] = load_file(str(run.adapter_dir(stage) / "adapter_model.safetensors"))
        losses[micro] = [h["loss"] for h in result["history"]]
    assert losses[40] == pytest.approx(losses[0], rel=2e-3)
    for name, value in weights[0].items():  # as a whole: Adam turns float noise in near-zero gradients
        assert (weights[40][name] - value).norm() <= 0.02 * value.norm() + 1e-6, name  # into full steps


def test_both_trainers_follow_the_trainer_protocol():
    """Every member the ``Trainer`` protocol declares (what train, export and the tests call) exists on
    both backends, with the protocol's parameters; ``precision_for`` works without loading a model."""
    import inspect

    from valign_edge.backends import TRAINERS, Trainer, trainer_class

    members = [n for n in vars(Trainer) if not n.startswith("_")] + list(Trainer.__annotations__)
    assert {"sft", "dpo", "merge", "greedy", "base_dir", "peft_adapter", "micro_batching"} <= set(members)
    for name in TRAINERS:
        cls = trainer_class(name)
        for member in members:
            if member in ("device", "precision"):  # set per instance, from the device
                continue
            assert hasattr(cls, member), (name, member)
            if callable(getattr(Trainer, member, None)):
                ours = list(inspect.signature(getattr(cls, member)).parameters)
                assert ours == list(inspect.signature(getattr(Trainer, member)).parameters), (name, member)
        assert cls.precision_for("fp32", "cpu") == "fp32"
        assert cls.precision_for("bf16", "cpu").startswith("bf16")


def test_rpo_adds_the_chosen_answers_nll_to_the_dpo_loss(tmp_path, tiny_model):
    """dpo_sft_weight (RPO): at step 0 the policy is the SFT model, so the loss is ln 2 plus the weight times
    the per-token NLL of the chosen answers, and it rises with the weight."""
    run, cfg = make_run(tmp_path, tiny_model, sft_lr=3e-2, dpo_lr=2e-2, max_steps=2, dpo_beta=0.5)
    trainer(cfg).sft(run, lambda e: None)
    first = {}
    for weight in (0.0, 1.0, 2.0):
        cfg.train.dpo_sft_weight = weight
        first[weight] = trainer(cfg).dpo(run, lambda e: None)["history"][0]["loss"]
    nll = first[1.0] - first[0.0]
    assert first[0.0] == pytest.approx(0.6931, abs=0.01)
    assert nll > 0.05 and first[2.0] - first[0.0] == pytest.approx(2 * nll, rel=0.02)


def test_converting_a_gguf_student_prints_no_progress_bar(tmp_path, teacher_gguf, monkeypatch, capfd):
    """transformers' GGUF de-quantizing bar is a bare tqdm: in a log file it wrote one line of carriage
    returns per tensor, beside our own progress events."""
    from valign_edge.backends import hf
    from valign_edge.models import resolve

    monkeypatch.setattr(hf, "CACHE_DIR", tmp_path)
    folder = hf.student_hf_dir(resolve("smollm2-135m-instruct"))
    assert (folder / "config.json").exists() and folder.parent == tmp_path / "students"
    err = capfd.readouterr().err
    assert "de-quantizing" not in err and "it/s" not in err, err[-500:]


def test_the_preference_loss_is_dpo_with_the_rpo_term():
    """The one loss both trainers call: -log sigmoid(beta * margin), minus the chosen replies' mean
    per-token log-probability times dpo_sft_weight."""
    import math

    import torch.nn.functional as F

    from valign_edge.training.preference import dpo_loss

    policy = torch.tensor([[-10.0, -14.0], [-8.0, -6.0]])  # chosen, rejected
    reference = torch.tensor([[-11.0, -12.0], [-8.0, -7.0]])
    loss, margin = dpo_loss(policy, reference, 0.5, F.logsigmoid)
    assert margin.tolist() == [3.0, -1.0]  # (-10+11) - (-14+12); (-8+8) - (-6+7)
    expected = -(math.log(1 / (1 + math.exp(-1.5))) + math.log(1 / (1 + math.exp(0.5)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    rpo, _ = dpo_loss(policy, reference, 0.5, F.logsigmoid, 0.2, torch.tensor([5.0, 4.0]))
    assert rpo.item() == pytest.approx(expected - 0.2 * (-10 / 5 - 8 / 4) / 2, rel=1e-6)
