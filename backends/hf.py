"""Student weights as a Hugging Face folder (safetensors), converted once from a GGUF and cached.

transformers dequantizes GGUF files (Q4_1, Q4_K_M, ...) into float32 weights. Loading a GGUF
is slow (mostly tokenizer conversion), so the converted folder is cached by the GGUF's
identity and reused by every run, backend and test.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from valign_edge.errors import UserError
from valign_edge.events import Callback, log, null_callback
from valign_edge.models import CACHE_DIR, ModelRef, model_id
from valign_edge.runs.workspace import require_free_disk


def quiet_transformers() -> None:
    """Our own progress events report loading; transformers' bars would clutter the terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _quiet_gguf_loading() -> None:
    """transformers' GGUF de-quantizing bar is a bare tqdm that ``disable_progress_bar`` does not reach.
    Only a GGUF conversion needs it (importing the module loads torch), so it is not in ``quiet_transformers``."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None and not isinstance(bar, functools.partial):
        gguf_utils.tqdm = functools.partial(bar, disable=True)


def student_hf_dir(ref: ModelRef, emit: Callback = null_callback) -> Path:
    """An HF folder for ``ref``: the folder itself, or the cached conversion of a GGUF."""
    if ref.kind == "hf":
        return ref.path
    target = CACHE_DIR / "students" / f"{ref.path.stem}-{model_id(ref)}"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    log(emit, "convert", f"converting {ref.path.name} to a safetensors folder (once; cached in {target})")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        _quiet_gguf_loading()
    except ImportError:
        raise UserError("a GGUF student needs the torch extra to convert it; run: pip install 'valign-edge[torch]'") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name)
    except (ValueError, KeyError, RuntimeError, OSError, ImportError) as exc:
        raise UserError(f"cannot convert {ref.path.name} for training: {str(exc).splitlines()[0]}") from None
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    require_free_disk(target.parent, sum(p.numel() * p.element_size() for p in model.parameters()) + 64e6,
                      f"the converted student ({target.name})")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _top_level_rope(tmp / "config.json")
        (tmp / "valign_source.json").write_text(json.dumps({"gguf": str(ref.path), "name": ref.name}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_config_overrides(config: dict) -> dict:
    """Settings mlx-lm must be told: transformers 5 writes RoPE as ``rope_parameters``,
    which mlx-lm 0.32 does not read (it would silently use its default ``rope_theta``)."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" in config:
        return {}
    full = rope.get("full_attention", rope)
    out: dict[str, Any] = {"rope_theta": full["rope_theta"]}
    if "sliding_attention" in rope and "rope_theta" in rope["sliding_attention"]:
        out["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    if full.get("rope_type", "default") != "default":
        out["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    return out



def _top_level_rope(path: Path) -> None:
    """Also write ``rope_theta`` at the top of the cached folder's config, where plain
    ``mlx_lm.load`` (and other readers of older configs) look for it."""
    config = json.loads(path.read_text(encoding="utf-8"))
    theta = model_config_overrides(config).get("rope_theta")
    if theta is not None:
        path.write_text(json.dumps(config | {"rope_theta": theta}, indent=2) + "\n", encoding="utf-8")


def chat_template(hf_dir: Path) -> str | None:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_dir)).chat_template


def student_dir(cfg, emit: Callback = null_callback) -> Path:
    """The HF folder of a run's student (``cfg.student``: preset, GGUF or folder)."""
    from valign_edge.models import resolve

    return student_hf_dir(resolve(cfg.student, "student"), emit)


def load_tokenizer(path: Path):
    """The student's tokenizer, with a chat template and a pad token whatever the model shipped."""
    from transformers import AutoTokenizer

    from valign_edge.training.batching import ensure_chat_template

    tok = AutoTokenizer.from_pretrained(str(path))
    ensure_chat_template(tok)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def logit_gap(model_dir: Path, ids: list[int], a: int, b: int) -> float:
    """A merged model's next-token logit of ``a`` minus that of ``b`` after ``ids`` (transformers, fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    return float(logits[a] - logits[b])
