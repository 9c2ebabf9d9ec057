"""`python -m bench.roles`: where the worker runs, measured (docs/benchmarks.md, "Where the worker runs").

Each shape of the receiver takes the same paced stream of validly signed fal webhooks (wrk, `--rate` per
second for `--duration` s) while its pipeline is busy: every webhook carries a 1024x1024 PNG result that
the worker downloads from a loopback server, stores and thumbnails, then announces to a subscriber (a
loopback sink answering 204), so the follow-up work is always behind. Per shape: ack latency (wrk), CPU
of the process that acknowledges webhooks per webhook (µs), CPU of the whole shape, and how much
follow-up work finished meanwhile. The machine is shared: compare shapes within one run only. Results:
bench/roles_results.json.

Shapes: `one loop` (web and worker in one event loop, `bench.shapes loop`), `worker thread` (the worker in
a thread of the web process, `bench.shapes thread`), `worker child` (`receiver serve`, the default:
`--role all`), and `web alone` (`receiver serve --role web`, no worker: the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from bench.processes import ROOT, ServerProcess, clean_env, cpu_s, free_port, jwks_server, pids
from bench.results import write_json
from bench.wrk import SECRET, create_jobs, wrk
from receiver.ingest.signatures import public_jwk, sign_fal
from receiver.web.asgi_server import running_server

SHAPES: dict[str, list[str]] = {
    "one loop": ["-m", "bench.shapes", "loop"],
    "worker thread": ["-m", "bench.shapes", "thread"],
    "worker child": ["-m", "receiver", "serve", "--role", "all"],
    "web alone": ["-m", "receiver", "serve", "--role", "web"],
}


def result_image(path: Path) -> None:
    """A 1024x1024 PNG that compresses like a photo (noise over a gradient): what fetch and thumbnails chew."""
    rng = random.Random(7)
    image = Image.linear_gradient("L").resize((1024, 1024)).convert("RGB")
    noise = Image.frombytes("RGB", (1024, 1024), bytes(rng.getrandbits(8) for _ in range(1024 * 1024 * 3)))
    Image.blend(image, noise, 0.3).save(path, format="PNG")


def write_requests(path: Path, key: Ed25519PrivateKey, items: list[tuple[str, str]], image_url: str) -> None:
    """One pre-signed webhook per line (the format of bench/webhooks.lua), each with one result image."""
    ts = int(time.time()) + 120
    with path.open("w") as out:
        for url_path, request_id in items:
            image = {"url": image_url, "content_type": "image/png", "width": 1024, "height": 1024}
            payload = {"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                       "payload": {"images": [image], "seed": 7}}  # fmt: skip
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers = sign_fal(key, request_id=request_id, user_id="bench-user", timestamp=ts, body=body)
            values = [headers[f"X-Fal-Webhook-{name}"] for name in ("Request-Id", "User-Id", "Timestamp", "Signature")]
            out.write("\t".join([url_path, *values, body.decode()]) + "\n")


def sink() -> Starlette:
    async def hook(request: Any) -> Response:
        await request.body()
        return Response(status_code=204)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


def progress(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        [(ingested,)] = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'")
        [(stored,)] = conn.execute("SELECT COUNT(*) FROM jobs WHERE images_status NOT IN ('pending')")
        [(delivered,)] = conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'")
        return {"ingested": ingested, "images_done": stored, "delivered": delivered}
    finally:
        conn.close()


async def measure_shape(
    name: str, argv: list[str], workdir: Path, template: Path, requests: Path, *, jwks_url: str, sink_url: str,
    rate: float, duration_s: int,
) -> dict[str, Any]:  # fmt: skip
    data = workdir / name.replace(" ", "-")
    data.mkdir()
    shutil.copy(template, data / "receiver.db")
    port = free_port()
    env = clean_env(
        RECEIVER_DATABASE_URL=f"sqlite:///{data / 'receiver.db'}",
        RECEIVER_DATA_DIR=str(data),
        RECEIVER_SECRET_KEY=SECRET,
        RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RECEIVER_FAL_JWKS_URL=jwks_url,
        RECEIVER_FAL_QUEUE_URL="http://127.0.0.1:9/fal",
        RECEIVER_RECONCILE_AFTER_S="3600",
        RECEIVER_FETCH_ALLOW_PRIVATE="true",
        RECEIVER_FETCH_ALLOWED_HOSTS="127.0.0.1",
        RECEIVER_NOTIFY_ALLOW_PRIVATE="true",
        RECEIVER_LOG_LEVEL="warning",
        FAL_KEY="bench",
    )
    argv = [sys.executable, *argv, "--port", str(port)]
    server = ServerProcess(env, port, cwd=ROOT, log_path=workdir / f"{data.name}.log", argv=argv, name=name)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            created = await client.post("/v1/subscriptions", json={"kind": "webhook", "url": sink_url})
            assert created.status_code == 201, created.text
        await asyncio.to_thread(wrk, port, requests, duration_s=3, offset=0, rate=rate)  # warm-up, fills the pipeline
        web, group = [server.pid], pids(server.pid)
        before = progress(data / "receiver.db")
        web0, all0, wall0 = cpu_s(web), cpu_s(group), time.monotonic()
        result = await asyncio.to_thread(wrk, port, requests, duration_s=duration_s, offset=int(rate * 4), rate=rate)
        wall = time.monotonic() - wall0
        web_s, all_s = cpu_s(web) - web0, cpu_s(pids(server.pid)) - all0
        after = progress(data / "receiver.db")
    finally:
        await server.stop(signal.SIGTERM, timeout_s=90)
    n = max(1, result["requests"])
    return {
        **{k: result[k] for k in ("requests", "rps", "non2xx", "p50_ms", "p99_ms", "p999_ms", "max_ms")},
        "web_cpu_us_per_webhook": round(web_s / n * 1e6),
        "web_cores": round(web_s / wall, 2),
        "all_cores": round(all_s / wall, 2),
        "done_per_s": {k: round((after[k] - before[k]) / wall, 1) for k in after},
    }


async def run_all(args: argparse.Namespace, workdir: Path, jwks_url: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    images = workdir / "images"
    images.mkdir()
    result_image(images / "result.png")
    image_port = free_port()
    image_server = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [sys.executable, "-m", "http.server", str(image_port), "--bind", "127.0.0.1", "--directory", str(images)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        total = int(args.rate * (args.duration + 8))
        items = create_jobs(workdir / "template.db", total)
        write_requests(workdir / "requests.tsv", key, items, f"http://127.0.0.1:{image_port}/result.png")
        results: dict[str, Any] = {"rate": args.rate, "duration_s": args.duration, "shapes": {}}
        async with running_server(sink()) as sink_base:
            for round_ in range(args.rounds):
                (workdir / f"round{round_}").mkdir()
                for name in args.shapes:
                    print(f"{name} ...", flush=True)
                    measured = await measure_shape(
                        name, SHAPES[name], workdir / f"round{round_}", workdir / "template.db",
                        workdir / "requests.tsv", jwks_url=jwks_url, sink_url=f"{sink_base}/hook", rate=args.rate,
                        duration_s=args.duration,
                    )  # fmt: skip
                    print(json.dumps(measured), flush=True)
                    results["shapes"].setdefault(name, []).append(measured)
        return results
    finally:
        image_server.terminate()
        image_server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=300, help="webhooks per second (paced)")
    parser.add_argument("--duration", type=int, default=20, help="measured seconds per shape")
    parser.add_argument("--rounds", type=int, default=1, help="measure every shape this many times, interleaved")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES), metavar="SHAPE")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="receiver-roles-") as tmp, jwks_server(Path(tmp), public_jwk(key)) as url:
        results = asyncio.run(run_all(args, Path(tmp), url, key))
    write_json(ROOT / "bench" / "roles_results.json", results)


if __name__ == "__main__":
    main()
