"""No import cycles in either package, counting imports inside functions too.

An import moved into a function body hides a cycle from Python (it no longer fails at import
time) but not from the design: two modules that need each other are one module in two files. The
graph is read statically (``ast``), with every ``import`` at any depth (relative ones resolved) as
an edge except those under ``if TYPE_CHECKING:`` (annotations only). The client's modules must also never point at the
coordinator's.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "lada_client": ROOT / "client_sdk" / "lada_client",
    "lada_coordinator": ROOT / "coordinator" / "lada_coordinator",
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = (package, *path.relative_to(folder).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _absolute(name: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The module a ``from`` import names, relative ones (``from .x import y``) resolved."""
    if node.level == 0:
        return node.module
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}

    def visit(name: str, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(name, sub)
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and (module := _absolute(name, modules[name], child)):
                targets = [module, *(f"{module}.{alias.name}" for alias in child.names)]
            edges[name].update(t for t in targets if t in modules and t != name)
            visit(name, child)

    for name, path in modules.items():
        visit(name, ast.parse(path.read_text("utf-8"), str(path)))
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def _package_only(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges to a package's ``__init__`` are left out: a package imports its public names lazily."""
    return {a: {b for b in bs if b not in PACKAGES} for a, bs in edges.items()}


def test_no_import_cycles_at_any_depth() -> None:
    edges = _package_only(_edges(_modules()))
    assert _cycles(edges) == []


def test_the_graph_is_read() -> None:
    """The formerly hidden pairs are seen as one-way edges (so the test above is not vacuous)."""
    edges = _edges(_modules())
    assert "lada_client.models.tokenizer" in edges["lada_client.models.encoding"]
    assert "lada_client.models.encoding" not in edges["lada_client.models.tokenizer"]
    assert "lada_client.config" in edges["lada_client.training.backend"]
    assert "lada_client.training.backend" not in edges["lada_client.config"]
    assert "lada_client.training.lora" in edges["lada_client.training.trainers"]  # an import inside a function
    assert "lada_coordinator.allocation.cold_start" in edges["lada_coordinator.allocation.eenet"]  # a relative one


def test_the_client_never_points_at_the_coordinator() -> None:
    edges = _edges(_modules())
    assert (
        sorted(
            (a, b)
            for a, bs in edges.items()
            if a.startswith("lada_client")
            for b in bs
            if b.startswith("lada_coordinator")
        )
        == []
    )
