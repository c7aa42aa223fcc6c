"""LoRA SFT and DPO with transformers + PEFT in a lean loop (CPU, CUDA or MPS).

Our own loop, not trl's: length-bucketed batches, bf16 autocast where the hardware is fast at it, DPO
reference log-probs computed once instead of a second model, safetensors checkpoints with the optimizer
state; data-parallel through ``torch_dist`` (a ``Group``; one process is a group of one).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from valign_edge.backends.hf import load_tokenizer, student_dir
from valign_edge.backends.torch_dist import Group
from valign_edge.config import RunConfig
from valign_edge.errors import Cancelled, UserError
from valign_edge.events import Callback, Event, Progress, log
from valign_edge.files import note_tree
from valign_edge.runs.workspace import Run, peak_rss_mb
from valign_edge.training import batching
from valign_edge.training import plan as trainplan
from valign_edge.training.plan import StagePlan
from valign_edge.training.preference import cached_reference, dpo_loss, reference_chunks, save_reference

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def precision_for(setting: str, device: str) -> str:
    """bf16 autocast where asked for, or (auto) on a GPU that supports it; else fp32.

    Not bf16 on the CPU, even with AMX: on this project's training it was no faster than fp32 and its
    memory grew with every new batch shape, 2.3 -> 4.3 GB over one UDHR SFT stage against a flat 2.4-2.7
    GB in fp32 (bench/RESULTS.md, "bf16 on the CPU, revisited")."""
    if setting == "auto" and device == "cuda":
        import torch

        return "bf16-autocast" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16-autocast" if setting == "bf16" else "fp32"


class TorchTrainer:
    """The ``Trainer`` protocol (``backends/__init__.py``) on transformers + PEFT."""

    name = "torch"
    micro_batching = True
    precision_for = staticmethod(precision_for)

    def __init__(self, cfg: RunConfig, device: str = "cpu", group: Group | None = None):
        import warnings

        import torch

        warnings.filterwarnings("ignore", category=FutureWarning)
        from valign_edge.backends.hf import quiet_transformers

        quiet_transformers()

        self.cfg, self.device, self.group = cfg, device, group or Group()
        tc = cfg.train
        if device == "cpu":  # the cores shared by this machine's training processes
            from valign_edge.cpu import compute_threads

            torch.set_num_threads(tc.threads or max(1, compute_threads() // self.group.local_world))
        self.precision = precision_for(tc.precision, device)
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16-autocast" else None

    # --- loading -----------------------------------------------------------------
    def base_dir(self, emit: Callback) -> Path:
        return student_dir(self.cfg, emit)

    def load_tokenizer(self, base: Path):
        return load_tokenizer(base)

    def load_base(self, base: Path):
        import torch
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load the student from {base}: {str(exc).splitlines()[0]}") from None
        model.config.use_cache = False
        return model if self.group.fsdp else model.to(self.device)  # FSDP places it (Group.wrap)

    def lora_config(self):
        from peft import LoraConfig

        tc = self.cfg.train
        return LoraConfig(r=tc.lora_rank, lora_alpha=tc.lora_alpha, lora_dropout=tc.lora_dropout,
                          target_modules=LORA_TARGETS, task_type="CAUSAL_LM", bias="none")

    def autocast(self):
        import contextlib

        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda" if self.device == "cuda" else "cpu", dtype=self.autocast_dtype)

    # --- batches ------------------------------------------------------------------
    def _pad(self, seqs: list[list[int]], pad_id: int):
        import torch

        longest = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _token_logps(self, model, ids, mask, starts: list[int], ends: list[int]):
        """Per-sequence sum of log p(token) over positions [start, end) and the token count."""
        import torch

        # Logits only where a reply token is predicted: the vocabulary projection and softmax
        # over prompt positions would be thrown away.
        offset = min(starts) - 1
        with self.autocast():
            logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=ids.shape[1] - offset).logits
        sums, counts = [], []
        for i, (s, e) in enumerate(zip(starts, ends)):
            target = ids[i, s:e]
            lp = torch.log_softmax(logits[i, s - 1 - offset:e - 1 - offset].float(), dim=-1)
            sums.append(lp.gather(-1, target.unsqueeze(-1)).squeeze(-1).sum())
            counts.append(e - s)
        return torch.stack(sums), counts

    # --- checkpoints ------------------------------------------------------------------
    def _save_checkpoint(self, model, optimizer, out: Path, step: int, key: str) -> None:
        from safetensors.torch import save_file

        if not self.group.is_main:
            return
        ckpt, tmp = out / "checkpoint", out / ".checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=self.group.adapter_state(model))
        state = optimizer.state_dict()
        tensors = {f"{idx}.{name}": v.detach().cpu().contiguous() for idx, st in state["state"].items()
                   for name, v in st.items()}
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "key": key, "param_groups": state["param_groups"]}))
        if ckpt.exists():
            import shutil

            shutil.rmtree(ckpt)
        os.replace(tmp, ckpt)
        note_tree(ckpt)

    def _load_checkpoint(self, model, optimizer, out: Path, key: str) -> int:
        """Restore adapter and optimizer from ``out/checkpoint``; the step to continue from (0: none)."""
        from safetensors.torch import load_file

        ckpt = out / "checkpoint"
        state_path = ckpt / "trainer_state.json"
        if not state_path.exists():
            return 0
        meta = json.loads(state_path.read_text())
        if meta.get("key") != key:
            return 0
        self.group.load_adapter(model, load_file(str(ckpt / "adapter_model.safetensors")))
        flat = load_file(str(ckpt / "optimizer.safetensors"))
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in flat.items():
            idx, field = name.split(".", 1)
            state.setdefault(int(idx), {})[field] = tensor.to(self.device) if field != "step" else tensor
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        return int(meta["step"])

    def _finish(self, model, out: Path, meta: dict) -> None:
        import shutil

        if not self.group.is_main:
            return
        tmp = out.parent / f".{out.name}.final"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True, state_dict=self.group.adapter_state(model))
        (tmp / "training.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        note_tree(out)

    # --- the loop ------------------------------------------------------------------------
    def _loop(self, stage: str, model, plan: StagePlan, out: Path, step_fn, emit: Callback, should_stop) -> dict:
        """``step_fn(part)`` returns (mean loss over its units, tokens, metrics, units); a step runs one
        pass per micro-batch and averages over all units, so the update equals one big pass."""
        import torch

        tc = self.cfg.train
        batches, lengths, lr, key = plan.batches, plan.lengths, plan.lr, plan.key
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        start = self.group.same(self._load_checkpoint(model, optimizer, out, key), "checkpoint step")
        if start:
            log(emit, stage, f"resuming from step {start} of {len(batches)}")
        progress = Progress(emit, stage, len(batches), "steps", done=start)
        tokens, t0, history, self._metric_names = 0, time.monotonic(), [], None
        model.train()
        for step in range(start, len(batches)):
            if self.group.agree(should_stop()):  # rank 0's say: every process stops at the same step
                self._save_checkpoint(model, optimizer, out, step, key)
                raise Cancelled(f"{stage} cancelled at step {step}")
            for group in optimizer.param_groups:
                group["lr"] = batching.lr_at(step, len(batches), tc.warmup_steps, lr)
            optimizer.zero_grad(set_to_none=True)
            loss, n_tokens, metrics = self._accumulate(step_fn, batches[step], lengths, params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
            optimizer.step()
            tokens += n_tokens
            elapsed = time.monotonic() - t0
            row = {"step": step + 1, "loss": round(loss, 4), "tokens_per_s": round(tokens / elapsed, 1),
                   "peak_rss_mb": round(peak_rss_mb()), "grad_norm": round(grad_norm, 6), **metrics}
            history.append(row)
            emit(Event("metric", stage, data=row))
            progress.update(1, loss=row["loss"], tok_s=row["tokens_per_s"])
            if (step + 1) % tc.checkpoint_every == 0 and step + 1 < len(batches):
                self._save_checkpoint(model, optimizer, out, step + 1, key)
        rss = self.group.gather(peak_rss_mb())
        return {"steps": len(batches), "resumed_from": start, "tokens": tokens, "world_size": self.group.world,
                "peak_rss_mb_per_process": [round(x) for x in rss],
                "seconds": round(time.monotonic() - t0, 2), "history": history,
                "final_loss": history[-1]["loss"] if history else None}

    def _accumulate(self, step_fn, batch: list[int], lengths: list[int], params) -> tuple[float, int, dict]:
        """Gradients of the whole step's mean loss, one micro-batch of this process's shard at a time:
        each part's mean is weighted by its units; the sums over all processes are divided by all units,
        so the update equals one big pass in one process."""
        loss, n_tokens, metrics, units = 0.0, 0, {}, 0
        parts = batching.micro_batches(self.group.shard(batch), lengths, self.cfg.train.micro_batch_tokens)
        for part, real in self.group.passes(parts, batch[:1]):
            part_loss, part_tokens, part_metrics, part_units = step_fn(part)
            (part_loss * (part_units if real else 0)).backward()
            if not real:  # FSDP: a pass this rank had no data for
                continue
            loss += part_loss.item() * part_units
            n_tokens += part_tokens
            units += part_units
            for name, value in part_metrics.items():
                metrics[name] = metrics.get(name, 0.0) + value * part_units
        if self._metric_names is None:  # rank 0 always has items (its shard starts the batch)
            self._metric_names = self.group.broadcast_json(sorted(metrics))
        names = self._metric_names
        loss, n_tokens, units, *values = self.group.sum([loss, n_tokens, units, *(metrics.get(n, 0.0) for n in names)])
        self.group.sum_grads(params)
        units = max(1, units)
        for p in params:
            if p.grad is not None:
                p.grad /= units
        return loss / units, int(n_tokens), {name: round(value / units, 4) for name, value in zip(names, values)}

    # --- SFT -------------------------------------------------------------------------------
    def sft(self, run: Run, emit: Callback, should_stop=lambda: False) -> dict:
        import torch
        from peft import get_peft_model

        tc = self.cfg.train
        base = self.base_dir(emit)
        tok = self.load_tokenizer(base)
        plan = trainplan.plan(run, self.cfg, "sft", tok, self.name, self.precision)
        examples = plan.items
        torch.manual_seed(self.cfg.seed)
        model = self.group.wrap(get_peft_model(self.load_base(base), self.lora_config()), self.device)
        log(emit, "train_sft", f"{len(examples)} examples, {plan.steps} steps, LoRA r={tc.lora_rank}, "
                               f"{self.device} {self.precision}")
        out = run.adapter_dir("sft")

        def step_fn(batch: list[int]):
            seqs = [examples[i].ids for i in batch]
            ids, mask = self._pad(seqs, tok.pad_token_id)
            labels = ids.clone()
            labels[mask == 0] = -100
            for row, i in enumerate(batch):
                labels[row, : examples[i].prompt_len] = -100
            offset = min(examples[i].prompt_len for i in batch) - 1  # see _token_logps
            with self.autocast():
                logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=ids.shape[1] - offset).logits
            shift_logits, shift_labels = logits[:, :-1], labels[:, offset + 1:]
            keep = shift_labels != -100
            loss = torch.nn.functional.cross_entropy(shift_logits[keep].float(), shift_labels[keep])
            return loss, int(mask.sum()), {}, int(keep.sum())

        result = self._loop("train_sft", model, plan, out, step_fn, emit, should_stop)
        result.update(examples=len(examples), precision=self.precision, device=self.device, base=str(base),
                      padding_share=plan.padding_share())
        self._finish(model, out, result)
        return result

    # --- DPO -------------------------------------------------------------------------------
    def dpo(self, run: Run, emit: Callback, should_stop=lambda: False) -> dict:
        import torch
        import torch.nn.functional as F
        from peft import PeftModel
        from safetensors.torch import load_file, save_file

        tc = self.cfg.train
        sft_dir = run.adapter_dir("sft")
        if not (sft_dir / "adapter_config.json").exists():
            raise UserError(f"{run.root} has no SFT adapter yet; run: valign train {run.root}")
        base = self.base_dir(emit)
        tok = self.load_tokenizer(base)
        plan = trainplan.plan(run, self.cfg, "dpo", tok, self.name, self.precision)
        pairs, key = plan.items, plan.key
        torch.manual_seed(self.cfg.seed)
        # The policy continues the SFT adapter, so the final adapter applies to the original base
        # (usable as a GGUF LoRA over the base GGUF); at step 0 it *is* the SFT model, the reference.
        model = self.group.wrap(PeftModel.from_pretrained(self.load_base(base), str(sft_dir), is_trainable=True),
                                self.device)
        out = run.adapter_dir("dpo")
        if self.group.is_main:
            out.mkdir(parents=True, exist_ok=True)

        def logps(batch: list[int]):
            seqs, starts, ends = [], [], []
            for i in batch:
                p = pairs[i]
                for reply in (p.chosen, p.rejected):
                    seqs.append(p.prompt + reply)
                    starts.append(len(p.prompt))
                    ends.append(len(p.prompt) + len(reply))
            ids, mask = self._pad(seqs, tok.pad_token_id)
            sums, counts = self._token_logps(model, ids, mask, starts, ends)
            return sums.view(-1, 2), int(mask.sum())

        ref, cached = torch.zeros(len(pairs), 2), cached_reference(out, key)

        def save_ref(path: Path) -> None:  # ``ref`` as it is when called
            save_file({"logps": ref.contiguous()}, str(path))

        # Rank 0 decides; each process fills its rows (rank 0 all of them from the file), the sum is the whole.
        if self.group.agree(cached is not None):
            ref = self.group.sum_tensor(load_file(str(cached))["logps"] if self.group.is_main else ref)
        else:
            model.eval()
            chunks = reference_chunks(len(pairs))
            rp = Progress(emit, "dpo_reference", len(pairs), "pairs")
            with torch.no_grad():
                for idx, real in self.group.passes(self.group.shard(chunks), chunks[0]):
                    values = logps(idx)[0].float().cpu()
                    if real:
                        ref[idx] = values
                        rp.update(min(len(idx) * self.group.world, rp.total - rp.done))
            ref = self.group.sum_tensor(ref)
            if self.group.is_main:
                save_reference(out, save_ref, key)
        log(emit, "train_dpo", f"{len(pairs)} pairs, {plan.steps} steps, beta={tc.dpo_beta}, reference log-probs "
                               f"precomputed (no second model)")
        beta = tc.dpo_beta

        def step_fn(batch: list[int]):
            policy, n_tokens = logps(batch)
            reference = ref[batch].to(policy.device)
            lengths = (torch.tensor([len(pairs[i].chosen) for i in batch], device=policy.device)
                       if tc.dpo_sft_weight else None)
            loss, margin = dpo_loss(policy, reference, beta, F.logsigmoid, tc.dpo_sft_weight, lengths)
            accuracy = (margin > 0).float().mean().item()
            return loss, n_tokens, {"reward_accuracy": accuracy, "margin": beta * margin.mean().item()}, len(batch)

        result = self._loop("train_dpo", model, plan, out, step_fn, emit, should_stop)
        result.update(pairs=len(pairs), beta=beta, precision=self.precision, device=self.device, base=str(base))
        self._finish(model, out, result)
        if self.group.is_main:  # ``_finish`` replaced the folder: keep the reference log-probs beside the adapter
            save_reference(out, save_ref)
        return result

    # --- merge ------------------------------------------------------------------------------
    def merge(self, run: Run, stage: str, out_dir: Path, emit: Callback) -> Path:
        """Base + adapter merged into a safetensors folder with the tokenizer (and its chat template)."""
        from peft import PeftModel

        base = self.base_dir(emit)
        model = PeftModel.from_pretrained(self.load_base(base), str(run.adapter_dir(stage))).merge_and_unload()
        tok = self.load_tokenizer(base)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        return out_dir

    def peft_adapter(self, run: Run, stage: str) -> Path | None:
        folder = run.adapter_dir(stage)
        return folder if (folder / "adapter_model.safetensors").exists() else None

    def greedy(self, model_dir: Path, prompts: list[list[int]], n_tokens: int) -> list[list[int]]:
        """Greedy continuations from a merged folder, the reference the GGUF must reproduce."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        eos = AutoTokenizer.from_pretrained(str(model_dir)).eos_token_id
        outs = []
        with torch.no_grad():
            for ids in prompts:
                gen = model.generate(torch.tensor([ids]), max_new_tokens=n_tokens, do_sample=False,
                                     eos_token_id=eos, pad_token_id=eos)[0, len(ids):].tolist()
                outs.append([t for t in gen][: n_tokens] if eos not in gen else gen[: gen.index(eos)])
        return outs
