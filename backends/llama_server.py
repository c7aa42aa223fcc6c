"""llama.cpp's own ``llama-server``, built from the same pinned source as the wheel
(``scripts/llama_server.sh``, cached in ``~/.cache/valign-edge/bin``) and started on a free loopback
port: what the server-teacher tests and ``bench/generate.py`` talk to."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from pathlib import Path

from valign_edge.errors import UserError
from valign_edge.files import note_written
from valign_edge.models import CACHE_DIR

VERSION = "0.3.36"  # llama-cpp-python's, as in scripts/setup.sh
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "llama_server.sh"


def cached_binary() -> Path | None:
    path = Path(os.environ.get("VALIGN_CACHE", CACHE_DIR)) / "bin" / f"llama-server-{VERSION}"
    return path if os.access(path, os.X_OK) else None


def binary(timeout: float = 7200) -> Path:
    """The cached llama-server, built first when missing (once per machine: minutes)."""
    path = cached_binary()
    if path is not None:
        return path
    if not SCRIPT.exists():
        raise UserError(f"llama-server is not built and {SCRIPT} is missing (build it from a source checkout)")
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise UserError(f"building llama-server failed: {proc.stderr.strip().splitlines()[-1:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``with LlamaServer(gguf, parallel=4) as server: server.url`` -> http://127.0.0.1:PORT/v1.

    ``parallel`` slots of ``ctx_per_slot`` tokens each; ``threads`` for decoding and prompts alike
    (0: llama.cpp's default). Bound to 127.0.0.1 only."""

    def __init__(self, model: str | Path, *, parallel: int = 1, threads: int = 0, ctx_per_slot: int = 2048,
                 log: Path | None = None, extra: tuple[str, ...] = ()):
        self.model, self.parallel, self.threads = Path(model), parallel, threads
        self.ctx = ctx_per_slot * parallel
        self.log, self.extra = log, extra
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, wait_s: float = 180) -> "LlamaServer":
        exe = binary()
        self.port = free_port()
        cmd = [str(exe), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(self.port),
               "--parallel", str(self.parallel), "-c", str(self.ctx), "--no-webui", *self.extra]
        if self.threads:
            cmd += ["-t", str(self.threads), "-tb", str(self.threads)]
        if self.log:
            note_written(self.log)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if self.log:
                out.close()  # the server holds its own copy
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"llama-server exited with code {self.proc.returncode} while starting"
                                + (f" (log: {self.log})" if self.log else ""))
            if self._healthy():
                return self
            time.sleep(0.25)
        self.stop()
        raise UserError(f"llama-server did not become ready within {wait_s:.0f}s")

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
