"""End-to-end latency at a steady job rate: submit -> fal webhook -> images stored -> job.succeeded delivered.

`python -m bench.e2e --rate 200 --duration 10`: the fal emulator and a signature-checking subscriber
run in this process, `receiver serve` in a subprocess; jobs are created at a steady rate through the
API. Latency per job = the subscriber's `job.succeeded` delivery time minus the webhook's arrival
(both read from the receiver's database: `inbox.received_at`, `deliveries.delivered_at`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.results import write_json
from bench.rig import MODELS, Subscriber, job_body, running_rig, tiny_png
from bench.snapshot import connect_ro
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run(rate: float, duration_s: float, settle_s: float) -> dict[str, Any]:
    emulator = FalEmulator(FalEmulatorConfig(queue_s=0.05, inference_s=0.2, time_scale=0.01))
    subscriber = Subscriber(random.Random(1), flaky=0.0)
    with tempfile.TemporaryDirectory(prefix="receiver-e2e-") as tmp:
        workdir = Path(tmp)
        settings = {"RECEIVER_RECONCILE_AFTER_S": "60"}  # the webhooks carry this run
        async with running_rig(workdir, emulator, subscriber, job_timeout_s=600, **settings) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                await subscriber.subscribe(client, "main", ["job.succeeded"])
                job_ids = await create_at_rate(client, rate, duration_s)
                await wait_notified(subscriber, len(job_ids), settle_s)
            await server.stop(signal.SIGTERM)
            await emulator.aclose()
            return measure(workdir / "receiver.db", job_ids, subscriber, rate, duration_s)


async def wait_notified(subscriber: Subscriber, jobs: int, timeout_s: float) -> None:
    """Until every job's notification arrived (the subscriber records receipts; polled, bounded)."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.2) + 1):
        if len({r.job_id for r in subscriber.receipts}) >= jobs or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


async def create_at_rate(client: httpx.AsyncClient, rate: float, duration_s: float) -> list[str]:
    image = tiny_png()
    created: list[str] = []
    pending: set[asyncio.Task[None]] = set()

    async def create(i: int) -> None:
        body = job_body(MODELS[(i + 1) % 2], "make it red", image)  # the odd ones on stepx-edit2
        response = await client.post("/v1/jobs", json=body)
        created.append(response.json()["id"])

    start = time.monotonic()
    total = int(rate * duration_s)
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        task = asyncio.create_task(create(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return created


def measure(
    db_path: Path, job_ids: list[str], subscriber: Subscriber, rate: float, duration_s: float
) -> dict[str, Any]:
    conn = connect_ro(db_path)
    rows = conn.execute(
        "SELECT e.job_id, MIN(i.received_at), MIN(d.delivered_at) FROM events e"
        " JOIN deliveries d ON d.event_id = e.id JOIN inbox i ON i.job_id = e.job_id AND i.kind = 'webhook'"
        " WHERE e.type = 'job.succeeded' AND d.status = 'delivered' GROUP BY e.job_id"
    ).fetchall()
    statuses = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    conn.close()
    latencies_ms = [(delivered - received) * 1000 for _, received, delivered in rows]
    return {
        "rate_per_s": rate,
        "duration_s": duration_s,
        "jobs": len(job_ids),
        "job_statuses": statuses,
        "delivered": len(rows),
        "distinct_jobs_notified": len({r.job_id for r in subscriber.receipts}),
        "webhook_to_delivered_ms": {
            "p50": round(percentile(latencies_ms, 50), 1),
            "p95": round(percentile(latencies_ms, 95), 1),
            "p99": round(percentile(latencies_ms, 99), 1),
            "mean": round(statistics.fmean(latencies_ms), 1),
        }
        if latencies_ms
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="jobs created per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of job creation")
    parser.add_argument("--settle", type=float, default=120.0, help="most seconds to wait for the last notification")
    args = parser.parse_args()
    result = asyncio.run(run(args.rate, args.duration, args.settle))
    print(json.dumps(result, indent=2))
    path = Path(__file__).with_name("results.json")
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored.setdefault("end_to_end", {})[f"{args.rate:g}/s"] = result
    write_json(path, stored)


if __name__ == "__main__":
    main()
