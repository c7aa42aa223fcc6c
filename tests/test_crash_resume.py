"""Crash safety: ``kill -9`` at random moments in each stage, then the same command again, ends with
exactly the artifacts of the uninterrupted reference run (conftest ``finished_run``).

A kill point is drawn from the reference run's own timeline: a random progress tick of the stage,
then a random delay within the time that tick took in the reference. Each chain kills the same
command several times in a row (each kill lands in what the previous attempt resumed), then lets it
finish. The seed is printed; ``VALIGN_CRASH_SEED=N`` replays a failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli_command, cli_env, copy_run, snapshot, needs

SEED = int(os.environ.get("VALIGN_CRASH_SEED", "7"))
slow = pytest.mark.slow

# Event stages that belong to each pipeline stage (DPO first precomputes reference log-probs).
STAGE_EVENTS = {"generate": ("generate",), "train_sft": ("train_sft",), "train_dpo": ("dpo_reference", "train_dpo"),
                "export": ("export",), "eval": ("eval",)}


def stage_command(stage: str, finished, run: Path) -> list:
    """The command a user reruns after a crash in ``stage`` (each stage's own verb)."""
    if stage == "generate":
        return ["generate", finished.doc, "--out", run, *finished.flags]
    return {"train_sft": ["train", run], "train_dpo": ["train", run], "export": ["export", run],
            "eval": ["eval", run]}[stage]


def read_events(path: Path, offset: int = 0) -> list[dict]:
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read().decode("utf-8", "replace")
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def ticks_of(events: list[dict], stage: str) -> list[tuple]:
    """Progress ticks as (event stage, unit, done, occurrence): a stage may count several things in turn
    (evaluation: answers, then systems, then judgments), so a tick needs more than its count to be unique."""
    seen: dict[tuple, int] = {}
    ticks = []
    for e in events:
        if e.get("kind") == "progress" and e.get("stage") in STAGE_EVENTS[stage]:
            key = (e["stage"], e.get("unit", ""), e["done"])
            ticks.append((*key, seen.get(key, 0)))
            seen[key] = seen.get(key, 0) + 1
    return ticks


@dataclasses.dataclass
class Timeline:
    """The reference run's progress ticks of one stage, and the seconds from each to the next."""

    ticks: list[tuple]
    gaps: list[float]

    @classmethod
    def of(cls, finished, stage: str) -> "Timeline":
        events = [e for e in read_events(finished.path / "logs" / "events.jsonl")
                  if e["stage"] in STAGE_EVENTS[stage] and e["kind"] == "progress"]
        # No progress events is itself a regression (the user sees no progress): fail, never skip.
        assert events, f"the reference run emitted no progress events for {stage}"
        end = json.loads((finished.path / "manifest.json").read_text())["stages"][stage]["finished"]
        times = [e["time"] for e in events] + [end]
        return cls(ticks_of(events, stage), [max(0.05, b - a) for a, b in zip(times, times[1:])])


def run_and_kill(command: list, run: Path, stage: str, timeline: Timeline, rng: random.Random, env: dict,
                 before_last_tick: bool) -> dict:
    """Start the command; SIGKILL its process group at a random moment of the stage; report where.

    With ``before_last_tick`` the moment is in the first half of the stage's progress ticks, so the kill
    surely lands while the stage works (12 DPO steps of the tiny run take under 2 s on an idle machine:
    a kill aimed after step 11 missed)."""
    events_path = run / "logs" / "events.jsonl"
    offset = events_path.stat().st_size if events_path.exists() else 0
    proc = subprocess.Popen(cli_command(*command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=ROOT, start_new_session=True)
    target = None
    kill_at = None
    seen: list[tuple] = []
    deadline = time.time() + 1800
    while proc.poll() is None and time.time() < deadline:
        seen = [t for t in ticks_of(read_events(events_path, offset), stage) if t in timeline.ticks]
        if seen and target is None:
            first = timeline.ticks.index(seen[0])
            end = len(timeline.ticks)
            if before_last_tick:  # the first half: on a fast machine a short stage ends soon after a late tick
                end = first + max(1, (end - first) // 2)
            target = rng.randrange(first, max(first + 1, end))
        if target is not None and kill_at is None and any(timeline.ticks.index(t) >= target for t in seen):
            kill_at = time.time() + rng.uniform(0, timeline.gaps[target] * 0.9)
        if kill_at is not None and (time.time() >= kill_at or any(timeline.ticks.index(t) > target for t in seen)):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    assert "Traceback" not in stderr, stderr[-3000:]
    status = json.loads((run / "manifest.json").read_text())["stages"].get(stage, {}).get("status")
    landed = proc.returncode == -signal.SIGKILL and status != "done"  # killed while the stage was working
    return {"tick": timeline.ticks[target] if target is not None else None, "landed": landed,
            "returncode": proc.returncode, "stderr": stderr[-2000:]}


def finish(command: list, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli_command(*command), capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


# --- what must equal the reference ------------------------------------------------------------------------------
def records_by_chunk(path: Path) -> dict[str, dict]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a record a killed writer left half-written; readers skip it
    by_chunk: dict[str, dict] = {}
    for rec in parsed:
        assert rec["chunk_id"] not in by_chunk, f"duplicate record for {rec['chunk_id']} in {path.name}"
        by_chunk[rec["chunk_id"]] = rec
    return by_chunk


def safetensors_equal(a: Path, b: Path) -> None:
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys(), a
    for name in ta:
        assert (ta[name] == tb[name]).all(), f"{a.parent.name}/{a.name}:{name} differs from the reference"


def gguf_is_complete(path: Path) -> None:
    """A GGUF whose header parses and whose every tensor lies inside the file."""
    gguf = needs("gguf")
    reader = gguf.GGUFReader(str(path))
    size = path.stat().st_size
    for tensor in reader.tensors:
        assert tensor.data_offset + tensor.n_bytes <= size, f"{path.name}: tensor {tensor.name} is cut off"


def no_leftovers(run: Path) -> None:
    left = [p.relative_to(run).as_posix() for p in run.rglob("*")
            if p.suffix == ".tmp" or p.name.endswith((".final", ".tmp")) or p.name == "work"]
    assert left == [], left


def compare_stage(stage: str, run: Path, ref: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    reference = json.loads((ref / "manifest.json").read_text())["stages"]
    assert manifest[stage]["status"] == "done"
    no_leftovers(run)
    if stage == "generate":
        for kind in ("sft", "dpo"):
            assert records_by_chunk(run / "synth" / f"{kind}.jsonl") == records_by_chunk(ref / "synth" / f"{kind}.jsonl")
        for rel in ["chunks.jsonl", *[f"data/{k}/{s}.jsonl" for k in ("sft", "dpo") for s in ("train", "valid", "test")]]:
            assert (run / rel).read_bytes() == (ref / rel).read_bytes(), rel
        for count in ("chunks", "sft_records", "dpo_records", "splits"):
            assert manifest[stage][count] == reference[stage][count], count
    if stage in ("train_sft", "train_dpo"):
        for method in ("sft", "dpo"):  # a resumed SFT also changes nothing about the DPO that follows it
            for tensors in sorted((ref / "adapters" / method).glob("*.safetensors")):
                safetensors_equal(run / "adapters" / method / tensors.name, tensors)
            assert not (run / "adapters" / method / "checkpoint").exists()
            steps = json.loads((run / "adapters" / method / "training.json").read_text())["steps"]
            assert steps == json.loads((ref / "adapters" / method / "training.json").read_text())["steps"]
    if stage == "export":
        files = sorted(p.name for p in (ref / "export").iterdir())
        assert sorted(p.name for p in (run / "export").iterdir()) == files
        for name in files:
            if name.endswith(".gguf"):
                gguf_is_complete(run / "export" / name)
            assert (run / "export" / name).read_bytes() == (ref / "export" / name).read_bytes(), name
    if stage == "eval":
        for path in sorted((ref / "eval").rglob("*.jsonl")):
            rel = path.relative_to(ref)
            assert _rows(run / rel) == _rows(path), rel


VOLATILE = {"seconds", "time", "wall_s", "elapsed", "started", "finished", "tokens_per_s", "rate"}


def _stable(obj):
    """``obj`` without timings, which differ between any two runs."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _rows(path: Path) -> list:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.dumps(_stable(json.loads(line)), sort_keys=True))
        except json.JSONDecodeError:
            continue
    return sorted(rows)


def crash_chain(stage: str, finished, tmp_path: Path, seed: int, kills: int) -> list[dict]:
    """Kill the stage ``kills`` times at random moments, finish it, compare with the reference."""
    run = copy_run(finished.path, tmp_path / "run", before=stage)
    done_before = {rel: digest for rel, digest in snapshot(run).items() if rel != "manifest.json"}
    timeline = Timeline.of(finished, stage)
    rng = random.Random(f"{seed}-{stage}")
    command = stage_command(stage, finished, run)
    env = cli_env()
    crashes = []
    for n in range(kills):
        crashes.append(run_and_kill(command, run, stage, timeline, rng, env, before_last_tick=n == 0))
        for gguf_file in (run / "export").glob("*.gguf") if (run / "export").exists() else []:
            gguf_is_complete(gguf_file)  # a crash never leaves a cut-off model where a model is expected
        if not crashes[-1]["landed"]:
            break  # the stage finished before the kill: nothing left to interrupt
    finish(command, env)
    compare_stage(stage, run, finished.path)
    after = snapshot(run)
    assert {rel: after.get(rel) for rel in done_before} == done_before, "earlier stages' files changed"
    print(f"{stage} seed {seed}: " + ", ".join(f"kill at {c['tick']} ({'landed' if c['landed'] else 'missed'})"
                                              for c in crashes))
    assert any(c["landed"] for c in crashes), f"no kill landed inside {stage}: {crashes}"
    return crashes


def needs_stage(request, stage: str):
    return request.getfixturevalue("evaluated_run" if stage == "eval" else "finished_run")


# The default suite kills every stage: twice where a stage's attempt is short, once in export and eval,
# whose every attempt (a whole export, or every system's answers) is the longest; ``-m slow`` adds more.
DEFAULT_KILLS = {"generate": 2, "train_sft": 2, "train_dpo": 2, "export": 1, "eval": 1}


@pytest.mark.parametrize("stage", list(DEFAULT_KILLS))
def test_kill_and_resume(stage, tmp_path, request):
    crash_chain(stage, needs_stage(request, stage), tmp_path, SEED, kills=DEFAULT_KILLS[stage])


@slow
@pytest.mark.parametrize("seed", [SEED + 1, SEED + 2])
@pytest.mark.parametrize("stage", list(STAGE_EVENTS))
def test_kill_and_resume_more_points(stage, seed, tmp_path, request):
    crash_chain(stage, needs_stage(request, stage), tmp_path, seed, kills=3)
