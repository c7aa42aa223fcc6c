"""Data-parallel training for the torch backend: torch.distributed, gloo on the CPU, NCCL on CUDA GPUs.

One shape for both ways in. Rank 0 is the process that runs ``valign train`` (or ``valign run``): it holds
the run's lock, writes the manifest, the events, the checkpoints and the adapters, and shows the one
progress bar. The other ranks are followers: they run the stage rank 0 names on their shard of every
step and write nothing.

- ``--processes N`` (``train.processes``): rank 0 starts N-1 followers on this machine (``python -m
  valign_edge.backends.torch_dist``) through a TCP store it hosts on a free loopback port, and stops them
  when it stops (Ctrl-C, an error, a cancel); a follower whose parent is gone exits.
- ``torchrun`` / ``accelerate launch`` (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set, any number of
  nodes): every process runs the same ``valign`` command; rank 0 goes on as usual, the others follow at
  once. The run folder must be at the same path on every node (a shared filesystem): followers read the
  data, the student, the SFT adapter and the checkpoint from it.

Every rank plans the same steps (the plan is deterministic); rank r takes items r, r+N, ... of each
step's batch and sums its items' loss x units gradients (``TorchTrainer._accumulate``); the sums of the
gradients, losses and units over all ranks are then divided by the global units, so the update is the
one-process update whatever N is, and a run resumes from its checkpoint with another N. The LoRA
gradients are all-reduced by hand (one flat buffer per step) rather than through DDP: a rank whose
shard is empty, or that runs fewer micro-batches, needs no forward pass to take part.

FSDP (``train.fsdp``, CUDA only; untested on this project's machines, which have no GPU): each decoder
layer's frozen weights are sharded over the ranks; the LoRA modules stay whole on every rank
(``ignored_modules``), so their gradients, optimizer state, checkpoints and adapter files take the same
path as without FSDP. FSDP's forward and backward are collective, so every rank then runs the same
number of passes (filler passes with zero weight; see ``Group.passes``).

Commands between ranks are JSON in byte tensors, never pickles (the store is reachable on the network
on a cluster).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

from valign_edge.errors import Cancelled, UserError

# Followers wait for rank 0's next command while it loads the student; a dead peer closes its sockets,
# which fails a collective at once, so a long timeout does not hide crashes.
TIMEOUT = timedelta(hours=12)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched_world() -> int:
    """Processes a launcher (torchrun, accelerate launch) started; 1 when none did."""
    return _env_int("WORLD_SIZE", 1) if "RANK" in os.environ else 1


def launched_follower() -> bool:
    """This process is a rank > 0 that a launcher started: it follows rank 0 instead of running a verb."""
    return launched_world() > 1 and _env_int("RANK", 0) > 0


def world_size(cfg, backend: str, device: str) -> int:
    """The number of training processes, or one line saying why it cannot be."""
    launched = launched_world()
    n = launched if launched > 1 else cfg.train.processes
    if cfg.train.fsdp and backend == "torch" and device != "cuda":
        raise UserError(f"train.fsdp shards the student over CUDA GPUs; this run trains on {device} "
                        "(--set train.fsdp=false)")
    if n <= 1:
        return 1
    if backend != "torch":
        raise UserError(f"{n} training processes need the torch backend; {backend} trains in one process "
                        "(--backend torch, or --processes 1)")
    if device == "mps":
        raise UserError("the MPS device trains in one process (--processes 1)")
    local = _env_int("LOCAL_WORLD_SIZE", n) if launched > 1 else n
    if device == "cuda":
        import torch

        if local > torch.cuda.device_count():
            raise UserError(f"{local} training processes on this machine need {local} CUDA GPUs (one each); "
                            f"torch sees {torch.cuda.device_count()}")
    elif local > (os.cpu_count() or 1):
        raise UserError(f"{local} training processes on this machine need a CPU core each; it has "
                        f"{os.cpu_count() or 1}")
    return n


class Group:
    """This process's place among the training processes and the few collectives the trainer needs.
    ``Group()`` is the one-process case: every collective is the identity."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, local_world: int = 1,
                 fsdp: bool = False):
        self.rank, self.world, self.local_rank, self.local_world = rank, world, local_rank, local_world
        self.fsdp = fsdp
        self.followers: list[subprocess.Popen] = []  # the ones this process started (--processes)
        self.logs: list[Any] = []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        return items[self.rank::self.world]

    def passes(self, mine: list, filler: Any) -> Iterator[tuple[Any, bool]]:
        """(item, real) for this rank's items; under FSDP padded with (filler, False) to the most any rank
        has, as FSDP's forward and backward need every rank."""
        yield from ((item, True) for item in mine)
        if self.fsdp:
            most = int(max(self.gather(float(len(mine)))))
            yield from ((filler, False) for _ in range(most - len(mine)))

    # --- collectives (CPU tensors go through gloo, CUDA tensors through NCCL) -----------------------
    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def sum_tensor(self, t):
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def sum_grads(self, params: list) -> None:
        """Every rank's gradients summed into each rank's ``.grad`` (one flat all-reduce)."""
        if self.world == 1:
            return
        import torch

        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.sum_tensor(flat)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()

    def gather(self, value: float) -> list[float]:
        """``value`` of every rank, in rank order."""
        return self.sum([value if r == self.rank else 0.0 for r in range(self.world)])

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a stop, a cache decision)."""
        return bool(self.broadcast_json(bool(flag)))

    def same(self, value: int, what: str) -> int:
        """Rank 0's ``value``; a rank that sees another one has another run folder (not shared)."""
        lead = self.broadcast_json(value)
        if lead != value:
            raise UserError(f"training process {self.rank} sees {what} {value}, rank 0 sees {lead}: the run folder "
                            "must be the same on every node (a shared filesystem)")
        return lead

    def broadcast_json(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch
        import torch.distributed as dist

        data = json.dumps(obj).encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.long)
        dist.broadcast(size, 0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main else \
            torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(buf, 0)
        return json.loads(bytes(buf.tolist()).decode())

    # --- FSDP ----------------------------------------------------------------------------------------
    def wrap(self, model, device: str):
        """The PEFT model on ``device``; under FSDP with each decoder layer's frozen weights sharded (the
        model arrives on the CPU so that no rank ever holds all of them on its GPU)."""
        if not self.fsdp:
            return model
        import torch
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        layers = model.get_base_model().model.layers
        for i, layer in enumerate(layers):
            lora = [m for name, m in layer.named_modules() if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")]
            layers[i] = FSDP(layer, device_id=torch.cuda.current_device(), ignored_modules=lora,
                             use_orig_params=True)
        return model.to(device)  # embeddings, final norm, head and the LoRA modules (not sharded)

    def adapter_state(self, model) -> dict | None:
        """What ``save_pretrained(state_dict=)`` needs under FSDP (its own ``state_dict`` is collective);
        None otherwise (PEFT reads the model)."""
        if not self.fsdp:
            return None
        return {n.replace("_fsdp_wrapped_module.", ""): p.detach() for n, p in model.named_parameters()
                if "lora_" in n}

    def load_adapter(self, model, tensors: dict) -> None:
        from peft import set_peft_model_state_dict

        if not self.fsdp:
            set_peft_model_state_dict(model, tensors)
            return
        for name, p in model.named_parameters():
            key = name.replace("_fsdp_wrapped_module.", "").replace(".default", "")
            if key in tensors:
                p.data.copy_(tensors[key].to(p.device))

    # --- lifecycle -----------------------------------------------------------------------------------
    def lead(self, stage: str, run, cfg, device: str) -> None:
        """Rank 0: have the followers run ``stage`` ("sft" or "dpo") with this config."""
        self.broadcast_json({"op": stage, "run": str(Path(run.root).resolve()), "cfg": cfg.to_dict(),
                             "device": device})

    def close(self, failed: BaseException | None = None) -> None:
        """End the group: after success the followers are told to exit; after a failure (Ctrl-C, an error,
        a cancel) the followers this process started are stopped. A follower's own failure is raised in one
        line as the reason; a collective that failed because Ctrl-C stopped the followers is an interrupt."""
        if self.world == 1:
            return
        import torch.distributed as dist

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None  # a second Ctrl-C must
        try:  # not leave followers behind
            if failed is None:
                self.broadcast_json({"op": "exit"})
            codes = _stop(self.followers, terminate=failed is not None)
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        if failed is None or isinstance(failed, (KeyboardInterrupt, Cancelled, UserError)):
            return
        for rank, (code, log) in enumerate(zip(codes, self.logs), start=1):
            if code not in (0, 130, -signal.SIGTERM, -signal.SIGINT):
                log.seek(0)
                lines = [line for line in log.read().splitlines() if line.strip()]
                raise UserError(f"training process {rank} failed (exit {code}): "
                                f"{lines[-1] if lines else 'no message'}") from None
        if codes and any(code in (130, -signal.SIGINT) for code in codes):
            raise KeyboardInterrupt from None


def _stop(procs: list[subprocess.Popen], terminate: bool) -> list[int]:
    if terminate:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=60))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def _backend() -> str:
    import torch

    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _join(rank: int, world: int, local_rank: int, local_world: int, fsdp: bool, store=None) -> Group:
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if store is None and os.environ.get("VALIGN_DIST_PARENT"):  # started by ``start``: its store, unprefixed
        store = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world, is_master=False,
                              timeout=TIMEOUT)
    kwargs = {"store": store} if store is not None else {"init_method": "env://"}
    dist.init_process_group(_backend(), rank=rank, world_size=world, timeout=TIMEOUT, **kwargs)
    return Group(rank, world, local_rank, local_world, fsdp)


def start(cfg, world: int) -> Group:
    """Rank 0's group: joined to a launcher's processes, or with ``world - 1`` followers started here."""
    fsdp = bool(cfg.train.fsdp)
    if launched_world() > 1:
        return _join(0, world, _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", world), fsdp)
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    followers, logs = [], []
    for rank in range(1, world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   VALIGN_DIST_PARENT=str(os.getpid()), VALIGN_DIST_FSDP=str(int(fsdp)))
        log = tempfile.TemporaryFile(mode="w+")  # a follower's last words, if it fails
        followers.append(subprocess.Popen([sys.executable, "-m", "valign_edge.backends.torch_dist"],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env))
        logs.append(log)
    try:
        group = _join(0, world, 0, world, fsdp, store=store)
    except BaseException:
        for proc in followers:
            proc.kill()
        raise
    group.followers, group.logs = followers, logs
    return group


def _watch_parent() -> None:
    """A follower started by ``--processes`` exits when the process that started it is gone."""
    parent = _env_int("VALIGN_DIST_PARENT", 0)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def follow() -> int:
    """A follower's life: join the group, run each stage rank 0 names, exit when told to."""
    from valign_edge.config import RunConfig, apply_mapping
    from valign_edge.events import null_callback
    from valign_edge.runs.workspace import Run

    _watch_parent()
    rank = _env_int("RANK", 1)
    try:
        fsdp = _env_int("VALIGN_DIST_FSDP", 0) > 0
        group = _join(rank, launched_world(), _env_int("LOCAL_RANK", rank),
                      _env_int("LOCAL_WORLD_SIZE", launched_world()), fsdp)
        while True:
            command = group.broadcast_json(None)
            if command["op"] == "exit":
                return 0
            cfg = RunConfig()
            apply_mapping(cfg, command["cfg"])
            group.fsdp = bool(cfg.train.fsdp)
            from valign_edge.backends import trainer_class  # the registry (torch_trainer imports this module)

            trainer, run = trainer_class("torch")(cfg, command["device"], group), Run(Path(command["run"]))
            with contextlib.suppress(Cancelled):  # rank 0 cancelled too; it says what comes next
                if command["op"] == "sft":
                    trainer.sft(run, null_callback)
                else:
                    trainer.dpo(run, null_callback)
    except KeyboardInterrupt:
        return 130
    except UserError as exc:
        print(f"valign: training process {rank}: {exc}", file=sys.stderr)
        return 2
    finally:
        with contextlib.suppress(Exception):
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(follow())
