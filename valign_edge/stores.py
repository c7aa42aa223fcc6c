"""GGUF models already on the machine: Ollama's store, LM Studio's models folder, the Hugging Face hub
cache and the folders in ``VALIGN_MODELS_PATH``.

Each is described from its GGUF header alone (architecture, parameter count, quantization, whether
it has a chat template), read with a small reader of the GGUF format: the file is opened read-only,
the tensor data is never read, and nothing is copied. ``gguf.GGUFReader`` took 1.8 s on the 98 MB
SmolLM2 file (it builds a numpy array per vocabulary entry) and llama.cpp's vocab-only load 0.65 s;
this reader skips the vocabulary and takes milliseconds, so listing a store of many models is quick.

Names: ``ollama:NAME:TAG`` (``ollama:user/NAME:TAG`` outside the library namespace),
``lmstudio:PUBLISHER/REPO/FILE.gguf``, ``hf:ORG/REPO/FILE.gguf``; a folder from
``VALIGN_MODELS_PATH`` lists its files by path. All of them, and plain paths, work as ``--teacher``
or ``--student`` wherever a catalog preset does (``models.resolve``).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from valign_edge.errors import UserError

PREFIXES = ("ollama:", "lmstudio:", "hf:")
# llama.cpp's LLAMA_FTYPE_* (general.file_type).
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
              18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
              25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
              32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4"}
# GGUF value types: fixed sizes (struct format) of the scalar ones; 8 is a string, 9 an array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


@dataclass
class LocalModel:
    name: str  # how to ask for it: ollama:NAME:TAG, lmstudio:..., hf:..., or the path
    store: str  # ollama, lmstudio, hf, path
    path: Path
    size: int
    architecture: str = "?"
    parameters: int = 0
    quantization: str = "?"
    chat_template: bool = False
    error: str = ""


class _Header:
    """Sequential reads over a GGUF header (little-endian)."""

    def __init__(self, f):
        self.f = f

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("truncated header")
        return struct.unpack("<" + fmt, data)[0]

    def string(self, keep: bool = True) -> str | None:
        n = self.read("Q")
        if n > 1 << 26:
            raise ValueError("implausible string length")
        if not keep:
            self.f.seek(n, os.SEEK_CUR)
            return None
        return self.f.read(n).decode("utf-8", "replace")

    def value(self, vtype: int, keep: bool):
        if vtype in SCALARS:
            return self.read(SCALARS[vtype])
        if vtype == 8:
            return self.string(keep)
        if vtype == 9:
            item, count = self.read("I"), self.read("Q")
            if item in SCALARS:  # arrays of numbers: skip in one seek
                self.f.seek(struct.calcsize("<" + SCALARS[item]) * count, os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.value(item, False)
            return None
        raise ValueError(f"unknown GGUF value type {vtype}")


def read_header(path: Path) -> dict:
    """GGUF key/value metadata (arrays left out) plus ``parameters``: the elements of all tensors."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        h = _Header(f)
        version = h.read("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = h.read("Q"), h.read("Q")
        meta: dict = {}
        for _ in range(n_kv):
            key = h.string()
            vtype = h.read("I")
            # the chat template can be long, but it is the one string we need besides short ones
            meta[key] = h.value(vtype, keep=not key.startswith("tokenizer.ggml."))
        params = 0
        for _ in range(n_tensors):
            h.string(keep=False)
            dims = [h.read("Q") for _ in range(h.read("I"))]
            h.read("I")  # ggml type
            h.read("Q")  # offset
            n = 1
            for d in dims:
                n *= d
            params += n
    meta["parameters"] = params
    return meta


def describe(path: Path, name: str, store: str) -> LocalModel:
    size = path.stat().st_size
    model = LocalModel(name, store, path, size)
    try:
        meta = read_header(path)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        model.error = str(exc) or type(exc).__name__
        return model
    model.architecture = str(meta.get("general.architecture") or "?")
    model.parameters = int(meta["parameters"])
    ftype = meta.get("general.file_type")
    model.quantization = FILE_TYPES.get(ftype, f"type {ftype}" if ftype is not None else "?")
    model.chat_template = bool(meta.get("tokenizer.chat_template"))
    return model


def _home() -> Path:
    return Path.home()


def ollama_roots() -> list[Path]:
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"]).expanduser()]
    return [_home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def lmstudio_roots() -> list[Path]:
    return [_home() / ".lmstudio" / "models", _home() / ".cache" / "lm-studio" / "models"]


def hf_roots() -> list[Path]:
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"]).expanduser()]
    if os.environ.get("HF_HOME"):
        return [Path(os.environ["HF_HOME"]).expanduser() / "hub"]
    return [_home() / ".cache" / "huggingface" / "hub"]


def _usable(path: Path) -> bool:
    """A model GGUF: not a vision projector, not the 2nd..nth shard of a split model."""
    name = path.name.lower()
    if "mmproj" in name:
        return False
    import re

    m = re.search(r"-(\d{5})-of-\d{5}\.gguf$", name)
    return m is None or m.group(1) == "00001"


def _ollama_blob(root: Path, manifest: Path) -> Path | None:
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
    except (OSError, ValueError, AttributeError):
        return None
    for layer in layers:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            blob = root / "blobs" / str(layer.get("digest", "")).replace(":", "-")
            return blob if blob.is_file() else None
    return None


def _ollama_name(rel: Path) -> str:
    """manifests/HOST/NAMESPACE/MODEL/TAG -> NAME:TAG, the way ``ollama list`` shows it."""
    parts = rel.parts
    if len(parts) < 4:
        return ":".join(parts)
    host, namespace, model, tag = parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1]
    if host == "registry.ollama.ai":
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def ollama_models() -> list[tuple[str, Path]]:
    found = []
    for root in ollama_roots():
        manifests = root / "manifests"
        if not manifests.is_dir():
            continue
        for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
            blob = _ollama_blob(root, manifest)
            if blob is not None:
                found.append((f"ollama:{_ollama_name(manifest.relative_to(manifests))}", blob))
    return found


def _gguf_files(root: Path, depth: int) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if len(Path(dirpath).relative_to(root).parts) >= depth:
            dirnames[:] = []
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(".gguf")]
    return [p for p in out if _usable(p)]


def lmstudio_models() -> list[tuple[str, Path]]:
    found = []
    for root in lmstudio_roots():
        if root.is_dir():
            found += [(f"lmstudio:{p.relative_to(root).as_posix()}", p) for p in _gguf_files(root, 3)]
    return found


def hf_models() -> list[tuple[str, Path]]:
    found = []
    for root in hf_roots():
        if not root.is_dir():
            continue
        for repo in sorted(root.glob("models--*")):
            repo_id = repo.name[len("models--"):].replace("--", "/")
            seen: set[str] = set()
            # newest snapshot first: one entry per file name
            for snap in sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True):
                for path in _gguf_files(snap, 3):
                    rel = path.relative_to(snap).as_posix()
                    if rel not in seen and path.exists():
                        seen.add(rel)
                        found.append((f"hf:{repo_id}/{rel}", path))
    return found


def path_models() -> list[tuple[str, Path]]:
    found = []
    for folder in filter(None, os.environ.get("VALIGN_MODELS_PATH", "").split(os.pathsep)):
        root = Path(folder).expanduser()
        if root.is_file() and root.suffix.lower() == ".gguf":
            found.append((str(root), root))
        elif root.is_dir():
            found += [(str(p), p) for p in _gguf_files(root, 4)]
    return found


def local_models() -> list[LocalModel]:
    """Every GGUF model in the known stores, described from its header (skipping vision projectors)."""
    out = []
    for store, finder in (("ollama", ollama_models), ("lmstudio", lmstudio_models), ("hf", hf_models),
                          ("path", path_models)):
        try:
            entries = finder()
        except OSError:
            continue  # an unreadable store is skipped, not fatal
        for name, path in entries:
            model = describe(path, name, store)
            if model.architecture != "clip":
                out.append(model)
    return out


def is_store_name(spec: str) -> bool:
    return spec.startswith(PREFIXES)


def find_gguf(spec: str, role: str = "model") -> Path:
    """``ollama:NAME[:TAG]``, ``lmstudio:...`` or ``hf:...`` -> the GGUF file (read in place)."""
    store = spec.split(":", 1)[0]
    finder = {"ollama": ollama_models, "lmstudio": lmstudio_models, "hf": hf_models}[store]
    entries = finder()
    wanted = spec
    if store == "ollama" and spec.count(":") == 1:
        wanted = spec + ":latest"  # like ollama, a name without a tag means :latest
    for name, path in entries:
        if name == wanted:
            return path
    # lmstudio:PUBLISHER/REPO or hf:ORG/REPO naming a folder that holds exactly one model
    inside = [path for name, path in entries if name.startswith(spec.rstrip("/") + "/")]
    if store != "ollama" and len(inside) == 1:
        return inside[0]
    if len(inside) > 1:
        options = ", ".join(name for name, _ in entries if name.startswith(spec.rstrip("/") + "/"))
        raise UserError(f"{role} {spec!r} holds several models; name one: {options}")
    known = [name for name, _ in entries]
    hint = f" (found: {', '.join(known[:6])}{', ...' if len(known) > 6 else ''})" if known else \
        f" ({store} store not found or empty)"
    raise UserError(f"{role} {spec!r} is not in the local {store} store{hint}; see: valign models list")


def human_size(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def human_params(n: int) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def print_local_models() -> None:
    models = local_models()
    print(f"\nGGUF models found on this machine ({len(models)}; use the name as --teacher or --student):")
    if not models:
        print("  none in Ollama's store, LM Studio's folder, the Hugging Face cache or VALIGN_MODELS_PATH")
    for m in models:
        if m.error:
            print(f"  {m.name}  unreadable: {m.error}")
            continue
        chat = "chat template" if m.chat_template else "no chat template (base model: not a teacher)"
        print(f"  {m.name}\n      {human_size(m.size)}  {m.architecture}  {human_params(m.parameters)} parameters  "
              f"{m.quantization}  {chat}\n      {m.path}")
