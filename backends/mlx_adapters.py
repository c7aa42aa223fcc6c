"""The MLX backend's files: resumable checkpoints (adapter + optimizer state), the final adapter in
MLX's format, and its copy in PEFT's format, the one llama.cpp's ``convert_lora_to_gguf.py`` reads."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from valign_edge.files import note_tree

ADAPTER_FILE = "adapters.safetensors"


def save_checkpoint(model, optimizer, out: Path, step: int, key: str) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    tmp = out / ".checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / ADAPTER_FILE), dict(tree_flatten(model.trainable_parameters())))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "key": key}))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    os.replace(tmp, out / "checkpoint")
    note_tree(out / "checkpoint")


def load_checkpoint(model, optimizer, out: Path, key: str) -> int:
    """Restore adapter and optimizer from ``out/checkpoint``; the step to continue from (0: none)."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    ckpt = out / "checkpoint"
    try:
        meta = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return 0
    if meta.get("key") != key:
        return 0
    model.load_weights(str(ckpt / ADAPTER_FILE), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    mx.eval(model.parameters(), optimizer.state)
    return int(meta["step"])


def write_adapter(model, config: dict, base: Path, out: Path, meta: dict) -> None:
    """Write the final adapter folder (MLX format + PEFT copy + training.json) in one rename."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    tmp = out.parent / f".{out.name}.final"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(tmp / ADAPTER_FILE), weights, metadata={"format": "mlx"})
    (tmp / "adapter_config.json").write_text(json.dumps(config | {"base_model": str(base)}, indent=2))
    meta["peft_copy"] = write_peft_copy(weights, config, base, tmp / "peft")
    (tmp / "training.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    note_tree(out)


def peft_names(weights: dict) -> dict[str, tuple[str, bool]]:
    """MLX LoRA parameter names -> (PEFT tensor name, transpose?)."""
    out = {}
    for name in weights:
        module, leaf = name.rsplit(".", 1)
        if leaf == "lora_a":
            out[name] = (f"base_model.model.{module}.lora_A.weight", True)
        elif leaf == "lora_b":
            out[name] = (f"base_model.model.{module}.lora_B.weight", True)
    return out


def write_peft_copy(weights: dict, config: dict, base: Path, target: Path) -> bool:
    """The adapter in PEFT's format (``adapter_model.safetensors`` + ``adapter_config.json``).

    MLX computes ``x @ lora_a @ lora_b * scale`` with ``lora_a`` (in, r) and ``lora_b`` (r, out);
    PEFT stores ``lora_A.weight`` (r, in) and ``lora_B.weight`` (out, r) with scale alpha/r.
    Written only when every LoRA module names a weight of the base checkpoint (true where
    mlx-lm keeps Hugging Face's names, as for llama), so llama.cpp's converter can map it.
    """
    import mlx.core as mx
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    names = peft_names(weights)
    base_keys: set[str] = set()
    for path in base.glob("*.safetensors"):
        with safe_open(str(path), framework="numpy") as f:
            base_keys.update(f.keys())
    modules = {name.rsplit(".", 1)[0] for name in names}
    if not names or any(f"{m}.weight" not in base_keys for m in modules):
        return False
    tensors = {}
    for name, (peft_name, transpose) in names.items():
        array = np.array(weights[name].astype(mx.float32))
        tensors[peft_name] = np.ascontiguousarray(array.T if transpose else array)
    params = config["lora_parameters"]
    targets = sorted({k.rsplit(".", 1)[-1] for k in params["keys"]})
    peft_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base),
        "r": params["rank"], "lora_alpha": params["scale"] * params["rank"], "lora_dropout": params["dropout"],
        "target_modules": targets, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / "adapter_model.safetensors"), metadata={"format": "pt"})
    (target / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))
    return True
