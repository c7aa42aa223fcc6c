"""``valign export``: merge -> GGUF F16 (llama.cpp's converter) -> quantize -> verify -> Modelfile.

Writes into ``RUN/export/``: ``model-<quant>.gguf`` (SFT+DPO merged: the model to chat with),
``adapter.gguf`` (the SFT+DPO LoRA, usable over the base GGUF), ``adapter-sft.gguf`` and
``base-<quant>.gguf`` (the baselines evaluation compares against), ``Modelfile`` (Ollama)
and ``verify.json`` (greedy tokens of the GGUF against the merged model).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from valign_edge import models
from valign_edge.backends import Trainer, choose_backend, load_trainer
from valign_edge.backends.llama_cpp import greedy_tokens as gguf_greedy
from valign_edge.backends.llama_cpp import quantize_gguf
from valign_edge.config import CHOICES, RunConfig
from valign_edge.errors import UserError
from valign_edge.events import Callback, Event, Progress, log
from valign_edge.files import atomic_write_text, note_written, read_jsonl, temp_path, write_json
from valign_edge.generation import datasets
from valign_edge.runs.workspace import Run, hash_obj
from valign_edge.training.batching import is_fallback_template
from valign_edge.training.plan import TRAINING_STAGES, adapter_hash

LLAMA_CPP_VERSION = "0.3.36"


def converters_dir() -> Path:
    path = models.CACHE_DIR / f"llama.cpp-{LLAMA_CPP_VERSION}"
    if not (path / "convert_hf_to_gguf.py").exists():
        raise UserError(f"llama.cpp's GGUF converters are missing from {path}; run: make setup")
    return path


def run_converter(script: str, args: list[str], log_path: Path) -> None:
    cmd = [sys.executable, str(converters_dir() / script), *args]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    note_written(log_path)
    with open(log_path, "a", encoding="utf-8") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or ["?"]
        if "not supported" in tail[0].lower() or "NotImplementedError" in tail[0]:
            raise UserError(f"llama.cpp's converter does not support this architecture: {tail[0]}")
        raise UserError(f"{script} failed: {tail[0]} (log: {log_path})")


def quantize(src: Path, dst: Path, quant: str) -> None:
    tmp = temp_path(dst)  # a killed write must not leave a cut-off model under the final name
    note_written(dst)
    if quant == "f16":
        shutil.copyfile(src, tmp)
    else:
        quantize_gguf(src, tmp, quant)
    tmp.replace(dst)


# A greedy choice the reference model makes by less than this (logit of its token minus the GGUF's
# token's, at the first token where they part) is a near tie: F16 rounding of the weights moves logits by
# up to ~0.2 (measured on gemma3-270m, bench/RESULTS.md), so such a flip is not a conversion error.
NEAR_TIE = 0.3


def near_ties(reference: list[list[int]], out: list[list[int]], prompts: list[list[int]], eos: int,
              gap) -> list[dict]:
    """Where ``out`` first parts from ``reference``, for each prompt that differs: the position, the two
    tokens and ``gap(ids, a, b)`` (the reference model's logit of ``a`` minus that of ``b`` after ``ids``)."""
    found = []
    for i, (x, y) in enumerate(zip(reference, out)):
        if x == y:
            continue
        k = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        a, b = (x[k] if k < len(x) else eos), (y[k] if k < len(y) else eos)
        found.append({"prompt": i, "position": k, "gap": round(float(gap(prompts[i] + x[:k], a, b)), 4)})
    return found


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """How far greedy outputs ``b`` reproduce ``a``. Two empty outputs prove nothing, so they are not
    an exact match (a model that answers nothing fails verification instead of passing it)."""
    exact = sum(x == y and len(x) > 0 for x, y in zip(a, b))
    prefix = []
    for x, y in zip(a, b):
        n = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        prefix.append(n / max(1, max(len(x), len(y))))
    return {"exact": exact, "prompts": len(a), "token_agreement": round(sum(prefix) / max(1, len(prefix)), 4),
            "empty": sum(not x or not y for x, y in zip(a, b))}


def modelfile(gguf_name: str, chat_template: str | None) -> str:
    lines = [f"FROM ./{gguf_name}"]
    if chat_template and "<|im_start|>" in chat_template:
        lines += ['TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}', '{{ .Content }}<|im_end|>',
                  '{{ end }}<|im_start|>assistant', '"""', 'PARAMETER stop "<|im_end|>"']
    elif is_fallback_template(chat_template):  # a base student: Ollama has no template of its own for it
        lines += ['TEMPLATE """{{- range .Messages }}{{- if eq .Role "user" }}Question: {{ .Content }}',
                  '{{ else if eq .Role "assistant" }}Answer: {{ .Content }}',
                  '{{ else }}{{ .Content }}', '{{ end }}{{- end }}Answer:"""', 'PARAMETER stop "Question:"']
    else:
        lines.append("# The chat template is read from the GGUF's metadata.")
    lines.append("PARAMETER temperature 0.3")
    return "\n".join(lines) + "\n"


def folder_template(folder: Path) -> str | None:
    """The chat template llama.cpp's converter writes into a GGUF made from an HF folder (it reads
    ``tokenizer_config.json``'s ``chat_template`` first, else ``chat_template.jinja`` / ``.json``)."""
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.exists() else None
    if template is None and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif template is None and (folder / "chat_template.json").exists():
        template = json.loads((folder / "chat_template.json").read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) and template else None


def base_source(base_dir: Path, template: str | None, view: Path) -> Path:
    """The folder the base GGUF is converted from. A base student without a chat template (or with
    another one) is trained under ``template`` (``batching.FALLBACK_CHAT_TEMPLATE``), which the aligned
    GGUF carries: the baseline gets it too, through ``view`` (the weights linked, not copied), so
    vanilla and aligned answer in the same prompt format in chat and evaluation."""
    if not template or folder_template(base_dir) == template:
        return base_dir
    view.mkdir(parents=True)
    for item in base_dir.iterdir():
        if item.name in ("tokenizer_config.json", "chat_template.json", "chat_template.jinja"):
            continue
        try:
            os.symlink(item.resolve(), view / item.name)
        except OSError:  # no symlinks on this filesystem
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, view / item.name)
    if (base_dir / "tokenizer_config.json").exists():
        config = json.loads((base_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        config.pop("chat_template", None)
        (view / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (view / "chat_template.jinja").write_text(template, encoding="utf-8")
    return view


def _check_disk(run: Run, base_dir: Path, quant: str) -> None:
    weights = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    # merged fp32 folder (temporary) + F16 (temporary) + quantized model + quantized base + adapters
    need = int(weights * (1 + 0.5 + 2 * (0.5 if quant == "f16" else 0.3)) + 64e6)
    free = shutil.disk_usage(run.root).free
    if free < need:
        raise UserError(f"not enough disk space for the export: need about {need / 1e9:.1f} GB in {run.root}, "
                        f"{free / 1e9:.1f} GB free")


def export(run: Run, cfg: RunConfig, emit: Callback) -> dict:
    quant = cfg.export.quant
    if quant not in CHOICES["export.quant"]:
        raise UserError(f"unknown quantization {quant!r} (known: {', '.join(CHOICES['export.quant'])})")
    for stage in ("sft", "dpo"):
        if not (run.adapter_dir(stage) / "training.json").exists():
            raise UserError(f"{run.root} has no trained {stage.upper()} adapter; run: valign train {run.root}")
    choice = choose_backend(cfg.train.backend, cfg.train.device)
    trainer = load_trainer(choice, cfg)
    base_dir = trainer.base_dir(emit)
    adapters = [adapter_hash(run.adapter_dir(stage)) for stage in TRAINING_STAGES]
    key = [adapters, vars(cfg.export), cfg.student, choice.name]
    if folder_template(base_dir) is None:  # a base student: both GGUFs carry the fallback template (with BOS)
        from valign_edge.training.batching import FALLBACK_CHAT_TEMPLATE

        key.append(FALLBACK_CHAT_TEMPLATE)
    key = hash_obj(key)
    out = run.export_dir
    model_path = out / f"model-{quant}.gguf"
    if run.is_done("export", key) and model_path.exists() and (out / "verify.json").exists():
        log(emit, "export", "export: up to date, skipped")
        verify = json.loads((out / "verify.json").read_text())
        _write_retrieval(run, cfg)
        return {"model": str(model_path), "verified": verify["passed"]}
    _check_disk(run, base_dir, quant)
    emit(Event("stage", "export", f"merging adapters and converting to GGUF ({quant})"))
    work = run.root / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logs = run.root / "logs" / "export.log"
    source = models.resolve(cfg.student, "student")
    meta = {"general.name": f"{source.name}-valign", "general.finetune": "valign-edge SFT+DPO"}
    if source.preset.get("license"):
        meta["general.license"] = source.preset["license"]
    (work / "metadata.json").write_text(json.dumps(meta))
    progress = Progress(emit, "export", 7, "steps")
    with run.stage("export", key) as result, contextlib.ExitStack() as cleanup:
        # work/ holds the merged model and F16 GGUFs, several times the model's size: never leave it
        # behind on a failure (a full disk would stay full).
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        merged = trainer.merge(run, "dpo", work / "merged", emit)
        progress.update(1, "merged")
        f16 = work / "model-f16.gguf"
        run_converter("convert_hf_to_gguf.py", [str(merged), "--outfile", str(f16), "--outtype", "f16",
                                                "--metadata", str(work / "metadata.json")], logs)
        progress.update(1, "converted")
        out.mkdir(parents=True, exist_ok=True)
        quantize(f16, model_path, quant)
        progress.update(1, "quantized")
        base_f16 = work / "base-f16.gguf"
        template = folder_template(merged)
        run_converter("convert_hf_to_gguf.py", [str(base_source(base_dir, template, work / "base-view")),
                                                "--outfile", str(base_f16), "--outtype", "f16"], logs)
        quantize(base_f16, out / f"base-{quant}.gguf", quant)
        progress.update(1, "base converted")
        for stage, name in (("dpo", "adapter.gguf"), ("sft", "adapter-sft.gguf")):
            adapter_dir = trainer.peft_adapter(run, stage)
            if adapter_dir is not None:
                # Converted in work/ and moved into place whole: a kill mid-write leaves no cut-off GGUF.
                run_converter("convert_lora_to_gguf.py", [str(adapter_dir), "--base", str(base_dir), "--outfile",
                                                          str(work / name), "--outtype", "f16"], logs)
                note_written(out / name)
                os.replace(work / name, out / name)
        progress.update(1, "adapters converted")
        verify = _verify(run, trainer, merged, f16, model_path, quant, cfg)
        write_json(out / "verify.json", verify)
        progress.update(1, "verified")
        atomic_write_text(out / "Modelfile", modelfile(model_path.name, template))
        _write_retrieval(run, cfg)
        progress.update(1, "done")
        result.update(model=str(model_path), quant=quant, verified=verify["passed"],
                      size_mb=round(model_path.stat().st_size / 1e6, 1))
    shutil.rmtree(work, ignore_errors=True)
    return {"model": str(model_path), "verified": verify["passed"]}


def _write_retrieval(run: Run, cfg: RunConfig) -> None:
    """``export/retrieval.json``: the chunks and retriever, so the export folder alone serves chat --rag.
    It holds the document's text: ``valign purge`` deletes it unless asked to keep it."""
    from valign_edge.chat import RETRIEVAL_FILE, retrieval_record

    chunks = read_jsonl(run.chunks_path)
    if chunks:
        write_json(run.export_dir / RETRIEVAL_FILE, retrieval_record(chunks, cfg.eval.retriever, cfg.eval.rag_top_k,
                                                                     cfg.generate.passages))


def _verify(run: Run, trainer: Trainer, merged: Path, f16: Path, model_path: Path, quant: str, cfg: RunConfig) -> dict:
    """Greedy tokens of the GGUF files against the merged model on prompts from the test split."""
    from transformers import AutoTokenizer

    from valign_edge.training.batching import ensure_chat_template, prompt_ids

    tok = AutoTokenizer.from_pretrained(str(merged))
    ensure_chat_template(tok)
    rows = datasets.load(run, "sft", "test") or datasets.load(run, "sft", "train")
    questions = [r["messages"][0]["content"] for r in rows[: cfg.export.verify_prompts]]
    prompts = [prompt_ids(tok, q) for q in questions]
    n = cfg.export.verify_tokens
    reference = trainer.greedy(merged, prompts, n)
    f16_out = gguf_greedy(f16, prompts, n)
    f16_agree = agreement(reference, f16_out)
    report = {"prompts": questions, "tokens": n, "reference": trainer.name, "f16": f16_agree}
    if quant != "f16":
        report[quant] = agreement(reference, gguf_greedy(model_path, prompts, n))
    adapter = run.export_dir / "adapter.gguf"
    if adapter.exists():
        report["adapter_over_base"] = agreement(reference, gguf_greedy(f16.parent / "base-f16.gguf", prompts, n,
                                                                       lora=adapter))
    report["answers"] = [tok.decode(t) for t in reference]
    if f16_agree["exact"] < f16_agree["prompts"] and importlib.util.find_spec("torch") is not None:
        from valign_edge.backends.hf import logit_gap

        report["f16_partings"] = near_ties(reference, f16_out, prompts, tok.eos_token_id,
                                           lambda ids, a, b: logit_gap(merged, ids, a, b))
    partings = {p["prompt"]: p for p in report.get("f16_partings", [])}
    report["passed"] = f16_agree["empty"] == 0 and all(
        x == y or (i in partings and partings[i]["gap"] <= NEAR_TIE)
        for i, (x, y) in enumerate(zip(reference, f16_out)))
    return report
