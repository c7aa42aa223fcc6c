"""The ``valign`` verbs: each resolves its settings, opens its run and calls its stage, imported lazily.

``cli`` parses the command line and turns errors into one line; this module does the work of each verb.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from valign_edge.errors import UserError


def _resolve_config(args: argparse.Namespace, run_dir: Path | None):
    from valign_edge import config

    overrides = config.parse_set(args.set)
    for flag, key in (("teacher", "teacher"), ("student", "student"), ("seed", "seed"),
                      ("backend", "train.backend"), ("quant", "export.quant"), ("processes", "train.processes")):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    # Only a run's own config.toml: a folder that is not a run may hold an unrelated one.
    saved = run_dir / "config.toml" if run_dir and (run_dir / "manifest.json").exists() else None
    return config.resolve_config(saved, args.preset, args.config, overrides)


def _emitter(run=None, quiet: bool = False):
    from valign_edge.console import ConsoleSink
    from valign_edge.events import JsonlSink, fanout

    sink = ConsoleSink(quiet=quiet)
    emit = fanout(sink, JsonlSink(run.events_path)) if run is not None else sink

    def checked(event) -> None:
        # A Ctrl-C whose KeyboardInterrupt was swallowed (see _sticky_sigint) stops the stage here.
        if _INTERRUPTED:
            raise KeyboardInterrupt
        emit(event)

    return checked, sink


@contextlib.contextmanager
def _stage_session(run):
    """A verb's work on ``run``: its events to the console and the run's log, under the run's lock."""
    emit, sink = _emitter(run)
    with run.lock():
        try:
            yield emit
        finally:
            sink.close()


@contextlib.contextmanager
def _new_run_session(path: Path):
    """``_stage_session`` for a verb that makes its run when missing (run, generate). When it made the run
    and fails with a user error before any stage began (a teacher that does not load), it takes back what
    it wrote - the copy of the document first of all - and the folder too when it made it and nothing else
    is in it: a failed command leaves no copy of the document behind. A stopped command (Ctrl-C) keeps it,
    to resume; a stage that began keeps its work."""
    made_folder = not path.exists()
    made_run = not (path / "manifest.json").exists()
    run = _open_run(path, create=True)
    try:
        with _stage_session(run) as emit:
            yield run, emit
    except UserError:
        if made_run and not run.manifest().get("stages"):
            from valign_edge.runs.purge import purge

            with contextlib.suppress(UserError, OSError):  # the error that stopped the command is the one to tell
                purge(run, keep_model=False, keep_folder=not made_folder)
        raise


_INTERRUPTED = 0  # the signal that stopped the command (0: none)


def stop_signal() -> int:
    """The signal that interrupted the command: SIGINT (Ctrl-C) unless SIGTERM or SIGHUP came."""
    import signal

    return _INTERRUPTED or signal.SIGINT


def _sticky_sigint() -> None:
    """Ctrl-C, SIGTERM (``kill``, a service manager) and SIGHUP (the terminal closed) raise
    KeyboardInterrupt and are remembered, so each stops the command the same clean, resumable way.
    llama.cpp logs through a ctypes callback while it loads a model, and ctypes swallows exceptions
    raised in callbacks: a signal that lands there was lost and the stage ran to the end. The next
    progress event raises it again. A signal the parent set to be ignored (nohup) stays ignored."""
    import signal

    def on_signal(signum, frame):
        global _INTERRUPTED
        _INTERRUPTED = signum
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_signal)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, on_signal)


def _open_run(path: Path, create: bool):
    from valign_edge.runs.workspace import Run

    return Run.open(path, create=create)


def cmd_generate(args) -> int:
    from valign_edge.documents.ingest import read_document
    from valign_edge.generation.generate import check_document, generate
    from valign_edge.models import resolve

    cfg = _resolve_config(args, args.out)
    text = read_document(args.document).text  # refuse bad input before touching the run folder
    _announce(resolve(cfg.teacher, "teacher", args.allow_remote))
    with _new_run_session(args.out) as (run, emit):
        check_document(run, text, args.new_document)
        info = generate(run, cfg, emit, doc=args.document, allow_remote=args.allow_remote)
    _print_generate_summary(run, info)
    return 0


def _announce(ref, role: str = "teacher") -> None:
    """With --allow-remote, say plainly where the document's text goes."""
    if ref.kind == "server":
        from valign_edge.backends.openai_teacher import remote_notice

        line = remote_notice(ref.preset["url"], role)
        if line:
            print(line, file=sys.stderr)


def _print_generate_summary(run, info: dict) -> None:
    from valign_edge.generation.datasets import load

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
    from valign_edge.backends.torch_dist import follow, launched_follower
    from valign_edge.training.train import train

    if launched_follower():  # a rank > 0 under torchrun / accelerate launch: rank 0 leads, writes everything
        return follow()
    run = _open_run(args.run, create=False)
    cfg = _resolve_config(args, args.run)
    with _stage_session(run) as emit:
        result = train(run, cfg, emit)
    print(f"adapters: {result['sft']}  {result['dpo']}")
    return 0


def cmd_export(args) -> int:
    from valign_edge.export import export

    run = _open_run(args.run, create=False)
    cfg = _resolve_config(args, args.run)
    with _stage_session(run) as emit:
        info = export(run, cfg, emit)
    print(f"exported: {info['model']}  (verify: {'passed' if info['verified'] else 'FAILED'})")
    return _verification_exit(run, info)


def cmd_run(args) -> int:
    from valign_edge.backends.torch_dist import follow, launched_follower
    from valign_edge.documents.ingest import read_document
    from valign_edge.generation.generate import check_document
    from valign_edge.models import resolve
    from valign_edge.pipeline import run_all

    if launched_follower():  # only the training stages run in several processes
        return follow()
    cfg = _resolve_config(args, args.out)
    text = read_document(args.document).text
    _announce(resolve(cfg.teacher, "teacher", args.allow_remote))
    resolve(cfg.student, "student")
    if args.eval:  # a bad probe file or a refused judge server ends here, not after training
        from valign_edge.evaluation.evaluate import check_probe_files
        from valign_edge.evaluation.judging import judge_model_ref

        check_probe_files(cfg)
        _announce(judge_model_ref(cfg, args.allow_remote), "judge")
    with _new_run_session(args.out) as (run, emit):
        check_document(run, text, args.new_document)
        info = run_all(run, cfg, emit, doc=args.document, evaluate=args.eval, allow_remote=args.allow_remote)
    print(f"aligned model: {info['model']}")
    print(f"verification: {'passed' if info['verified'] else 'FAILED'} ({run.export_dir / 'verify.json'})")
    if args.show_example:
        from valign_edge.chat import side_by_side

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


def cmd_eval(args) -> int:
    from valign_edge.evaluation.evaluate import evaluate
    from valign_edge.evaluation.markdown import compare

    if args.compare:
        print(compare([Path(p) for p in args.compare]))
        return 0
    if args.run is None:
        raise UserError("give a run folder: valign eval RUN")
    run = _open_run(args.run, create=False)
    if args.grades:
        from valign_edge.evaluation.grading import record_grades
        from valign_edge.evaluation.markdown import grades_markdown

        print("\n".join(grades_markdown(record_grades(run, args.grades))))
        return 0
    cfg = _resolve_config(args, args.run)
    from valign_edge.evaluation.judging import judge_model_ref

    _announce(judge_model_ref(cfg, args.allow_remote), "judge")  # a judge server off this machine is refused here
    with _stage_session(run) as emit:
        report = evaluate(run, cfg, emit, doc=args.doc, probes=args.probe, allow_remote=args.allow_remote)
    print((run.eval_dir / "report.md").read_text(encoding="utf-8"))
    if args.grading_sheet:
        from valign_edge.evaluation.grading import write_sheet

        made = write_sheet(run, args.grading_sheet, cfg.seed)
        print(f"grading sheet: {args.grading_sheet} ({made['items']} answers to {made['questions']} questions from "
              f"{made['systems']} systems, {made['source']}, shuffled, system names hidden); mark each row f or u, "
              f"then: valign eval {run.root} --grades {args.grading_sheet}")
    return 0 if report else 1


def cmd_chat(args) -> int:
    from valign_edge.chat import chat_cli

    if not 1 <= args.max_tokens <= 8192:
        raise UserError(f"--max-tokens {args.max_tokens} is out of range: an answer length from 1 to 8192 tokens")
    return chat_cli(args.target, prompt=args.prompt, rag=args.rag, vanilla=args.vanilla,
                    max_tokens=args.max_tokens)


def cmd_models(args) -> int:
    from valign_edge.models import list_models, verify_models

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
    from valign_edge.stores import print_local_models

    print_local_models()
    return 0


def cmd_config(args) -> int:
    from valign_edge.config import PRESETS, describe

    print(describe())
    print("\npresets: " + ", ".join(PRESETS))
    return 0


def cmd_purge(args) -> int:
    from valign_edge.runs.purge import purge

    removed = purge(_open_run(args.run, create=False), keep_model=not args.all, keep_index=args.keep_index)
    print(f"removed {len(removed)} items from {args.run}")
    return 0


def cmd_tui(args) -> int:
    from valign_edge.tui.app import run_app

    run_app(getattr(args, "run", None), getattr(args, "allow_remote", False))  # bare `valign` has no flags
    return 0
