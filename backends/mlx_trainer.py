"""LoRA SFT and DPO on MLX, through mlx-lm's in-process API (Apple Silicon, or a Linux CPU).

The model comes from ``mlx_lm.utils.load_model``, LoRA layers from ``linear_to_lora_layers``
and every optimizer step from ``mlx_lm.tuner.train`` (its compiled step, our loss, our batch
iterator, our callback). What we add around it, mirroring the torch backend so both see the
same sequences, batches, learning rates and clipping:

- batches from ``valign_edge.batching`` (length buckets, prompt masks), padded to a multiple
  of ``PAD_MULTIPLE`` so the compiled step is traced for few shapes;
- AdamW with bias correction and gradient clipping at 1.0 (as torch), the warm-up + cosine
  rate set before each step;
- DPO: mlx-lm has none. The loss is DPO's ``-log sigmoid(beta * margin)`` over per-sequence
  reply log-probs, with the reference log-probs computed once from the SFT model (the policy's
  starting point), so no second model is held in memory;
- checkpoints (adapter + optimizer state, safetensors + JSON) for resume and cancellation;
- the final adapter in MLX's format (``adapters.safetensors`` + ``adapter_config.json``, which
  ``mlx_lm.load(base, adapter_path=...)`` opens) and a PEFT-format copy in ``peft/`` that
  llama.cpp's ``convert_lora_to_gguf.py`` reads.

On a Linux CPU, OpenBLAS is loaded before ``mlx.core`` (see ``mlx_blas``) and weights are
float32: MLX's CPU backend uses BLAS for float32 matmuls only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .. import batching, datasets
from ..config import RunConfig
from ..errors import Cancelled, UserError
from ..events import Callback, Event, Progress, log
from ..workspace import Run, atomic_write_text, hash_file, hash_obj, peak_rss_mb
from . import mlx_blas
from .hf import load_tokenizer, student_dir

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAD_MULTIPLE = 16  # sequence lengths are padded to this, so the compiled step sees few shapes
ADAPTER_FILE = "adapters.safetensors"


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


class _QuietUI:
    """Stands in for mlx-lm's rich progress display: our events report progress instead."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self):
        pass

    def report_train(self, *args):
        pass

    def report_val(self, *args):
        pass

    def report_save(self, *args):
        pass

    @contextlib.contextmanager
    def val_task(self, total):
        yield lambda: None


@contextlib.contextmanager
def _quiet_mlx_ui():
    from mlx_lm.tuner import trainer

    saved = trainer.TrainUI
    trainer.TrainUI = _QuietUI
    try:
        yield
    finally:
        trainer.TrainUI = saved


def _adamw(lr: float):
    """torch's AdamW as the torch backend uses it: bias correction, no decay, clip at 1.0."""
    import mlx.optimizers as optim

    class ClippedAdamW(optim.AdamW):
        def update(self, model, gradients):
            gradients, _ = optim.clip_grad_norm(gradients, 1.0)
            super().update(model, gradients)

    return ClippedAdamW(learning_rate=lr, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, bias_correction=True)


def _padded_len(n: int) -> int:
    # inputs are ids[:, :-1]: pad so that their length is a multiple of PAD_MULTIPLE
    return 1 + -(-(n - 1) // PAD_MULTIPLE) * PAD_MULTIPLE


class MLXTrainer:
    name = "mlx"

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
        from .hf import quiet_transformers

        quiet_transformers()
        if device == "cpu":
            mx.set_default_device(mx.cpu)
        if tc.precision == "bf16":
            self.dtype, self.precision = mx.bfloat16, "bf16"
        elif tc.precision == "fp32" or device == "cpu":
            # On a CPU, MLX uses BLAS for float32 only: half precision is 10-20x slower.
            self.dtype, self.precision = mx.float32, "fp32"
        else:
            self.dtype, self.precision = None, "checkpoint dtype"

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

    # --- batches and losses ------------------------------------------------------------
    def _reply_batch(self, seqs: list[list[int]], starts: list[int], pad_id: int):
        """Padded ids and the reply targets as flat positions into ``ids[:, 1:]``.

        Returns ``ids`` (B, T), ``positions`` (N,), ``weights`` (N,) and ``rows`` (B, N): the
        positions are padded to a multiple of ``PAD_MULTIPLE`` with weight 0 (fewer shapes to
        compile), and ``rows`` sums per-position values into per-sequence ones.
        """
        import numpy as np

        width = _padded_len(max(len(s) for s in seqs))
        ids = np.full((len(seqs), width), pad_id, dtype=np.int32)
        flat: list[np.ndarray] = []
        owner: list[np.ndarray] = []
        for i, (s, start) in enumerate(zip(seqs, starts)):
            ids[i, : len(s)] = s
            # target j is token j + 1: the reply's tokens are targets start-1 .. len-2
            flat.append(np.arange(start - 1, len(s) - 1) + i * (width - 1))
            owner.append(np.full(len(s) - start, i))
        positions, owners = np.concatenate(flat), np.concatenate(owner)
        n = -(-len(positions) // PAD_MULTIPLE) * PAD_MULTIPLE
        weights = np.zeros(n, dtype=np.float32)
        weights[: len(positions)] = 1.0
        rows = np.zeros((len(seqs), n), dtype=np.float32)
        rows[owners, np.arange(len(positions))] = 1.0
        positions = np.concatenate([positions, np.zeros(n - len(positions), dtype=positions.dtype)])
        return ids, positions.astype(np.int32), weights, rows

    @staticmethod
    def _split_head(model):
        """(body, head) where the logits are just the LM head over the body's output.

        Then the head and the softmax over the vocabulary run on reply positions only; they
        are a large share of a small model's step (49k-token vocabulary, 576-wide hidden).
        """
        if type(model).__module__.rsplit(".", 1)[-1] not in ("llama", "qwen2", "qwen3"):
            return None
        if model.args.tie_word_embeddings:
            return model.model, model.model.embed_tokens.as_linear
        return model.model, model.lm_head

    @classmethod
    def target_logps(cls, model, ids, positions):
        """log p(target) at the given flat positions of ``ids[:, 1:]``."""
        import mlx.core as mx
        import mlx.nn as nn

        split = cls._split_head(model)
        if split is None:
            logits = model(ids[:, :-1])
            logits = logits.reshape(-1, logits.shape[-1])[positions]
        else:
            body, head = split
            hidden = body(ids[:, :-1])
            logits = head(hidden.reshape(-1, hidden.shape[-1])[positions])
        return -nn.losses.cross_entropy(logits.astype(mx.float32), ids[:, 1:].reshape(-1)[positions])

    # --- checkpoints -------------------------------------------------------------------
    def _save_checkpoint(self, model, optimizer, out: Path, step: int, key: str) -> None:
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

    def _load_checkpoint(self, model, optimizer, out: Path, key: str) -> int:
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

    def _finish(self, model, config: dict, base: Path, out: Path, meta: dict) -> None:
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

    # --- the loop -------------------------------------------------------------------------
    def _loop(self, stage: str, model, batches: list[list[int]], make_batch: Callable, loss_fn: Callable,
              lr: float, out: Path, key: str, emit: Callback, should_stop, stats: list[str] | None = None) -> dict:
        """Run ``mlx_lm.tuner.train`` over our batches with our loss; events, checkpoints, cancel."""
        import mlx.core as mx
        import numpy as np
        from mlx_lm.tuner.callbacks import TrainingCallback
        from mlx_lm.tuner.trainer import TrainingArgs, train

        tc = self.cfg.train
        total = len(batches)
        optimizer = _adamw(lr)
        optimizer.init(model.trainable_parameters())
        out.mkdir(parents=True, exist_ok=True)
        start = self._load_checkpoint(model, optimizer, out, key)
        if start:
            log(emit, stage, f"resuming from step {start} of {total}")
        progress = Progress(emit, stage, total, "steps", done=start)
        if should_stop():
            self._save_checkpoint(model, optimizer, out, start, key)
            raise Cancelled(f"{stage} cancelled at step {start}")
        batch_tokens: list[int] = []
        history: list[dict] = []
        clock = {"t0": time.monotonic(), "tokens": 0}
        mx.reset_peak_memory()

        def iterate_batches(dataset, batch_size, max_seq_length, loop=False, comm_group=None, **_):
            for step in range(start, total):
                optimizer.learning_rate = batching.lr_at(step, total, tc.warmup_steps, lr)
                arrays, n_tokens = make_batch(batches[step])
                batch_tokens.append(n_tokens)
                yield arrays

        trainer = self

        class Report(TrainingCallback):
            def on_train_loss_report(self, info: dict) -> None:
                step = start + info["iteration"]
                clock["tokens"] += batch_tokens[info["iteration"] - 1]
                elapsed = time.monotonic() - clock["t0"]
                row = {"step": step, "loss": round(info["train_loss"], 4),
                       "tokens_per_s": round(clock["tokens"] / elapsed, 1), "peak_rss_mb": round(peak_rss_mb()),
                       "peak_memory_mb": round(info["peak_memory"] * 1000), "lr": float(f"{info['learning_rate']:.3g}")}
                if stats:
                    values = np.array(model._valign_stats).tolist()
                    row.update({name: round(v, 4) for name, v in zip(stats, values)})
                history.append(row)
                emit(Event("metric", stage, data=row))
                progress.update(1, loss=row["loss"], tok_s=row["tokens_per_s"])
                if step < total and should_stop():
                    trainer._save_checkpoint(model, optimizer, out, step, key)
                    raise Cancelled(f"{stage} cancelled at step {step}")
                if step % tc.checkpoint_every == 0 and step < total:
                    trainer._save_checkpoint(model, optimizer, out, step, key)

        if stats:
            model._valign_stats = mx.zeros((len(stats),))
        args = TrainingArgs(batch_size=1, iters=total - start, steps_per_report=1, steps_per_eval=10 ** 9,
                            steps_per_save=10 ** 9, max_seq_length=10 ** 6,
                            adapter_file=str(out / f".last-{ADAPTER_FILE}"))
        try:
            with _quiet_mlx_ui():
                train(model, optimizer, batches, None, args, loss=loss_fn, iterate_batches=iterate_batches,
                      training_callback=Report())
        finally:
            if stats:
                del model["_valign_stats"]
        (out / f".last-{ADAPTER_FILE}").unlink(missing_ok=True)
        seconds = round(time.monotonic() - clock["t0"], 2)
        return {"steps": total, "resumed_from": start, "tokens": clock["tokens"], "seconds": seconds,
                "history": history, "final_loss": history[-1]["loss"] if history else None,
                "tokens_per_s": round(clock["tokens"] / max(seconds, 1e-9), 1),
                "peak_memory_mb": round(mx.get_peak_memory() / 1e6), "peak_rss_mb": round(peak_rss_mb())}

    def _result_common(self, base: Path) -> dict:
        return {"precision": self.precision, "device": self.device, "base": str(base), "backend": "mlx",
                "blas": self.blas.get("blas"), "blas_core": self.blas.get("core"), "pad_multiple": PAD_MULTIPLE}

    # --- SFT -------------------------------------------------------------------------------
    def sft(self, run: Run, emit: Callback, should_stop=lambda: False) -> dict:
        import mlx.core as mx

        tc = self.cfg.train
        rows = datasets.load(run, "sft", "train")
        if not rows:
            raise UserError(f"{run.root} has no SFT training data; run: valign generate DOC --out {run.root}")
        base = self.base_dir(emit)
        tok = self.load_tokenizer(base)
        examples = batching.encode_sft(tok, rows, tc.max_seq_len)
        lengths = [len(e) for e in examples]
        per_epoch = len(batching.bucket_batches(lengths, tc.batch_tokens, self.cfg.seed, 0))
        total = batching.plan_steps(per_epoch, tc.sft_epochs, tc.max_steps)
        batches = batching.step_batches(lengths, tc.batch_tokens, self.cfg.seed, total)
        key = hash_obj([rows, vars(tc), str(base), self.cfg.seed, "mlx"])
        model, config = self.lora_model(base, seed=self.cfg.seed)
        log(emit, "train_sft", f"{len(examples)} examples, {total} steps, LoRA r={tc.lora_rank}, {self.describe()}")
        pad_id = tok.pad_token_id

        def make_batch(batch: list[int]):
            seqs = [examples[i].ids for i in batch]
            ids, positions, weights, _ = self._reply_batch(seqs, [examples[i].prompt_len for i in batch], pad_id)
            n_tokens = sum(len(s) for s in seqs)
            return (mx.array(ids), mx.array(positions), mx.array(weights), mx.array(float(n_tokens))), n_tokens

        def loss_fn(model, ids, positions, weights, n_tokens):
            # the mean over reply tokens, as torch's cross-entropy with prompt labels at -100
            logps = self.target_logps(model, ids, positions)
            return -(logps * weights).sum() / weights.sum(), n_tokens

        result = self._loop("train_sft", model, batches, make_batch, loss_fn, tc.sft_lr, run.adapter_dir("sft"),
                            key, emit, should_stop)
        result.update(examples=len(examples), **self._result_common(base),
                      padding_share=round(1 - sum(lengths[i] for b in batches for i in b) /
                                          sum(max(lengths[i] for i in b) * len(b) for b in batches), 4))
        self._finish(model, config, base, run.adapter_dir("sft"), result)
        return result

    # --- DPO -------------------------------------------------------------------------------
    def dpo(self, run: Run, emit: Callback, should_stop=lambda: False) -> dict:
        import mlx.core as mx
        import mlx.nn as nn

        tc = self.cfg.train
        rows = datasets.load(run, "dpo", "train")
        sft_dir = run.adapter_dir("sft")
        if not (sft_dir / ADAPTER_FILE).exists():
            raise UserError(f"{run.root} has no MLX SFT adapter yet; run: valign train {run.root} --backend mlx")
        if not rows:
            raise UserError(f"{run.root} has no DPO training data (no value-bearing chunks produced pairs)")
        base = self.base_dir(emit)
        tok = self.load_tokenizer(base)
        pairs = batching.encode_dpo(tok, rows, tc.max_seq_len)
        lengths = [2 * len(p) for p in pairs]
        per_epoch = len(batching.bucket_batches(lengths, tc.batch_tokens, self.cfg.seed, 0))
        total = batching.plan_steps(per_epoch, tc.dpo_epochs, tc.max_steps)
        batches = batching.step_batches(lengths, tc.batch_tokens, self.cfg.seed + 1, total)
        key = hash_obj([rows, vars(tc), str(base), self.cfg.seed, hash_file(sft_dir / ADAPTER_FILE), "mlx"])
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
            ids, positions, _, rows = self._reply_batch(seqs, starts, pad_id)
            return (mx.array(ids), mx.array(positions), mx.array(rows)), sum(len(s) for s in seqs)

        def reply_logps(model, ids, positions, rows):
            """Per sequence: the sum of log p over its reply tokens."""
            return rows @ self.target_logps(model, ids, positions)

        ref = self._reference_logps(model, pairs, arrays, reply_logps, out, key, emit)
        log(emit, "train_dpo", f"{len(pairs)} pairs, {total} steps, beta={tc.dpo_beta}, reference log-probs "
                               f"precomputed (no second model), {self.describe()}")
        beta = tc.dpo_beta

        def make_batch(batch: list[int]):
            inputs, n_tokens = arrays(batch)
            return (*inputs, ref[mx.array(batch)], mx.array(float(n_tokens))), n_tokens

        def loss_fn(model, ids, positions, rows, reference, n_tokens):
            policy = reply_logps(model, ids, positions, rows).reshape(-1, 2)
            margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
            loss = -nn.log_sigmoid(beta * margin).mean()
            # Reported per step like the torch backend; read back through the model's state,
            # which the compiled step returns.
            model._valign_stats = mx.stop_gradient(mx.stack([(margin > 0).astype(mx.float32).mean(),
                                                              beta * margin.mean()]))
            return loss, n_tokens

        result = self._loop("train_dpo", model, batches, make_batch, loss_fn, tc.dpo_lr, out, key, emit,
                            should_stop, stats=["reward_accuracy", "margin"])
        result.update(pairs=len(pairs), beta=beta, **self._result_common(base))
        self._finish(model, config, base, out, result)
        # ``_finish`` replaced the folder: keep the reference log-probs beside the adapter.
        mx.save_safetensors(str(out / "reference_logps.safetensors"), {"logps": ref})
        return result

    def _reference_logps(self, model, pairs, arrays, reply_logps, out: Path, key: str, emit: Callback):
        import mlx.core as mx

        ref_path = out / "reference_logps.safetensors"
        try:
            if json.loads((out / "reference.json").read_text()).get("key") == key:
                return mx.load(str(ref_path))["logps"]
        except (OSError, ValueError, KeyError):
            pass
        model.eval()
        rp = Progress(emit, "dpo_reference", len(pairs), "pairs")
        chunks = []
        for chunk_start in range(0, len(pairs), 8):
            idx = list(range(chunk_start, min(len(pairs), chunk_start + 8)))
            inputs, _ = arrays(idx)
            logps = reply_logps(model, *inputs).reshape(-1, 2)
            mx.eval(logps)
            chunks.append(logps)
            rp.update(len(idx))
        model.train()
        ref = mx.concatenate(chunks) if chunks else mx.zeros((0, 2))
        mx.save_safetensors(str(ref_path), {"logps": ref})
        atomic_write_text(out / "reference.json", json.dumps({"key": key}))
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
