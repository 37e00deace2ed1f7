"""The package's import graph: no cycle, and no import across the layer rules.

Every ``import``/``from ... import`` in every module counts, top-level or inside a function
(a lazy import is still a dependency), except those under ``if TYPE_CHECKING:`` (they never
run). ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``. The layers (DEVELOPERS.md), from the bottom:

* core (``ttc.*``) imports none of ``ttc.strategies``, ``ttc.verifiers``, ``ttc.engine``,
  ``ttc.evals``, except the wiring modules (:data:`WIRING`: CLI, pipeline, server, sharing,
  bench);
* ``ttc.engine`` imports no strategy, verifier or eval module;
* ``ttc.verifiers`` imports no strategy or eval module and only the engine's public
  modules (not ``ttc.engine.native.*`` internals, nor its benchmarks);
* ``ttc.strategies`` imports only core modules (the Generator/Verifier protocols, types).

How it was checked that the test can fail: putting ``from ttc.cli import app`` back into a
function of ``evals/cli.py`` (the cycle this test was written against) fails
``test_no_import_cycle`` with ``ttc.cli -> ttc.evals.cli -> ttc.cli``; adding
``from ttc.engine.native.kv_cache import PagePool`` to a strategy fails
``test_layer_rules``; the two synthetic-package tests below run the same checker on a
package with a planted cycle and a planted violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"ttc": "ttc", "ttc.strategies": "strategies", "ttc.verifiers": "verifiers",
           "ttc.engine": "engine", "ttc.evals": "evals"}
LAYERS = ("strategies", "verifiers", "engine", "evals")
WIRING = {"ttc.cli", "ttc.pipeline", "ttc.server", "ttc.service", "ttc.sharing", "ttc.bench"}
ENGINE_PRIVATE = ("ttc.engine.native.", "ttc.engine.bench", "ttc.engine.vllm_bench")


def modules(folders: dict[str, str], root: Path) -> dict[str, Path]:
    out = {}
    for package, folder in folders.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(folders: dict[str, str], root: Path) -> nx.DiGraph:
    mods = modules(folders, root)
    graph = nx.DiGraph()
    graph.add_nodes_from(mods)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target)
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def violations(graph: nx.DiGraph) -> list[str]:
    bad = []
    for src, dst in sorted(graph.edges):
        a, b = layer(src), layer(dst)
        if a == b or b == "core":
            continue
        allowed = ((a == "core" and src in WIRING) or a == "evals"
                   or (a == "verifiers" and b == "engine" and not dst.startswith(ENGINE_PRIVATE)))
        if not allowed:
            bad.append(f"{src} -> {dst}")
    return bad


def cycles(graph: nx.DiGraph) -> list[str]:
    return [" -> ".join([*c, c[0]]) for c in nx.simple_cycles(graph)]


def test_no_import_cycle():
    graph = import_graph(FOLDERS, ROOT)
    assert graph.number_of_nodes() > 100 and graph.number_of_edges() > 300
    assert cycles(graph) == []


def test_layer_rules():
    assert violations(import_graph(FOLDERS, ROOT)) == []


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, str]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"ttc": "ttc", "ttc.strategies": "strategies", "ttc.engine": "engine"}


def test_the_checker_finds_a_planted_lazy_cycle(tmp_path):
    folders = _package(tmp_path, {
        "ttc/__init__.py": "", "ttc/a.py": "from ttc import b\n",
        "ttc/b.py": "def f():\n    from ttc.a import x\n",
        "ttc/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ttc.d import y\n",
        "ttc/d.py": "import ttc.c\n",
        "strategies/__init__.py": "", "engine/__init__.py": ""})
    found = cycles(import_graph(folders, tmp_path))
    assert len(found) == 1 and set(found[0].split(" -> ")) == {"ttc.a", "ttc.b"}


def test_the_checker_finds_a_planted_layer_violation(tmp_path):
    folders = _package(tmp_path, {
        "ttc/__init__.py": "", "ttc/types.py": "",
        "strategies/__init__.py": "", "strategies/beam.py":
            "from ttc.types import X\nfrom ttc.engine.native.kv_cache import PagePool\n",
        "engine/__init__.py": "", "engine/native/__init__.py": "",
        "engine/native/kv_cache.py": "from ttc.strategies import beam\n"})
    graph = import_graph(folders, tmp_path)
    assert violations(graph) == ["ttc.engine.native.kv_cache -> ttc.strategies.beam",
                                 "ttc.strategies.beam -> ttc.engine.native.kv_cache"]
