"""The import graph runs one way: a leaf core, actors and edges on it, roots on top.

Read from the source with `ast`, so it holds for every module whether or not a test
imports it. Imports under `if TYPE_CHECKING:` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("orchestrator", "actors")
EDGES = (
    "orchestrator.db",
    "orchestrator.providers",
    "orchestrator.outputs",
    "orchestrator.http",
    "orchestrator.simulator",
    "orchestrator.transport",
    "orchestrator.tracing",
)
ROOTS = ("orchestrator.daemon", "orchestrator.cli", "orchestrator.demo")
# Known debts, each to be paid; none today.
KNOWN: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for package in OURS:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _runtime_imports(path: Path, name: str) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                yield base + ("." + node.module if node.module else "")
            elif node.module:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {
            target
            for target in _runtime_imports(path, name)
            if target.split(".")[0] in OURS and target != name
        }
    return graph


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations(sources: tuple[str, ...], allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    found = [
        (module, target)
        for module, targets in _graph().items()
        if any(_within(module, source) for source in sources)
        for target in targets
        if not any(_within(target, ok) for ok in allowed)
    ]
    return sorted(found)


def test_the_core_imports_nothing_of_ours():
    assert _violations(("orchestrator.core",), ("orchestrator.core",)) == []


def test_the_actors_see_the_world_only_through_the_core():
    assert _violations(("actors",), ("actors", "orchestrator.core")) == []


def test_no_edge_imports_the_actors_or_another_edge():
    found = []
    for edge in EDGES:
        others = tuple(e for e in EDGES if e != edge)
        for module, target in _violations((edge,), ("orchestrator",)):
            found.append((module, target))
        for module, targets in _graph().items():
            if _within(module, edge):
                found += [(module, t) for t in targets if any(_within(t, o) for o in others)]
    allowed_edge_pairs = {
        # The composition of an HTTP client for the providers and the simulator's sender.
        ("orchestrator.providers._http", "orchestrator.transport"),
        ("orchestrator.simulator._server", "orchestrator.transport"),
    }
    assert sorted(set(found) - allowed_edge_pairs) == []


def test_only_the_composition_roots_import_the_concrete_adapters():
    importers = sorted(
        module
        for module, targets in _graph().items()
        if any(_within(t, "orchestrator.providers") for t in targets)
        and not _within(module, "orchestrator.providers")
    )
    assert [m for m in importers if m not in ROOTS] == []


def test_the_simulator_owns_its_wire_vocabulary():
    assert (
        _violations(
            ("orchestrator.simulator",),
            ("orchestrator.simulator", "orchestrator.asgi", "orchestrator.transport"),
        )
        == []
    )


def test_known_debts_are_still_debts_and_nothing_else_reaches_into_the_actors():
    reaching = {
        (module, "actors")
        for module, targets in _graph().items()
        if not _within(module, "actors")
        and module not in ROOTS
        and any(_within(t, "actors") for t in targets)
    }
    allowed = KNOWN | {("orchestrator.intake", "actors"), ("orchestrator.sweeper", "actors")}
    assert reaching <= allowed
    assert reaching >= KNOWN  # a paid debt is removed from KNOWN


def test_there_are_no_import_cycles():
    graph = _graph()
    modules = set(graph)

    def resolve(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {r for t in ts if (r := resolve(t)) and r != m} for m, ts in graph.items()}
    # A package's front door importing its own private modules is how packages work.
    for module in list(edges):
        edges[module] = {t for t in edges[module] if not _within(module, t) or module == t}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert "actors._job" in edges["actors._user"]  # the scan sees real imports
    assert cycles == []
