"""`python -m bench.purge`: webhook ingest while the retention worker purges 1M old rows, against the same run without.

A template database gets the run's submitted fal jobs (one per pre-signed webhook) plus `--rows` old rows
(final jobs finished 40 days ago, each with an inbox row, two done tasks, an event, a delivered delivery
and its attempt: six purgeable rows a job), written directly with sqlite3 in big transactions. Every run
gets a fresh copy of it. `receiver serve` is driven by wrk as in `bench.run`: flat out, then paced at half
the saturation rate, once with retention off (RECEIVER_RETENTION_DAYS=0) and once with the retention worker
purging from its start-up pass on. Then `receiver purge` alone on a copy gives the purge rate without load.
Results: bench/purge_results.json and the retention section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.processes import ROOT, clean_env, jwks_server
from bench.results import machine, replace_block, write_json
from bench.wrk import create_jobs, measure, receiver_server, write_requests
from receiver.images.blobs import LocalBlobStore
from receiver.ingest.signatures import public_jwk
from receiver.jobs.retention import Retention
from receiver.storage.base import Transaction, WriteFn
from receiver.storage.sqlite import Database

DAY_S = 86400.0
PURGEABLE = ("inbox", "tasks", "events", "deliveries", "delivery_attempts")
MARKER = "<!-- bench:purge -->"
RUNS = ("saturation, no purge", "saturation, purge running", "paced, no purge", "paced, purge running")


def fill_old_rows(path: Path, rows: int, chunk: int = 50_000) -> int:
    """Old final jobs with six purgeable rows each, until `rows` are written; returns the purgeable row count."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # a throw-away fixture: durability buys nothing here
    jobs = -(-rows // 6)
    old = time.time() - 40 * DAY_S
    for start in range(0, jobs, chunk):
        numbers = range(start, min(jobs, start + chunk))
        at = [(f"job_old{i:08d}", old + i * 0.01) for i in numbers]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (id, provider, model, status, input, created_at, updated_at, completed_at)"
            " VALUES (?1, 'fal', 'fal-ai/stepx-edit2', 'succeeded', '{}', ?2, ?2, ?2)",
            at,
        )
        conn.executemany(
            "INSERT INTO inbox (provider, kind, dedup_key, job_id, headers, body, outcome, received_at)"
            " VALUES ('fal', 'webhook', ?1, ?1, '{}', x'7b7d', 'applied', ?2)",
            at,
        )
        conn.executemany(
            "INSERT INTO tasks (kind, job_id, status, attempts, run_at, created_at, updated_at)"
            " VALUES (?1, ?2, 'done', 1, ?3, ?3, ?3)",
            [(kind, job, t) for job, t in at for kind in ("submit", "fetch_images")],
        )
        conn.executemany(
            "INSERT INTO events (id, type, job_id, payload, created_at)"
            " VALUES ('evt_' || ?1, 'job.succeeded', ?1, '{}', ?2)",
            at,
        )
        conn.executemany(
            "INSERT INTO deliveries (id, event_id, target, url, webhook_id, status, attempts, delivered_at,"
            " created_at, updated_at) VALUES ('dlv_' || ?1, 'evt_' || ?1, 'callback', 'https://example.invalid/',"
            " 'msg_' || ?1, 'delivered', 1, ?2, ?2, ?2)",
            at,
        )
        conn.executemany(
            "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, latency_ms)"
            " VALUES ('dlv_' || ?1, ?2, 200, 12.5)",
            at,
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return jobs * 6


def purgeable_left(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return sum(
            conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608 - fixed table names
            for table in PURGEABLE
        )
    finally:
        conn.close()


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="old purgeable rows in the database")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the four runs (medians reported)")
    parser.add_argument("--jobs", type=int, default=80_000, help="submitted jobs (distinct webhooks) per run")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    with (
        tempfile.TemporaryDirectory(prefix="receiver-purge-bench-") as tmp,
        jwks_server(Path(tmp), public_jwk(key)) as jwks_url,
    ):
        results = asyncio.run(run_all(args, key, Path(tmp), jwks_url))
    write_report(results)


async def run_all(args: argparse.Namespace, key: Ed25519PrivateKey, data: Path, jwks_url: str) -> dict[str, Any]:
    template = data / "template.db"
    print(f"template: {args.jobs} submitted jobs + {args.rows} old rows ...", flush=True)
    items = create_jobs(template, args.jobs)
    started = time.monotonic()
    purgeable = fill_old_rows(template, args.rows)
    fill_s = time.monotonic() - started
    requests_file = data / "webhooks.tsv"
    write_requests(requests_file, key, items, int(time.time()) + 120)
    results: dict[str, Any] = {
        "machine": machine(),
        "purgeable_rows": purgeable,
        "fill_s": round(fill_s, 1),
        "template_mb": round(template.stat().st_size / 2**20),
        "duration_s": args.duration,
    }

    async def run(name: str, *, retention: bool, rate: float = 0.0) -> dict[str, Any]:
        db = data / f"{name.replace(' ', '-')}.db"
        shutil.copyfile(template, db)
        server = receiver_server(
            data, jwks_url, RECEIVER_DATABASE_URL=f"sqlite:///{db}", RECEIVER_RETENTION_DAYS="30" if retention else "0"
        )
        print(f"{name} ...", flush=True)
        result = await measure(server, requests_file, duration_s=args.duration, offset=0, rate=rate)
        result["purged_rows"] = purgeable - purgeable_left(db) if retention else 0
        remove_database(db)
        return result

    # Alternating rounds (no purge, purge, purge, no purge) so drift of the shared host hits both alike.
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNS}
    rate = 0.0
    for number in range(args.repeat):
        rounds["saturation, no purge"].append(await run(f"saturation, no purge #{number}", retention=False))
        rate = rate or rounds["saturation, no purge"][0]["rps"] / 2
        rounds["saturation, purge running"].append(await run(f"saturation, purge running #{number}", retention=True))
        rounds["paced, purge running"].append(await run(f"paced, purge running #{number}", retention=True, rate=rate))
        rounds["paced, no purge"].append(await run(f"paced, no purge #{number}", retention=False, rate=rate))
    results["paced_rate"] = round(rate)
    results["rounds"] = rounds
    results["runs"] = {name: median_run(rounds[name]) for name in RUNS}
    results["purge_alone"] = purge_alone(template, data)
    results["batches"] = await batch_times(template, data)
    return results


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, plus every round's req/s."""
    keys = ("rps", "p50_ms", "p99_ms", "p999_ms", "non2xx", "socket_errors", "cores_used", "purged_rows")
    merged: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
    merged["rps_each"] = [run["rps"] for run in runs]
    return merged


def purge_alone(template: Path, data: Path) -> dict[str, Any]:
    """`receiver purge` on an idle copy: the purge's own rate (half of it paused, by design)."""
    db = data / "alone.db"
    shutil.copyfile(template, db)
    env = clean_env(RECEIVER_DATABASE_URL=f"sqlite:///{db}", RECEIVER_DATA_DIR=str(data))
    print("receiver purge alone ...", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "receiver", "purge", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    wall_s = time.monotonic() - started
    report = json.loads(done.stdout)
    deleted = sum(report["rows"].values())
    return {"rows": deleted, "wall_s": round(wall_s, 1), "rows_per_s": round(deleted / wall_s)}


async def batch_times(template: Path, data: Path) -> dict[str, Any]:
    """The retention worker in-process on an idle copy, every write timed: how long one batch holds the
    writer (its statements, and the round trip with the commit's fsync)."""
    db_path = data / "timed.db"
    shutil.copyfile(template, db_path)
    print("timed batches ...", flush=True)
    db = Database(db_path)
    await db.open()
    held: list[float] = []
    round_trips: list[float] = []
    write = db.write

    async def timed(fn: WriteFn[Any]) -> Any:
        def inner(tx: Transaction) -> Any:
            started = time.perf_counter()
            try:
                return fn(tx)
            finally:
                held.append(time.perf_counter() - started)

        started = time.perf_counter()
        result = await write(inner)
        round_trips.append(time.perf_counter() - started)
        return result

    db.write = timed  # type: ignore[method-assign]
    try:
        retention = Retention(
            db, LocalBlobStore(data / "blobs"), clock=time.time, retention_days=30, job_retention_days=None,
            interval_s=3600,
        )  # fmt: skip
        await retention.run_once()
    finally:
        await db.close()

    def spread(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)

        def pick(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

        return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(ordered[-1] * 1000, 1)}

    return {"writes": len(held), "held": spread(held), "round_trip": spread(round_trips)}


def write_report(results: dict[str, Any]) -> None:
    write_json(ROOT / "bench" / "purge_results.json", results)
    lines = [
        "| run (median of rounds) | req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | cores | old rows purged "
        "during the run | req/s per round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in results["runs"].items():
        lines.append(
            f"| {name} | {run['rps']:.0f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | {run['p999_ms']:.1f} | "
            f"{run['non2xx'] + run['socket_errors']:.0f} | {run['cores_used']} | {run['purged_rows']:,.0f} | "
            f"{', '.join(f'{rps:.0f}' for rps in run['rps_each'])} |"
        )
    alone, batches = results["purge_alone"], results["batches"]
    text = (
        "\n".join(lines)
        + f"\n\n{len(results['rounds'][RUNS[0]])} rounds of {results['duration_s']} s runs; paced runs ask for "
        f"{results['paced_rate']} req/s (half the first no-purge saturation rate). "
        f"Database: {results['purgeable_rows']:,} purgeable old rows ({results['template_mb']} MB). "
        f"`receiver purge` alone on an idle copy: {alone['rows']:,} rows in {alone['wall_s']} s "
        f"({alone['rows_per_s']:,} rows/s). In-process, {batches['writes']:,} writes of at most 500 rows: "
        f"statements held the writer p50 {batches['held']['p50_ms']} ms, p99 {batches['held']['p99_ms']} ms, "
        f"max {batches['held']['max_ms']} ms; with the commit (fsync) p50 {batches['round_trip']['p50_ms']} ms, "
        f"p99 {batches['round_trip']['p99_ms']} ms, max {batches['round_trip']['max_ms']} ms."
    )
    print(text)
    replace_block(MARKER, text)


if __name__ == "__main__":
    main()
