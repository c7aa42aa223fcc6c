"""``valign train``: pick a backend and run LoRA SFT, then DPO, through it."""

from __future__ import annotations

from .backends import choose_backend, load_trainer
from .config import RunConfig
from .errors import UserError
from .events import Callback, Event, log
from .workspace import Run, hash_file, hash_obj


def _data_hash(run: Run, kind: str) -> str:
    path = run.split_path(kind, "train")
    if not path.exists():
        raise UserError(f"{run.root} has no {kind.upper()} data; run: valign generate DOC --out {run.root}")
    return hash_file(path)


def train(run: Run, cfg: RunConfig, emit: Callback, should_stop=lambda: False) -> dict:
    """SFT then DPO; each stage is skipped when its data and settings are unchanged."""
    sft_data, dpo_data = _data_hash(run, "sft"), _data_hash(run, "dpo")
    choice = choose_backend(cfg.train.backend, cfg.train.device)
    log(emit, "train", f"backend {choice.name} on {choice.device} ({choice.reason})")
    base = [cfg.student, cfg.seed, vars(cfg.train) | {"backend": choice.name}]
    sft_key = hash_obj([sft_data, base])
    dpo_key = hash_obj([dpo_data, sft_key])
    trainer = None
    for stage, key, method in (("train_sft", sft_key, "sft"), ("train_dpo", dpo_key, "dpo")):
        if run.is_done(stage, key) and (run.adapter_dir(method) / "adapter_config.json").exists():
            log(emit, stage, f"{stage}: up to date, skipped")
            continue
        trainer = trainer or load_trainer(choice, cfg)
        emit(Event("stage", stage, f"{method.upper()} with {choice.name} on {choice.device}"))
        with run.stage(stage, key, {"data": sft_data if method == "sft" else dpo_data}) as result:
            out = getattr(trainer, method)(run, emit, should_stop)
            result.update({k: v for k, v in out.items() if k != "history"}, backend=choice.name)
    return {"sft": str(run.adapter_dir("sft")), "dpo": str(run.adapter_dir("dpo")), "backend": choice.name,
            "device": choice.device}
