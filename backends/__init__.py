"""Engines behind small protocols, found through a registry that imports them lazily.

- ``Teacher``: llama.cpp (``llama_cpp.py``), writes the synthetic data.
- ``Trainer``: torch/PEFT (``torch_trainer.py``) or MLX (``mlx_trainer.py``): SFT, DPO, merge.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from valign_edge.config import CHOICES
from valign_edge.errors import UserError
from valign_edge.events import Callback


class Teacher(Protocol):
    """A chat model that writes the synthetic data (``llama_cpp.LlamaTeacher``, ``openai_teacher.OpenAITeacher``)."""

    parallel: bool  # takes calls from several threads at once (a server); an in-process model does not

    def generate(self, messages: list[dict], *, grammar: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 256, seed: int | None = None) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def reset(self) -> None:
        """Forget cached state, so the next reply depends on its request only."""
        ...

    def stats(self) -> dict:
        """What the teacher measured about itself (the generation report's ``teacher`` entry)."""
        ...


class Trainer(Protocol):
    """A training backend: exactly what ``valign train``, ``valign export`` and their tests use.

    Both stages share one plan (``valign_edge.training.plan``): the same rows, token sequences, batches
    and stage key on either backend; a trainer only runs the steps and writes the adapter.
    """

    name: str  # "torch" or "mlx": part of stage keys (the backends' numbers differ slightly)
    device: str  # "cpu", "cuda", "mps" or "metal"
    precision: str  # as resolved for the device (``precision_for``): part of stage keys
    # Capability flags
    micro_batching: bool  # a step runs in passes of ``train.micro_batch_tokens`` (lower peak memory)

    @staticmethod
    def precision_for(setting: str, device: str) -> str:
        """What ``train.precision`` (auto, fp32, bf16) means on ``device``; cheap (no model loaded)."""
        ...

    def base_dir(self, emit: Callback) -> Path:
        """The student as a Hugging Face folder (safetensors), converted once from a GGUF if need be."""
        ...

    def load_tokenizer(self, base: Path) -> Any: ...

    def sft(self, run: Any, emit: Callback, should_stop: Callable[[], bool] = ...) -> dict:
        """LoRA SFT into ``run.adapter_dir("sft")``, resuming from its checkpoint; the stage's counts."""
        ...

    def dpo(self, run: Any, emit: Callback, should_stop: Callable[[], bool] = ...) -> dict:
        """DPO continuing the SFT adapter into ``run.adapter_dir("dpo")``; the stage's counts."""
        ...

    def merge(self, run: Any, stage: str, out_dir: Path, emit: Callback) -> Path:
        """Base + the stage's adapter merged into a Hugging Face folder with the tokenizer."""
        ...

    def peft_adapter(self, run: Any, stage: str) -> Path | None:
        """The folder holding the stage's adapter in PEFT's format (what llama.cpp's LoRA converter
        reads), or None when the backend could not write one."""
        ...

    def greedy(self, model_dir: Path, prompts: list[list[int]], n_tokens: int) -> list[list[int]]:
        """Greedy continuations from a merged folder: the reference an exported GGUF must reproduce."""
        ...


@dataclass
class BackendChoice:
    name: str  # "torch" or "mlx"
    device: str  # "cpu", "cuda", "mps", "metal"
    reason: str


TRAINERS = {
    "torch": ("valign_edge.backends.torch_trainer", "TorchTrainer", "torch", "torch"),
    "mlx": ("valign_edge.backends.mlx_trainer", "MLXTrainer", "mlx_lm", "mlx"),
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def choose_backend(requested: str = "auto", device: str = "auto") -> BackendChoice:
    """auto: MLX on Apple Silicon, torch on CUDA, else torch on the CPU; say why."""
    if requested not in CHOICES["train.backend"]:
        raise UserError(f"unknown backend {requested!r} (known: {', '.join(CHOICES['train.backend'])})")
    apple = sys.platform == "darwin" and platform.machine() == "arm64"
    if requested == "auto":
        if apple and _installed("mlx_lm"):
            return BackendChoice("mlx", "metal", "Apple Silicon with mlx-lm installed")
        if not _installed("torch"):
            if _installed("mlx_lm"):
                return BackendChoice("mlx", "cpu", "torch is not installed, mlx-lm is")
            raise UserError("no training backend installed; run: pip install 'valign-edge[torch]' (or [mlx])")
        requested = "torch"
    module, _, probe, extra = TRAINERS[requested]
    if not _installed(probe):
        raise UserError(f"the {requested} backend is not installed; run: pip install 'valign-edge[{extra}]'")
    if requested == "mlx":
        return BackendChoice("mlx", "metal" if apple else "cpu", "requested" if not apple else "Apple Silicon")
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return BackendChoice("torch", "cuda", f"CUDA GPU found: {torch.cuda.get_device_name(0)}")
        if torch.backends.mps.is_available():
            return BackendChoice("torch", "mps", "Apple GPU (MPS) found and mlx-lm not installed")
        return BackendChoice("torch", "cpu", "no GPU found")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU")
    return BackendChoice("torch", device, "requested")


def trainer_class(name: str) -> type:
    """The registry's class for a backend name, imported now (its module imports no engine yet)."""
    module, cls, _, _ = TRAINERS[name]
    return getattr(importlib.import_module(module), cls)


def load_trainer(choice: BackendChoice, cfg: Any) -> Trainer:
    return trainer_class(choice.name)(cfg, choice.device)
