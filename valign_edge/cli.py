"""``valign <verb>``: a table of verbs, each importing its stage lazily.

Errors a user can cause end in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from valign_edge.commands import (  # noqa: F401 (the verbs, for the parser's table)
    _sticky_sigint,
    cmd_chat,
    cmd_config,
    cmd_eval,
    cmd_export,
    cmd_generate,
    cmd_models,
    cmd_purge,
    cmd_run,
    cmd_train,
    cmd_tui,
    stop_signal,
)
from valign_edge.errors import Cancelled, UserError

EPILOG = """examples:
  valign run valign_edge/data/code_of_conduct.md --out runs/demo --preset quick
  valign generate policy.md --out runs/policy        # SFT + DPO data only
  valign train runs/policy && valign export runs/policy
  valign eval runs/policy --probe my-situations.jsonl   # a hand-written probe set
  valign chat runs/policy --prompt "May I accept a gift from a supplier?"
  valign                                             # the terminal app

exit codes: 0 done, 2 bad input or setting (one line says what), 3 the exported model failed its
verification (run, export), 130 interrupted by Ctrl-C, 143 by SIGTERM, 129 by SIGHUP (run the same
command again to resume)
"""


def _given(text: str) -> str:
    """An argument that names something: empty would silently mean the default or the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("it is empty; give a name or a path")
    return text


def _path(text: str) -> Path:
    return Path(_given(text))


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (later wins: run's config.toml < --preset < --config < flags)")
    g.add_argument("--preset", choices=None, help="quick (minutes on 2 CPU cores) or default")
    g.add_argument("--config", type=_path, help="TOML file with [generate]/[train]/[export]/[eval] sections")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set generate.questions_per_chunk=6 (see `valign config`)")
    g.add_argument("--teacher", type=_given, help="teacher: catalog preset, GGUF path, ollama:NAME:TAG, or a server's "
                                     "http://HOST:PORT/v1 (default smollm2-135m-instruct)")
    g.add_argument("--student", type=_given, help="student: catalog preset, GGUF file or HF folder")
    g.add_argument("--backend", choices=["auto", "torch", "mlx"], help="training backend (default auto)")
    g.add_argument("--quant", help="export quantization: f16, q8_0 (default) or q4_k_m")
    g.add_argument("--seed", type=int, help="random seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="valign", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Align a small local language model to the values in a document, entirely offline. "
                    "Without a verb, opens the terminal app.")
    from valign_edge import __version__

    parser.add_argument("--version", action="version", version=f"valign-edge {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func, help: str, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if config:
            _config_args(p)
        return p

    p = verb("run", cmd_run, "all stages: generate data, train SFT + DPO, export GGUF (resumable)")
    p.add_argument("document", type=_path, help="value document (.txt, .md, .html, .pdf, .docx, .odt)")
    p.add_argument("--out", type=_path, required=True,
                   help="run folder: a new or empty folder (created private to you), or an existing run")
    p.add_argument("--new-document", action="store_true",
                   help="replace the run's document with another one (its data, training and export are redone)")
    p.add_argument("--eval", action="store_true", help="also run the evaluation stage")
    p.add_argument("--show-example", action="store_true",
                   help="end with the measured effect (vanilla vs aligned on the document's shipped probe, "
                        "when there is one) and answers side by side")

    p = verb("generate", cmd_generate, "chunk a document and have the teacher write SFT and DPO data")
    p.add_argument("document", type=_path, help="value document (.txt, .md, .html, .pdf, .docx, .odt)")
    p.add_argument("--out", type=_path, required=True,
                   help="run folder: a new or empty folder (created private to you), or an existing run")
    p.add_argument("--new-document", action="store_true",
                   help="replace the run's document with another one (its data, training and export are redone)")

    p = verb("train", cmd_train, "LoRA SFT then DPO on the run's data (torch/PEFT or MLX)")
    p.add_argument("run", type=_path, help="run folder with generated data")
    for p in (sub.choices["run"], p):
        p.add_argument("--processes", type=int, metavar="N",
                       help="train data-parallel in N processes (torch: gloo on the CPU, NCCL on GPUs); the "
                            "result equals one process's. On a cluster: torchrun / accelerate launch (README)")

    p = verb("export", cmd_export, "merge adapters, convert to GGUF, quantize, verify, write a Modelfile")
    p.add_argument("run", type=_path, help="run folder with trained adapters")

    p = verb("eval", cmd_eval, "compare vanilla, RAG, SFT and SFT+DPO on hand-written probe sets (--probe) and on "
                               "held-out questions")
    p.add_argument("run", type=_path, nargs="?", help="run folder with exported models")
    p.add_argument("--doc", type=_path, help="evaluate on questions generated from another document")
    p.add_argument("--probe", type=_path, action="append", metavar="FILE.jsonl",
                   help="a hand-written probe set (rows {prompt, chosen, rejected} or {question, reference}); "
                        "repeatable; default: eval.probe, or the shipped probe of a shipped document; "
                        "answer rows may carry \"verdict\": \"yes\"|\"no\" to measure which side answers take")
    p.add_argument("--grading-sheet", type=_path, metavar="FILE.csv",
                   help="after evaluating, write every system's answers shuffled with system names hidden, for a "
                        "person to mark f (takes the document's side) or u in the mark column")
    p.add_argument("--grades", type=_path, metavar="FILE.csv",
                   help="read a marked grading sheet back: faithful rate per system into eval/report.md "
                        "(no evaluation is run)")
    p.add_argument("--compare", nargs="+", metavar="RUN", help="print the reports of several runs side by side")
    for p in (sub.choices["run"], sub.choices["generate"], p):
        p.add_argument("--allow-remote", action="store_true",
                       help="let a teacher or judge server off this machine (--teacher http://HOST:PORT/v1, "
                            "eval.judge) receive the document")

    p = verb("chat", cmd_chat, "chat with an exported model (streaming)", config=False)
    p.add_argument("target", type=_path, help="run folder or GGUF file")
    p.add_argument("--prompt", help="answer one prompt and exit")
    p.add_argument("--rag", action="store_true", help="retrieve chunks of the run's document into the prompt")
    p.add_argument("--vanilla", action="store_true", help="chat with the run's base model instead")
    p.add_argument("--max-tokens", type=int, default=256, help="answer length limit (1 to 8192 tokens)")

    p = verb("models", cmd_models, "list or verify the model catalog", config=False)
    p.add_argument("action", nargs="?", choices=["list", "verify"], default="list")

    verb("config", cmd_config, "list every setting with its default and meaning", config=False)

    p = verb("purge", cmd_purge, "delete a run's document, chunks and datasets (keeps the exported model)",
             config=False)
    p.add_argument("run", type=_path)
    p.add_argument("--all", action="store_true", help="also delete adapters and exported models")
    p.add_argument("--keep-index", action="store_true",
                   help="keep export/retrieval.json (the document's chunks), so the export folder still serves "
                        "chat --rag")

    p = verb("tui", cmd_tui, "open the terminal app", config=False)
    p.add_argument("run", type=_path, nargs="?", help="run folder to open")
    p.add_argument("--allow-remote", action="store_true",
                   help="let a teacher or judge server off this machine receive the document (the app says where)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from valign_edge.runs.workspace import private_umask

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    private_umask()
    if args.verb is None:
        args.func = cmd_tui
    if args.func is not cmd_tui:
        _sticky_sigint()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"valign: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"valign: {exc}; run the same command again to resume", file=sys.stderr)
        return 128 + stop_signal()
    except KeyboardInterrupt:
        import signal

        sig = stop_signal()
        how = "" if sig == signal.SIGINT else f" by {signal.Signals(sig).name}"
        print(f"\nvalign: interrupted{how}; run the same command again to resume", file=sys.stderr)
        return 128 + sig  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP
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
