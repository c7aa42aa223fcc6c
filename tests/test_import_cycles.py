"""No import cycles among the project's modules, counting imports inside functions (the lazy ones too):
a cycle means two rooms of the code that cannot change apart. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the package it is installed as (pyproject.toml's package-dir)
PACKAGES = {"valign_edge": "valign_edge", "backends": "valign_edge.backends", "tui": "valign_edge.tui"}


def project_modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _all_nodes(tree: ast.AST):
    """Every node, the bodies of ``if TYPE_CHECKING:`` included: a module that names another's type for the
    checker depends on it as surely as one that calls it (the TUI's screens named the app that imports them)."""
    for node in ast.iter_child_nodes(tree):
        yield node
        yield from _all_nodes(node)


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file, in functions too."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in _all_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from package import module`` imports the module; ``from module import name`` the module
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name != "valign_edge":
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nfrom .b import f\nif TYPE_CHECKING:\n    from .c import T\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from .a import g\n")
    known = {"valign_edge.a", "valign_edge.b", "valign_edge.c"}
    graph = {"valign_edge.a": imports("valign_edge.a", a, known), "valign_edge.b": imports("valign_edge.b", b, known)}
    assert graph["valign_edge.a"] == {"valign_edge.b", "valign_edge.c"}  # a type-only import counts too
    assert cycles({**graph, "valign_edge.c": set()}) == [["valign_edge.a", "valign_edge.b"]]


def test_no_import_cycles():
    modules = project_modules()
    graph = {name: imports(name, path, set(modules)) for name, path in modules.items()}
    assert sum(len(v) for v in graph.values()) > 50  # the walk sees the project's imports
    assert cycles(graph) == []


# The layers, back to front: a module may import its own layer's package and the layers before it. The
# stages are packages of valign_edge; export, chat and pipeline use them; the CLI and the app are in front.
LAYERS = [
    ("the foundation", ["valign_edge.errors", "valign_edge.files", "valign_edge.events", "valign_edge.cpu",
                        "valign_edge.config", "valign_edge.console", "valign_edge.repetition", "valign_edge.advice",
                        "valign_edge.stores", "valign_edge.models", "valign_edge"]),
    ("the run folder", ["valign_edge.runs"]),
    ("the engines", ["valign_edge.backends"]),
    ("documents", ["valign_edge.documents"]),
    ("generation", ["valign_edge.generation"]),
    ("training", ["valign_edge.training"]),
    ("evaluation", ["valign_edge.evaluation"]),
    ("what a run makes", ["valign_edge.export", "valign_edge.chat", "valign_edge.pipeline"]),
    ("the front", ["valign_edge.commands", "valign_edge.cli", "valign_edge.tui"]),
]
# Imports against the flow, each for a reason; the test fails when one goes away too, so this list stays true.
AGAINST_THE_FLOW = {
    # the trainers execute training's plan with its loss, and every engine encodes with the one chat template
    ("valign_edge.backends.hf", "valign_edge.training.batching"),
    ("valign_edge.backends.llama_cpp", "valign_edge.training.batching"),
    ("valign_edge.backends.mlx_trainer", "valign_edge.training.batching"),
    ("valign_edge.backends.mlx_trainer", "valign_edge.training.plan"),
    ("valign_edge.backends.mlx_trainer", "valign_edge.training.preference"),
    ("valign_edge.backends.torch_trainer", "valign_edge.training.batching"),
    ("valign_edge.backends.torch_trainer", "valign_edge.training.plan"),
    ("valign_edge.backends.torch_trainer", "valign_edge.training.preference"),
    # a model given as a server's address is checked by the engine that talks to servers
    ("valign_edge.models", "valign_edge.backends.openai_teacher"),
    # a model's identity is hashed the way the run folder hashes everything
    ("valign_edge.models", "valign_edge.runs.workspace"),
}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the package or module of that layer the module belongs to), by the longest prefix."""
    found = max(((i, prefix) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
                 if module == prefix or module.startswith(prefix + ".")), key=lambda found: len(found[1]))
    return found


def against_the_flow(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Imports of a later layer, or of another stage of the same layer (stages do not import each other
    sideways: documents, generation, training and evaluation are each their own layer)."""
    out = set()
    for module, targets in graph.items():
        layer, home = layer_of(module)
        for target in targets:
            their_layer, _ = layer_of(target)
            if their_layer > layer:
                out.add((module, target))
    return out


def test_every_module_has_a_layer():
    for module in project_modules():
        assert layer_of(module)  # raises on a module of no layer


def test_imports_flow_from_the_front_to_the_foundation():
    modules = project_modules()
    graph = {name: imports(name, path, set(modules)) for name, path in modules.items()}
    assert against_the_flow(graph) == AGAINST_THE_FLOW
    # the check sees a backward import: the run folder importing a stage
    assert against_the_flow({"valign_edge.runs.purge": {"valign_edge.generation.synth"}}) == {
        ("valign_edge.runs.purge", "valign_edge.generation.synth")}
