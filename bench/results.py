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


# --------------------------------------------------------------------------------------------------
# The shapes table of `bench.run`

#: Issue 10's targets. Ratios are of saturation rates in the same run; cores are summed over every process
#: of the shape (the database server's apart) and apply where the shape runs more than one process.
VERIFY_RATIO = {"sqlite": ("verify", 0.85), "pg2": ("verify2", 0.7)}
HALF_RATE_P99_MS = {"sqlite": 50.0}
MIN_CORES = 1.7
FLAT_MB = 5.0  # RSS growth per process over the sampled webhooks that still counts as flat (50 bytes each)


def ratio(results: dict[str, Any], name: str, baseline: str) -> float | None:
    shapes = results["shapes"]
    if baseline not in shapes or name not in shapes:
        return None
    value: float = round(shapes[name]["saturation"]["rps"] / shapes[baseline]["saturation"]["rps"], 2)
    return value


def checks(results: dict[str, Any], name: str) -> list[tuple[str, bool]]:
    """Each target of the shape `name` as (what was measured against what, met)."""
    run = results["shapes"][name]
    found: list[tuple[str, bool]] = []
    if name in VERIFY_RATIO:
        baseline, wanted = VERIFY_RATIO[name]
        value = ratio(results, name, baseline)
        if value is not None:
            label = results["shapes"][baseline]["name"].removeprefix("baseline-")
            found.append((f"{value} x {label} (>= {wanted})", value >= wanted))
    if name in HALF_RATE_P99_MS:
        p99 = run["half_rate"]["p99_ms"]
        found.append((f"50%-rate p99 {p99:.0f} ms (<= {HALF_RATE_P99_MS[name]:.0f})", p99 <= HALF_RATE_P99_MS[name]))
    sat = run["saturation"]
    if len(sat["processes"]) > 1:
        found.append((f"{sat['cores_used']} cores (>= {MIN_CORES})", sat["cores_used"] >= MIN_CORES))
    drain = run["drain"]
    found.append(("drained" if drain["drained"] else f"not drained in {drain['drain_s']:.0f} s", drain["drained"]))
    grown = {label: mb for label, mb in run["rss"]["growth_mb"].items() if mb > FLAT_MB}
    if grown:
        found.append(("RSS grew: " + ", ".join(f"{label} +{mb} MB" for label, mb in grown.items()), False))
    else:
        found.append((f"RSS flat (< {FLAT_MB:g} MB) in every process", True))
    return found


def target_cell(results: dict[str, Any], name: str) -> str:
    found = checks(results, name)
    missed = [label for label, ok in found if not ok]
    if missed:
        return "**not met**: " + "; ".join(missed)
    return "met: " + "; ".join(label for label, _ in found)


def latencies(run: dict[str, Any]) -> str:
    return f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f} / {run['p999_ms']:.1f}"


def render_shapes(results: dict[str, Any]) -> str:
    """Markdown: one row per shape (rates, ratios, latency, cores, drain, targets), then one row per process
    of each receiver shape (cores, peak RSS, RSS over the sampled webhooks)."""
    lines = [
        "| shape | sat. req/s | x verify | x verify x2 | p50 / p99 / p99.9 ms | non-2xx | cores | PostgreSQL cores "
        "| 50% rate: req/s, p50 / p99 / p99.9 ms | drain after the burst | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in results["shapes"].items():
        sat, half = run["saturation"], run.get("half_rate")
        paced = f"{half['rate']}: {latencies(half)}" if half else "-"
        drain = "-"
        if "drain" in run:
            d = run["drain"]
            drain = f"{d['drain_s']:.1f} s ({d['events']} jobs)" if d["drained"] else f"> {d['drain_s']:.0f} s"
        v1, v2 = ratio(results, name, "verify"), ratio(results, name, "verify2")
        lines.append(
            f"| {run['name']} | {sat['rps']:.0f} | {v1 if v1 is not None else '-'} | {v2 if v2 is not None else '-'} "
            f"| {latencies(sat)} | {sat['non2xx'] + sat['socket_errors']} | {sat['cores_used']} "
            f"| {sat.get('database_cores', '-')} | {paced} | {drain} "
            f"| {target_cell(results, name) if 'drain' in run else '-'} |"
        )
    lines += [
        "",
        "| shape | process | cores at saturation | peak RSS MB | RSS MB after the burst -> after the sampled webhooks "
        "|",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in results["shapes"].values():
        if "rss" not in run:
            continue
        samples, webhooks = run["rss"]["samples"], run["rss"]["webhooks"]
        for label, figures in run["saturation"]["processes"].items():
            first, last = samples[0]["rss_mb"].get(label), samples[-1]["rss_mb"].get(label)
            lines.append(
                f"| {run['name']} | {label} | {figures['cores']} | {figures['peak_rss_mb']} "
                f"| {first} -> {last} over {webhooks} webhooks |"
            )
    return "\n".join(lines)
