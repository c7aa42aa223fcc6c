"""``valign <verb>``: a table of verbs, each importing its stage lazily.

Errors a user can cause end in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import Cancelled, UserError

EPILOG = """examples:
  valign run valign_edge/data/code_of_conduct.md --out runs/demo --preset quick
  valign generate policy.md --out runs/policy        # SFT + DPO data only
  valign train runs/policy && valign export runs/policy
  valign eval runs/policy --probe my-situations.jsonl   # a hand-written probe set
  valign chat runs/policy --prompt "May I accept a gift from a supplier?"
  valign                                             # the terminal app

exit codes: 0 done, 2 bad input or setting (one line says what), 3 the exported model failed its
verification (run, export), 130 interrupted (run the same command again to resume)
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (later wins: run's config.toml < --preset < --config < flags)")
    g.add_argument("--preset", choices=None, help="quick (minutes on 2 CPU cores) or default")
    g.add_argument("--config", type=Path, help="TOML file with [generate]/[train]/[export]/[eval] sections")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set generate.questions_per_chunk=6 (see `valign config`)")
    g.add_argument("--teacher", help="teacher: catalog preset, GGUF path, ollama:NAME:TAG, or a server's "
                                     "http://HOST:PORT/v1 (default smollm2-135m-instruct)")
    g.add_argument("--student", help="student: catalog preset, GGUF file or HF folder")
    g.add_argument("--backend", choices=["auto", "torch", "mlx"], help="training backend (default auto)")
    g.add_argument("--quant", help="export quantization: f16, q8_0 (default) or q4_k_m")
    g.add_argument("--seed", type=int, help="random seed")


def _resolve_config(args: argparse.Namespace, run_dir: Path | None):
    from . import config

    overrides = config.parse_set(args.set)
    for flag, key in (("teacher", "teacher"), ("student", "student"), ("seed", "seed"),
                      ("backend", "train.backend"), ("quant", "export.quant"), ("processes", "train.processes")):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    # Only a run's own config.toml: a folder that is not a run may hold an unrelated one.
    saved = run_dir / "config.toml" if run_dir and (run_dir / "manifest.json").exists() else None
    return config.resolve(saved, args.preset, args.config, overrides)


def _emitter(run=None, quiet: bool = False):
    from .console import ConsoleSink
    from .events import JsonlSink, fanout

    sink = ConsoleSink(quiet=quiet)
    emit = fanout(sink, JsonlSink(run.events_path)) if run is not None else sink

    def checked(event) -> None:
        # A Ctrl-C whose KeyboardInterrupt was swallowed (see _sticky_sigint) stops the stage here.
        if _INTERRUPTED:
            raise KeyboardInterrupt
        emit(event)

    return checked, sink


_INTERRUPTED = False


def _sticky_sigint() -> None:
    """Ctrl-C raises KeyboardInterrupt and is remembered. llama.cpp logs through a ctypes callback
    while it loads a model, and ctypes swallows exceptions raised in callbacks: a Ctrl-C that lands
    there was lost and the stage ran to the end. The next progress event raises it again."""
    import signal

    def on_sigint(signum, frame):
        global _INTERRUPTED
        _INTERRUPTED = True
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_sigint)


def _open_run(path: Path, create: bool):
    from .workspace import Run

    return Run.open(path, create=create)


def cmd_generate(args) -> int:
    from .generate import generate
    from .ingest import read_document
    from .models import resolve

    cfg = _resolve_config(args, args.out)
    text = read_document(args.document).text  # refuse bad input before touching the run folder
    _announce(resolve(cfg.teacher, "teacher"))
    run = _open_run(args.out, create=True)
    emit, sink = _emitter(run)
    with run.lock():
        try:
            _check_document(run, text, args.new_document)
            info = generate(run, cfg, emit, doc=args.document)
        finally:
            sink.close()
    _print_generate_summary(run, info)
    return 0


def _announce(ref) -> None:
    """With --allow-remote, say plainly where the document's text goes."""
    if ref.kind == "server":
        from .backends.openai_teacher import remote_notice

        line = remote_notice(ref.preset["url"])
        if line:
            print(line, file=sys.stderr)


def _print_generate_summary(run, info: dict) -> None:
    from .datasets import load

    splits = info.get("splits", {})
    print(f"datasets in {run.data_dir}:")
    for kind in ("sft", "dpo"):
        s = splits.get(kind, {})
        print(f"  {kind}: train {s.get('train', 0)}, valid {s.get('valid', 0)}, test {s.get('test', 0)}")
    rejected = info.get("rejected", {})
    if rejected:
        print("  rejected by filters: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))
    for row in load(run, "sft", "train")[:2]:
        print(f"  SFT  Q: {row['messages'][0]['content']}\n       A: {row['messages'][1]['content']}")
    for row in load(run, "dpo", "train")[:1]:
        print(f"  DPO  Q: {row['prompt']}\n       chosen:   {row['chosen']}\n       rejected: {row['rejected']}")


def cmd_train(args) -> int:
    from .backends.torch_dist import follow, launched_follower
    from .train import train

    if launched_follower():  # a rank > 0 under torchrun / accelerate launch: rank 0 leads, writes everything
        return follow()
    run = _open_run(args.run, create=False)
    cfg = _resolve_config(args, args.run)
    emit, sink = _emitter(run)
    with run.lock():
        try:
            result = train(run, cfg, emit)
        finally:
            sink.close()
    print(f"adapters: {result['sft']}  {result['dpo']}")
    return 0


def cmd_export(args) -> int:
    from .export import export

    run = _open_run(args.run, create=False)
    cfg = _resolve_config(args, args.run)
    emit, sink = _emitter(run)
    with run.lock():
        try:
            info = export(run, cfg, emit)
        finally:
            sink.close()
    print(f"exported: {info['model']}  (verify: {'passed' if info['verified'] else 'FAILED'})")
    return _verification_exit(run, info)


def cmd_run(args) -> int:
    from .backends.torch_dist import follow, launched_follower
    from .ingest import read_document
    from .models import resolve
    from .pipeline import run_all

    if launched_follower():  # only the training stages run in several processes
        return follow()
    cfg = _resolve_config(args, args.out)
    text = read_document(args.document).text
    _announce(resolve(cfg.teacher, "teacher"))
    resolve(cfg.student, "student")
    if args.eval:  # a bad probe file ends here, not after training
        from .evaluate import check_probe_files

        check_probe_files(cfg)
    run = _open_run(args.out, create=True)
    emit, sink = _emitter(run)
    with run.lock():
        try:
            _check_document(run, text, args.new_document)
            info = run_all(run, cfg, emit, doc=args.document, evaluate=args.eval)
        finally:
            sink.close()
    print(f"aligned model: {info['model']}")
    print(f"verification: {'passed' if info['verified'] else 'FAILED'} ({run.export_dir / 'verify.json'})")
    if args.show_example:
        from .chat import side_by_side

        with run.lock():  # the measured example writes to the run's evaluation caches
            side_by_side(run, cfg)
    return _verification_exit(run, info)


# A finished command whose exported model failed its check: scripts must notice (run and export alike).
EXIT_VERIFY_FAILED = 3


def _verification_exit(run, info: dict) -> int:
    if info["verified"]:
        return 0
    print(f"valign: verification failed: the GGUF does not reproduce the merged model's answers "
          f"(see {run.export_dir / 'verify.json'})", file=sys.stderr)
    return EXIT_VERIFY_FAILED


def _check_document(run, text: str, replace: bool) -> None:
    """Refuse to generate another document into a run made from a different one, unless ``replace``;
    then every stage is marked stale (each is redone from the new document)."""
    from .workspace import STAGES, hash_obj

    recorded = run.stage_info("generate").get("inputs", {}).get("document")
    if recorded is None and run.document_path.exists():
        recorded = hash_obj(run.document_path.read_text(encoding="utf-8"))
    if recorded is None or recorded == hash_obj(text):
        return
    if not replace:
        raise UserError(f"{run.root} was made from a different document; to replace it (its data, training and "
                        "export are redone) add --new-document, or give --out a new folder")
    run.invalidate(*STAGES)


def cmd_eval(args) -> int:
    from .evaluate import compare, evaluate

    if args.compare:
        print(compare([Path(p) for p in args.compare]))
        return 0
    if args.run is None:
        raise UserError("give a run folder: valign eval RUN")
    run = _open_run(args.run, create=False)
    cfg = _resolve_config(args, args.run)
    emit, sink = _emitter(run)
    with run.lock():
        try:
            report = evaluate(run, cfg, emit, doc=args.doc, probes=args.probe)
        finally:
            sink.close()
    print((run.eval_dir / "report.md").read_text(encoding="utf-8"))
    return 0 if report else 1


def cmd_chat(args) -> int:
    from .chat import chat_cli

    return chat_cli(args.target, prompt=args.prompt, rag=args.rag, vanilla=args.vanilla,
                    max_tokens=args.max_tokens)


def cmd_models(args) -> int:
    from .models import list_models, verify_models

    if args.action == "verify":
        bad = 0
        for row in verify_models():
            print(f"{row['name']:<24} {row['status']:<14} {row.get('path', '')}")
            bad += row["status"] == "MISMATCH"
        return 1 if bad else 0
    for row in list_models():
        state = "installed" if row["installed"] else f"not installed ({row['install']})"
        print(f"{row['name']:<24} {','.join(row['roles']):<22} {row['size_mb'] or '?':>4} MB  "
              f"{row['license']:<20} {state}")
        print(f"{'':<24} {row['description']}")
    from .stores import print_local_models

    print_local_models()
    return 0


def cmd_config(args) -> int:
    from .config import PRESETS, describe

    print(describe())
    print("\npresets: " + ", ".join(PRESETS))
    return 0


def cmd_purge(args) -> int:
    from .purge import purge

    removed = purge(_open_run(args.run, create=False), keep_model=not args.all)
    print(f"removed {len(removed)} items from {args.run}")
    return 0


def cmd_tui(args) -> int:
    from .tui.app import run_app

    run_app(getattr(args, "run", None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valign", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Align a small local language model to the values in a document, entirely offline. "
                    "Without a verb, opens the terminal app.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"valign-edge {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func, help: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if config:
            _config_args(p)
        return p

    p = verb("run", cmd_run, "all stages: generate data, train SFT + DPO, export GGUF (resumable)")
    p.add_argument("document", type=Path, help="value document (.txt, .md, .html, .pdf, .docx)")
    p.add_argument("--out", type=Path, required=True,
                   help="run folder: a new or empty folder (created private to you), or an existing run")
    p.add_argument("--new-document", action="store_true",
                   help="replace the run's document with another one (its data, training and export are redone)")
    p.add_argument("--eval", action="store_true", help="also run the evaluation stage")
    p.add_argument("--show-example", action="store_true",
                   help="end with the measured effect (vanilla vs aligned on the document's shipped probe, "
                        "when there is one) and answers side by side")

    p = verb("generate", cmd_generate, "chunk a document and have the teacher write SFT and DPO data")
    p.add_argument("document", type=Path, help="value document (.txt, .md, .html, .pdf, .docx)")
    p.add_argument("--out", type=Path, required=True,
                   help="run folder: a new or empty folder (created private to you), or an existing run")
    p.add_argument("--new-document", action="store_true",
                   help="replace the run's document with another one (its data, training and export are redone)")

    p = verb("train", cmd_train, "LoRA SFT then DPO on the run's data (torch/PEFT or MLX)")
    p.add_argument("run", type=Path, help="run folder with generated data")
    for p in (sub.choices["run"], p):
        p.add_argument("--processes", type=int, metavar="N",
                       help="train data-parallel in N processes (torch: gloo on the CPU, NCCL on GPUs); the "
                            "result equals one process's. On a cluster: torchrun / accelerate launch (README)")

    p = verb("export", cmd_export, "merge adapters, convert to GGUF, quantize, verify, write a Modelfile")
    p.add_argument("run", type=Path, help="run folder with trained adapters")

    p = verb("eval", cmd_eval, "compare vanilla, RAG, SFT and SFT+DPO on hand-written probe sets (--probe) and on "
                               "held-out questions")
    p.add_argument("run", type=Path, nargs="?", help="run folder with exported models")
    p.add_argument("--doc", type=Path, help="evaluate on questions generated from another document")
    p.add_argument("--probe", type=Path, action="append", metavar="FILE.jsonl",
                   help="a hand-written probe set (rows {prompt, chosen, rejected} or {question, reference}); "
                        "repeatable; default: eval.probe, or the shipped probe of a shipped document")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="print the reports of several runs side by side")
    for p in (sub.choices["run"], sub.choices["generate"], p):
        p.add_argument("--allow-remote", action="store_true",
                       help="let a teacher server off this machine (--teacher http://HOST:PORT/v1) receive the document")

    p = verb("chat", cmd_chat, "chat with an exported model (streaming)", config=False)
    p.add_argument("target", type=Path, help="run folder or GGUF file")
    p.add_argument("--prompt", help="answer one prompt and exit")
    p.add_argument("--rag", action="store_true", help="retrieve chunks of the run's document into the prompt")
    p.add_argument("--vanilla", action="store_true", help="chat with the run's base model instead")
    p.add_argument("--max-tokens", type=int, default=256, help="answer length limit")

    p = verb("models", cmd_models, "list or verify the model catalog", config=False)
    p.add_argument("action", nargs="?", choices=["list", "verify"], default="list")

    verb("config", cmd_config, "list every setting with its default and meaning", config=False)

    p = verb("purge", cmd_purge, "delete a run's document, chunks and datasets (keeps the exported model)",
             config=False)
    p.add_argument("run", type=Path)
    p.add_argument("--all", action="store_true", help="also delete adapters and exported models")

    p = verb("tui", cmd_tui, "open the terminal app", config=False)
    p.add_argument("run", type=Path, nargs="?", help="run folder to open")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .workspace import private_umask

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    private_umask()
    if args.verb is None:
        args.func = cmd_tui
    if args.func is not cmd_tui:
        _sticky_sigint()
    if getattr(args, "allow_remote", False):
        from .backends import openai_teacher

        openai_teacher.REMOTE_ALLOWED = True
    try:
        return args.func(args)
    except UserError as exc:
        print(f"valign: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"valign: {exc}; run the same command again to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\nvalign: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        # The machine, not the code: a full disk or a folder we may not write, from our own writes or
        # from inside a library (safetensors and torch wrap the OS error in their own exceptions).
        problem = environment_error(exc)
        if problem is None:
            raise
        print(f"valign: error: {problem}; nothing finished was lost, run the same command again once fixed",
              file=sys.stderr)
        return 2


def environment_error(exc: BaseException) -> str | None:
    """One line for a disk-full or permission error anywhere in ``exc``'s chain, else None."""
    import errno

    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the disk ({seen.filename or 'writing'})"
        if isinstance(seen, OSError) and seen.errno == errno.EROFS:
            return f"cannot write to {seen.filename or 'the run folder'}: read-only file system"
        if isinstance(seen, OSError) and seen.errno in (errno.EACCES, errno.EPERM):
            return f"cannot access {seen.filename or 'a file'}: permission denied"
        text = str(seen)
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text:
            return "no space left on the disk"
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
