"""``valign train``: pick a backend and run LoRA SFT, then DPO, through it (torch: in one process or
data-parallel in several, see ``backends/torch_dist.py``; this process is then rank 0)."""

from __future__ import annotations

from pathlib import Path

from valign_edge import advice
from valign_edge.backends import Trainer, choose_backend, load_trainer, torch_dist, trainer_class
from valign_edge.config import RunConfig
from valign_edge.errors import UserError
from valign_edge.events import Callback, Event, log
from valign_edge.files import note_tree, read_jsonl
from valign_edge.generation import datasets
from valign_edge.generation.generate import save_config
from valign_edge.runs.workspace import Run, available_memory_bytes, require_free_disk
from valign_edge.training import plan as trainplan
from valign_edge.training.plan import TRAINING_STAGES


def training_memory_bytes(base: Path, tc, micro_batching: bool = True) -> int:
    """A rough peak for LoRA training of the student in ``base`` (safetensors folder): weights and a
    low-precision copy, one batch's logits (large: the vocabulary) and the activations kept for backward."""
    import json

    weights = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    try:
        conf = json.loads((base / "config.json").read_text(encoding="utf-8"))
        conf = conf.get("text_config", conf)
    except (OSError, ValueError):
        conf = {}
    vocab, hidden = conf.get("vocab_size", 32000), conf.get("hidden_size", 2048)
    layers = conf.get("num_hidden_layers", 16)
    tokens = tc.batch_tokens
    if micro_batching and tc.micro_batch_tokens > 0:  # one micro-batch's activations at a time
        tokens = min(tokens, tc.micro_batch_tokens)
    tokens = max(tokens, tc.max_seq_len)
    return int(weights * 1.5 + tokens * vocab * 4 * 3 + tokens * hidden * layers * 4 * 20 + 500e6)


def check_resources(run: Run, base: Path, cfg: RunConfig, trainer: Trainer, processes: int = 1) -> None:
    """Fail early, in one line, when the disk or the memory cannot hold the training (of ``processes``
    processes on this machine, each holding the student)."""
    weights = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    # adapters, their checkpoints (adapter + optimizer state) and the temporary final copy
    require_free_disk(run.root, weights * 0.25 + 32e6, "training checkpoints and adapters")
    if trainer.device != "cpu":
        return
    need = training_memory_bytes(base, cfg.train, trainer.micro_batching) * processes
    available = available_memory_bytes()
    if available is not None and need > available:
        raise UserError(f"training needs about {need / 1e9:.1f} GB of memory, {available / 1e9:.1f} GB is available; "
                        f"{advice.memory(cfg.train)}, or close other programs")


def train(run: Run, cfg: RunConfig, emit: Callback, should_stop=lambda: False) -> dict:
    """SFT then DPO; each stage is skipped when its key (``trainplan.stage_key``) is unchanged."""
    for stage in TRAINING_STAGES:
        trainplan.data_hash(run, stage)  # both datasets exist before anything trains
    datasets.validate(run)  # a bad row is FILE:LINE before any stage starts, never skipped
    choice = choose_backend(cfg.train.backend, cfg.train.device)
    log(emit, "train", f"backend {choice.name} on {choice.device} ({choice.reason})")
    precision = trainer_class(choice.name).precision_for(cfg.train.precision, choice.device)
    world = torch_dist.world_size(cfg, choice.name, choice.device)  # refuses what cannot be, in one line
    if torch_dist.launched_world() > 1 and cfg.train.processes not in (1, world):
        log(emit, "train", f"train.processes={cfg.train.processes} ignored: the launcher started {world} processes")
    loaded: list[Trainer] = []
    # Under torchrun / accelerate launch the followers wait for rank 0 whatever trains (they must be told to
    # exit); processes of our own start only when a stage trains.
    groups = [torch_dist.start(cfg, world)] if torch_dist.launched_world() > 1 else []

    def trainer() -> Trainer:
        if not loaded:
            if world > 1 and not groups:
                groups.append(torch_dist.start(cfg, world))
            t = trainer_class("torch")(cfg, choice.device, groups[0]) if groups else load_trainer(choice, cfg)
            loaded.append(t)
            # Validate the student and the machine before a stage is marked started, so a bad
            # --student or a too-small machine leaves a finished run exactly as it was.
            local = groups[0].local_world if groups else 1
            check_resources(run, loaded[0].base_dir(emit), cfg, loaded[0], local)
            save_config(run, cfg, student_checked=True)
        return loaded[0]

    try:
        _stages(run, cfg, emit, should_stop, choice, precision, world, trainer, groups)
    except BaseException as exc:
        if groups:
            groups[0].close(exc)  # stops our followers; raises a follower's own failure in one line
        raise
    if groups:
        groups[0].close()
    return {"sft": str(run.adapter_dir("sft")), "dpo": str(run.adapter_dir("dpo")), "backend": choice.name,
            "device": choice.device, "world_size": world}


def _stages(run: Run, cfg: RunConfig, emit: Callback, should_stop, choice, precision: str, world: int,
            trainer, groups: list) -> None:
    for stage in TRAINING_STAGES:
        name = f"train_{stage}"
        # DPO's key holds the SFT adapter's hash: computed once SFT is done.
        key = trainplan.stage_key(run, cfg, stage, choice.name, precision)
        if run.is_done(name, key) and (run.adapter_dir(stage) / "adapter_config.json").exists():
            log(emit, name, f"{name}: up to date, skipped")
            continue
        t = trainer()
        processes = f" in {world} processes" if world > 1 else ""
        emit(Event("stage", name, f"{stage.upper()} with {choice.name} on {choice.device}{processes}"))
        with run.stage(name, key, {"data": trainplan.data_hash(run, stage)}) as result:
            if stage == "dpo" and not read_jsonl(run.split_path("dpo", "train")):
                _sft_as_dpo(run, emit)
                result.update(skipped="no preference pairs", backend=choice.name)
                continue
            if groups:
                groups[0].lead(stage, run, cfg, choice.device)
            out = t.sft(run, emit, should_stop) if stage == "sft" else t.dpo(run, emit, should_stop)
            result.update({k: v for k, v in out.items() if k != "history"}, backend=choice.name, world_size=world)


def _sft_as_dpo(run: Run, emit: Callback) -> None:
    """A document with no value-bearing chunk gives no preference pairs: the SFT adapter stands in."""
    import json
    import shutil

    log(emit, "train_dpo", f"{advice.no_pairs(run.stage_info('generate'))}: DPO skipped, "
                           "the exported model is the SFT model")
    target = run.adapter_dir("dpo")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run.adapter_dir("sft"), target, ignore=shutil.ignore_patterns("checkpoint"))
    (target / "training.json").write_text(json.dumps({"skipped": "no preference pairs", "copied_from": "sft"}))
    note_tree(target)
