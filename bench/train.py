"""Benchmark the torch backend's SFT and DPO against trl + peft with default settings.

Same model (SmolLM2-135M), data (a generated UDHR run), LoRA rank (16, all 7 projections),
batch (4 x 256 tokens; ours packs the same token budget into length-bucketed batches),
fp32 on the CPU. Each configuration runs in its own process so peak RSS is its own.
Throughput counts non-padding tokens only.

    .venv/bin/python bench/train.py [--run runs/udhr] [--steps 20]

``--parallel`` (issue 12) instead runs ``valign train`` itself on the run's data in fresh run folders:
1 process against 2 data-parallel processes (gloo) with the same cores (1 x 2 threads, 2 x 1 thread),
and fp32 against bf16 autocast (AMX, and AVX512_BF16 alone: oneDNN limited to AVX512_CORE_BF16 through
ONEDNN_MAX_CPU_ISA, the path a CPU with AVX512_BF16 but no AMX takes), each as its own command.

    .venv/bin/python bench/train.py --parallel --run RUN [--steps 6] [--json out.json]
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
    from valign_edge.files import write_jsonl
    from valign_edge.runs.workspace import Run

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


PARALLEL = [  # (label, processes, threads per process, precision, extra environment)
    ("1 process fp32", 1, 2, "fp32", {}),
    ("2 processes fp32", 2, 1, "fp32", {}),
    ("1 process bf16 (AMX)", 1, 2, "bf16", {}),
    ("1 process bf16 (AVX512_BF16, no AMX)", 1, 2, "bf16", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}),
    ("2 processes bf16 (AMX)", 2, 1, "bf16", {}),
]


def cpu_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx512_vnni"))]
    cores = len([x for x in info.splitlines() if x.startswith("processor")])
    return f"{model}, {cores} cores, flags: {' '.join(wanted)}"


def parallel(run_dir: Path, steps: int) -> dict:
    """``valign train`` per configuration on a copy of the run's training data; figures from its manifest."""
    import os
    import shutil

    out = {"cpu": cpu_line(), "steps": steps, "configs": {}}
    for label, processes, threads, precision, env in PARALLEL:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            shutil.copytree(run_dir / "data", run / "data")
            (run / "manifest.json").write_text(json.dumps({"format": json.loads(
                (run_dir / "manifest.json").read_text())["format"], "stages": {}, "files": []}))
            load = os.getloadavg()[0]
            flags = ["--set", f"train.max_steps={steps}", "--set", "train.sft_epochs=100", "--set",
                     "train.dpo_epochs=100", "--set", f"train.threads={threads}", "--set",
                     f"train.precision={precision}", "--set", "train.batch_tokens=512", "--set", "train.warmup_steps=0"]
            proc = subprocess.run([sys.executable, "-m", "valign_edge.cli", "train", str(run), "--processes",
                                   str(processes), *flags], capture_output=True, text=True,
                                  env=dict(os.environ, TOKENIZERS_PARALLELISM="false", **env))
            if proc.returncode:
                raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
            stages = json.loads((run / "manifest.json").read_text())["stages"]
            row = {"load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1)}
            for stage in ("sft", "dpo"):
                info = stages[f"train_{stage}"]
                history = json.loads((run / "adapters" / stage / "training.json").read_text())["history"]
                row[stage] = {"tokens_per_s": round(info["tokens"] / info["seconds"], 1),
                              "precision": info["precision"],
                              "peak_rss_mb_per_process": info["peak_rss_mb_per_process"],
                              "losses": [h["loss"] for h in history]}
        out["configs"][label] = row
        print(f"{label:40} " + "  ".join(f"{s} {row[s]['tokens_per_s']:7.1f} tok/s RSS "
                                          f"{row[s]['peak_rss_mb_per_process']} MB" for s in ("sft", "dpo"))
              + f"  (load {row['load_before']})", flush=True)
    base = out["configs"]["1 process fp32"]
    for label, row in out["configs"].items():
        for stage in ("sft", "dpo"):
            ref, ours = base[stage]["losses"], row[stage]["losses"]
            row[stage]["speed_vs_1p_fp32"] = round(row[stage]["tokens_per_s"] / base[stage]["tokens_per_s"], 2)
            row[stage]["loss_rel_diff_max"] = round(max(abs(a - b) / abs(b) for a, b in zip(ours, ref)), 4)
        print(f"{label:40} " + "  ".join(f"{s} x{row[s]['speed_vs_1p_fp32']:.2f} loss diff <= "
                                          f"{row[s]['loss_rel_diff_max']:.4f}" for s in ("sft", "dpo")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "udhr", help="a run folder with generated data")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--one", nargs=2, metavar=("KIND", "STAGE"), help=argparse.SUPPRESS)
    ap.add_argument("--json")
    ap.add_argument("--parallel", action="store_true", help="1 vs 2 processes, fp32 vs bf16 (valign train)")
    args = ap.parse_args()
    if args.one:
        return one(*args.one, args.run, args.steps)
    if args.parallel:
        result = parallel(args.run, args.steps)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
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
