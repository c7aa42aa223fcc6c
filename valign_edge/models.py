"""The model catalog: resolve a preset name or a local path to a model file; verify hashes."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from valign_edge.errors import UserError

CATALOG_PATH = Path(__file__).resolve().parent.parent / "models" / "catalog.toml"
CACHE_DIR = Path.home() / ".cache" / "valign-edge"
GGUF_MAGIC = b"GGUF"


@dataclass
class ModelRef:
    name: str  # preset name, or the file/folder name for local paths
    path: Path
    kind: str  # "gguf" or "hf"
    preset: dict = field(default_factory=dict)


def catalog() -> dict[str, dict]:
    try:
        return tomllib.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def preset_path(name: str, entry: dict, materialize: bool = True) -> Path | None:
    """Where a preset's weights are on this machine, or None when its package is not installed."""
    pkg = _package_dir(entry["module"])
    if pkg is None:
        return None
    if entry.get("kind") == "hf":
        import importlib

        return Path(importlib.import_module(entry["module"]).get_model_path())
    if entry.get("assemble"):
        target = CACHE_DIR / "models" / entry["file"]
        if target.exists() or not materialize:
            return target if target.exists() else None
        import importlib

        return Path(importlib.import_module(entry["module"]).assemble(target))
    path = pkg / entry["file"]
    return path if path.exists() else None


def check_gguf(path: Path) -> None:
    """Cheap checks that a file can be a GGUF model before handing it to llama.cpp."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UserError(f"cannot read model {path}: {exc.strerror}") from None
    if head[:4] != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (bad magic bytes)")
    if path.stat().st_size < 1024:
        raise UserError(f"{path} is too small to be a GGUF model (truncated?)")


def resolve(spec: str, role: str = "model", allow_remote: bool = False) -> ModelRef:
    """A preset name, a GGUF in a local store (``stores``), a GGUF file or an HF folder (with config.json
    and safetensors) -> ModelRef. A server's URL only on this machine, unless ``allow_remote``."""
    from valign_edge import stores
    from valign_edge.backends import openai_teacher

    if openai_teacher.is_server(spec):  # http://HOST:PORT/v1: loopback only unless --allow-remote
        url = openai_teacher.server_url(spec, role, allow_remote)
        return ModelRef(url, Path(os.devnull), "server", {"url": url})
    if stores.is_store_name(spec):  # ollama:NAME:TAG, lmstudio:..., hf:...: a GGUF read in place
        path = stores.find_gguf(spec, role)
        check_gguf(path)
        return ModelRef(spec, path, "gguf")
    entries = catalog()
    if spec in entries:
        entry = entries[spec]
        roles = entry.get("roles", [])
        if role in ROLES and roles and role not in roles:
            fit = ", ".join(name for name, e in entries.items() if role in e.get("roles", []))
            raise UserError(f"{spec!r} serves as {'/'.join(roles)} only, not as {role}; a {role} is one of: {fit}, "
                            "or a GGUF file")
        path = preset_path(spec, entry)
        if path is None:
            raise UserError(f"{role} preset {spec!r} is not installed; run: {entry.get('install', 'make setup')}")
        return ModelRef(spec, path, entry.get("kind", "gguf"), entry)
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(entries) or "none"
        raise UserError(f"{role} {spec!r} is neither a catalog preset ({known}) nor an existing path")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{role} folder {path} has no config.json (not a Hugging Face model folder)")
        if not any(path.glob("*.safetensors")):
            raise UserError(f"{role} folder {path} has no *.safetensors weights (only safetensors are loaded)")
        if role in ("student", "teacher"):
            _check_causal_lm(path, role)
        return ModelRef(path.name, path, "hf")
    check_gguf(path)
    return ModelRef(path.name, path, "gguf")


ROLES = ("teacher", "student", "judge", "embedder")


def _check_causal_lm(folder: Path, role: str) -> None:
    """A student or teacher folder must hold a model that writes text (a ``...ForCausalLM``), not an encoder."""
    import json

    try:
        arches = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{role} folder {folder}: config.json is not readable JSON") from None
    if arches and not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in arches):
        raise UserError(f"{role} folder {folder} holds a {', '.join(map(str, arches))}, not a model that writes "
                        "text (a ...ForCausalLM)")


def model_id(ref: ModelRef) -> str:
    """Identify weights without hashing gigabytes: catalog hash, else name + size + mtime."""
    from valign_edge.runs.workspace import hash_obj

    if ref.kind == "server":  # the model's name is in the generate settings (generate.teacher_model)
        return hash_obj(["server", ref.preset["url"]])
    if ref.preset.get("sha256"):
        return ref.preset["sha256"][:16]
    st = ref.path.stat()
    return hash_obj([str(ref.path.resolve()), st.st_size, int(st.st_mtime)])


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_models() -> list[dict]:
    rows = []
    for name, entry in catalog().items():
        path = preset_path(name, entry, materialize=False)
        installed = path is not None or (entry.get("assemble") and _package_dir(entry["module"]) is not None)
        rows.append({"name": name, "roles": entry.get("roles", []), "size_mb": entry.get("size_mb"),
                     "license": entry.get("license", ""), "installed": bool(installed),
                     "path": str(path) if path else "", "description": entry.get("description", ""),
                     "install": entry.get("install", "")})
    return rows


def verify_models() -> list[dict]:
    """Hash every installed GGUF preset against the catalog."""
    out = []
    for name, entry in catalog().items():
        if "sha256" not in entry:
            continue
        path = preset_path(name, entry)
        if path is None:
            out.append({"name": name, "status": "not installed"})
            continue
        ok = sha256_file(path) == entry["sha256"]
        out.append({"name": name, "status": "ok" if ok else "MISMATCH", "path": str(path)})
    return out
