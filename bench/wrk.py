"""Ingest load with wrk (`bench/webhooks.lua`) for `bench.run` and `bench.purge`: submitted fal jobs seeded
through the receiver's own storage layer (any database URL it opens), one pre-signed webhook per job, the
receiver as wrk's target, and one measured run (latency and rate from wrk, cores used and peak RSS of the
server from /proc)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.processes import ROOT, ServerProcess, clean_env, cpu_s, free_port, pids, rss_kb
from receiver.ingest.signatures import job_token, sign_fal
from receiver.storage import jobs
from receiver.storage.backends import open_database
from receiver.storage.base import Transaction

SECRET = "bench-secret-key"
CONNECTIONS = 64
# An input image the receiver refuses to fetch without a lookup (a loopback address, by its SSRF guard): the
# follow-up work per job stays on this machine (no DNS query for a made-up host, which a resolver may throttle).
JOB_INPUT = {"prompt": "x", "image_url": "https://127.0.0.1/bench-input.png"}
SEED_BATCH = 1_000  # jobs per transaction
SEED_SIDE_BY_SIDE = 6  # PostgreSQL connections seeding at once (latency-bound: each statement is a round trip)
FAL_HEADERS = (
    "X-Fal-Webhook-Request-Id",
    "X-Fal-Webhook-User-Id",
    "X-Fal-Webhook-Timestamp",
    "X-Fal-Webhook-Signature",
)


def plan_jobs(count: int) -> list[tuple[str, str]]:
    """(job id, fal request id) for `count` jobs: made once per run, so that every database seeded with them
    answers the same pre-signed webhooks."""
    return [(f"job_bench{i:08d}", str(uuid.uuid4())) for i in range(count)]


def webhook_items(planned: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(webhook path with the job's token, request id) for each planned job."""
    return [
        (f"/webhooks/fal/{job_id}?token={job_token(SECRET.encode(), 'fal', job_id)}", request_id)
        for job_id, request_id in planned
    ]


async def seed_jobs(url: str, planned: list[tuple[str, str]], *, side_by_side: int | None = None) -> float:
    """Write the planned jobs into the database `url` names (migrated first), as submitted fal jobs bound to
    their request ids, through the storage layer's own job store, in transactions of `SEED_BATCH` jobs.
    PostgreSQL takes them on `side_by_side` connections at once (one `Database` each: a backend's writer
    may run every queued write in one transaction); SQLite has one writer anyway. Returns the seconds taken."""
    began, now = time.monotonic(), time.time()
    if side_by_side is None:
        side_by_side = 1 if url.startswith("sqlite") else SEED_SIDE_BY_SIDE

    def batch(part: list[tuple[str, str]]) -> Any:
        def write(tx: Transaction) -> None:
            for job_id, request_id in part:
                jobs.insert(
                    tx, job_id, provider="fal", model="fal-ai/stepx-edit2", input=JOB_INPUT, metadata=None,
                    callback_url=None, now=now,
                )  # fmt: skip
                # No next poll: the reconciler leaves these jobs alone while the webhooks come.
                jobs.record_submission(
                    tx, job_id, request_id=request_id, urls=None, error=None, next_poll_at=None, poll_base_s=10.0,
                    now=now,
                )  # fmt: skip

        return write

    parts = [planned[i : i + SEED_BATCH] for i in range(0, len(planned), SEED_BATCH)]

    async def seed_share(share: list[list[tuple[str, str]]]) -> None:
        async with open_database(url) as db:
            for part in share:
                await db.write(batch(part))

    async with open_database(url):  # migrate once, before the connections side by side
        pass
    await asyncio.gather(*(seed_share(parts[n::side_by_side]) for n in range(side_by_side)))
    return time.monotonic() - began


def create_jobs(db_path: Path, count: int) -> list[tuple[str, str]]:
    """Seed `count` submitted fal jobs into the SQLite file `db_path`; (webhook path with token, request id) for
    each. Callable inside an event loop or outside one: the seeding runs in a thread with a loop of its own."""
    planned = plan_jobs(count)
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, seed_jobs(f"sqlite:///{db_path}", planned)).result()
    return webhook_items(planned)


def sign_webhooks(key: Ed25519PrivateKey, request_ids: list[str], ts: int) -> list[str]:
    """One signed fal completion per request id, as the tab-separated tail of a requests-file line: the four
    X-Fal-Webhook-* values and the body (the signature covers neither the path nor the token)."""
    signed = []
    for request_id in request_ids:
        body = json.dumps(
            {
                "request_id": request_id,
                "gateway_request_id": request_id,
                "status": "OK",
                "payload": {"images": [], "seed": 7},
            },
            separators=(",", ":"),
        ).encode()
        headers = sign_fal(key, request_id=request_id, user_id="bench-user", timestamp=ts, body=body)
        values = [headers[name] for name in FAL_HEADERS]
        signed.append("\t".join([*values, body.decode()]))
    return signed


def write_request_file(path: Path, url_paths: list[str], signed: list[str]) -> None:
    """wrk's requests file (`bench/webhooks.lua`): per line the URL path, then the signed webhook."""
    with path.open("w") as out:
        for url_path, webhook in zip(url_paths, signed, strict=True):
            out.write(f"{url_path}\t{webhook}\n")


def write_requests(path: Path, key: Ed25519PrivateKey, items: list[tuple[str, str]], ts: int) -> None:
    """One pre-signed webhook per line: path, the four X-Fal-Webhook-* values, body (tab-separated)."""
    write_request_file(path, [url_path for url_path, _ in items], sign_webhooks(key, [rid for _, rid in items], ts))


def receiver_env(data: Path, jwks_url: str, port: int, **settings: str) -> dict[str, str]:
    """The environment of a benchmarked `receiver serve` listening on `port`: the database
    `data/receiver.db` and `data` as its data directory unless `settings` (which override) say otherwise; no
    provider reachable, the reconciler idle for an hour, warnings-only logs."""
    env = clean_env(
        RECEIVER_DATABASE_URL=f"sqlite:///{data / 'receiver.db'}",
        RECEIVER_DATA_DIR=str(data),
        RECEIVER_SECRET_KEY=SECRET,
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RECEIVER_FAL_JWKS_URL=jwks_url,
        RECEIVER_FAL_QUEUE_URL="http://127.0.0.1:9/fal",
        RECEIVER_RECONCILE_AFTER_S="3600",
        RECEIVER_LOG_LEVEL="warning",
        FAL_KEY="bench",
    )
    env.update(settings)
    return env


def receiver_server(data: Path, jwks_url: str, **settings: str) -> ServerProcess:
    """`receiver serve` on the pre-created jobs in `data/receiver.db` (`settings` override the environment)."""
    port = free_port()
    env = receiver_env(data, jwks_url, port, **settings)
    return ServerProcess(env, port, cwd=ROOT, log_path=data / f"receiver-{port}.log", name="receiver")


def wrk(port: int, requests_file: Path, *, duration_s: int, offset: int, rate: float = 0.0) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        env = {
            **os.environ,
            "BENCH_REQUESTS": str(requests_file),
            "BENCH_OUT": out.name,
            "BENCH_RATE": str(rate),
            "BENCH_OFFSET": str(offset),
            "BENCH_CONNECTIONS": str(CONNECTIONS),
        }
        subprocess.run(
            ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--timeout", "10s",
             "-s", str(ROOT / "bench" / "webhooks.lua"), f"http://127.0.0.1:{port}"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    return result


async def measure(
    server: ServerProcess, requests_file: Path, *, duration_s: int, offset: int, rate: float = 0.0
) -> dict[str, Any]:
    """Start `server`, drive it with wrk for `duration_s` and stop it: wrk's figures plus cores used and peak RSS."""
    await server.start()
    try:
        await asyncio.sleep(0.5)
        group = pids(server.pid)
        cpu0, wall0, threads0 = cpu_s(group), time.monotonic(), thread_cpu_s(group[-1])
        result = await asyncio.to_thread(
            wrk, server.port, requests_file, duration_s=duration_s, offset=offset, rate=rate
        )
        group = pids(server.pid)
        cpu = cpu_s(group) - cpu0
        result["cores_used"] = round(cpu / (time.monotonic() - wall0), 2)
        result["peak_rss_mb"] = round(rss_kb(group, "VmHWM") / 1024, 1)
        # CPU per request survives a loaded machine better than the rate: compare these across servers.
        requests = max(result["requests"], 1)
        result["cpu_us_per_request"] = round(cpu / requests * 1e6, 1)
        result["thread_cpu_us_per_request"] = thread_split(threads0, thread_cpu_s(group[-1]), group[-1], requests)
        result["load_average"] = round(os.getloadavg()[0], 2)
        return result
    finally:
        await server.stop(signal.SIGTERM)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (the serving process: the last of a uvicorn group)."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def thread_split(before: dict[int, float], after: dict[int, float], pid: int, requests: int) -> dict[str, float]:
    """CPU us per request of the event loop's thread (`main`, the process's first) and of each other thread
    that used any (`other 1`, `other 2`, ... busiest first: the writer, the verifier, worker threads)."""
    used = {tid: (after[tid] - before.get(tid, 0.0)) / requests * 1e6 for tid in after}
    split = {"main": round(used.pop(pid, 0.0), 1)}
    for index, value in enumerate(sorted((v for v in used.values() if v >= 0.5), reverse=True), 1):
        split[f"other {index}"] = round(value, 1)
    return split
