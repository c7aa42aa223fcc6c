"""Stage keys hash only what changes a stage's result: lowering memory use or threads reruns nothing,
a new DPO beta reruns DPO and export but neither generation nor SFT (the real CLI on a copy of the
shared finished run)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import copy_run, valign

from valign_edge.config import RunConfig, TrainConfig, resolve_config
from valign_edge.files import write_jsonl
from valign_edge.runs.workspace import Run
from valign_edge.training.plan import stage_key

# Settings that change speed, memory or where the work runs, never the numbers a stage produces.
NO_RESULT = {"threads": 2, "micro_batch_tokens": 128, "checkpoint_every": 7, "device": "cpu", "backend": "torch"}
STAGES = ("generate", "train_sft", "train_dpo", "export")


def test_every_training_setting_says_which_stages_it_changes():
    for f in dataclasses.fields(TrainConfig):
        affects = f.metadata["affects"]
        assert affects is not None and set(affects) <= {"sft", "dpo"}, f.name
    tc = TrainConfig()
    assert {"dpo_beta", "dpo_lr", "dpo_epochs"} <= set(tc.settings_for("dpo")) - set(tc.settings_for("sft"))
    assert {"sft_lr", "sft_epochs"} <= set(tc.settings_for("sft")) - set(tc.settings_for("dpo"))
    assert not set(NO_RESULT) & (set(tc.settings_for("sft")) | set(tc.settings_for("dpo")))


def test_keys_follow_only_their_stage_settings_and_the_sft_adapter(tmp_path):
    run = Run.open(tmp_path / "run")
    write_jsonl(run.split_path("sft", "train"), [{"messages": [{"role": "user", "content": "Q?"},
                                                               {"role": "assistant", "content": "A."}]}])
    write_jsonl(run.split_path("dpo", "train"), [{"prompt": "Q?", "chosen": "A.", "rejected": "B."}])
    run.adapter_dir("sft").mkdir(parents=True)
    adapter = run.adapter_dir("sft") / "adapter_model.safetensors"
    adapter.write_bytes(b"weights one")

    def keys(**train):
        cfg = RunConfig()
        for name, value in train.items():
            setattr(cfg.train, name, value)
        return stage_key(run, cfg, "sft", "torch", "fp32"), stage_key(run, cfg, "dpo", "torch", "fp32")

    sft, dpo = keys()
    for name, value in NO_RESULT.items():
        assert keys(**{name: value}) == (sft, dpo), name
    assert keys(dpo_beta=0.3)[0] == sft and keys(dpo_beta=0.3)[1] != dpo
    assert keys(sft_lr=1e-3)[0] != sft and keys(sft_lr=1e-3)[1] == dpo  # DPO follows the adapter it gets
    assert keys(lora_rank=4)[0] != sft and keys(lora_rank=4)[1] != dpo
    assert stage_key(run, RunConfig(), "sft", "torch", "bf16-autocast") != sft
    adapter.write_bytes(b"weights two")  # a retrained SFT adapter: DPO reruns, whatever its mtime says
    assert keys() == (sft, stage_key(run, RunConfig(), "dpo", "torch", "fp32")) and keys()[1] != dpo


def test_a_base_student_key_follows_the_fallback_prompt_format(tmp_path, monkeypatch):
    """gemma3-270m has no chat template: it trains under batching.FALLBACK_CHAT_TEMPLATE, so a new
    fallback format retrains it; a student with its own template keeps its key."""
    from valign_edge.training import batching

    run = Run.open(tmp_path / "run")
    write_jsonl(run.split_path("sft", "train"), [{"messages": [{"role": "user", "content": "Q?"},
                                                               {"role": "assistant", "content": "A."}]}])
    base, chat = RunConfig(student="gemma3-270m"), RunConfig()
    before = stage_key(run, base, "sft", "torch", "fp32"), stage_key(run, chat, "sft", "torch", "fp32")
    monkeypatch.setattr(batching, "FALLBACK_CHAT_TEMPLATE", batching.FALLBACK_CHAT_TEMPLATE + "{# v2 #}")
    assert stage_key(run, base, "sft", "torch", "fp32") != before[0]
    assert stage_key(run, chat, "sft", "torch", "fp32") == before[1]


def stages(run) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


def run_again(finished_run, run, *settings: str):
    sets = [arg for setting in settings for arg in ("--set", setting)]
    proc = valign(*finished_run.command(run), *sets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return stages(run)


def test_settings_that_do_not_change_results_rerun_nothing(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    before = stages(run)
    after = run_again(finished_run, run, *(f"train.{name}={value}" for name, value in NO_RESULT.items()))
    for stage in STAGES:
        assert after[stage]["key"] == before[stage]["key"], stage
        assert after[stage]["finished"] == before[stage]["finished"], f"{stage} ran again"
    saved = resolve_config(run / "config.toml").train  # the new settings were taken, and kept
    assert (saved.threads, saved.micro_batch_tokens, saved.checkpoint_every) == (2, 128, 7)


def test_a_new_dpo_beta_reruns_dpo_and_export_only(finished_run, tmp_path):
    run = copy_run(finished_run.path, tmp_path / "run")
    before = stages(run)
    sft_adapter = (run / "adapters" / "sft" / "adapter_model.safetensors").read_bytes()
    after = run_again(finished_run, run, "train.dpo_beta=0.3")
    for stage in ("generate", "train_sft"):
        assert after[stage] == before[stage], f"{stage} ran again"
    for stage in ("train_dpo", "export"):
        assert after[stage]["key"] != before[stage]["key"] and after[stage]["finished"] > before[stage]["finished"]
        assert after[stage]["status"] == "done"
    assert (run / "adapters" / "sft" / "adapter_model.safetensors").read_bytes() == sft_adapter
    assert json.loads((run / "adapters" / "dpo" / "training.json").read_text())["beta"] == pytest.approx(0.3)
    assert resolve_config(run / "config.toml").train.dpo_beta == pytest.approx(0.3)  # the old name, in the saved file
