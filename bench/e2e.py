"""End to end at a steady job rate: create -> submit -> fal webhook -> images stored -> job.succeeded delivered.

`python -m bench.e2e --rate 200 --duration 60`: the fal emulator runs in a process of its own
(`python -m bench.emulator`, its webhook `--webhook-delay` seconds after each submit), `receiver serve` in
another, and this driver creates jobs through the API at a steady rate while a signature-checking
subscriber (here, answering at once) takes the `job.succeeded` notifications. Every second it samples the
backlog (due and leased tasks per kind, from the receiver's database) and the cores each process used.

Latency per job = the subscriber's `job.succeeded` delivery time minus the webhook's arrival (both read
from the receiver's database: `inbox.received_at`, `deliveries.delivered_at`); the time each task kind
waited in the queue and ran comes from the tasks table (`created_at`, `claimed_at` when the schema has it,
and `updated_at` once done).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.processes import ROOT, ServerProcess, clean_env, cpu_s, free_port, pids
from bench.results import machine, write_json
from bench.rig import MODELS, Subscriber, job_body, running_rig, tiny_png
from bench.snapshot import connect_ro

RESULTS = Path(__file__).with_name("results.json")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def spread(values: list[float], digits: int = 1) -> dict[str, float] | None:
    """p50/p95/p99/max of `values` (None when there are none)."""
    if not values:
        return None
    return {
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
    }


@dataclass
class Options:
    rate: float = 200.0
    duration_s: float = 60.0
    webhook_delay_s: float = 0.5
    settle_s: float = 300.0
    settings: dict[str, str] = field(default_factory=dict)
    profile: Path | None = None  # py-spy's collapsed stacks of the receiver (and its children) while loading


@dataclass
class Load:
    """What the driver saw of its own requests."""

    job_ids: list[str] = field(default_factory=list)
    create_ms: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    started_at: float = 0.0  # wall clock (the receiver stamps rows with the same clock)
    ended_at: float = 0.0


@dataclass
class Sample:
    t_s: float
    due: dict[str, int]
    leased: dict[str, int]
    notified: int
    cores: dict[str, float]


class Sampler:
    """Once a second: due and leased tasks per kind, notifications so far, and cores per process."""

    def __init__(self, db_path: Path, processes: dict[str, int], subscriber: Subscriber) -> None:
        self.db_path = db_path
        self.processes = processes  # name -> pid (a receiver's children are found and named on the way)
        self.subscriber = subscriber
        self.samples: list[Sample] = []
        self.cpu: dict[str, float] = {}
        self.began = time.time()

    def process_cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds per process (children of each named process under `name/child-pid`)."""
        found: dict[str, float] = {}
        for name, pid in self.processes.items():
            for child in pids(pid):
                found[name if child == pid else f"{name}/{child}"] = cpu_s([child])
        found["driver"] = cpu_s([os.getpid()])
        return found

    async def run(self) -> None:
        conn = connect_ro(self.db_path)
        try:
            previous, previous_at = self.process_cpu(), time.monotonic()
            while True:
                await asyncio.sleep(1.0)
                now = time.time()
                cpu, at = self.process_cpu(), time.monotonic()
                cores = {name: round((cpu[name] - previous.get(name, 0.0)) / (at - previous_at), 2) for name in cpu}
                previous, previous_at = cpu, at
                due, leased = backlog(conn, now)
                notified = len({r.job_id for r in self.subscriber.receipts})
                self.samples.append(Sample(round(now - self.began, 1), due, leased, notified, cores))
        finally:
            conn.close()


def backlog(conn: sqlite3.Connection, now: float) -> tuple[dict[str, int], dict[str, int]]:
    try:
        due = dict(
            conn.execute(
                "SELECT kind, COUNT(*) FROM tasks WHERE status = 'pending' AND run_at <= ? GROUP BY kind", (now,)
            ).fetchall()
        )
        leased = dict(conn.execute("SELECT kind, COUNT(*) FROM tasks WHERE status = 'leased' GROUP BY kind").fetchall())
    except sqlite3.OperationalError:  # busy for longer than the timeout: skip this sample
        return {}, {}
    return due, leased


@contextlib.asynccontextmanager
async def emulator_process(workdir: Path, webhook_delay_s: float) -> AsyncIterator[ServerProcess]:
    """`python -m bench.emulator` on a free port: the webhook goes `webhook_delay_s` after the submit."""
    port = free_port()
    queue_s = min(0.1, webhook_delay_s)
    argv = [
        sys.executable, "-m", "bench.emulator", "--port", str(port),
        "--queue-s", f"{queue_s:g}", "--inference-s", f"{webhook_delay_s - queue_s:g}",
    ]  # fmt: skip
    server = ServerProcess(
        clean_env(), port, cwd=ROOT, log_path=workdir / "emulator.log",
        argv=argv, name="emulator",
    )  # fmt: skip
    await server.start()
    try:
        yield server
    finally:
        if server.alive:
            await server.stop(signal.SIGTERM)


@contextlib.asynccontextmanager
async def profiling(path: Path | None, pid: int, duration_s: float) -> AsyncIterator[None]:
    """py-spy `record` of `pid` and its children (idle frames left out) for the block, as collapsed stacks."""
    if path is None:
        yield
        return
    argv = [
        str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--subprocesses", "--threads",
        "--rate", "200", "--gil", "--format", "raw", "--output", str(path), "--duration", f"{int(duration_s)}",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    try:
        yield
    finally:
        await proc.wait()


async def run(options: Options) -> dict[str, Any]:
    subscriber = Subscriber(random.Random(1), flaky=0.0, slow=False)
    with tempfile.TemporaryDirectory(prefix="receiver-e2e-") as tmp:
        workdir = Path(tmp)
        settings = {
            "RECEIVER_RECONCILE_AFTER_S": "60",  # the webhooks carry this run; polls only as a backstop
            "RECEIVER_TASK_LEASE_S": "30",
            **options.settings,
        }
        async with (
            emulator_process(workdir, options.webhook_delay_s) as emulator,
            running_rig(workdir, f"{emulator.url}", subscriber, job_timeout_s=600, **settings) as server,
        ):
            sampler = Sampler(workdir / "receiver.db", {"receiver": server.pid, "emulator": emulator.pid}, subscriber)
            limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
            async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
                await subscriber.subscribe(client, "main", ["job.succeeded"])
                sampling = asyncio.create_task(sampler.run())
                cpu_before = sampler.process_cpu()
                async with profiling(options.profile, server.pid, options.duration_s):
                    load = await create_at_rate(client, options.rate, options.duration_s)
                cpu_loaded = sampler.process_cpu()
                drained_s = await wait_notified(subscriber, len(load.job_ids), options.settle_s)
                cpu_after = sampler.process_cpu()
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            await server.stop(signal.SIGTERM)
        result = measure(workdir / "receiver.db", load, subscriber, options)
        load_s = load.ended_at - load.started_at
        result["drain_after_load_s"] = drained_s
        result["cores_while_loading"] = {
            name: round((cpu_loaded[name] - cpu_before.get(name, 0.0)) / load_s, 2) for name in cpu_loaded
        }
        total_s = load_s + (drained_s or options.settle_s)
        receiver_cpu = sum(v - cpu_before.get(k, 0.0) for k, v in cpu_after.items() if k.startswith("receiver"))
        result["receiver_cpu_ms_per_job"] = round(1000 * receiver_cpu / max(1, len(load.job_ids)), 2)
        result["receiver_cores_whole_run"] = round(receiver_cpu / total_s, 2)
        result["samples"] = [sample.__dict__ for sample in sampler.samples]
        result["backlog"] = backlog_summary(sampler.samples, load_s)
        result["load_average"] = os.getloadavg()
        result["machine"] = machine()
        return result


async def wait_notified(subscriber: Subscriber, jobs: int, timeout_s: float) -> float | None:
    """Seconds until every job's notification arrived (polled), or None after `timeout_s`."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if len({r.job_id for r in subscriber.receipts}) >= jobs:
            return round(time.monotonic() - began, 2)
        await asyncio.sleep(0.1)
    return None


async def create_at_rate(client: httpx.AsyncClient, rate: float, duration_s: float) -> Load:
    load = Load()
    pending: set[asyncio.Task[None]] = set()

    async def create(i: int) -> None:
        # A different input per job (so every output differs too); the odd ones on stepx-edit2.
        body = job_body(MODELS[(i + 1) % 2], "make it red", tiny_png(i))
        # The key makes a resend after a dropped connection (a keep-alive connection the server closed just
        # as it was reused) safe: the same job, never a second one.
        headers = {"Idempotency-Key": f"e2e-{i}"}
        began = time.perf_counter()
        for attempt in range(3):
            try:
                response = await client.post("/v1/jobs", json=body, headers=headers)
                break
            except httpx.TransportError as exc:
                if attempt == 2:
                    load.refused[type(exc).__name__] += 1
                    return
        load.create_ms.append((time.perf_counter() - began) * 1000)
        if response.status_code not in (200, 202):  # 200: a resend the key answered with the same job
            load.refused[str(response.status_code)] += 1
            return
        load.job_ids.append(response.json()["id"])

    load.started_at = time.time()
    start = time.monotonic()
    for i in range(int(rate * duration_s)):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        task = asyncio.create_task(create(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    load.ended_at = time.time()
    return load


def measure(db_path: Path, load: Load, subscriber: Subscriber, options: Options) -> dict[str, Any]:
    conn = connect_ro(db_path)
    conn.row_factory = sqlite3.Row
    try:
        jobs = conn.execute("SELECT id, status, created_at, submitted_at, completed_at FROM jobs").fetchall()
        webhooks = dict(
            conn.execute("SELECT job_id, MIN(received_at) FROM inbox WHERE kind = 'webhook' GROUP BY job_id").fetchall()
        )
        delivered = dict(
            conn.execute(
                "SELECT e.job_id, MIN(d.delivered_at) FROM events e JOIN deliveries d ON d.event_id = e.id"
                " WHERE e.type = 'job.succeeded' AND d.status = 'delivered' GROUP BY e.job_id"
            ).fetchall()
        )
        events_per_job = Counter(
            row[0] for row in conn.execute("SELECT job_id FROM events WHERE type = 'job.succeeded'").fetchall()
        )
        stages = task_stages(conn)
    finally:
        conn.close()
    load_s = load.ended_at - load.started_at
    submitted_in_load = sum(1 for job in jobs if job["submitted_at"] and job["submitted_at"] <= load.ended_at)
    latencies = [(delivered[job] - at) * 1000 for job, at in webhooks.items() if job in delivered]
    receipts: defaultdict[str, set[str]] = defaultdict(set)
    for receipt in subscriber.receipts:
        if 200 <= receipt.answered < 300:
            receipts[receipt.job_id].add(receipt.webhook_id)
    told = Counter(len(receipts.get(job_id, ())) for job_id in load.job_ids)
    return {
        "rate_per_s": options.rate,
        "duration_s": options.duration_s,
        "webhook_delay_s": options.webhook_delay_s,
        "settings": options.settings,
        "jobs_created": len(load.job_ids),
        "creates_refused": dict(load.refused),
        "job_statuses": dict(Counter(job["status"] for job in jobs)),
        "announced_once": told.get(1, 0),
        "announced_never": told.get(0, 0),
        "announced_twice_or_more": sum(n for k, n in told.items() if k > 1),
        "events_per_job_not_one": sum(1 for job_id in load.job_ids if events_per_job.get(job_id) != 1),
        "subscriber_receipts": len(subscriber.receipts),
        "subscriber_refused": len(subscriber.refused),
        "create_request_ms": spread(load.create_ms),
        "submit_rate_while_loading_per_s": round(submitted_in_load / load_s, 1),
        "create_to_submit_ms": spread(
            [(job["submitted_at"] - job["created_at"]) * 1000 for job in jobs if job["submitted_at"]]
        ),
        "webhook_to_delivered_ms": {**(spread(latencies) or {}), "mean": round(statistics.fmean(latencies), 1)}
        if latencies
        else None,
        "tasks": stages,
    }


def task_stages(conn: sqlite3.Connection) -> dict[str, Any]:
    """Per task kind: how many, retried ones, queued (created -> claimed) and run (claimed -> done) in ms."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)").fetchall()}
    claimed = "claimed_at" if "claimed_at" in columns else "NULL"
    rows = conn.execute(
        f"SELECT kind, status, attempts, created_at, {claimed} AS claimed_at, updated_at FROM tasks"  # noqa: S608
    ).fetchall()
    by_kind: defaultdict[str, list[sqlite3.Row]] = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    stages: dict[str, Any] = {}
    for kind, kind_rows in sorted(by_kind.items()):
        done = [r for r in kind_rows if r["status"] == "done"]
        first = [r for r in done if r["claimed_at"] is not None and r["attempts"] == 1]
        stages[kind] = {
            "tasks": len(kind_rows),
            "not_done": dict(Counter(r["status"] for r in kind_rows if r["status"] != "done")),
            "attempts_over_1": sum(1 for r in kind_rows if r["attempts"] > 1),
            "queued_ms": spread([(r["claimed_at"] - r["created_at"]) * 1000 for r in first]),
            "run_ms": spread([(r["updated_at"] - r["claimed_at"]) * 1000 for r in first]),
            "created_to_done_ms": spread([(r["updated_at"] - r["created_at"]) * 1000 for r in done]),
        }
    return stages


def backlog_summary(samples: Iterable[Sample], load_s: float) -> dict[str, Any]:
    """Due tasks while loading: the most, per kind, and the trend over the load's second half (tasks/s; a
    backlog that keeps up stays near 0)."""
    loading = [s for s in samples if s.t_s <= load_s + 0.5]
    most: dict[str, int] = {}
    for sample in loading:
        for kind, n in sample.due.items():
            most[kind] = max(most.get(kind, 0), n)
    half = [s for s in loading if s.t_s >= load_s / 2]
    slope = None
    if len(half) >= 3:
        xs = [s.t_s for s in half]
        ys = [float(sum(s.due.values())) for s in half]
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        denominator = sum((x - mean_x) ** 2 for x in xs)
        slope = round(sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / denominator, 1)
    return {"most_due_per_kind": most, "due_trend_second_half_per_s": slope}


def print_samples(samples: list[dict[str, Any]]) -> None:
    for s in samples:
        due = " ".join(f"{k}={v}" for k, v in sorted(s["due"].items()))
        leased = " ".join(f"{k}={v}" for k, v in sorted(s["leased"].items()))
        cores = " ".join(f"{k}={v}" for k, v in s["cores"].items())
        print(f"t={s['t_s']:6.1f} notified={s['notified']:6d} due[{due}] leased[{leased}] cores[{cores}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="jobs created per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of job creation")
    parser.add_argument("--webhook-delay", type=float, default=0.5, help="seconds from a submit to its webhook")
    parser.add_argument("--settle", type=float, default=300.0, help="most seconds to wait for the last notification")
    parser.add_argument("--set", action="append", default=[], metavar="RECEIVER_X=V", help="a receiver setting")
    parser.add_argument("--label", default="", help="stored under this key (default: the rate)")
    parser.add_argument("--quiet", action="store_true", help="do not print the per-second samples")
    parser.add_argument("--profile", type=Path, help="write py-spy's collapsed stacks of the receiver here")
    args = parser.parse_args()
    options = Options(
        rate=args.rate,
        duration_s=args.duration,
        webhook_delay_s=args.webhook_delay,
        settle_s=args.settle,
        settings=dict(item.split("=", 1) for item in args.set),
        profile=args.profile,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(options))
    samples = result.pop("samples")
    if not args.quiet:
        print_samples(samples)
    print(json.dumps(result, indent=2))
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    stored.setdefault("end_to_end", {})[args.label or f"{args.rate:g}/s"] = result
    write_json(RESULTS, stored)


if __name__ == "__main__":
    main()
