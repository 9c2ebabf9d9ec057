"""The named SQL blocks and the stores agree: every block of a dialect is run by some module of
`receiver/storage/` (unused blocks go), and every query name a store runs is a block of every dialect (a
misspelt name fails here, not on the one request that needs it)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import receiver.storage
from receiver.storage import postgres, sqlite

STORAGE = Path(receiver.storage.__file__).parent
# The interface, the backends and the choice among them: they run the stores' queries by whatever name
# they are given.
NOT_STORES = {"__init__.py", "base.py", "backends.py", "sqlfiles.py", "sqlite.py", "sqlite_peers.py"}
DIALECTS: dict[str, Callable[[], dict[str, str]]] = {"sqlite": sqlite.load_queries, "postgres": postgres.load_queries}


def stores() -> list[Path]:
    return sorted(path for path in STORAGE.glob("*.py") if path.name not in NOT_STORES)


def query_names(source: str) -> set[str]:
    """The name-like string literals of a store's code: its query names. Its other strings are docstrings,
    dict keys, subscripts (`row["id"]`), keyword arguments (`kind="deliver"`) or compared, and not counted."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr):
            skipped.add(id(node.value))  # a docstring
        elif isinstance(node, ast.Subscript):
            skipped.add(id(node.slice))
        elif isinstance(node, ast.Dict):
            skipped.update(id(key) for key in node.keys if key is not None)
        elif isinstance(node, ast.keyword):
            skipped.add(id(node.value))
        elif isinstance(node, ast.Compare):
            skipped.update(id(part) for part in (node.left, *node.comparators))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skipped
        and re.fullmatch(r"[a-z]\w*", node.value)
    }


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_block_is_run_by_the_storage_layer(dialect: str) -> None:
    """No named block sits unused: each is named, quoted, by a store or by the backend itself."""
    sources = "\n".join(path.read_text() for path in STORAGE.rglob("*.py"))
    unused = sorted(name for name in DIALECTS[dialect]() if f'"{name}"' not in sources)
    assert unused == [], f"blocks no module of receiver/storage/ runs: {unused}"


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("store", [path.name for path in stores()])
def test_every_query_a_store_runs_is_a_block(dialect: str, store: str) -> None:
    """Every query name in a store's code is a block of the dialect."""
    names = query_names((STORAGE / store).read_text())
    assert names, f"{store} runs no query"
    missing = sorted(names - set(DIALECTS[dialect]()))
    assert missing == [], f"{store} runs queries {dialect} lacks: {missing}"


def test_query_names_are_found_however_a_store_passes_them() -> None:
    """The scan finds a name passed straight, chosen by a condition, through a helper or from a dict, and
    nothing else."""
    source = '''
"""Docstring."""
_TABLES = {"jobs": "delete_jobs"}

def read(tx, subscription, table):
    """Docstring too."""
    tx.one("select_job", id=1)
    tx.one("select_subscription_circuit" if subscription else "select_circuit", target="t")
    _keys(tx, "retention_jobs", limit=None, kind="deliver")
    if row["status"] == "done":
        tx.execute(_TABLES[table])
'''
    assert query_names(source) == {
        "delete_jobs", "select_job", "select_subscription_circuit", "select_circuit", "retention_jobs",
    }  # fmt: skip
