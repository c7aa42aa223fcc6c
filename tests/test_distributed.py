"""Data-parallel training (issue 12): ``valign train --processes 2`` on the CPU (gloo) gives the one-process
adapters, rank 0 alone writes the run folder, Ctrl-C stops every process, and a run resumes from its
checkpoint with another number of processes.

Tolerance: every step's loss and gradient norm within ``TOL`` = 1e-4 (relative), and the largest relative
difference (Frobenius norm of the difference over the norm) of any adapter tensor at most ``ADAPTER_TOL``
= 2e-3. Two processes sum the same per-item gradients in another order and pad sequences into other batch
shapes, so float32 rounding differs; Adam's nearly sign-sized steps on near-zero gradient entries of the
tiny random student amplify it in a tensor or two: measured on this test's data, the worst SFT tensor
(layer 1's v_proj lora_B) differs by 2.4e-4 with one pass per process, 2.5e-4 with 384-token passes and
3e-5 with 512-token ones, while every step's loss and gradient norm agree to six digits. What the
tolerances must catch is far larger (measured by breaking ``_accumulate`` on purpose, see bench/RESULTS.md):
no all-reduce (0.47 SFT, 0.10 DPO in the adapters), each process's mean averaged instead of the global mean
(0.11, 0.067), or gradients summed over processes without the division (6.7e-4, 0.036: Adam is nearly blind
to a uniform gradient scale, but the recorded gradient norm doubles, which ``TOL`` catches). Each stage is
compared from the same start (DPO continues the one-process SFT adapter in both runs): DPO's Adam steps
turn 1e-6 differences in the SFT adapter into percent-sized ones in near-zero gradient entries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_line_error, cli_command, cli_env, copy_run, sigint_as_in_a_terminal, valign, needs

torch = needs("torch")
needs("peft")

TOL = 1e-4
ADAPTER_TOL = 2e-3
# Determinism: fp32 (bf16 autocast's rounding depends on the batch shapes), one thread per process.
FLAGS = ["--set", "train.precision=fp32", "--set", "train.threads=1", "--set", "train.lora_dropout=0"]


def train(run: Path, processes: int, *extra) -> subprocess.CompletedProcess:
    proc = valign("train", run, "--processes", processes, *FLAGS, *extra, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def adapter(run: Path, stage: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapters" / stage / "adapter_model.safetensors"))


def history(run: Path, stage: str) -> list[dict]:
    return json.loads((run / "adapters" / stage / "training.json").read_text())["history"]


def rel(a, b) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-12))


def assert_same_training(run: Path, reference: Path, stage: str) -> None:
    ours, theirs = adapter(run, stage), adapter(reference, stage)
    assert set(ours) == set(theirs)
    worst = max(rel(ours[name], theirs[name]) for name in theirs)
    assert worst <= ADAPTER_TOL, f"{stage}: an adapter tensor differs by {worst:.2e} (relative) from one process's"
    for a, b in zip(history(run, stage), history(reference, stage), strict=True):
        for field in ("loss", "grad_norm"):
            assert a[field] == pytest.approx(b[field], rel=TOL, abs=1e-6), (stage, a["step"], field)


def stages(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


def files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def one_process(finished_run, tmp_path_factory) -> Path:
    """The finished run's data trained again in one process, fp32, one thread."""
    run = copy_run(finished_run.path, tmp_path_factory.mktemp("dp") / "one", before="train_sft")
    train(run, 1)
    return run


def test_two_processes_train_the_one_process_adapters(one_process, tmp_path):
    two = copy_run(one_process, tmp_path / "two", before="train_sft")
    proc = train(two, 2)
    assert "in 2 processes" in proc.stderr + proc.stdout
    assert_same_training(two, one_process, "sft")
    # DPO from the same SFT adapter: the one-process run's, DPO trained again in two processes.
    dpo = copy_run(one_process, tmp_path / "dpo", before="train_dpo")
    train(dpo, 2)
    assert_same_training(dpo, one_process, "dpo")

    for run, world in ((one_process, 1), (two, 2), (dpo, 2)):
        info = stages(run)
        assert info["train_dpo"]["world_size"] == world and len(info["train_dpo"]["peak_rss_mb_per_process"]) == world
    assert stages(dpo)["train_sft"]["world_size"] == 1  # not retrained
    # One set of files, written by rank 0 alone: the one-process run's files, one metric per step.
    assert files(two) == files(one_process)
    events = [json.loads(line) for line in (two / "logs" / "events.jsonl").read_text().splitlines()]
    for stage in ("train_sft", "train_dpo"):
        start = max(i for i, e in enumerate(events) if e["kind"] == "stage" and e["stage"] == stage)  # this command's
        steps = [e["data"]["step"] for e in events[start:] if e["kind"] == "metric" and e["stage"] == stage]
        assert steps == list(range(1, stages(two)[stage]["steps"] + 1))
    owned = json.loads((two / "manifest.json").read_text())["files"]
    assert len(owned) == len(set(owned))


def _session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the CLI was started as its leader)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find leftover processes")
def test_ctrl_c_stops_every_process_and_the_run_resumes_in_one(one_process, tmp_path):
    run = copy_run(one_process, tmp_path / "run", before="train_sft")
    # Many small passes per step: the same update (test_training), slow enough to be interrupted mid-stage.
    slow = ["--set", "train.micro_batch_tokens=64"]
    proc = subprocess.Popen(cli_command("train", run, "--processes", 2, *FLAGS, *slow), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_as_in_a_terminal)
    state = run / "adapters" / "sft" / "checkpoint" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
    assert len(_session_processes(proc.pid)) >= 2  # rank 0 and its follower
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("valign: interrupted"), err[-3000:]
    time.sleep(0.5)
    assert _session_processes(proc.pid) == []  # no follower left behind
    assert stages(run)["train_sft"]["status"] == "partial"

    checkpoint = json.loads(state.read_text())["step"]
    train(run, 1, *slow)  # resumed by one process
    info = stages(run)["train_sft"]
    assert info["resumed_from"] == checkpoint > 0 and info["world_size"] == 1
    assert_same_training_after_resume(run, one_process, checkpoint)


def assert_same_training_after_resume(run: Path, reference: Path, checkpoint: int) -> None:
    ours, theirs = adapter(run, "sft"), adapter(reference, "sft")
    worst = max(rel(ours[name], theirs[name]) for name in theirs)
    assert worst <= ADAPTER_TOL, f"resumed SFT differs by {worst:.2e} from the uninterrupted one-process run"
    steps = {h["step"]: h for h in history(reference, "sft")}
    for row in history(run, "sft"):  # the steps after the checkpoint
        assert row["loss"] == pytest.approx(steps[row["step"]]["loss"], rel=TOL, abs=1e-6)


def test_processes_are_refused_where_they_cannot_work(finished_run, tmp_path):
    from valign_edge.backends.torch_dist import world_size
    from valign_edge.config import RunConfig

    cfg = RunConfig()
    assert "processes" not in cfg.train.settings_for("sft") | cfg.train.settings_for("dpo")
    assert "fsdp" not in cfg.train.settings_for("sft") | cfg.train.settings_for("dpo")
    cfg.train.processes = 2
    with pytest.raises(Exception, match="torch backend"):
        world_size(cfg, "mlx", "metal")
    cfg.train.processes, cfg.train.fsdp = 1, True
    with pytest.raises(Exception, match="CUDA"):
        world_size(cfg, "torch", "cpu")
    run = copy_run(finished_run.path, tmp_path / "run", before="train_sft")
    proc = valign("train", run, "--processes", (os.cpu_count() or 1) + 1)
    assert_one_line_error(proc, 2, "core")
    assert not any(p.is_file() for p in (run / "adapters").rglob("*")) and "train_sft" not in stages(run)
