"""Benchmark the torch backend's SFT and DPO against trl + peft with default settings.

Same model (SmolLM2-135M), data (a generated UDHR run), LoRA rank (16, all 7 projections),
batch (4 x 256 tokens; ours packs the same token budget into length-bucketed batches),
fp32 on the CPU. Each configuration runs in its own process so peak RSS is its own.
Throughput counts non-padding tokens only.

    .venv/bin/python bench/train.py [--run runs/udhr] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from isolated import measure, report  # noqa: E402  (bench/, beside this script)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows(run: Path, kind: str) -> list[dict]:
    return [json.loads(line) for line in (run / "data" / kind / "train.jsonl").read_text().splitlines() if line]


def ours(stage: str, run_dir: Path, steps: int, micro_batch_tokens: int | None = None) -> dict:
    import torch

    from valign_edge.backends.torch_trainer import TorchTrainer
    from valign_edge.config import RunConfig
    from valign_edge.workspace import Run, write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        run = Run.open(Path(tmp) / "run")
        for kind in ("sft", "dpo"):
            write_jsonl(run.split_path(kind, "train"), rows(run_dir, kind))
        cfg = RunConfig()
        cfg.train.lora_rank, cfg.train.lora_alpha, cfg.train.max_seq_len = 16, 32.0, 256
        cfg.train.batch_tokens, cfg.train.max_steps = 1024, steps
        cfg.train.sft_epochs = cfg.train.dpo_epochs = 100.0
        cfg.train.threads = torch.get_num_threads()  # trl's count, not the load-based choice
        if micro_batch_tokens is not None:
            cfg.train.micro_batch_tokens = micro_batch_tokens
        trainer = TorchTrainer(cfg, "cpu")
        if stage == "dpo":
            cfg.train.max_steps = 1
            trainer.sft(run, lambda e: None)
            cfg.train.max_steps = steps
        t0 = time.perf_counter()
        result = (trainer.sft if stage == "sft" else trainer.dpo)(run, lambda e: None)
        total = time.perf_counter() - t0
    return {"tokens_per_s": result["tokens"] / result["seconds"], "train_s": result["seconds"],
            "stage_s_including_setup": total, "precision": result["precision"]}


def reference(stage: str, run_dir: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from valign_edge.backends.hf import student_hf_dir
    from valign_edge.models import resolve

    base = student_hf_dir(resolve("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"], task_type="CAUSAL_LM")
    common = dict(per_device_train_batch_size=4, max_steps=steps, learning_rate=2e-4, report_to=[],
                  logging_steps=1, save_strategy="no", use_cpu=True, bf16=False, fp16=False)
    data = rows(run_dir, stage)
    with tempfile.TemporaryDirectory() as out:
        if stage == "sft":
            from trl import SFTConfig, SFTTrainer

            ds = Dataset.from_list([{"messages": r["messages"]} for r in data])
            trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=out, max_length=256, **common),
                                 train_dataset=ds, processing_class=tok, peft_config=lora)
            lengths = [min(256, len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False)))
                       for r in data]
        else:
            from trl import DPOConfig, DPOTrainer

            ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                     "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                     "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in data])
            trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=out, max_length=256, **common),
                                 train_dataset=ds, processing_class=tok, peft_config=lora)
            lengths = []
            for r in data:
                p = len(tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=True,
                                                add_generation_prompt=True, return_dict=False))
                for reply in (r["chosen"], r["rejected"]):
                    lengths.append(min(256, p + len(tok.encode(reply)) + 2))
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    seen = 4 * steps * (2 if stage == "dpo" else 1)
    tokens = sum(lengths) / len(lengths) * seen  # average non-padding length x sequences seen
    return {"tokens_per_s": tokens / seconds, "train_s": seconds, "precision": "fp32"}


def one(kind: str, stage: str, run_dir: Path, steps: int) -> None:
    if kind == "valign-1pass":  # the same trainer without micro-batching: what accumulation saves
        result = ours(stage, run_dir, steps, micro_batch_tokens=0)
    else:
        result = (ours if kind == "valign" else reference)(stage, run_dir, steps)
    result["peak_rss_mb"] = peak_rss_mb()
    report(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "udhr", help="a run folder with generated data")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--one", nargs=2, metavar=("KIND", "STAGE"), help=argparse.SUPPRESS)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.one:
        return one(*args.one, args.run, args.steps)
    if not (args.run / "data" / "sft" / "train.jsonl").exists():
        print(f"generating UDHR data into {args.run} first", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "valign_edge.cli", "generate", str(ROOT.parent / "shared" / "data" /
                        "udhr.txt"), "--out", str(args.run)], check=True)
    results = {}
    for stage in ("sft", "dpo"):
        for kind in ("trl", "valign", "valign-1pass"):
            r = results[f"{kind}_{stage}"] = measure(__file__, kind, stage, args.run, args.steps)
            print(f"{stage:4} {kind:12} {r['tokens_per_s']:8.1f} tok/s  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                  f"({r['precision']})", flush=True)
    for stage in ("sft", "dpo"):
        ratio = results[f"valign_{stage}"]["tokens_per_s"] / results[f"trl_{stage}"]["tokens_per_s"]
        print(f"{stage}: valign / trl = {ratio:.2f}x tokens/s")
    print(f"DPO peak RSS / SFT peak RSS (valign) = "
          f"{results['valign_dpo']['peak_rss_mb'] / results['valign_sft']['peak_rss_mb']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
