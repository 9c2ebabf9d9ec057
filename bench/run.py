"""`scripts/bench`: ingest throughput and latency of the receiver against three baselines, on one machine.

Each server runs on loopback in turn and is driven by wrk (one thread, 64 connections) with distinct,
validly signed fal webhooks: first flat out (saturation), then paced at 50% of the receiver's saturation
rate. CPU (cores used) and peak RSS come from /proc. Results: bench/results.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.processes import ROOT, ServerProcess, free_port, jwks_server, pids, rss_kb
from bench.results import machine, replace_block, write_json
from bench.wrk import create_jobs, measure, receiver_server, write_requests, wrk
from receiver.ingest.signatures import public_jwk


def baseline(mode: str, workers: int, jwk_x: str, data: Path) -> ServerProcess:
    """One of the baseline servers of `bench/baseline.py` under uvicorn with `workers` processes."""
    port = free_port()
    env = {**os.environ, "BENCH_MODE": mode, "BENCH_JWK_X": jwk_x, "BENCH_DB": str(data / f"naive-{port}.db")}
    argv = [sys.executable, "-m", "uvicorn", "bench.baseline:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    name = f"baseline-{mode}" + (f" x{workers}" if workers > 1 else "")
    return ServerProcess(env, port, cwd=ROOT, log_path=data / f"{name}.log", argv=argv, name=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--jobs", type=int, default=150_000, help="pre-created jobs (distinct webhooks)")
    parser.add_argument("--rss-requests", type=int, default=100_000, help="webhooks for the RSS-growth run")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    jwk = public_jwk(key)
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as tmp, jwks_server(Path(tmp), jwk) as jwks_url:
        results = asyncio.run(run_all(args, key, jwk["x"], Path(tmp), jwks_url))
    write_report(results)


async def run_all(
    args: argparse.Namespace, key: Ed25519PrivateKey, jwk_x: str, data: Path, jwks_url: str
) -> dict[str, Any]:
    ts = int(time.time()) + 120  # inside the +-300 s window for the whole run
    print(f"signing {args.jobs} webhooks ...", flush=True)
    items = create_jobs(data / "receiver.db", args.jobs)
    receiver_file, baseline_file = data / "receiver.tsv", data / "baseline.tsv"
    write_requests(receiver_file, key, items, ts)
    write_requests(baseline_file, key, [("/webhooks/fal/x", rid) for _, rid in items], ts)
    results: dict[str, Any] = {"machine": machine(), "runs": {}}
    servers = [
        baseline("bare", 1, jwk_x, data),
        baseline("verify", 1, jwk_x, data),
        baseline("verify", 2, jwk_x, data),
        baseline("naive", 1, jwk_x, data),
    ]
    for server in servers:
        print(f"{server.name}: saturation ...", flush=True)
        results["runs"][server.name] = {
            "saturation": await measure(server, baseline_file, duration_s=args.duration, offset=0)
        }
    receiver = receiver_server(data, jwks_url)
    offset = 0
    variants = {"receiver, verify inline": receiver_server(data, jwks_url, RECEIVER_VERIFY_THREADS="0")}
    if web_role_available():  # the web process alone (the worker elsewhere): what ingest costs by itself
        variants["receiver --role web"] = receiver_server(data, jwks_url)
        variants["receiver --role web"].argv += ["--role", "web"]
    for name, variant in variants.items():
        print(f"{name}: saturation ...", flush=True)
        results["runs"][name] = {
            "saturation": await measure(variant, receiver_file, duration_s=args.duration, offset=offset)
        }
        offset += results["runs"][name]["saturation"]["requests"] + 1000
    print("receiver: saturation ...", flush=True)
    saturation = await measure(receiver, receiver_file, duration_s=args.duration, offset=offset)
    offset += saturation["requests"] + 1000
    half = saturation["rps"] / 2
    results["runs"]["receiver"] = {"saturation": saturation}
    print(f"receiver: paced at {half:.0f}/s ...", flush=True)
    results["runs"]["receiver"]["half_rate"] = await measure(
        receiver, receiver_file, duration_s=args.duration, offset=offset, rate=half
    )
    offset += results["runs"]["receiver"]["half_rate"]["requests"] + 1000
    for server in servers:
        print(f"{server.name}: paced at {half:.0f}/s ...", flush=True)
        results["runs"][server.name]["half_rate"] = await measure(
            server, baseline_file, duration_s=args.duration, offset=0, rate=half
        )
    results["rss_growth"] = await rss_growth(receiver, receiver_file, offset=offset, total=args.rss_requests)
    sat = {name: run["saturation"]["rps"] for name, run in results["runs"].items()}
    cpu = {name: run["saturation"]["cpu_us_per_request"] for name, run in results["runs"].items()}
    results["ratios"] = {
        "receiver/baseline-verify": round(sat["receiver"] / sat["baseline-verify"], 2),
        "receiver/baseline-verify x2": round(sat["receiver"] / sat["baseline-verify x2"], 2),
        "receiver/baseline-naive": round(sat["receiver"] / sat["baseline-naive"], 2),
        # The same comparison in CPU per webhook (baseline's over the receiver's: 1.0 = as cheap as verifying).
        "CPU per webhook, baseline-verify/receiver": round(cpu["baseline-verify"] / cpu["receiver"], 2),
    }
    if "receiver --role web" in sat:
        results["ratios"]["receiver --role web/baseline-verify"] = round(
            sat["receiver --role web"] / sat["baseline-verify"], 2
        )
        results["ratios"]["CPU per webhook, baseline-verify/receiver --role web"] = round(
            cpu["baseline-verify"] / cpu["receiver --role web"], 2
        )
    return results


def web_role_available() -> bool:
    """Whether this `receiver serve` takes `--role web` (the HTTP app without the task runner)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "receiver", "serve", "--help"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout
    return "--role" in help_text


async def rss_growth(server: ServerProcess, requests_file: Path, *, offset: int, total: int) -> dict[str, Any]:
    """RSS of the receiver after warm-up and after `total` more webhooks (flat = no per-request growth)."""
    await server.start()
    try:
        group = pids(server.pid)
        samples: list[dict[str, Any]] = []
        sent = 0
        while sent < total and len(samples) < 50:
            result = await asyncio.to_thread(wrk, server.port, requests_file, duration_s=5, offset=offset + sent)
            if result["requests"] == 0:
                break
            sent += result["requests"]
            samples.append({"webhooks": sent, "rss_mb": round(rss_kb(group) / 1024, 1)})
        return {"samples": samples}
    finally:
        await server.stop(signal.SIGTERM)


def cpu_cell(run: dict[str, Any]) -> str:
    """The server's CPU us per request, and its threads' when it has more than one busy (main first)."""
    threads = run.get("thread_cpu_us_per_request", {})
    split = " + ".join(f"{value:.0f}" for value in threads.values()) if len(threads) > 1 else ""
    return f"{run.get('cpu_us_per_request', 0):.0f}" + (f" ({split})" if split else "")


def write_report(results: dict[str, Any]) -> None:
    path = ROOT / "bench" / "results.json"
    # Other benchmarks keep their own keys in the same file (`bodies`, `end_to_end`): replace only ours.
    stored = json.loads(path.read_text()) if path.exists() else {}
    write_json(path, {**stored, **results})
    lines = [
        "| server | sat. req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | cores | CPU us/req (threads) | peak RSS MB "
        "| 50%-rate p50 / p99 / p99.9 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in results["runs"].items():
        sat, half = run["saturation"], run.get("half_rate", {})
        paced = (
            f"{half.get('p50_ms', 0):.1f} / {half.get('p99_ms', 0):.1f} / {half.get('p999_ms', 0):.1f}" if half else "-"
        )
        lines.append(
            f"| {name} | {sat['rps']:.0f} | {sat['p50_ms']:.1f} | {sat['p99_ms']:.1f} | {sat['p999_ms']:.1f} | "
            f"{sat['non2xx'] + sat['socket_errors']} | {sat['cores_used']} | {cpu_cell(sat)} | {sat['peak_rss_mb']} "
            f"| {paced} |"
        )
    table = "\n".join(lines)
    ratios = "\n".join(f"- {name}: **{value}**" for name, value in results["ratios"].items())
    rss = ", ".join(f"{s['webhooks']}: {s['rss_mb']} MB" for s in results["rss_growth"]["samples"])
    loads = sorted(run["saturation"].get("load_average", 0) for run in results["runs"].values())
    ratios += f"\n- load average (1 min) during the saturation runs: {loads[0]}-{loads[-1]}"
    print(table + "\n" + ratios + "\nRSS by webhooks sent: " + rss)
    replace_block(
        "<!-- bench:results -->",
        f"{table}\n\nRatios (same run):\n\n{ratios}\n\nReceiver RSS by webhooks sent: {rss}",
    )


if __name__ == "__main__":
    main()
