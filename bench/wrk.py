"""Ingest load with wrk (`bench/webhooks.lua`) for `bench.run` and `bench.purge`: submitted fal jobs written
straight into a database, one pre-signed webhook per job, the receiver as wrk's target, and one measured
run (latency and rate from wrk, cores used and peak RSS of the server from /proc)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.processes import ROOT, ServerProcess, clean_env, cpu_s, free_port, pids, rss_kb
from receiver.ingest.signatures import job_token, sign_fal
from receiver.storage.sqlite import migrate

SECRET = "bench-secret-key"
CONNECTIONS = 64


def create_jobs(db_path: Path, count: int) -> list[tuple[str, str]]:
    """Pre-create submitted fal jobs (written directly with sqlite3 in one transaction); returns (webhook path
    with token, request id) for each."""
    migrate(db_path)
    conn = sqlite3.connect(db_path, isolation_level=None)
    now, items, rows = time.time(), [], []
    for i in range(count):
        job_id, request_id = f"job_bench{i:08d}", str(uuid.uuid4())
        token = job_token(SECRET.encode(), "fal", job_id)
        rows.append(
            (job_id, json.dumps({"prompt": "x", "image_url": "https://example.invalid/x.png"}), request_id, now)
        )
        items.append((f"/webhooks/fal/{job_id}?token={token}", request_id))
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO jobs (id, provider, model, status, input, provider_request_id, created_at, updated_at,"
        " submitted_at) VALUES (?, 'fal', 'fal-ai/stepx-edit2', 'submitted', ?, ?, ?, ?, ?)",
        [(j, inp, r, t, t, t) for j, inp, r, t in rows],
    )
    conn.execute("COMMIT")
    conn.close()
    return items


def write_requests(path: Path, key: Ed25519PrivateKey, items: list[tuple[str, str]], ts: int) -> None:
    """One pre-signed webhook per line: path, the four X-Fal-Webhook-* values, body (tab-separated)."""
    with path.open("w") as out:
        for url_path, request_id in items:
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
            values = [
                headers[name]
                for name in (
                    "X-Fal-Webhook-Request-Id",
                    "X-Fal-Webhook-User-Id",
                    "X-Fal-Webhook-Timestamp",
                    "X-Fal-Webhook-Signature",
                )
            ]
            out.write("\t".join([url_path, *values, body.decode()]) + "\n")


def receiver_server(data: Path, jwks_url: str, **settings: str) -> ServerProcess:
    """`receiver serve` on the pre-created jobs in `data/receiver.db` (`settings` override the environment)."""
    port = free_port()
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
