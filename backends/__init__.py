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
from typing import Any, Protocol

from ..errors import UserError
from ..events import Callback


class Teacher(Protocol):
    def generate(self, messages: list[dict], *, grammar: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 256, seed: int | None = None) -> str: ...

    def count_tokens(self, text: str) -> int: ...


class Trainer(Protocol):
    name: str
    device: str

    def sft(self, run: Any, cfg: Any, emit: Callback) -> dict: ...

    def dpo(self, run: Any, cfg: Any, emit: Callback) -> dict: ...

    def merge(self, run: Any, stage: str, out_dir: Path, emit: Callback) -> Path: ...


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
    if requested not in ("auto", "torch", "mlx"):
        raise UserError(f"unknown backend {requested!r} (known: auto, torch, mlx)")
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


def load_trainer(choice: BackendChoice, cfg: Any) -> Trainer:
    module, cls, _, _ = TRAINERS[choice.name]
    return getattr(importlib.import_module(module), cls)(cfg, choice.device)
