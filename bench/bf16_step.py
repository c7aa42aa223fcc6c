"""One LoRA forward+backward of SmolLM2-135M on 512 tokens, fp32 vs bf16 autocast, one thread (issue 12).

Run once per oneDNN ISA to compare AMX with AVX512_BF16 alone (what a CPU without AMX executes):

    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 .venv/bin/python bench/bf16_step.py
"""

from __future__ import annotations

import json
import os
import statistics
import time


def main() -> None:
    import torch
    from peft import get_peft_model

    from valign_edge.backends.torch_trainer import TorchTrainer
    from valign_edge.config import RunConfig

    cfg = RunConfig()
    cfg.train.threads = 1
    trainer = TorchTrainer(cfg, "cpu")
    base = trainer.base_dir(lambda e: None)
    torch.manual_seed(0)
    model = get_peft_model(trainer.load_base(base), trainer.lora_config())
    ids = torch.randint(0, 49152, (4, 128))
    out = {"isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or "default (AMX)"}
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(4):  # interleaved, so a change in the machine's load hits both
        for name in times:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16")
            t0 = time.perf_counter()
            with ctx:
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    for name, values in times.items():
        median = statistics.median(values[1:])  # the first pass of each warms up
        out[name] = {"median_s": round(median, 3), "tokens_per_s": round(512 / median, 1)}
    out["bf16_speedup"] = round(out["fp32"]["median_s"] / out["bf16"]["median_s"], 2)
    out["load"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
