"""Benchmark the MLX backend's SFT and DPO against the torch CPU backend and ``mlx_lm.lora``.

Same model (SmolLM2-135M, fp32), data, LoRA (rank 16, alpha 32, all 7 projections), sequence
limit (256) and token budget per step (1024) everywhere; each configuration runs in its own
process so its peak memory is its own, and with one BLAS thread so that figures from a shared
machine still compare (tokens per CPU-second are reported beside tokens per second).

- ``mlx``:   this project's MLX backend (``mlx_lm.tuner.train`` with our batches and losses).
- ``torch``: this project's torch backend on the CPU.
- ``mlx_lm``: ``mlx_lm.lora``'s own training (``train_model``: its dataset, batching, default
  loss with ``mask_prompt``) at the batch size that gives the same tokens per step on average:
  the reference the MLX backend's SFT must at least match.

Throughput counts non-padding tokens (prompt + reply) of the sequences each step trained on.
"warm" excludes the first two steps (tracing, first-time allocations). On a Linux CPU all MLX
runs load OpenBLAS first (``valign_edge.backends.mlx_blas``).

    .venv/bin/python bench/train_mlx.py [--run runs/udhr] [--steps 12] [--json out.json]

Without generated data in ``--run``, a deterministic UDHR question/answer set is built from
``../shared/data/udhr.txt`` (no teacher needed; only lengths matter for speed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from isolated import measure, report  # noqa: E402  (bench/, beside this script)

RANK, ALPHA, MAX_LEN, BATCH_TOKENS, WARM = 16, 32.0, 256, 1024, 2


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def udhr_rows() -> dict[str, list[dict]]:
    """SFT and DPO rows from the UDHR's articles: realistic lengths, no teacher."""
    text = (ROOT.parent / "shared" / "data" / "udhr.txt").read_text(encoding="utf-8")
    articles = re.findall(r"^Article (\d+)\n(.+?)(?=^Article \d+\n|\Z)", text, flags=re.M | re.S)
    sft, dpo = [], []
    for number, body in articles:
        sentences = [s.strip() for s in re.split(r"(?<=[.;])\s+", " ".join(body.split())) if s.strip()]
        answer = " ".join(sentences[:2])
        for question in (f"What does Article {number} of the Universal Declaration of Human Rights say?",
                         f"Summarise Article {number} of the Declaration.",
                         f"Which right or duty does Article {number} set out?"):
            sft.append({"messages": [{"role": "user", "content": question},
                                     {"role": "assistant", "content": answer}], "meta": {"article": number}})
        dpo.append({"prompt": f"Does Article {number} of the Declaration matter in daily life?",
                    "chosen": answer, "rejected": "No. " + sentences[0].replace(" has ", " has no ")
                    .replace(" shall ", " shall not "), "meta": {"article": number}})
    return {"sft": sft, "dpo": dpo}


def load_rows(run_dir: Path) -> tuple[dict[str, list[dict]], str]:
    if (run_dir / "data" / "sft" / "train.jsonl").exists() and (run_dir / "data" / "dpo" / "train.jsonl").exists():
        rows = {k: [json.loads(x) for x in (run_dir / "data" / k / "train.jsonl").read_text().splitlines() if x]
                for k in ("sft", "dpo")}
        return rows, str(run_dir)
    return udhr_rows(), "UDHR articles (deterministic, built from shared/data/udhr.txt)"


def config(steps: int, backend: str):
    from valign_edge.config import RunConfig

    cfg = RunConfig()
    tc = cfg.train
    tc.backend, tc.threads, tc.precision = backend, 1, "fp32"
    tc.lora_rank, tc.lora_alpha, tc.max_seq_len, tc.batch_tokens = RANK, ALPHA, MAX_LEN, BATCH_TOKENS
    tc.max_steps, tc.sft_epochs, tc.dpo_epochs = steps, 100.0, 100.0
    return cfg


def plan_tokens(stage: str, rows: dict, steps: int, seed: int = 0) -> list[int]:
    """Non-padding tokens of each step's batch: both backends use the same plan."""
    from transformers import AutoTokenizer

    from valign_edge.backends.hf import student_hf_dir
    from valign_edge.models import resolve
    from valign_edge.training import batching

    tok = AutoTokenizer.from_pretrained(str(student_hf_dir(resolve("smollm2-135m-instruct"))))
    if stage == "sft":
        lengths = [len(e) for e in batching.encode_sft(tok, rows["sft"], MAX_LEN)]
        batches = batching.step_batches(lengths, BATCH_TOKENS, seed, steps)
        return [sum(lengths[i] for i in b) for b in batches]
    pairs = batching.encode_dpo(tok, rows["dpo"], MAX_LEN)
    lengths = [2 * len(p) for p in pairs]
    batches = batching.step_batches(lengths, BATCH_TOKENS, seed + 1, steps)
    return [sum(len(pairs[i].prompt) * 2 + len(pairs[i].chosen) + len(pairs[i].rejected) for i in b)
            for b in batches]


class Clock:
    """Wall and CPU time at each finished step."""

    def __init__(self):
        self.marks = [(time.perf_counter(), time.process_time())]

    def step(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def summary(self, tokens: list[int]) -> dict:
        n = len(self.marks) - 1
        tokens = tokens[:n]
        (w0, c0), (w1, c1) = self.marks[0], self.marks[-1]
        out = {"steps": n, "tokens": sum(tokens), "train_s": round(w1 - w0, 2), "cpu_s": round(c1 - c0, 2),
               "tokens_per_s": round(sum(tokens) / (w1 - w0), 1), "tokens_per_cpu_s": round(sum(tokens) / (c1 - c0), 1)}
        if n > WARM + 1:
            (ww, cw) = self.marks[WARM]
            warm = sum(tokens[WARM:])
            out.update(warm_tokens_per_s=round(warm / (w1 - ww), 1), warm_tokens_per_cpu_s=round(warm / (c1 - cw), 1))
        return out


def ours(backend: str, stage: str, rows: dict, steps: int) -> dict:
    from valign_edge.files import write_jsonl
    from valign_edge.runs.workspace import Run

    cfg = config(steps, backend)
    if backend == "mlx":
        from valign_edge.backends.mlx_trainer import MLXTrainer

        trainer = MLXTrainer(cfg, "cpu")
    else:
        from valign_edge.backends.torch_trainer import TorchTrainer

        trainer = TorchTrainer(cfg, "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        run = Run.open(Path(tmp) / "run")
        for kind in ("sft", "dpo"):
            write_jsonl(run.split_path(kind, "train"), rows[kind])
        if stage == "dpo":
            cfg.train.max_steps = 1
            trainer.sft(run, lambda e: None)
            cfg.train.max_steps = steps
        clock = Clock()

        def emit(event):
            if event.kind == "metric":
                clock.step()
            elif event.kind == "progress" and event.stage.startswith("train_") and event.done == 0:
                clock.marks[0] = (time.perf_counter(), time.process_time())  # the loop starts

        result = (trainer.sft if stage == "sft" else trainer.dpo)(run, emit)
    out = clock.summary(plan_tokens(stage, rows, steps))
    out.update(final_loss=result["final_loss"], precision=result["precision"])
    if backend == "mlx":
        out.update(peak_memory_mb=result["peak_memory_mb"], blas=result["blas"], blas_core=result["blas_core"])
    return out


def mlx_lm_reference(rows: dict, steps: int) -> dict:
    """``mlx_lm.lora``'s SFT (``train_model``) on the same model, data and LoRA settings."""
    from valign_edge.backends import mlx_blas

    blas = mlx_blas.enable(1)
    import mlx.core as mx
    from mlx_lm import lora
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.utils import load_model, load_tokenizer
    from transformers import AutoTokenizer

    from valign_edge.backends.hf import model_config_overrides, student_hf_dir
    from valign_edge.models import resolve
    from valign_edge.training import batching

    base = student_hf_dir(resolve("smollm2-135m-instruct"))
    model, _ = load_model(base, model_config=model_config_overrides(json.loads((base / "config.json").read_text())))
    tokenizer = load_tokenizer(base)
    # the batch size that puts the same tokens in a step as our 1024-token buckets, on average
    hf_tok = AutoTokenizer.from_pretrained(str(base))
    lengths = [len(e) for e in batching.encode_sft(hf_tok, rows["sft"], MAX_LEN)]
    plan = batching.step_batches(lengths, BATCH_TOKENS, 0, steps)
    batch_size = max(1, round(sum(len(b) for b in plan) / len(plan)))
    counted = {"tokens": 0}

    class Counting(CacheDataset):
        """Counts the tokens of every sequence the trainer fetches (``train_model`` wraps its sets)."""

        def __getitem__(self, idx):
            item = super().__getitem__(idx)
            counted["tokens"] += min(len(item[0]), MAX_LEN)
            return item

    lora.CacheDataset = Counting
    train_set = ChatDataset(rows["sft"], tokenizer, chat_key="messages", mask_prompt=True)
    clock, per_step = Clock(), []

    class Report(TrainingCallback):
        def on_train_loss_report(self, info):
            clock.step()
            per_step.append(counted["tokens"] - sum(per_step))

    args = dict(lora.CONFIG_DEFAULTS)
    with tempfile.TemporaryDirectory() as tmp:
        args.update(model=str(base), train=True, num_layers=len(model.layers), batch_size=batch_size, iters=steps,
                    learning_rate=2e-4, steps_per_report=1, steps_per_eval=10 ** 9, save_every=10 ** 9,
                    max_seq_length=MAX_LEN, adapter_path=tmp, mask_prompt=True, data="(in memory)",
                    lora_parameters={"rank": RANK, "scale": ALPHA / RANK, "dropout": 0.0})
        mx.reset_peak_memory()
        clock.marks[0] = (time.perf_counter(), time.process_time())
        lora.train_model(argparse.Namespace(**args), model, train_set, [], Report())
    out = clock.summary(per_step)
    out.update(batch_size=batch_size, precision="fp32", peak_memory_mb=round(mx.get_peak_memory() / 1e6),
               blas=blas["blas"], blas_core=blas.get("core"))
    return out


def one(kind: str, stage: str, run_dir: Path, steps: int) -> None:
    if kind in ("mlx", "mlx_lm"):
        from valign_edge.backends import mlx_blas

        mlx_blas.enable(1)  # before anything imports mlx
    rows, _ = load_rows(run_dir)
    result = mlx_lm_reference(rows, steps) if kind == "mlx_lm" else ours(kind, stage, rows, steps)
    result["peak_rss_mb"] = round(peak_rss_mb())
    report(result)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, load average {load:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "udhr", help="a run folder with generated data")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--only", nargs="*", help="configurations to run, e.g. mlx_sft mlx_lm_sft")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "STAGE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.one:
        return one(*args.one, args.run, args.steps)
    rows, source = load_rows(args.run)
    print(f"machine: {machine()}\ndata: {source} ({len(rows['sft'])} SFT rows, {len(rows['dpo'])} DPO pairs)\n"
          f"settings: SmolLM2-135M fp32, LoRA r={RANK} alpha={ALPHA:g} on 7 projections, max_seq_len {MAX_LEN}, "
          f"{BATCH_TOKENS} tokens per step, {args.steps} steps, 1 BLAS thread", flush=True)
    configs = [("mlx", "sft"), ("mlx_lm", "sft"), ("torch", "sft"), ("mlx", "dpo"), ("torch", "dpo")]
    results = {"machine": machine(), "data": source, "steps": args.steps}
    for kind, stage in configs:
        name = f"{kind}_{stage}"
        if args.only and name not in args.only:
            continue
        r = results[name] = measure(__file__, kind, stage, args.run, args.steps)
        if args.json:  # after each configuration: a long run that fails later keeps what it measured
            args.json.write_text(json.dumps(results, indent=2))
        print(f"{stage:4} {kind:7} {r['tokens_per_s']:7.1f} tok/s ({r.get('warm_tokens_per_s', '-')} warm), "
              f"{r['tokens_per_cpu_s']:7.1f} tok/CPU-s ({r.get('warm_tokens_per_cpu_s', '-')} warm), "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB" + (f", MLX peak {r['peak_memory_mb']} MB"
                                                         if "peak_memory_mb" in r else ""), flush=True)
    for a, b in (("mlx_sft", "mlx_lm_sft"), ("mlx_sft", "torch_sft"), ("mlx_dpo", "torch_dpo")):
        if a in results and b in results:
            for metric in ("tokens_per_s", "tokens_per_cpu_s", "warm_tokens_per_cpu_s"):
                if metric in results[a] and metric in results[b]:
                    print(f"{a} / {b} ({metric}) = {results[a][metric] / results[b][metric]:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
