"""A fast BLAS for MLX on a Linux CPU, loaded in-process before ``mlx.core``.

The mlx-cpu wheel links the reference (netlib) BLAS: a 576x1536 @ 1536x576 float32 matmul
takes ~1 s on these machines, against ~50 ms with OpenBLAS (20x). MLX resolves
``cblas_sgemm`` when ``mlx.core`` is imported; a library that was opened with
``RTLD_GLOBAL`` before that import sits in the global lookup scope and wins over the bundled
one, so no ``LD_PRELOAD`` and no re-exec of the process are needed, only the right order.

Which OpenBLAS: ``ngsolve-openblas`` (PyPI) is a DYNAMIC_ARCH build (Haswell, Zen,
SkylakeX, ... chosen at load time); ``cmeel-openblas`` is built for SkylakeX only and dies
with SIGILL on CPUs without AVX-512. Both need ``libgfortran.so.5``, which mlx-cpu bundles
under a mangled name, so a private folder of symlinks gives it the expected name next to the
library, where ngsolve's build looks (its rpath is ``$ORIGIN``; cmeel's has none, so it only
loads where the system has libgfortran).
Each candidate is tried once in a child process (a SIGILL there costs nothing) and the
verdict is cached per library and CPU.

Nothing here runs on macOS (Accelerate/Metal) or imports mlx.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_loaded: dict | None = None  # what enable() did, once per process

_PROBE = """
import ctypes, sys, time
ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import mlx.core as mx
a = mx.random.normal((576, 1536)); b = mx.random.normal((1536, 576)); mx.eval(a, b)
mx.eval(a @ b)
t = time.perf_counter(); mx.eval(a @ b); mx.eval(a @ b)
print((time.perf_counter() - t) / 2 * 1000)
"""


def _site_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).parent


def needed() -> bool:
    """True where MLX computes on a CPU with the wheel's reference BLAS (Linux mlx-cpu)."""
    if not sys.platform.startswith("linux"):
        return False
    site = _site_dir("mlx")
    return site is not None and (site / "mlx_cpu.libs").is_dir()


def candidates() -> list[Path]:
    """OpenBLAS builds from PyPI, best first: DYNAMIC_ARCH, then cmeel's SkylakeX-only one."""
    out = []
    for site, pattern in ((_site_dir("ngsolve_openblas"), "ngsolve_openblas/libopenblas*.so*"),
                          (_site_dir("mlx"), "cmeel.prefix/lib/libopenblas.so.0")):
        if site is not None:
            out += sorted(site.glob(pattern))
    return out


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def _cache_dir() -> Path:
    from valign_edge.models import CACHE_DIR

    return CACHE_DIR / "mlx-blas"


def link_dir(lib: Path) -> Path:
    """A folder where ``libopenblas.so.0`` finds ``libgfortran.so.5`` (mlx-cpu's own copy)."""
    libs = _site_dir("mlx") / "mlx_cpu.libs"
    key = hashlib.sha256(f"{lib.resolve()}|{libs.resolve()}".encode()).hexdigest()[:12]
    target = _cache_dir() / key
    links = {"libopenblas.so.0": lib.resolve()}
    for name in os.listdir(libs):
        if name.startswith("libgfortran"):
            links["libgfortran.so.5"] = libs / name
        if name.startswith("libquadmath"):
            links[name] = libs / name  # libgfortran's own (mangled) dependency
    target.mkdir(parents=True, exist_ok=True)
    for name, src in links.items():
        dst = target / name
        if dst.is_symlink() and Path(os.readlink(dst)) == src:
            continue
        tmp = target / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(src)
        os.replace(tmp, dst)
    return target


def probe(lib: Path) -> dict:
    """Load ``lib`` under MLX in a child process: does it run, and how fast is a matmul."""
    folder = link_dir(lib)
    stat = lib.resolve().stat()
    key = f"{lib.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{_cpu_id()}"
    cache = _cache_dir() / "probes.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(folder / "libopenblas.so.0")], env=env,
                              capture_output=True, text=True, timeout=120)
        ok = proc.returncode == 0
        result = {"ok": ok, "matmul_ms": round(float(proc.stdout.split()[-1]), 2) if ok else None,
                  "error": None if ok else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        result = {"ok": False, "matmul_ms": None, "error": str(exc)}
    known[key] = result
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1))
    os.replace(tmp, cache)
    return result


def _set_threads(handle, threads: int) -> None:
    try:
        handle.openblas_set_num_threads(ctypes.c_int(threads))
    except AttributeError:
        pass


def enable(threads: int = 0) -> dict:
    """Load a working OpenBLAS for MLX if this is a Linux CPU; say what happened.

    Must run before ``import mlx.core``. Idempotent; ``threads`` (0: one per core) can be
    changed on later calls.
    """
    global _loaded
    threads = threads or os.cpu_count() or 1
    if _loaded is not None:
        if _loaded.get("handle") is not None:
            _set_threads(_loaded["handle"], threads)
            _loaded["threads"] = threads
        return _public(_loaded)
    if not needed():
        _loaded = {"blas": "native", "reason": "not a Linux CPU build of MLX"}
        return _public(_loaded)
    if "mlx.core" in sys.modules:
        maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
        fast = any(str(lib.resolve()) in maps for lib in candidates())  # (numpy's own OpenBLAS does not count)
        _loaded = {"blas": "openblas" if fast else "reference",
                   "reason": "mlx was imported before the BLAS could be chosen" if not fast else "already loaded"}
        return _public(_loaded)
    tried = []
    for lib in candidates():
        verdict = probe(lib)
        if not verdict["ok"]:
            tried.append(f"{lib.name}: {verdict['error']}")
            continue
        # threads are set through the library, not OPENBLAS_NUM_THREADS, which child processes
        # (and their numpy) would inherit
        t = time.perf_counter()
        try:
            handle = ctypes.CDLL(str(link_dir(lib) / "libopenblas.so.0"), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            tried.append(f"{lib.name}: {exc}")
            continue
        _set_threads(handle, threads)
        core = ""
        try:
            handle.openblas_get_corename.restype = ctypes.c_char_p
            core = handle.openblas_get_corename().decode()
        except AttributeError:
            pass
        _loaded = {"blas": "openblas", "library": str(lib), "core": core, "threads": threads,
                   "probe_matmul_ms": verdict["matmul_ms"], "load_s": round(time.perf_counter() - t, 3),
                   "handle": handle, "reason": "OpenBLAS loaded before mlx (the wheel's reference BLAS is ~20x slower)"}
        return _public(_loaded)
    _loaded = {"blas": "reference", "reason": "no usable OpenBLAS (install valign-edge[mlx] on Linux x86_64)"
               + (f"; tried {'; '.join(tried)}" if tried else "")}
    return _public(_loaded)


def _public(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "handle"}


if __name__ == "__main__":
    # ``python -m valign_edge.backends.mlx_blas``: run by setup, so the first training run
    # does not pay for the probe; prints the choice.
    info = enable()
    print(f"MLX BLAS: {info['blas']} ({info.get('core') or info['reason']}"
          + (f", probe matmul {info['probe_matmul_ms']} ms" if info.get("probe_matmul_ms") else "") + ")")
