"""`scripts/bench`: ingest throughput and latency of the receiver against three baselines, on one machine.

Each server runs on loopback in turn and is driven by wrk (one thread, 64 connections) with distinct,
validly signed fal webhooks: first flat out (saturation), then paced at 50% of the receiver's saturation
rate. CPU (cores used) and peak RSS come from /proc. Results: bench/results.json and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.ingest.signatures import job_token, public_jwk, sign_fal
from receiver.storage.sqlite import apply_migrations, connect

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SECRET = "bench-secret-key"
CONNECTIONS = 64


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    path_prefix: str  # where the webhooks go

    def start(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://127.0.0.1:{self.port}/webhooks/warmup", timeout=1)
                return proc
            except httpx.TransportError:
                time.sleep(0.1)
        proc.kill()
        raise RuntimeError(f"{self.name} did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pids(root: int) -> list[int]:
    """The process and its children (uvicorn workers)."""
    found = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                found.append(int(entry.name))
    return found


def cpu_s(pid_list: list[int]) -> float:
    total = 0.0
    for pid in pid_list:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_kb(pid_list: list[int], field: str = "VmRSS") -> int:
    total = 0
    for pid in pid_list:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


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


def measure(server: Server, requests_file: Path, *, duration_s: int, offset: int, rate: float = 0.0) -> dict[str, Any]:
    proc = server.start()
    try:
        time.sleep(0.5)
        group = pids(proc.pid)
        cpu0, wall0 = cpu_s(group), time.monotonic()
        result = wrk(server.port, requests_file, duration_s=duration_s, offset=offset, rate=rate)
        group = pids(proc.pid)
        result["cores_used"] = round((cpu_s(group) - cpu0) / (time.monotonic() - wall0), 2)
        result["peak_rss_mb"] = round(rss_kb(group, "VmHWM") / 1024, 1)
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def baseline(mode: str, workers: int, jwk_x: str, data: Path) -> Server:
    port = free_port()
    env = {**os.environ, "BENCH_MODE": mode, "BENCH_JWK_X": jwk_x, "BENCH_DB": str(data / f"naive-{port}.db")}
    argv = [PYTHON, "-m", "uvicorn", "bench.baseline:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    return Server(f"baseline-{mode}" + (f" x{workers}" if workers > 1 else ""), argv, env, port, "/webhooks/")


def receiver_server(data: Path, jwks_url: str) -> Server:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")},
        "RECEIVER_DATABASE_URL": f"sqlite:///{data / 'receiver.db'}",
        "RECEIVER_DATA_DIR": str(data),
        "RECEIVER_SECRET_KEY": SECRET,
        "RECEIVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "RECEIVER_FAL_JWKS_URL": jwks_url,
        "RECEIVER_FAL_QUEUE_URL": "http://127.0.0.1:9/fal",
        "RECEIVER_RECONCILE_AFTER_S": "3600",
        "RECEIVER_LOG_LEVEL": "warning",
        "FAL_KEY": "bench",
    }
    argv = [PYTHON, "-m", "receiver", "serve", "--port", str(port)]
    return Server("receiver", argv, env, port, "")


def create_jobs(db_path: Path, count: int) -> list[tuple[str, str]]:
    """Pre-create submitted fal jobs; returns (webhook path with token, request id) for each."""
    conn = connect(db_path)
    apply_migrations(conn)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--jobs", type=int, default=150_000, help="pre-created jobs (distinct webhooks)")
    parser.add_argument("--rss-requests", type=int, default=100_000, help="webhooks for the RSS-growth run")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    jwk = public_jwk(key)
    with tempfile.TemporaryDirectory(prefix="receiver-bench-") as tmp:
        data = Path(tmp)
        (data / "jwks" / ".well-known").mkdir(parents=True)
        (data / "jwks" / ".well-known" / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        jwks_port = free_port()
        jwks_server = subprocess.Popen(
            [PYTHON, "-m", "http.server", str(jwks_port), "--bind", "127.0.0.1", "--directory", str(data / "jwks")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            results = run_all(args, key, jwk["x"], data, f"http://127.0.0.1:{jwks_port}/.well-known/jwks.json")
        finally:
            jwks_server.terminate()
    write_report(results)


def run_all(args: argparse.Namespace, key: Ed25519PrivateKey, jwk_x: str, data: Path, jwks_url: str) -> dict[str, Any]:
    ts = int(time.time()) + 120  # inside the +-300 s window for the whole run
    print(f"signing {args.jobs} webhooks ...", flush=True)
    items = create_jobs(data / "receiver.db", args.jobs)
    receiver_file, baseline_file = data / "receiver.tsv", data / "baseline.tsv"
    write_requests(receiver_file, key, items, ts)
    write_requests(baseline_file, key, [("/webhooks/fal/x", rid) for _, rid in items], ts)
    results: dict[str, Any] = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}, "runs": {}}
    servers = [
        baseline("bare", 1, jwk_x, data),
        baseline("verify", 1, jwk_x, data),
        baseline("verify", 2, jwk_x, data),
        baseline("naive", 1, jwk_x, data),
    ]
    for server in servers:
        print(f"{server.name}: saturation ...", flush=True)
        results["runs"][server.name] = {
            "saturation": measure(server, baseline_file, duration_s=args.duration, offset=0)
        }
    receiver = receiver_server(data, jwks_url)
    offset = 0
    threaded = receiver_server(data, jwks_url)
    threaded.env["RECEIVER_VERIFY_THREADS"] = "1"
    print("receiver (verification on a second thread): saturation ...", flush=True)
    results["runs"]["receiver, verify thread"] = {
        "saturation": measure(threaded, receiver_file, duration_s=args.duration, offset=offset)
    }
    offset += results["runs"]["receiver, verify thread"]["saturation"]["requests"] + 1000
    print("receiver: saturation ...", flush=True)
    saturation = measure(receiver, receiver_file, duration_s=args.duration, offset=offset)
    offset += saturation["requests"] + 1000
    half = saturation["rps"] / 2
    results["runs"]["receiver"] = {"saturation": saturation}
    print(f"receiver: paced at {half:.0f}/s ...", flush=True)
    results["runs"]["receiver"]["half_rate"] = measure(
        receiver, receiver_file, duration_s=args.duration, offset=offset, rate=half
    )
    offset += results["runs"]["receiver"]["half_rate"]["requests"] + 1000
    for server in servers:
        print(f"{server.name}: paced at {half:.0f}/s ...", flush=True)
        results["runs"][server.name]["half_rate"] = measure(
            server, baseline_file, duration_s=args.duration, offset=0, rate=half
        )
    results["rss_growth"] = rss_growth(receiver, receiver_file, offset=offset, total=args.rss_requests)
    sat = {name: run["saturation"]["rps"] for name, run in results["runs"].items()}
    results["ratios"] = {
        "receiver/baseline-verify": round(sat["receiver"] / sat["baseline-verify"], 2),
        "receiver/baseline-verify x2": round(sat["receiver"] / sat["baseline-verify x2"], 2),
        "receiver/baseline-naive": round(sat["receiver"] / sat["baseline-naive"], 2),
    }
    return results


def rss_growth(server: Server, requests_file: Path, *, offset: int, total: int) -> dict[str, Any]:
    """RSS of the receiver after warm-up and after `total` more webhooks (flat = no per-request growth)."""
    proc = server.start()
    try:
        group = pids(proc.pid)
        samples: list[dict[str, Any]] = []
        sent = 0
        while sent < total and len(samples) < 50:
            result = wrk(server.port, requests_file, duration_s=5, offset=offset + sent)
            if result["requests"] == 0:
                break
            sent += result["requests"]
            samples.append({"webhooks": sent, "rss_mb": round(rss_kb(group) / 1024, 1)})
        return {"samples": samples}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def write_report(results: dict[str, Any]) -> None:
    (ROOT / "bench").mkdir(exist_ok=True)
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "| server | sat. req/s | p50 ms | p99 ms | p99.9 ms | non-2xx | cores | peak RSS MB "
        "| 50%-rate p50 / p99 / p99.9 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, run in results["runs"].items():
        sat, half = run["saturation"], run.get("half_rate", {})
        paced = (
            f"{half.get('p50_ms', 0):.1f} / {half.get('p99_ms', 0):.1f} / {half.get('p999_ms', 0):.1f}" if half else "-"
        )
        lines.append(
            f"| {name} | {sat['rps']:.0f} | {sat['p50_ms']:.1f} | {sat['p99_ms']:.1f} | {sat['p999_ms']:.1f} | "
            f"{sat['non2xx'] + sat['socket_errors']} | {sat['cores_used']} | {sat['peak_rss_mb']} | {paced} |"
        )
    table = "\n".join(lines)
    ratios = "\n".join(f"- {name}: **{value}**" for name, value in results["ratios"].items())
    rss = ", ".join(f"{s['webhooks']}: {s['rss_mb']} MB" for s in results["rss_growth"]["samples"])
    print(table + "\n" + ratios + "\nRSS by webhooks sent: " + rss)
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else ""
    marker = "<!-- bench:results -->"
    block = f"{marker}\n{table}\n\nRatios (same run):\n\n{ratios}\n\nReceiver RSS by webhooks sent: {rss}\n{marker}"
    if marker in text:
        before, _, rest = text.partition(marker)
        _, _, after = rest.partition(marker)
        text = before + block + after
    else:
        text = text + "\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    main()
