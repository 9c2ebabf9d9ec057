"""Where the benchmarks put their figures: JSON files under bench/ and a marked block of docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.processes import ROOT

BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": sys.version.split()[0]}


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def replace_block(marker: str, text: str, doc: Path = BENCHMARKS_DOC) -> None:
    """Put `text` between the two `marker` lines of `doc` (appended, markers and all, if it has none)."""
    body = doc.read_text() if doc.exists() else ""
    block = f"{marker}\n{text}\n{marker}"
    if marker in body:
        before, _, rest = body.partition(marker)
        body = before + block + rest.partition(marker)[2]
    else:
        body += "\n" + block + "\n"
    doc.write_text(body)
