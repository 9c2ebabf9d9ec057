"""`scripts/bench --bodies`: huge request bodies against `receiver serve` beside a `/healthz` probe, and the
longest GIL stall while big data-URI jobs are created.

The bodies (bench/big_bodies.py) are those of the tests that check what is refused and taken
(tests/web/test_hostile_bodies.py, tests/ingest/test_hostile_webhooks.py); here they are sent for the figures
the tests do not assert:

- `api mix`: 25 MB bodies (413), the worst shapes under the 16 MiB JSON limit (422) and a 12 MB data-URI
  job (202), all at once, twice over; then a 25 MB body streamed without a length (413).
- `data-URI jobs`: four ~15 MB data-URI jobs at once (two fal, two WaveSpeed), then `GET /v1/jobs`.
- `webhooks`: a 23 MB signed fal webhook beside three 25 MB forged ones at once, then the same for WaveSpeed,
  each followed until its job's images are stored (the fal emulator runs in this process, never delivering).
- `GIL stall`: the receiver in this process (workers off), four ~15 MB data-URI jobs created at once; a
  watcher thread records the longest time it could not run past a 1 ms sleep, counting only the CPU the
  process used in that gap (waiting for a core is not counted), with this process's heap frozen out of
  the garbage collector. The client runs in the same process, as in the test this figure comes from.

For the `receiver serve` scenarios: the probe's median, p99 and worst answer time (a separate process,
`bench/probe.py`, every 20 ms over one keep-alive connection) and the server's RSS idle, at its peak
(`VmHWM`) and after. `--repeat N` runs every scenario N times. Every answer is checked: a run whose bodies
are not refused or taken as they should be stops with an error. Results: the `bodies` key of
bench/results.json and the `bench:bodies` block of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr

from bench import big_bodies
from bench.big_bodies import (
    BIG,
    WAVESPEED_SECRET,
    chunked,
    data_uri_images,
    data_uri_jobs,
    filler,
    noise_png_data_uri,
    webhook_rounds,
)
from bench.probe import probed_server
from bench.processes import ROOT, ServerProcess, clean_env, free_port, rss_kb
from bench.results import machine, replace_block, write_json
from bench.snapshot import connect_ro
from receiver.app import create_app
from receiver.emulators import create_emulator_app
from receiver.emulators.fal import FalEmulator, FalEmulatorConfig
from receiver.ingest.signatures import job_token
from receiver.settings import Settings
from receiver.web.asgi_server import base_url, bind_socket, running_server
from receiver.wiring import open_services

TOKEN = "bench-token"
SECRET_KEY = "bench-bodies-secret"  # fixed, so the webhook URLs' job tokens can be minted here
MARKER = "<!-- bench:bodies -->"
RESULTS = ROOT / "bench" / "results.json"


class WrongAnswer(RuntimeError):
    """A body was not refused or taken as the tests say it is: the figures would mean nothing."""


def expect(what: str, got: list[int], want: list[int], answers: list[httpx.Response]) -> None:
    if got != want:
        raise WrongAnswer(f"{what}: got {got}, want {want}: {[answer.text[:200] for answer in answers]}")


# --------------------------------------------------------------------------------------------------
# `receiver serve` beside the probe


def serve_env(workdir: Path, port: int, **extra: str) -> dict[str, str]:
    """A token-protected server whose providers are configured but unreachable unless `extra` says otherwise."""
    dead = f"http://127.0.0.1:{free_port()}"
    settings = {
        "RECEIVER_DATABASE_URL": f"sqlite:///{workdir / 'receiver.db'}",
        "RECEIVER_DATA_DIR": str(workdir),
        "RECEIVER_LOG_LEVEL": "warning",
        "RECEIVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "RECEIVER_SECRET_KEY": SECRET_KEY,
        "RECEIVER_API_TOKEN": TOKEN,
        "RECEIVER_FAL_QUEUE_URL": f"{dead}/fal",
        "RECEIVER_WAVESPEED_URL": f"{dead}/wavespeed",
        "FAL_KEY": "bench-fal-key",
        "WAVESPEED_API_KEY": "bench-wavespeed-key",
    }
    return clean_env(**{**settings, **extra})


Load = Callable[[httpx.AsyncClient, ServerProcess, Callable[[], Awaitable[None]]], Awaitable[None]]


async def beside_probe(workdir: Path, load: Load, **extra: str) -> dict[str, Any]:
    """Start `receiver serve`, run `load(client, server, start_probe)` (which starts the probe where its load
    begins), and measure: the probe's answers, the server's RSS idle, at its peak and after, the wall time."""
    port = free_port()
    async with probed_server(serve_env(workdir, port, **extra), port, workdir) as served:
        server = served.server
        idle_kb = rss_kb([server.pid])
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=300) as client:
            await load(client, server, served.start_probe)
        wall_s = time.monotonic() - served.began
        probed = await served.finish()
        peak_kb, after_kb = rss_kb([server.pid], "VmHWM"), rss_kb([server.pid])
    return {
        **probed.figures(),
        "rss_idle_mb": round(idle_kb / 1024),
        "rss_peak_mb": round(peak_kb / 1024),
        "rss_after_mb": round(after_kb / 1024),
        "wall_s": round(wall_s, 1),
    }


async def api_mix(client: httpx.AsyncClient, server: ServerProcess, start_probe: Callable[[], Awaitable[None]]) -> None:
    bodies = big_bodies.api_mix()
    headers = {"Content-Type": "application/json"}
    await start_probe()
    for _ in range(2):  # twice over, every body at once
        answers = await asyncio.gather(*(client.post("/v1/jobs", content=b, headers=headers) for b, _ in bodies))
        expect("api mix", [a.status_code for a in answers], [status for _, status in bodies], answers)
    streamed = await client.post("/v1/jobs", content=chunked(filler(BIG, b"[]")), headers=headers)
    expect("api mix, streamed", [streamed.status_code], [413], [streamed])


async def data_uri(
    client: httpx.AsyncClient, server: ServerProcess, start_probe: Callable[[], Awaitable[None]]
) -> None:
    bodies = data_uri_jobs(data_uri_images())
    headers = {"Content-Type": "application/json"}
    await start_probe()
    answers = await asyncio.gather(*(client.post("/v1/jobs", content=body, headers=headers) for body in bodies))
    expect("data-URI jobs", [a.status_code for a in answers], [202] * 4, answers)
    listing = await client.get("/v1/jobs")
    expect("data-URI jobs, listing", [listing.status_code], [200], [listing])


async def webhooks(
    key: Ed25519PrivateKey,
    client: httpx.AsyncClient,
    server: ServerProcess,
    start_probe: Callable[[], Awaitable[None]],
) -> None:
    """`key` is the fal emulator's signing key (its JWKS is the server's)."""
    workdir = server.cwd
    tiny = noise_png_data_uri(8)
    created = await client.post(
        "/v1/jobs", json={"provider": "fal", "model": "fal-ai/stepx-edit2", "input": {"prompt": "p", "image_url": tiny}}
    )
    expect("webhooks, fal job", [created.status_code], [202], [created])
    fal_job = await until_bound(client, created.json()["id"])
    created = await client.post(
        "/v1/jobs",
        json={"provider": "wavespeed", "model": "wavespeed-ai/step1x-edit", "input": {"prompt": "p", "image": tiny}},
    )
    expect("webhooks, WaveSpeed job", [created.status_code], [202], [created])
    wavespeed_job = created.json()
    images = [noise_png_data_uri(1700), noise_png_data_uri(1700)]  # 11.6 MB of base64 each
    fal = (fal_job, webhook_url(server.url, "fal", fal_job["id"]))
    wavespeed = (wavespeed_job, webhook_url(server.url, "wavespeed", wavespeed_job["id"]))
    await start_probe()
    for job_id, sent in webhook_rounds(key, images, fal, wavespeed):
        answers = await asyncio.gather(*(client.post(u, content=b, headers=h) for u, b, h in sent))
        expect("webhooks", [a.status_code for a in answers], [200, 401, 401, 401], answers)
        await until_stored(workdir / "receiver.db", job_id)


def webhook_url(base: str, provider: str, job_id: str) -> str:
    return f"{base}/webhooks/{provider}/{job_id}?token={job_token(SECRET_KEY.encode(), provider, job_id)}"


async def until_bound(client: httpx.AsyncClient, job_id: str, bound_s: float = 60.0) -> dict[str, Any]:
    """The job once the fal emulator took its submit (its request id is bound)."""
    deadline = time.monotonic() + bound_s
    while True:
        found: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()
        if found["provider_request_id"]:
            return found
        if time.monotonic() > deadline:
            raise WrongAnswer(f"the fal submit never happened: {found}")
        await asyncio.sleep(0.05)


async def until_stored(db_path: Path, job_id: str, bound_s: float = 120.0) -> None:
    """Until the job succeeded and its images are stored, read from the database file (the API would carry
    the job's 23 MB provider_result each time)."""
    deadline = time.monotonic() + bound_s
    while True:
        conn = connect_ro(db_path)
        try:
            status, images = conn.execute("SELECT status, images_status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        finally:
            conn.close()
        if status == "succeeded" and images == "stored":
            return
        if status not in ("pending", "submitted", "running", "succeeded") or time.monotonic() > deadline:
            raise WrongAnswer(f"job {job_id} did not succeed with its images stored: {status} {images}")
        await asyncio.sleep(0.1)


async def run_webhooks(workdir: Path) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    emulator = FalEmulator(FalEmulatorConfig(queue_s=0.01, inference_s=0.02, no_delivery=True), signing_key=key)
    async with running_server(create_emulator_app(fal=emulator)) as emulator_url:
        try:
            return await beside_probe(
                workdir,
                functools.partial(webhooks, key),
                RECEIVER_FAL_QUEUE_URL=f"{emulator_url}/fal",
                RECEIVER_FAL_JWKS_URL=f"{emulator_url}/fal/.well-known/jwks.json",
                RECEIVER_WAVESPEED_WEBHOOK_SECRET=WAVESPEED_SECRET,
                RECEIVER_RECONCILE_AFTER_S="3600",
            )
        finally:
            await emulator.aclose()


# --------------------------------------------------------------------------------------------------
# the GIL stall, in this process


@contextmanager
def longest_stall() -> Iterator[list[float]]:
    """The longest time a thread of this process could not run past a 1 ms sleep while the process itself was
    busy: how long the event loop, or a worker thread holding the GIL in one long call, kept everything else
    waiting. A gap counts only as much CPU as the process used in it, so the machine's other work (this
    process waiting for a core) is not counted; this process's heap is frozen out of the garbage collector,
    whose full passes over it are no part of the server."""
    worst = [0.0]
    done = threading.Event()

    def watch() -> None:
        last, last_cpu = time.perf_counter(), time.process_time()
        while not done.wait(0.001):
            now, cpu = time.perf_counter(), time.process_time()
            worst[0] = max(worst[0], min(now - last, cpu - last_cpu))
            last, last_cpu = now, cpu

    gc.collect()
    gc.freeze()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield worst
    finally:
        done.set()
        watcher.join()
        gc.unfreeze()


async def gil_stall(workdir: Path) -> dict[str, Any]:
    dead = f"http://127.0.0.1:{free_port()}"
    sock = bind_socket("127.0.0.1", 0)
    url = base_url(*sock.getsockname()[:2])
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{workdir / 'receiver.db'}",
        data_dir=workdir,
        public_url=url,
        secret_key=SecretStr(SECRET_KEY),
        fal_key=SecretStr("bench-fal-key"),
        wavespeed_api_key=SecretStr("bench-wavespeed-key"),
        fal_queue_url=f"{dead}/fal",
        wavespeed_url=f"{dead}/wavespeed",
        log_level="warning",
    )
    bodies = data_uri_jobs(data_uri_images())
    headers = {"Content-Type": "application/json"}
    async with (
        open_services(settings) as services,
        running_server(create_app(services), sock=sock),
        httpx.AsyncClient(base_url=url, timeout=300) as client,
    ):
        with longest_stall() as worst:
            answers = await asyncio.gather(*(client.post("/v1/jobs", content=body, headers=headers) for body in bodies))
        expect("GIL stall, data-URI jobs", [a.status_code for a in answers], [202] * 4, answers)
    return {"longest_stall_ms": round(worst[0] * 1000, 1)}


# --------------------------------------------------------------------------------------------------
# the run and its report

SCENARIOS = ("api mix", "data-URI jobs", "webhooks")


def made(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


async def run_all(repeat: int, data: Path) -> dict[str, Any]:
    loads: dict[str, Load] = {"api mix": api_mix, "data-URI jobs": data_uri}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in (*SCENARIOS, "GIL stall")}
    for round_ in range(repeat):
        for name in SCENARIOS:
            print(f"{name} ({round_ + 1}/{repeat}) ...", flush=True)
            workdir = made(data / f"{name.replace(' ', '-')}-{round_}")
            figures = await (run_webhooks(workdir) if name == "webhooks" else beside_probe(workdir, loads[name]))
            print(f"  {figures}", flush=True)
            runs[name].append(figures)
        print(f"GIL stall ({round_ + 1}/{repeat}) ...", flush=True)
        figures = await gil_stall(made(data / f"gil-{round_}"))
        print(f"  {figures}", flush=True)
        runs["GIL stall"].append(figures)
    load = os.getloadavg()
    return {
        "date": date.today().isoformat(),
        "machine": {**machine(), "load_average_at_end": [round(value, 2) for value in load]},
        "repeat": repeat,
        "runs": runs,
    }


def median(runs: list[dict[str, Any]], field: str) -> str:
    return f"{statistics.median(run[field] for run in runs):g}"


def worst(runs: list[dict[str, Any]], field: str) -> str:
    """The worst of the runs, and every run's figure when there are several."""
    values = [run[field] for run in runs]
    each = f" (runs: {', '.join(f'{value:g}' for value in values)})" if len(values) > 1 else ""
    return f"**{max(values):g}**{each}"


def write_report(results: dict[str, Any]) -> None:
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    stored["bodies"] = results
    write_json(RESULTS, stored)
    runs = results["runs"]
    lines = [
        "| scenario | probes | probe p50 / p99 ms | probe max ms | peak RSS MB | RSS idle / after MB | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in SCENARIOS:
        of = runs[name]
        lines.append(
            f"| {name} | {median(of, 'probes')} | {median(of, 'p50_ms')} / {median(of, 'p99_ms')} | "
            f"{worst(of, 'max_ms')} | {worst(of, 'rss_peak_mb')} | "
            f"{median(of, 'rss_idle_mb')} / {median(of, 'rss_after_mb')} | {median(of, 'wall_s')} |"
        )
    load = ", ".join(f"{value:g}" for value in results["machine"]["load_average_at_end"])
    text = (
        "\n".join(lines)
        + "\n\nLongest GIL stall while four ~15 MB data-URI jobs are created at once: "
        + f"{worst(runs['GIL stall'], 'longest_stall_ms')} ms.\n\n"
        + f"{results['date']}: {results['repeat']} run(s) of each scenario; probe max, peak RSS and the GIL "
        + "stall are the worst run's, the other figures medians of the runs. "
        + f"{results['machine']['cores']} cores, load average {load} at the end."
    )
    print(text)
    replace_block(MARKER, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of every scenario (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="receiver-bodies-") as tmp:
        results = asyncio.run(run_all(args.repeat, Path(tmp)))
    write_report(results)


if __name__ == "__main__":
    main()
