"""LoRA SFT and DPO on MLX, through mlx-lm's in-process API (Apple Silicon, or a Linux CPU).

The model comes from ``mlx_lm.utils.load_model`` and LoRA layers from ``linear_to_lora_layers``;
each optimizer step is compiled as ``mlx_lm.tuner.train`` compiles it (``nn.value_and_grad`` and
the update over the model's, the optimizer's and the random state), with our loss, in our own loop
(no swapping out of mlx-lm's progress display). What we add, mirroring the torch backend so both see
the same sequences, batches, learning rates and clipping:

- the stage plan from ``valign_edge.training.plan`` (rows, prompt masks, length-bucketed batches,
  key), padded to a multiple of ``PAD_MULTIPLE`` so the compiled step is traced for few shapes;
- AdamW with bias correction and gradient clipping at 1.0 (as torch), the warm-up + cosine
  rate set before each step;
- DPO: mlx-lm has none. The loss is DPO's ``-log sigmoid(beta * margin)`` over per-sequence
  reply log-probs (``valign_edge/training/preference.py``, the same function the torch backend calls), with the reference log-probs computed once from the SFT model (the policy's
  starting point), so no second model is held in memory; its statistics come back from the
  compiled step beside the loss;
- checkpoints (adapter + optimizer state, safetensors + JSON) for resume and cancellation;
- the final adapter in MLX's format (``adapters.safetensors`` + ``adapter_config.json``, which
  ``mlx_lm.load(base, adapter_path=...)`` opens) and a PEFT-format copy in ``peft/`` that
  llama.cpp's ``convert_lora_to_gguf.py`` reads (``mlx_adapters``).

On a Linux CPU, OpenBLAS is loaded before ``mlx.core`` (see ``mlx_blas``) and weights are
float32: MLX's CPU backend uses BLAS for float32 matmuls only.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from valign_edge.backends import mlx_blas
from valign_edge.backends.hf import load_tokenizer, model_config_overrides, student_dir
from valign_edge.backends.mlx_adapters import ADAPTER_FILE, load_checkpoint, save_checkpoint, write_adapter
from valign_edge.backends.mlx_batches import PAD_MULTIPLE, reply_batch, target_logps
from valign_edge.config import RunConfig
from valign_edge.errors import Cancelled, UserError
from valign_edge.events import Callback, Event, Progress, log
from valign_edge.runs.workspace import Run, peak_rss_mb
from valign_edge.training import batching
from valign_edge.training import plan as trainplan
from valign_edge.training.plan import StagePlan
from valign_edge.training.preference import cached_reference, dpo_loss, reference_chunks, save_reference

__all__ = ["MLXTrainer", "model_config_overrides"]

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adamw(lr: float):
    """torch's AdamW as the torch backend uses it: bias correction, no decay, clip at 1.0."""
    import mlx.optimizers as optim

    class ClippedAdamW(optim.AdamW):
        def update(self, model, gradients):
            gradients, _ = optim.clip_grad_norm(gradients, 1.0)
            super().update(model, gradients)

    return ClippedAdamW(learning_rate=lr, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, bias_correction=True)


def precision_for(setting: str, device: str) -> str:
    if setting == "bf16":
        return "bf16"
    # On a CPU, MLX uses BLAS for float32 only: half precision is 10-20x slower.
    return "fp32" if setting == "fp32" or device == "cpu" else "checkpoint dtype"


class MLXTrainer:
    """The ``Trainer`` protocol (``backends/__init__.py``) on MLX."""

    name = "mlx"
    micro_batching = False  # a step is one pass; its batch's tokens bound the memory
    precision_for = staticmethod(precision_for)

    def __init__(self, cfg: RunConfig, device: str = "cpu"):
        self.cfg, self.device = cfg, device
        tc = cfg.train
        # Before the first ``import mlx.core``: afterwards the BLAS is fixed.
        self.blas = mlx_blas.enable(tc.threads) if device == "cpu" else {"blas": "native"}
        try:
            import mlx.core as mx
            import mlx_lm  # noqa: F401
        except ImportError:
            raise UserError("the mlx backend is not installed; run: pip install 'valign-edge[mlx]'") from None
        from valign_edge.backends.hf import quiet_transformers

        quiet_transformers()
        if device == "cpu":
            mx.set_default_device(mx.cpu)
        self.precision = precision_for(tc.precision, device)
        self.dtype = {"bf16": mx.bfloat16, "fp32": mx.float32}.get(self.precision)

    def describe(self) -> str:
        """What runs the training, for the log: device, precision and (on a CPU) the BLAS."""
        text = f"mlx on {self.device}, {self.precision}"
        if self.blas.get("blas") == "openblas":
            text += f", OpenBLAS ({self.blas.get('core') or '?'}, {self.blas.get('threads')} threads)"
        elif self.blas.get("blas") == "reference":
            text += f", reference BLAS: about 20x slower ({self.blas.get('reason')})"
        return text

    # --- loading -----------------------------------------------------------------
    def base_dir(self, emit: Callback) -> Path:
        return student_dir(self.cfg, emit)

    def load_tokenizer(self, base: Path):
        return load_tokenizer(base)

    def load_model(self, path: Path):
        """An HF-format folder as an MLX model (float32 on a CPU), all weights frozen."""
        from mlx_lm.utils import load_model

        try:
            config = json.loads((Path(path) / "config.json").read_text())
            model, _ = load_model(Path(path), model_config=model_config_overrides(config))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"cannot load the student from {path} with MLX: {str(exc).splitlines()[0]}") from None
        if self.dtype is not None:
            model.set_dtype(self.dtype)
        model.freeze()
        return model

    def lora_parameters(self, model) -> dict:
        import mlx.nn as nn

        tc = self.cfg.train
        keys = sorted(name for name, module in model.layers[0].named_modules()
                      if name.rsplit(".", 1)[-1] in LORA_TARGETS and isinstance(module, (nn.Linear, nn.QuantizedLinear)))
        if not keys:
            raise UserError("the student has none of the usual projection layers to put LoRA on")
        return {"rank": tc.lora_rank, "scale": tc.lora_alpha / tc.lora_rank, "dropout": tc.lora_dropout, "keys": keys}

    def add_lora(self, model, params: dict, seed: int) -> dict:
        """Wrap the target projections of every layer in LoRA; the MLX ``adapter_config.json``."""
        import mlx.core as mx
        from mlx_lm.tuner.utils import linear_to_lora_layers

        mx.random.seed(seed)
        linear_to_lora_layers(model, len(model.layers), params)
        return {"fine_tune_type": "lora", "num_layers": len(model.layers), "lora_parameters": params}

    def lora_model(self, base: Path, adapter: Path | None = None, seed: int = 0):
        """Base + LoRA layers, optionally with an adapter's weights; only LoRA is trainable."""
        import mlx.core as mx

        model = self.load_model(base)
        if adapter is not None:
            config = json.loads((adapter / "adapter_config.json").read_text())
            self.add_lora(model, config["lora_parameters"], seed)
            model.load_weights(str(adapter / ADAPTER_FILE), strict=False)
        else:
            config = self.add_lora(model, self.lora_parameters(model), seed)
        mx.eval(model.parameters())
        return model, config

    # --- the loop -------------------------------------------------------------------------
    def _loop(self, stage: str, model, plan: StagePlan, make_batch: Callable, loss_fn: Callable, out: Path,
              emit: Callback, should_stop, stats: tuple[str, ...] = ()) -> dict:
        """mlx-lm's compiled step over the plan's batches with our loss; events, checkpoints, cancel.

        ``loss_fn(model, *arrays)`` returns the loss and an array of the ``stats`` it reports."""
        from functools import partial

        import mlx.core as mx
        import mlx.nn as nn

        tc, total, key = self.cfg.train, plan.steps, plan.key
        optimizer = _adamw(plan.lr)
        optimizer.init(model.trainable_parameters())
        out.mkdir(parents=True, exist_ok=True)
        start = load_checkpoint(model, optimizer, out, key)
        if start:
            log(emit, stage, f"resuming from step {start} of {total}")
        progress = Progress(emit, stage, total, "steps", done=start)
        state = [model.state, optimizer.state, mx.random.state]
        loss_and_grad = nn.value_and_grad(model, loss_fn)

        @partial(mx.compile, inputs=state, outputs=state)
        def train_step(*arrays):
            (loss, values), grad = loss_and_grad(model, *arrays)
            optimizer.update(model, grad)
            return loss, values

        history: list[dict] = []
        tokens, t0 = 0, time.monotonic()
        mx.reset_peak_memory()
        model.train()
        for step in range(start, total):
            if should_stop():
                save_checkpoint(model, optimizer, out, step, key)
                raise Cancelled(f"{stage} cancelled at step {step}")
            optimizer.learning_rate = batching.lr_at(step, total, tc.warmup_steps, plan.lr)
            arrays, n_tokens = make_batch(plan.batches[step])
            loss, values = train_step(*arrays)
            mx.eval(state, loss, values)
            tokens += n_tokens
            row = {"step": step + 1, "loss": round(loss.item(), 4),
                   "tokens_per_s": round(tokens / (time.monotonic() - t0), 1), "peak_rss_mb": round(peak_rss_mb()),
                   "peak_memory_mb": round(mx.get_peak_memory() / 1e6),
                   "lr": float(f"{optimizer.learning_rate.item():.3g}")}
            row.update({name: round(v, 4) for name, v in zip(stats, values.tolist())})
            history.append(row)
            emit(Event("metric", stage, data=row))
            progress.update(1, loss=row["loss"], tok_s=row["tokens_per_s"])
            if (step + 1) % tc.checkpoint_every == 0 and step + 1 < total:
                save_checkpoint(model, optimizer, out, step + 1, key)
        seconds = round(time.monotonic() - t0, 2)
        return {"steps": total, "resumed_from": start, "tokens": tokens, "seconds": seconds,
                "history": history, "final_loss": history[-1]["loss"] if history else None,
                "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
                "peak_memory_mb": round(mx.get_peak_memory() / 1e6), "peak_rss_mb": round(peak_rss_mb())}

    def _result_common(self, base: Path) -> dict:
        return {"precision": self.precision, "device": self.device, "base": str(base), "backend": "mlx",
                "blas": self.blas.get("blas"), "blas_core": self.blas.get("core"), "pad_multiple": PAD_MULTIPLE}

    # --- SFT -------------------------------------------------------------------------------
    def sft(self, run: Run, emit: Callback, should_stop=lambda: False) -> dict:
        import mlx.core as mx

        base = self.base_dir(emit)
        tok = self.load_tokenizer(base)
        plan = trainplan.plan(run, self.cfg, "sft", tok, self.name, self.precision)
        examples = plan.items
        model, config = self.lora_model(base, seed=self.cfg.seed)
        log(emit, "train_sft", f"{len(examples)} examples, {plan.steps} steps, LoRA r={self.cfg.train.lora_rank}, "
                               f"{self.describe()}")
        pad_id = tok.pad_token_id

        def make_batch(batch: list[int]):
            seqs = [examples[i].ids for i in batch]
            ids, positions, weights, _ = reply_batch(seqs, [examples[i].prompt_len for i in batch], pad_id)
            return (mx.array(ids), mx.array(positions), mx.array(weights)), sum(len(s) for s in seqs)

        def loss_fn(model, ids, positions, weights):
            # the mean over reply tokens, as torch's cross-entropy with prompt labels at -100
            logps = target_logps(model, ids, positions)
            return -(logps * weights).sum() / weights.sum(), mx.zeros((0,))

        result = self._loop("train_sft", model, plan, make_batch, loss_fn, run.adapter_dir("sft"), emit, should_stop)
        result.update(examples=len(examples), **self._result_common(base), padding_share=plan.padding_share())
        write_adapter(model, config, base, run.adapter_dir("sft"), result)
        return result

    # --- DPO -------------------------------------------------------------------------------
    def dpo(self, run: Run, emit: Callback, should_stop=lambda: False) -> dict:
        import mlx.core as mx
        import mlx.nn as nn

        sft_dir = run.adapter_dir("sft")
        if not (sft_dir / ADAPTER_FILE).exists():
            raise UserError(f"{run.root} has no MLX SFT adapter yet; run: valign train {run.root} --backend mlx")
        base = self.base_dir(emit)
        tok = self.load_tokenizer(base)
        plan = trainplan.plan(run, self.cfg, "dpo", tok, self.name, self.precision)
        pairs, beta, sft_weight = plan.items, self.cfg.train.dpo_beta, self.cfg.train.dpo_sft_weight
        # The policy continues the SFT adapter, so the final adapter applies to the original base
        # (usable as a GGUF LoRA over the base GGUF); at step 0 it *is* the SFT model, the reference.
        model, config = self.lora_model(base, sft_dir, seed=self.cfg.seed)
        out = run.adapter_dir("dpo")
        out.mkdir(parents=True, exist_ok=True)
        pad_id = tok.pad_token_id

        def arrays(batch: list[int]):
            seqs, starts = [], []
            for i in batch:
                p = pairs[i]
                for reply in (p.chosen, p.rejected):
                    seqs.append(p.prompt + reply)
                    starts.append(len(p.prompt))
            ids, positions, _, rows = reply_batch(seqs, starts, pad_id)
            return (mx.array(ids), mx.array(positions), mx.array(rows)), sum(len(s) for s in seqs)

        def reply_logps(model, ids, positions, rows):
            """Per sequence: the sum of log p over its reply tokens."""
            return rows @ target_logps(model, ids, positions)

        ref = self._reference_logps(model, pairs, arrays, reply_logps, out, plan.key, emit)
        log(emit, "train_dpo", f"{len(pairs)} pairs, {plan.steps} steps, beta={beta}, reference log-probs "
                               f"precomputed (no second model), {self.describe()}")

        def make_batch(batch: list[int]):
            inputs, n_tokens = arrays(batch)
            return (*inputs, ref[mx.array(batch)]), n_tokens

        def loss_fn(model, ids, positions, rows, reference):
            policy = reply_logps(model, ids, positions, rows).reshape(-1, 2)
            lengths = rows.sum(axis=1).reshape(-1, 2)[:, 0] if sft_weight else None
            loss, margin = dpo_loss(policy, reference, beta, nn.log_sigmoid, sft_weight, lengths)
            return loss, mx.stack([(margin > 0).astype(mx.float32).mean(), beta * margin.mean()])

        result = self._loop("train_dpo", model, plan, make_batch, loss_fn, out, emit, should_stop,
                            stats=("reward_accuracy", "margin"))
        result.update(pairs=len(pairs), beta=beta, **self._result_common(base))
        write_adapter(model, config, base, out, result)
        # ``_finish`` replaced the folder: keep the reference log-probs beside the adapter.
        save_reference(out, lambda path: mx.save_safetensors(str(path), {"logps": ref}))
        return result

    def _reference_logps(self, model, pairs, arrays, reply_logps, out: Path, key: str, emit: Callback):
        import mlx.core as mx

        cached = cached_reference(out, key)
        if cached is not None:
            return mx.load(str(cached))["logps"]
        model.eval()
        rp = Progress(emit, "dpo_reference", len(pairs), "pairs")
        chunks = []
        for idx in reference_chunks(len(pairs)):
            inputs, _ = arrays(idx)
            logps = reply_logps(model, *inputs).reshape(-1, 2)
            mx.eval(logps)
            chunks.append(logps)
            rp.update(len(idx))
        model.train()
        ref = mx.concatenate(chunks) if chunks else mx.zeros((0, 2))
        save_reference(out, lambda path: mx.save_safetensors(str(path), {"logps": ref}), key)
        return ref

    # --- merge ------------------------------------------------------------------------------
    def merge(self, run: Run, stage: str, out_dir: Path, emit: Callback) -> Path:
        """Base + adapter fused in MLX, saved as an HF-format folder (safetensors, config, tokenizer)."""
        base = self.base_dir(emit)
        adapter = run.adapter_dir(stage)
        if not (adapter / ADAPTER_FILE).exists():
            raise UserError(f"{adapter} holds no MLX adapter; train with --backend mlx or export with the "
                            f"backend that trained it")
        model, _ = self.lora_model(base, adapter)
        return self.fuse(model, base, out_dir)

    def fuse(self, model, base: Path, out_dir: Path) -> Path:
        from mlx.utils import tree_unflatten
        from mlx_lm.utils import save_model

        fused = [(name, module.fuse()) for name, module in model.named_modules() if hasattr(module, "fuse")]
        if fused:
            model.update_modules(tree_unflatten(fused))
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(out_dir, model)
        # The architecture is unchanged by fusing: keep the base's own config (mlx-lm's
        # rewritten one drops keys that llama.cpp's converter reads).
        shutil.copyfile(base / "config.json", out_dir / "config.json")
        if (base / "generation_config.json").exists():
            shutil.copyfile(base / "generation_config.json", out_dir / "generation_config.json")
        self.load_tokenizer(base).save_pretrained(out_dir)
        return out_dir

    def peft_adapter(self, run: Run, stage: str) -> Path | None:
        folder = run.adapter_dir(stage) / "peft"  # written when llama.cpp's converter can map the names
        return folder if (folder / "adapter_model.safetensors").exists() else None

    def greedy(self, model_dir: Path, prompts: list[list[int]], n_tokens: int) -> list[list[int]]:
        """Greedy continuations from a fused folder with MLX, the reference the GGUF must reproduce."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from transformers import AutoTokenizer

        model = self.load_model(Path(model_dir))
        eos = AutoTokenizer.from_pretrained(str(model_dir)).eos_token_id
        outs = []
        for ids in prompts:
            out: list[int] = []
            for token, _ in generate_step(mx.array(ids), model, max_tokens=n_tokens,
                                          sampler=lambda logits: mx.argmax(logits, axis=-1)):
                token = int(token)
                if token == eos:
                    break
                out.append(token)
            outs.append(out[:n_tokens])
        return outs
