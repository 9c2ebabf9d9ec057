"""The package's shape, checked: stage folders import each other without a cycle, and only `receiver/storage/`
speaks to the database driver or holds SQL (README "Where each stage lives")."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import receiver

PACKAGE = Path(receiver.__file__).parent
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|PRAGMA\s+\w+)\b", re.IGNORECASE)


def modules() -> list[tuple[str, Path, ast.Module]]:
    """(folder, path, tree) of every module; the folder is the first level below `receiver/`, or "(top)"."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        folder = relative.parts[0] if len(relative.parts) > 1 else "(top)"
        found.append((folder, path, ast.parse(path.read_text(), filename=str(path))))
    return found


def imported(tree: ast.Module) -> set[str]:
    """Every `receiver.x...` module a tree imports, anywhere (type-only imports included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("receiver.")}


def folder_graph() -> dict[str, set[str]]:
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    graph: dict[str, set[str]] = defaultdict(set)
    for folder, _, tree in modules():
        if folder == "(top)":
            continue
        for name in imported(tree):
            target = name.split(".")[1]
            if target in folders and target != folder:
                graph[folder].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one folder (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_stage_folders_import_each_other_without_a_cycle() -> None:
    graph = folder_graph()
    assert graph["storage"] <= {"support"}, graph["storage"]
    assert cycles(graph) == [], {folder: sorted(targets) for folder, targets in graph.items()}


def test_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a made-up graph with a loop is reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_storage_speaks_to_the_driver_or_holds_sql() -> None:
    offenders = []
    for folder, path, tree in modules():
        if folder == "storage":
            continue
        names = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        if {"sqlite3", "aiosqlite"} & names:
            offenders.append(f"{path}: imports a database driver")
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                offenders.append(f"{path}:{node.lineno}: SQL text {node.value[:60]!r}")
    assert offenders == []


def test_only_storage_picks_a_backend() -> None:
    """Outside `receiver/storage/` no module imports a backend (`receiver.storage.sqlite`): the wiring, the CLI
    and the purge open the database the settings' URL names through `receiver.storage.backends`."""
    backends = {"receiver.storage.sqlite"}
    offenders = [
        f"{path}: imports {sorted(backends & imported(tree))}"
        for folder, path, tree in modules()
        if folder != "storage" and backends & imported(tree)
    ]
    assert offenders == []
